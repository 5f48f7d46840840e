"""Entry point of the shipped providers (group ``provhub``), like any plugin's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import provhub
from provhub_providers.local import LocalProvider, availability
from provhub_providers.lockchat import Lockchat
from provhub_providers.openai_compatible import OpenAICompatible


@provhub.hookimpl
def provhub_register_providers(register: provhub.Registrar) -> None:
    """Register the shipped providers.

    ``local`` is an instance per hub (the hook runs once per hub), so each hub
    loads its own model, on first use. Without the ``local`` extra it is
    recorded as unavailable, with the command that installs it.
    """
    register(Lockchat)
    reason = availability()
    if reason is None:
        register(LocalProvider())
    else:
        register.unavailable("local", reason)


@provhub.hookimpl
def provhub_register_provider_types(register_type: Callable[[str, Any], None]) -> None:
    """Offer ``type = "openai-compatible"`` and ``type = "local"`` to config files."""
    register_type("openai-compatible", OpenAICompatible.from_config)
    register_type("local", LocalProvider.from_config)
