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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provhub._router import Attempt
    from provhub._spec import Usage
    from provhub._stream import Completion, Stream

__all__ = ["AsyncStream"]

_DONE = object()
# Tokens buffered ahead of a slow consumer before the worker waits: bounds memory
# while keeping the worker from stalling on every token.
_MAX_BUFFER = 4096


class AsyncStream:
    """Async iterator of ``str`` tokens over a :class:`~provhub.Stream`.

    Same metadata as the sync stream (``provider``, ``request_id``, ``attempts``,
    ``finish_reason``, ``usage``); ``await aclose()`` or ``async with`` releases
    the upstream connection.
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._buffer: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False

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
        """Everything delivered so far."""
        return self._stream.text

    # worker --------------------------------------------------------------
    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._work,), name="provhub-astream", daemon=True
        )
        self._thread.start()

    def _work(self) -> None:
        try:
            for token in self._stream._gen:
                with self._lock:
                    while len(self._buffer) >= _MAX_BUFFER and not self._closed:
                        self._space.wait()
                    if self._closed:
                        break
                    self._buffer.append(token)
                    wake = self._waiter is not None
                if wake:
                    self._wake()
        except BaseException as exc:  # delivered to the consumer, not lost
            self._error = exc
        finally:
            self._stream._gen.close()
            with self._lock:
                self._buffer.append(_DONE)
            self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # The loop may close between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # async iteration -----------------------------------------------------
    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._thread is None:
            self._start()
        while True:
            with self._lock:
                if self._buffer:
                    item = self._buffer.popleft()
                    self._space.notify()
                    break
                assert self._loop is not None
                self._waiter = self._loop.create_future()
                waiter = self._waiter
            try:
                await waiter
            except asyncio.CancelledError:
                await self.aclose()
                raise
        if item is _DONE:
            self._buffer.append(_DONE)  # stay exhausted
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Stop the stream and close the upstream connection (idempotent)."""
        with self._lock:
            self._closed = True
            self._space.notify_all()
        self._stream.cancel_token.cancel()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, 5.0)
        elif thread is None:
            self._stream._gen.close()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def acomplete(stream: Stream) -> Completion:
    """Collect a whole answer without blocking the event loop."""
    from provhub._stream import Completion

    astream = AsyncStream(stream)
    try:
        parts = [token async for token in astream]
    finally:
        await astream.aclose()
    return Completion(
        text="".join(parts),
        provider=stream.provider or "",
        model=stream.model,
        request_id=stream.request_id,
        finish_reason=stream.finish_reason,
        usage=stream.usage,
        attempts=tuple(stream.attempts),
    )
