"""Suspension points: how a synchronous request runs on an event loop without blocking it.

A request is a chain of synchronous generators (the run, the provider's
``create_completion``, the transport's event stream). ``Hub.astream`` drives
that chain on the event loop itself (SPEC §4) when every candidate passes
these objects on: where the transport would block, it yields a
:class:`Suspend` instead, the asyncio front end (:mod:`provhub._aio`) awaits
it, and iterates on. Only the sending of a request and the reading of its
response head, which ``requests`` does in blocking calls, go to a worker
thread (:class:`Offload`); the body, where every token flows, is read from the
non-blocking socket on the loop (:class:`Readable`), so a token costs no thread
hand-off.

The objects carry their outcome back themselves (``timed_out``,
:meth:`Offload.result`): a plain ``for`` loop in a provider passes a value up,
but no ``send()`` down.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from provhub._errors import ProviderError

__all__ = [
    "Offload",
    "Readable",
    "Sleep",
    "Suspend",
    "SuspensionDropped",
    "WouldBlock",
    "waiting",
]

T = TypeVar("T")


class Suspend:
    """A point where a request driven by the event loop waits (yielded, never shown to callers)."""

    __slots__ = ()


class SuspensionDropped(ProviderError):
    """The provider resumed the transport without the loop having waited (a spec breach).

    An ``asyncio_native`` provider must pass every object ``stream_sse`` yields
    besides ``bytes`` on; one that drops them would spin on the socket instead.
    """

    def __init__(self) -> None:
        super().__init__(
            "the provider declares asyncio_native = True but dropped a wait that "
            "call.stream_sse yielded: yield every item that is not bytes on unchanged "
            "(parse_chat_stream does), or remove asyncio_native",
            retryable=False,
        )


class WouldBlock(Exception):
    """A read or write on a non-blocking socket has to wait (raised by the wire).

    ``seconds`` is what the exchange's budget allows for the wait and
    ``budget`` its name (``first-token``, ``idle``, ``total``).
    """

    def __init__(self, fd: int, seconds: float, budget: str, *, write: bool = False) -> None:
        super().__init__(fd, seconds, budget, write)
        self.fd = fd
        self.seconds = seconds
        self.budget = budget
        self.write = write

    def waiting(self) -> Generator[Readable, None, bool]:
        """The wait it asks for: ``timed_out = yield from wait.waiting()``."""
        return waiting(self.fd, self.seconds, self.budget, write=self.write)


class Readable(Suspend):
    """Wait until the socket ``fd`` is readable (``write``: writable), at most ``seconds``.

    The front end sets ``timed_out`` when the time ran out first.
    """

    __slots__ = ("budget", "fd", "seconds", "timed_out", "write")

    def __init__(self, fd: int, seconds: float, budget: str, *, write: bool = False) -> None:
        self.fd = fd
        self.seconds = seconds
        self.budget = budget
        self.write = write
        self.timed_out: bool | None = None  # set by the front end once it waited

    def waited(self) -> bool:
        """Whether the wait timed out; raises :class:`SuspensionDropped` if nobody waited."""
        timed_out = self.timed_out
        if timed_out is None:
            raise SuspensionDropped()
        return timed_out


def waiting(
    fd: int, seconds: float, budget: str, *, write: bool = False
) -> Generator[Readable, None, bool]:
    """Yield one :class:`Readable` for the loop; return whether it timed out."""
    wait = Readable(fd, seconds, budget, write=write)
    yield wait
    return wait.waited()


class Sleep(Suspend):
    """Wait ``seconds`` (a retry's backoff)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Offload(Suspend, Generic[T]):
    """Run ``fn`` on a worker thread; the generator takes the outcome with :meth:`result`.

    Whoever abandons the wait (a cancelled consumer, a closed generator, a
    generator that found ``timed_out``) calls :meth:`abandon`: a result that
    arrives afterwards, or arrived unclaimed, is handed to ``cleanup`` (closing
    the response it holds) instead of leaking. ``seconds`` bounds the wait when
    ``fn`` is not bounded itself (a name lookup); the front end sets
    ``timed_out`` when it ran out.
    """

    __slots__ = (
        "_abandoned",
        "_done",
        "_error",
        "_lock",
        "_value",
        "cleanup",
        "fn",
        "seconds",
        "timed_out",
    )

    def __init__(
        self,
        fn: Callable[[], T],
        cleanup: Callable[[T], None] | None = None,
        *,
        seconds: float | None = None,
    ) -> None:
        self.fn = fn
        self.cleanup = cleanup
        self.seconds = seconds
        self.timed_out = False
        self._lock = threading.Lock()
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = False
        self._abandoned = False

    def run(self) -> None:
        """Call ``fn`` and keep its outcome (on the worker thread)."""
        try:
            value, error = self.fn(), None
        except BaseException as exc:  # delivered through result()
            value, error = None, exc
        with self._lock:
            self._done = True
            if not self._abandoned:
                self._value, self._error = value, error
                return
        if error is None:
            self._clean(value)

    def result(self) -> T:
        """The value ``fn`` returned (the caller owns it now), or raise what it raised."""
        if not self._done and not self.timed_out:
            raise SuspensionDropped()
        with self._lock:
            value, error = self._value, self._error
            self._value = self._error = None
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]

    def abandon(self) -> None:
        """Nobody will take the result: clean it up now or when it arrives."""
        with self._lock:
            self._abandoned = True
            value, self._value = self._value, None
            self._error = None
        if value is not None:
            self._clean(value)

    def _clean(self, value: Any) -> None:
        if self.cleanup is not None:
            # Cleanup runs wherever the result lands; it must never raise there.
            with contextlib.suppress(Exception):
                self.cleanup(value)
