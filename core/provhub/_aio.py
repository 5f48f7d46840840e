"""asyncio front end: ``Hub.astream`` / ``Hub.acomplete`` (SPEC §4).

Providers are synchronous generators, so each async stream runs its
:class:`~provhub.Stream` on a worker thread (with the caller's contextvars, so
host-bound structlog context appears on events). Three rules keep the event
loop free:

- **Nothing blocking on the loop.** Workers come from :class:`Workers`, a pool
  that reuses idle threads and never caps concurrency (a stream holds its thread
  for as long as it runs); new threads are started by the pool's spawner
  thread, because ``Thread.start()`` waits for the new thread to run, which
  under a busy GIL took milliseconds per stream on the loop.
- **Cheap hand-off.** Tokens cross in a ``deque`` (thread-safe appends and pops
  without a lock); the worker wakes the loop only when the consumer waits, at
  most once per wait, so a burst of tokens costs the loop one wake-up.
- **Prompt control.** Cancelling the consumer (``task.cancel()``,
  ``asyncio.wait_for``) tells the worker to stop (its stream's cancel token shuts
  the upstream socket down) and waits at most ``_CANCEL_WAIT`` (50 ms) for its
  cleanup; ``aclose()`` waits at most ``_CLOSE_WAIT`` (0.1 s). A worker stuck in a
  provider that ignores cancellation ends on its own later.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

from provhub._gate import Gate, pause, resume, worker

if TYPE_CHECKING:
    from provhub._attempt import Attempt
    from provhub._spec import StreamItem, Usage
    from provhub._stream import Completion, Stream
    from provhub._toolcalls import ToolCall

__all__ = ["AsyncStream", "Workers"]

_DONE = object()
# Tokens buffered ahead of a slow consumer before the worker waits: bounds memory
# while keeping the worker from stalling on every token.
_MAX_BUFFER = 4096
# Longest stretch the worker holds the GIL during a burst before yielding it.
_GIL_SLICE = 0.002
# Most tokens held back from a waiting consumer during a burst (see _Channel.work).
_BATCH = 256
# How long aclose() and a cancelled consumer wait for the worker's cleanup.
_CLOSE_WAIT = 0.1
_CANCEL_WAIT = 0.05
# An idle worker (and the spawner) exits after this long without work.
_IDLE_SECONDS = 2.0
_BUSY_NAME = "provhub-astream"
_IDLE_NAME = "provhub-astream-idle"


class Workers:
    """The threads that run async streams: one per stream in progress, reused.

    ``submit`` never blocks: the stream waits in a queue until the pool's
    :class:`~provhub._gate.Gate` admits it, then an idle worker is woken or the
    spawner thread starts a new one (``Thread.start()`` waits for the new
    thread to run, which under a busy GIL took milliseconds per stream on the
    loop). Concurrency is never capped: a stream blocked on the network holds
    no slot. Idle workers exit after ``idle_seconds``; :meth:`close` ends them
    at once (a worker busy with a stream ends when its stream does); the pool
    can be used again after close. A busy worker is named ``provhub-astream``,
    an idle one ``provhub-astream-idle``.
    """

    def __init__(self, idle_seconds: float = _IDLE_SECONDS, gate: Gate | None = None) -> None:
        self._idle_seconds = idle_seconds
        self.gate = gate or Gate()
        self.gate.on_release = self._admit
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # admitted jobs for idle workers
        self._spawn_wake = threading.Condition(self._lock)  # work for the spawner
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._admitted: collections.deque[tuple[Callable[[], None], object]] = collections.deque()
        self._idle = 0  # workers waiting for a job
        self._notified = 0  # of those, already woken for one
        self._wanted = 0  # threads the spawner is to start
        self._spawner: threading.Thread | None = None
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on a worker thread once the gate admits it."""
        with self._lock:
            self._closed = False
            self._pending.append(job)
            start = self._assign()
        if start is not None:
            start.start()  # only when no spawner runs: once per burst, not per stream

    def close(self) -> None:
        """End idle workers and the spawner now; busy workers end with their stream."""
        with self._lock:
            self._closed = True
            self._ready.notify_all()
            self._spawn_wake.notify_all()

    def _admit(self) -> None:
        """A slot freed up: admit a waiting stream (called by the gate)."""
        if not self._pending:
            return
        with self._lock:
            start = self._assign()
        if start is not None:
            start.start()

    def _assign(self) -> threading.Thread | None:
        """Admit what the gate lets in; returns a spawner to start, if one is needed.

        Called with the lock held.
        """
        while self._pending:
            slot = self.gate.try_acquire()
            if slot is None:
                break
            self._admitted.append((self._pending.popleft(), slot))
            if self._idle > self._notified:
                self._notified += 1
                self._ready.notify()
            else:
                self._wanted += 1
        if not (self._wanted or self._pending):
            return None
        if self._spawner is not None:
            self._spawn_wake.notify()
            return None
        self._spawner = threading.Thread(
            target=self._spawn, name="provhub-astream-spawner", daemon=True
        )
        return self._spawner

    def _spawn(self) -> None:
        """Start the threads wanted; retry admission while streams wait."""
        while True:
            with self._lock:
                while True:
                    self._assign()
                    if self._wanted:
                        count, self._wanted = self._wanted, 0
                        break
                    # Streams still waiting: look again soon, a slot may be revoked.
                    timeout = self.gate.patience if self._pending else self._idle_seconds
                    woken = self._spawn_wake.wait(timeout)
                    if not self._pending and not self._wanted and (self._closed or not woken):
                        self._spawner = None
                        return
            for _ in range(count):
                threading.Thread(target=self._work, name=_IDLE_NAME, daemon=True).start()

    def _work(self) -> None:
        me = threading.current_thread()
        local = worker
        while True:
            with self._lock:
                while not self._admitted:
                    if self._closed:
                        return
                    self._idle += 1
                    notified = self._ready.wait(self._idle_seconds)
                    self._idle -= 1
                    if notified:
                        self._notified -= 1
                    elif not self._admitted:
                        return  # idle for too long
                job, slot = self._admitted.popleft()
            me.name = _BUSY_NAME
            local.gate = self.gate
            local.slot = slot
            try:
                job()
            finally:
                if local.slot is not None:
                    self.gate.release(local.slot)
                    local.slot = None
                local.gate = None
                me.name = _IDLE_NAME


class _Channel:
    """The worker's side of an async stream: buffer, wake-ups, outcome.

    Kept apart from :class:`AsyncStream` so the worker thread holds no
    reference to the object the caller iterates: a caller that drops an
    unfinished stream lets it be finalized, which stops the worker.
    """

    __slots__ = (
        "buffer",
        "closed",
        "deferred",
        "error",
        "finished",
        "full",
        "gen",
        "loop",
        "read",
        "space",
        "stream",
        "waiter",
        "wake_sent",
        "wired",
    )

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.gen: Generator[StreamItem, None, None] | None = None
        self.buffer: collections.deque[Any] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        # A resolve() is scheduled on the loop and has not run yet.
        self.wake_sent = False
        self.deferred = False  # a wake-up held back during a burst (see flush)
        # The worker goes through provhub's wire (so flush runs before it blocks),
        # and has read from the network since the last token.
        self.wired = False
        self.read = True
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.finished = False
        self.full = False
        self.space: threading.Event | None = None  # created when the buffer first fills

    def work(self) -> None:
        gen = self.gen
        assert gen is not None
        buffer = self.buffer
        append = buffer.append
        local = worker
        local.flush = self.flush
        count = 0
        last_yield = time.monotonic()
        try:
            for token in gen:
                if self.closed:
                    break
                append(token)
                if self.waiter is not None and not self.wake_sent:
                    if self.wired and not self.read and len(buffer) < _BATCH:
                        # This token came out of the same network read as the one
                        # before: more follow at once. Wake the consumer when the
                        # worker is about to block instead (pause() calls flush).
                        self.deferred = True
                    else:
                        self.wake()
                self.read = False
                count += 1
                if not count & 63:
                    if time.monotonic() - last_yield > _GIL_SLICE:
                        # A burst keeps this thread busy; handing the GIL over now
                        # and then keeps the loop's lag near one slice instead of
                        # several of the interpreter's 5 ms switch intervals.
                        self.flush()
                        time.sleep(0)
                        last_yield = time.monotonic()
                    if len(buffer) >= _MAX_BUFFER:
                        self._wait_for_space()
        except BaseException as exc:  # delivered to the consumer, not lost
            self.error = exc
        finally:
            local.flush = None
            try:
                gen.close()  # closes the upstream connection
            except BaseException as exc:  # pragma: no cover - a provider's own cleanup
                if self.error is None:
                    self.error = exc
            append(_DONE)
            self.finished = True
            if self.waiter is not None:
                self.wake()

    def flush(self) -> None:
        """The worker is about to block: deliver a deferred wake-up of the consumer."""
        self.wired = True
        self.read = True
        if self.deferred:
            self.deferred = False
            if self.waiter is not None and not self.wake_sent:
                self.wake()

    def _wait_for_space(self) -> None:
        self.flush()
        space = self.space
        if space is None:
            space = self.space = threading.Event()
        space.clear()
        self.full = True
        gate = pause()  # no slot kept while waiting for the consumer
        try:
            while len(self.buffer) >= _MAX_BUFFER and not self.closed:
                # Wake up now and then: a consumer whose event loop has closed will
                # never drain the buffer.
                if not space.wait(0.25) and (self.loop is None or self.loop.is_closed()):
                    self.closed = True
        finally:
            resume(gate)
        self.full = False

    def wake(self) -> None:
        self.wake_sent = True
        loop = self.loop
        if loop is not None:
            # The loop may close at any moment.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.resolve)

    def resolve(self) -> None:
        self.wake_sent = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stop(self) -> None:
        """Ask the worker to end and abort its network call (any thread)."""
        self.closed = True
        if self.space is not None:
            self.space.set()
        if not self.finished:
            self.stream.cancel_token.cancel()


class AsyncStream:
    """Async iterator of ``str`` tokens over a :class:`~provhub.Stream`.

    Same metadata as the sync stream (``provider``, ``request_id``, ``attempts``,
    ``finish_reason``, ``usage``); ``await aclose()`` or ``async with`` releases
    the upstream connection (dropping an unfinished stream does too, when it is
    garbage-collected). Cancelling the task that iterates it returns at once
    and stops the worker.
    """

    def __init__(self, stream: Stream, workers: Workers | None = None) -> None:
        self._stream = stream
        self._workers = workers
        self._channel = _Channel(stream)
        self._started = False

    def __del__(self) -> None:
        # Dropped unfinished: stop the worker. No cycle holds an AsyncStream (the
        # worker refers to the channel only), so this runs as soon as the caller
        # lets go; cheaper per stream than weakref.finalize.
        channel = getattr(self, "_channel", None)
        if channel is not None and not channel.finished:
            channel.stop()

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
        buffer = self._channel.buffer
        if buffer and buffer[0] is not _DONE:
            # The usual case in a burst: a token is waiting, no await needed.
            item = buffer.popleft()
            if self._channel.full and len(buffer) < _MAX_BUFFER // 2:
                self._channel.space.set()  # type: ignore[union-attr]
            return item  # type: ignore[no-any-return]
        return await self._next(True)  # type: ignore[no-any-return]

    def items(self) -> AsyncIterator[StreamItem]:
        """Every item in arrival order, as :meth:`Stream.items` yields them."""
        return _AsyncItems(self)

    def _start(self, text_only: bool) -> None:
        channel = self._channel
        channel.gen = self._stream._start(text_only)
        channel.loop = asyncio.get_running_loop()
        job = functools.partial(contextvars.copy_context().run, channel.work)
        self._started = True
        if self._workers is not None:
            self._workers.submit(job)
        else:
            threading.Thread(target=job, name=_BUSY_NAME, daemon=True).start()

    async def _next(self, text_only: bool) -> Any:
        channel = self._channel
        buffer = channel.buffer
        if not self._started:
            if channel.closed:
                raise StopAsyncIteration
            self._start(text_only)
        while not buffer:
            waiter = channel.waiter = channel.loop.create_future()  # type: ignore[union-attr]
            if buffer:  # the worker appended between the check and the waiter
                break
            try:
                await waiter
            except asyncio.CancelledError:
                # The worker is told to stop; give it a moment (not more) to finish
                # its cleanup, so the usual case (a socket just shut down) ends
                # with the stream's record complete. A stuck worker ends on its own.
                channel.stop()
                await self._settle(_CANCEL_WAIT)
                raise
        item = buffer[0]
        if item is _DONE:  # stays in place: the stream stays exhausted
            if channel.error is not None:
                error, channel.error = channel.error, None
                raise error
            raise StopAsyncIteration
        buffer.popleft()
        if channel.full and len(buffer) < _MAX_BUFFER // 2:
            channel.space.set()  # type: ignore[union-attr]
        return item

    async def aclose(self) -> None:
        """Stop the stream and close the upstream connection (idempotent).

        Waits at most 0.1 s for the worker to finish its cleanup; a worker stuck
        in a provider that ignores cancellation ends on its own later.
        """
        channel = self._channel
        if not self._started:
            channel.stop()
            self._started = True
            self._stream.close()  # never started: nothing runs, nothing to wait for
            channel.buffer.append(_DONE)
            channel.finished = True
            return
        if channel.finished:
            return
        channel.stop()
        await self._settle(_CLOSE_WAIT)

    async def _settle(self, seconds: float) -> None:
        """Wait at most ``seconds`` for the worker to finish."""
        channel = self._channel
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not channel.finished:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            waiter = channel.waiter = loop.create_future()
            if channel.finished:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

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


async def acomplete(stream: Stream, workers: Workers | None = None) -> Completion:
    """Collect a whole answer without blocking the event loop."""
    from provhub._stream import Completion

    astream = AsyncStream(stream, workers)
    try:
        async for _ in astream:
            pass
    finally:
        await astream.aclose()
    return Completion.of(stream._run)
