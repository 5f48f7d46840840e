"""Providers shipped with provhub, registered through the ``provhub`` entry-point group.

This package uses only provhub's public API, exactly as a third-party plugin does.
"""

from provhub_providers.local import LocalProvider
from provhub_providers.lockchat import Lockchat
from provhub_providers.openai_compatible import OpenAICompatible

__all__ = ["LocalProvider", "Lockchat", "OpenAICompatible"]
