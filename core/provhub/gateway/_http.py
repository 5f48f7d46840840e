"""Small ASGI helpers: whole responses, request ids, the disconnect watch."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DisconnectWatch", "request_id_of", "send_bytes"]

Headers = Sequence[tuple[bytes, bytes]]
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id_of(scope: dict[str, Any]) -> tuple[bytes | None, bool]:
    """The client's ``x-request-id`` if it is a safe token, else None; and whether one was sent.

    A client id is echoed only when it is 1-128 characters of ``A-Za-z0-9._:-``
    (no header injection, no log forging); anything else is replaced.
    """
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return (value if _SAFE_ID.fullmatch(value) else None), True
    return None, False


def new_request_id() -> bytes:
    """A fresh id: 16 hex digits, like the hub's own.

    From the random module (seeded by the OS, reseeded after a fork), not
    ``os.urandom``: a syscall on the event loop releases the GIL, and getting it
    back behind busy workers costs milliseconds.
    """
    return f"{random.getrandbits(64):016x}".encode()


async def send_bytes(
    send: Callable[..., Any],
    status: int,
    body: bytes,
    headers: Headers = (),
    content_type: bytes = b"application/json",
) -> None:
    """Send a whole response with ``Content-Length``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class DisconnectWatch:
    """Cancels the request's task when the client disconnects.

    Started once the body is read; :meth:`stop` it before the last write,
    because the server also reports "disconnect" once the response is
    complete. ``gone`` tells the cancelled handler the cancel was ours.
    """

    __slots__ = ("_task", "_watcher", "gone")

    def __init__(self, receive: Callable[[], Any]) -> None:
        self.gone = False
        self._task = asyncio.current_task()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Callable[[], Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                if self._task is not None:
                    self._task.cancel()
                return

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        self._watcher.cancel()

    def absorb(self) -> bool:
        """In a handler that caught ``CancelledError``: True (and un-cancel) if it was ours."""
        if self.gone and self._task is not None:
            self._task.uncancel()
            return True
        return False
