"""Entry point of the shipped providers (group ``provhub``), like any plugin's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import provhub
from provhub_providers.lockchat import Lockchat
from provhub_providers.openai_compatible import OpenAICompatible


@provhub.hookimpl
def provhub_register_providers(register: Callable[[Any], None]) -> None:
    """Register the shipped provider classes."""
    register(Lockchat)


@provhub.hookimpl
def provhub_register_provider_types(register_type: Callable[[str, Any], None]) -> None:
    """Offer ``type = "openai-compatible"`` to config files."""
    register_type("openai-compatible", OpenAICompatible.from_config)
