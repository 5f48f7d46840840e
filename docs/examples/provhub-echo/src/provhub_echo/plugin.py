"""The module named by the entry point: ``echo = "provhub_echo.plugin"`` in group ``provhub``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import provhub

from provhub_echo.provider import Echo


@provhub.hookimpl
def provhub_register_providers(register: Callable[[Any], None]) -> None:
    """Register the Echo provider with the hub being built."""
    register(Echo)
