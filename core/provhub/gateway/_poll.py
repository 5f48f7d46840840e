"""Take what an async iterator has ready without yielding to the event loop.

The gateway writes a stream's tokens in as few socket writes as it can: all the
tokens the hub's worker has buffered go out as one HTTP chunk, and the buffer
is flushed the moment the next token is *not* ready yet, so a slow stream is
never held back. "Ready" is decided by stepping the ``__anext__`` coroutine
once: it either finishes at once (a buffered token) or suspends on a future,
which :class:`Resume` then awaits on the caller's task exactly as ``await``
would have (results, exceptions and cancellation pass through unchanged).
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

__all__ = ["Resume", "step"]

T = TypeVar("T")
_NOT_READY: Any = object()


def step(coro: Coroutine[Any, Any, T]) -> tuple[T, Any]:
    """Run ``coro`` until it first suspends.

    Returns ``(result, None)`` when it finished without suspending, else
    ``(_NOT_READY, yielded)``: pass ``yielded`` to :class:`Resume` to await the
    rest. Exceptions raised by ``coro`` propagate.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value, None
    return _NOT_READY, yielded


def ready(result: object) -> bool:
    """Whether :func:`step` returned a result (not a suspension)."""
    return result is not _NOT_READY


class Resume(Generic[T]):
    """Await the rest of a coroutine that :func:`step` left suspended."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, T], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        yielded = self._yielded
        while True:
            try:
                # Hand the future the coroutine waits on to our task, as its own
                # ``await`` would have done.
                sent = yield yielded
            except BaseException as exc:  # cancellation included: forward it
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                continue
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
