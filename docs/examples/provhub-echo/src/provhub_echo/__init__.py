"""provhub-echo: the Echo Chat provider for provhub."""

from provhub_echo.provider import Echo

__all__ = ["Echo"]
__version__ = "0.1.0"
