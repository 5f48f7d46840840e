"""The g4f-style facade: ``provhub.ChatCompletion.create(...)``."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from provhub._hub import Hub

__all__ = ["ChatCompletion"]


@functools.cache
def _default_hub() -> Hub:
    # The facade's one hub, built on first use (discovery and config happen once
    # per process). Code that needs isolation creates its own Hub.
    return Hub()


class ChatCompletion:
    """``ChatCompletion.create(model, messages, provider=None, stream=False, **kwargs)``.

    Returns a generator of ``str`` tokens when ``stream`` is true, else the
    whole answer as ``str``; routing, retries and events work as with a Hub.
    ``provider`` may be a registered name or a provider class/instance (an
    unregistered one is validated and registered on the facade's hub).
    """

    @staticmethod
    def create(
        model: str,
        messages: Any,
        provider: Any = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> Iterator[str] | str:
        """Run a chat completion through the default hub."""
        hub = _default_hub()
        if stream:
            return iter(hub.stream(model, messages, provider, **kwargs))
        return hub.complete(model, messages, provider, **kwargs).text
