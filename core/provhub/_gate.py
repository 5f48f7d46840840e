"""Admission control for async-stream workers: who may run Python right now.

An async stream's provider runs on a worker thread (:mod:`provhub._aio`).
Hundreds of runnable workers starve the event loop of the GIL; the
:class:`Gate` lets only a few run Python at once. Every blocking socket
operation of the transport calls :func:`pause` before it blocks and
:func:`resume` after, which gives the worker's slot back meanwhile and delivers
the consumer's pending wake-up; on a thread that is not a worker both do
nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Gate", "pause", "resume", "worker"]


class Gate:
    """Admission control for the Python work of async-stream workers.

    Hundreds of worker threads that all want the GIL starve the event loop: the
    GIL goes round its waiters, and the loop waits behind all of them (500
    astreams started at once stalled it for seconds). A worker holds one of
    ``slots`` while it runs Python and gives it back while it blocks on the
    network or waits for its consumer, so only a few workers compete with the
    loop at any moment; the others wait their turn in order, and new streams
    are admitted (their thread woken at all) only when a slot is free.

    A slot held for longer than ``patience`` without being given back (its
    worker blocks somewhere the gate cannot see, such as a provider's own
    sleep, or computes for long) is revoked and handed on: the gate can slow a
    worker down, never stop one. ``on_release`` is called when a slot frees up
    with no worker waiting for it (the pool admits a new stream then).
    """

    __slots__ = ("_held", "_lock", "_ready", "_waiting", "on_release", "patience", "slots")

    def __init__(self, slots: int = 3, patience: float = 0.05) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self.slots = slots
        self.patience = patience
        self._held: dict[object, float] = {}  # slot -> since when
        self._waiting = 0
        self.on_release: Any = None

    def _revoke(self, now: float) -> float:
        """Revoke the oldest slot if it is stale; else the seconds until it will be."""
        held = self._held
        oldest = min(held, key=held.__getitem__)
        age = now - held[oldest]
        if age >= self.patience:
            del held[oldest]  # its holder goes on without it
            return 0.0
        return self.patience - age

    def try_acquire(self) -> object | None:
        """A slot if one is free now (workers waiting for one go first), else None."""
        with self._lock:
            now = time.monotonic()
            if self._waiting or (len(self._held) >= self.slots and self._revoke(now)):
                return None
            slot = object()
            self._held[slot] = now
            return slot

    def acquire(self) -> object:
        """Wait for a slot, in order; returns it, for :meth:`release`."""
        with self._lock:
            self._waiting += 1
            try:
                while len(self._held) >= self.slots:
                    wait = self._revoke(time.monotonic())
                    if wait:
                        self._ready.wait(wait)
            finally:
                self._waiting -= 1
            slot = object()
            self._held[slot] = time.monotonic()
            return slot

    def release(self, slot: object) -> None:
        """Give ``slot`` back (nothing happens if it was revoked)."""
        with self._lock:
            if self._held.pop(slot, None) is None:
                return
            if self._waiting:
                self._ready.notify()
                return
        hook = self.on_release
        if hook is not None:
            hook()


class _Worker(threading.local):
    """The async-stream worker running on this thread: its gate, slot and stream.

    ``flush`` (the stream's pending wake-up of its consumer) runs whenever the
    worker is about to block on the network.
    """

    gate: Gate | None = None
    slot: Any = None
    flush: Any = None


worker = _Worker()


def pause() -> Gate | None:
    """Before blocking: flush the consumer's wake-up, give the slot back.

    Returns the gate, for :func:`resume`.
    """
    local = worker
    gate = local.gate
    if gate is not None:
        flush = local.flush
        if flush is not None:
            flush()
        if local.slot is not None:
            gate.release(local.slot)
            local.slot = None
    return gate


def resume(gate: Gate | None) -> None:
    """Take a slot again after blocking (``gate`` from :func:`pause`)."""
    if gate is not None:
        worker.slot = gate.acquire()
