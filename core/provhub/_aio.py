"""asyncio front end: ``Hub.astream`` / ``Hub.acomplete`` (SPEC §4).

Providers are synchronous generators, so each async stream runs its
:class:`~provhub.Stream` in one worker thread (with the caller's contextvars, so
host-bound structlog context appears on events). Tokens cross to the event loop
in batches: the worker wakes the loop only when the consumer is waiting, which
keeps throughput close to the sync stream. Cancelling the consumer shuts the
upstream socket down at once and the worker ends promptly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import threading
import time
import weakref
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provhub._attempt import Attempt
    from provhub._spec import StreamItem, Usage
    from provhub._stream import Completion, Stream
    from provhub._toolcalls import ToolCall

__all__ = ["AsyncStream"]

_DONE = object()
# Tokens buffered ahead of a slow consumer before the worker waits: bounds memory
# while keeping the worker from stalling on every token.
_MAX_BUFFER = 4096
# Longest stretch the worker holds the GIL during a burst before yielding it.
_GIL_SLICE = 0.002


class _Channel:
    """The worker's side of an async stream: buffer, wake-ups, outcome.

    Kept apart from :class:`AsyncStream` so the worker thread holds no
    reference to the object the caller iterates: a caller that drops an
    unfinished stream lets it be finalized, which stops the worker.
    """

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.gen: Generator[StreamItem, None, None] | None = None
        self.buffer: collections.deque[Any] = collections.deque()
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self.waiter: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.closed = False

    def work(self) -> None:
        count = 0
        last_yield = time.monotonic()
        gen = self.gen
        assert gen is not None
        try:
            for token in gen:
                count += 1
                if not count & 63 and time.monotonic() - last_yield > _GIL_SLICE:
                    # A burst of tokens keeps this thread busy; handing the GIL
                    # over now and then keeps the event loop's lag near one slice
                    # instead of several of the interpreter's 5 ms switch intervals.
                    time.sleep(0)
                    last_yield = time.monotonic()
                with self.lock:
                    while len(self.buffer) >= _MAX_BUFFER and not self.closed:
                        # Wake up now and then: a consumer whose event loop has
                        # closed will never drain the buffer.
                        if not self.space.wait(0.25) and self._loop_gone():
                            self.closed = True
                    if self.closed:
                        break
                    self.buffer.append(token)
                    wake = self.waiter is not None
                if wake:
                    self.wake()
        except BaseException as exc:  # delivered to the consumer, not lost
            self.error = exc
        finally:
            gen.close()  # closes the upstream connection
            with self.lock:
                self.buffer.append(_DONE)
            self.wake()

    def _loop_gone(self) -> bool:
        return self.loop is None or self.loop.is_closed()

    def wake(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            # The loop may close between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.resolve)

    def resolve(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stop(self) -> None:
        """Ask the worker to end and abort its network call (any thread)."""
        with self.lock:
            self.closed = True
            self.space.notify_all()
        self.stream.cancel_token.cancel()


class AsyncStream:
    """Async iterator of ``str`` tokens over a :class:`~provhub.Stream`.

    Same metadata as the sync stream (``provider``, ``request_id``, ``attempts``,
    ``finish_reason``, ``usage``); ``await aclose()`` or ``async with`` releases
    the upstream connection (dropping an unfinished stream does too, when it is
    garbage-collected).
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._channel = _Channel(stream)
        self._thread: threading.Thread | None = None
        self._finalizer = weakref.finalize(self, self._channel.stop)

    # metadata ------------------------------------------------------------
    @property
    def provider(self) -> str | None:
        """Provider of the current or final attempt."""
        return self._stream.provider

    @property
    def request_id(self) -> str:
        """The request's id, as on its events."""
        return self._stream.request_id

    @property
    def attempts(self) -> list[Attempt]:
        """Attempts so far."""
        return self._stream.attempts

    @property
    def finish_reason(self) -> str | None:
        """Why the upstream stopped, when it said so."""
        return self._stream.finish_reason

    @property
    def usage(self) -> Usage | None:
        """Token usage, when the upstream reported it."""
        return self._stream.usage

    @property
    def text(self) -> str:
        """The text delivered so far."""
        return self._stream.text

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Tool calls assembled so far (complete once the stream ended)."""
        return self._stream.tool_calls

    @property
    def reasoning(self) -> str | None:
        """Reasoning text delivered so far, or None."""
        return self._stream.reasoning

    @property
    def refusal(self) -> str | None:
        """Refusal text delivered so far, or None."""
        return self._stream.refusal

    def __repr__(self) -> str:
        return f"<AsyncStream {self._stream!r}>"

    # async iteration -----------------------------------------------------
    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        return await self._next(True)  # type: ignore[no-any-return]

    def items(self) -> AsyncIterator[StreamItem]:
        """Every item in arrival order, as :meth:`Stream.items` yields them."""
        return _AsyncItems(self)

    async def _next(self, text_only: bool) -> Any:
        channel = self._channel
        if self._thread is None:
            channel.gen = self._stream._start(text_only)
            channel.loop = asyncio.get_running_loop()
            context = contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(channel.work,), name="provhub-astream", daemon=True
            )
            self._thread.start()
        while True:
            with channel.lock:
                if channel.buffer:
                    item = channel.buffer.popleft()
                    channel.space.notify()
                    break
                waiter = channel.waiter = channel.loop.create_future()  # type: ignore[union-attr]
            try:
                await waiter
            except asyncio.CancelledError:
                await self.aclose()
                raise
        if item is _DONE:
            channel.buffer.append(_DONE)  # stay exhausted
            if channel.error is not None:
                error, channel.error = channel.error, None
                raise error
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop the stream and close the upstream connection (idempotent)."""
        self._channel.stop()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, 5.0)
        elif thread is None:
            self._stream.close()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _AsyncItems:
    """``AsyncStream.items()``: the same stream, read item by item."""

    __slots__ = ("_astream",)

    def __init__(self, astream: AsyncStream) -> None:
        self._astream = astream

    def __aiter__(self) -> _AsyncItems:
        return self

    async def __anext__(self) -> StreamItem:
        return await self._astream._next(False)  # type: ignore[no-any-return]


async def acomplete(stream: Stream) -> Completion:
    """Collect a whole answer without blocking the event loop."""
    from provhub._stream import Completion

    astream = AsyncStream(stream)
    try:
        async for _ in astream:
            pass
    finally:
        await astream.aclose()
    return Completion.of(stream._run)
