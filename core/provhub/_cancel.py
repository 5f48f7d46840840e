"""Cancelling a call that is blocked on the network, from another thread.

A :class:`CancelToken` belongs to one request. Each HTTP exchange of the request
registers with the token for as long as it owns its socket: from sending the
request until the response is finished and the connection goes back to the pool
(:mod:`provhub._exchange`). ``cancel()`` shuts down the sockets of the exchanges in
progress, which wakes a read blocked on headers or on the next chunk at once; the
upstream sees the disconnect. A finished exchange is no longer registered, so a
late ``cancel()`` (an ``aclose()`` after the end of a stream) cannot reach a
pooled socket that another request now uses.
"""

from __future__ import annotations

import threading
from typing import Protocol

__all__ = ["CancelToken"]


class _Abortable(Protocol):
    def abort(self) -> None: ...


class CancelToken:
    """Lets another thread abort a call blocked on the network.

    ``cancel`` aborts every exchange attached to the token (shutting its socket
    down) and refuses new ones. ``event`` is set on cancel, so a provider that
    does not use the network (a local model) can poll ``cancelled`` or wait on
    ``event``.
    """

    __slots__ = ("_attached", "_cancelled", "_event", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attached: set[_Abortable] = set()
        self._cancelled = False
        # Created on first use: a threading.Event is a Condition and two locks,
        # and nearly every request ends without anyone waiting on it.
        self._event: threading.Event | None = None

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        return self._cancelled

    @property
    def event(self) -> threading.Event:
        """Set when ``cancel`` is called (for waiting on it, e.g. ``event.wait(delay)``)."""
        event = self._event
        if event is None:
            with self._lock:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
                    if self._cancelled:
                        event.set()
        return event

    def attach(self, exchange: _Abortable) -> None:
        """Track an exchange in progress (aborted at once if already cancelled)."""
        with self._lock:
            if not self._cancelled:
                self._attached.add(exchange)
                return
        exchange.abort()

    def detach(self, exchange: _Abortable) -> None:
        """Stop tracking an exchange that is over."""
        with self._lock:
            self._attached.discard(exchange)

    def cancel(self) -> None:
        """Abort every attached exchange and refuse new ones (idempotent)."""
        with self._lock:
            self._cancelled = True
            event = self._event
            attached, self._attached = list(self._attached), set()
        if event is not None:
            event.set()
        for exchange in attached:
            # Each exchange checks under its own lock that it still owns its
            # socket: one released meanwhile is left alone.
            exchange.abort()
