"""Cancelling a call that is blocked on the network, from another thread.

A :class:`CancelToken` belongs to one request. The connection classes below
attach their socket to the token of the request being sent, so ``cancel()``
can shut it down and wake a read blocked on headers or on the next chunk; the
upstream sees the disconnect.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
from typing import Any

import urllib3.connection
import urllib3.connectionpool

__all__ = ["CancelToken", "sending"]


class CancelToken:
    """Lets another thread abort a call blocked on the network.

    ``cancel`` shuts down the sockets attached to the token, which wakes a
    blocked read at once (waiting for headers or for the next chunk); the
    upstream sees the disconnect. ``event`` is set on cancel, so a provider
    that does not use the network (a local model) can poll ``cancelled`` or
    wait on ``event``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.event = threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        return self.event.is_set()

    def attach(self, sock: socket.socket) -> None:
        """Track a socket in use (shutting it down at once if already cancelled)."""
        with self._lock:
            if not self.event.is_set():
                self._sockets.add(sock)
                return
        _shutdown(sock)

    def detach(self, sock: socket.socket | None) -> None:
        """Stop tracking a socket whose response is finished."""
        if sock is not None:
            with self._lock:
                self._sockets.discard(sock)

    def cancel(self) -> None:
        """Abort every attached socket and refuse new ones."""
        with self._lock:
            self.event.set()
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by either side
        sock.shutdown(socket.SHUT_RDWR)


# The token of the call this thread is sending, read by the connection classes
# below: the socket must be attachable *before* the response headers arrive,
# which is the moment requests would hand it to us.
sending: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar(
    "provhub_sending", default=None
)


class _CancellableHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        token = sending.get()
        if token is not None and self.sock is not None:
            token.attach(self.sock)


class _CancellableHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        token = sending.get()
        if token is not None and self.sock is not None:
            token.attach(self.sock)


class HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    """A urllib3 pool whose connections attach to the sending call's token."""

    ConnectionCls = _CancellableHTTPConnection


class HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    """The TLS variant of :class:`HTTPPool`."""

    ConnectionCls = _CancellableHTTPSConnection
