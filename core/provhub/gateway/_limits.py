"""Request limits of ``provhub serve``: the body size cap and the request deadline.

The body is refused with 413 as soon as it is known to be too large: at once
from ``Content-Length``, or while reading a chunked body the moment it passes
the cap, so an oversized upload is never buffered whole.
"""

from __future__ import annotations

import time
from typing import Any

from provhub.gateway._errors import GatewayError

__all__ = ["ClientGone", "Deadline", "read_body"]


class ClientGone(Exception):
    """The client disconnected before its request was read or answered."""


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"request body is larger than {limit} bytes ([server] max_body_bytes); "
        "send a smaller request or raise the limit",
        code="request_too_large",
        # The rest of the body is not wanted: close instead of draining it.
        headers=((b"connection", b"close"),),
    )


async def read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise GatewayError(400, "invalid Content-Length header") from None
            if declared > limit:
                raise _too_large(limit)
            break
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


class Deadline:
    """The moment a request must be answered by (``time.monotonic`` clock)."""

    __slots__ = ("at", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left (never below zero)."""
        return max(0.0, self.at - time.monotonic())

    def passed(self, slack: float = 0.05) -> bool:
        """Whether the deadline has (nearly) passed."""
        return time.monotonic() >= self.at - slack
