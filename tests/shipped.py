"""What the shipped plugin registers on this machine.

``Lockchat`` always; ``local`` only where the ``local`` extra is installed (without
it the plugin records ``local`` as unavailable instead).
"""

from __future__ import annotations

from provhub_providers.local import availability

LOCAL_AVAILABLE = availability() is None
SHIPPED_PROVIDERS: tuple[str, ...] = ("Lockchat", "local") if LOCAL_AVAILABLE else ("Lockchat",)
