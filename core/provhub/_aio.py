"""asyncio front end: ``Hub.astream`` / ``Hub.acomplete`` (SPEC §4).

Providers are synchronous generators. A stream whose every candidate declares
``asyncio_native`` (the built-in OpenAI-compatible providers) is driven on the
event loop itself: where it would block it yields a
:class:`~provhub._suspend.Suspend`, which the stream awaits (the socket becoming
readable, a worker resolving a host name, a backoff). Tokens then cost no
thread hand-off, and a thousand streams cost no thousand threads. The streams
charge the loop time they use to a per-loop :class:`~provhub._pacer.Pacer`,
which hands the other coroutines a turn after every 2 ms of it.

Any other stream runs its :class:`~provhub.Stream` on a worker thread (with the
caller's contextvars, so host-bound structlog context appears on events).
Three rules keep the event loop free:

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
import inspect
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from provhub._gate import Gate, pause, resume, worker
from provhub._pacer import TURN, Pacer, pacer_for
from provhub._suspend import Offload, Readable, Sleep, Suspend

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
    garbage-collected, and so does the end of the ``asyncio.run()`` that started
    it). Cancelling the task that iterates it returns at once and stops the
    request. It runs on the event loop itself when every candidate provider is
    ``asyncio_native`` and the hub's state is in memory, else on a worker thread.
    """

    def __init__(self, stream: Stream, workers: Workers | None = None) -> None:
        self._stream = stream
        self._workers = workers
        self._channel = _Channel(stream)
        self._started = False
        # Driven on the loop (see the module docstring): the run's generator, the
        # socket wait in progress, and when the loop last had a turn.
        self._gen: Generator[Any, None, None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: tuple[int, bool, asyncio.TimerHandle, asyncio.Future[bool]] | None = None
        self._mark = 0.0  # when the loop time this stream used was last charged
        self._resumed = 0.0  # when it last woke up
        self._count = 0
        self._pacer: Pacer | None = None
        self._guard: AsyncGenerator[None, None] | None = None

    def __del__(self) -> None:
        # Dropped unfinished: stop the worker. No cycle holds an AsyncStream (the
        # worker refers to the channel only), so this runs as soon as the caller
        # lets go; cheaper per stream than weakref.finalize.
        if getattr(self, "_gen", None) is not None:
            self._unguard()  # a loop-driven run's generator closes itself when dropped
            return
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
        gen = self._gen
        if gen is not None:
            # Driven on the loop: the usual case is a token ready at once.
            item = self._advance(gen)
            if item.__class__ is str:
                count = self._count = self._count + 1
                if not count & 31:
                    await self._share()
                return item
            return await self._native(item)  # type: ignore[no-any-return]
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
        loop = asyncio.get_running_loop()
        run = self._stream._run
        if run.can_suspend() and _watches_sockets(loop):
            run.suspend = True
            self._gen = self._stream._start(text_only)
            self._loop = loop
            self._pacer = pacer_for(loop)
            self._mark = self._resumed = time.perf_counter()
            # A stream still referenced when asyncio.run() ends its loop is closed
            # then: the loop closes the async generators it saw start.
            guard = self._guard = _closed_with_loop(weakref.ref(self))
            with contextlib.suppress(StopIteration):
                guard.asend(None).send(None)
            self._started = True
            return
        channel.gen = self._stream._start(text_only)
        channel.loop = loop
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
        gen = self._gen
        if gen is not None:
            return await self._native(None)
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

    # -- driven on the loop --------------------------------------------------

    async def _native(self, item: Any) -> Any:
        """Wait out the run's suspensions until it yields an item (or ends).

        ``item`` None: nothing to wait for, resume the run now (its next step).
        """
        gen = self._gen
        assert gen is not None
        pacer = self._pacer
        assert pacer is not None
        while item is None or isinstance(item, Suspend):
            # Everything since the stream last charged (its consumer's work too)
            # counts against this iteration of the loop.
            now = time.perf_counter()
            pacer.charge(now - self._mark, None if item is None else now - self._resumed)
            try:
                if item is None:
                    pass
                elif type(item) is Readable:
                    await self._readable(item)  # woken in its turn (see Pacer.wake)
                elif type(item) is Offload:
                    await self._offload(item)
                elif type(item) is Sleep:
                    await asyncio.sleep(item.seconds)
                await pacer.turn(first=type(item) is Readable)
            except asyncio.CancelledError:
                self._abort()
                raise
            if self._gen is not gen:
                raise StopAsyncIteration  # closed by aclose() meanwhile
            self._mark = self._resumed = time.perf_counter()
            item = self._advance(gen)
        return item

    def _advance(self, gen: Generator[Any, None, None]) -> Any:
        """The run's next item or suspension; at its end (or error) the loop guard goes."""
        try:
            return next(gen)
        except StopIteration:
            self._unguard()
            raise StopAsyncIteration from None
        except BaseException:
            self._unguard()
            raise

    async def _share(self) -> None:
        """Charge the loop time since the last charge; wait for a turn if it ran out."""
        pacer = self._pacer
        assert pacer is not None
        now = time.perf_counter()
        pacer.charge(now - self._mark)
        self._mark = now
        if pacer.spent > TURN:
            try:
                await pacer.turn()
            except asyncio.CancelledError:
                self._abort()
                raise
            self._mark = time.perf_counter()

    async def _readable(self, wait: Readable) -> None:
        loop = self._loop
        assert loop is not None
        fd = wait.fd
        if fd < 0:
            wait.timed_out = False  # closed meanwhile: the next read reports it
            return
        ready: asyncio.Future[bool] = loop.create_future()
        write = wait.write
        pacer = self._pacer
        if write:
            loop.add_writer(fd, _ready, loop, fd, True, ready, pacer)
        else:
            loop.add_reader(fd, _ready, loop, fd, False, ready, pacer)
        timer = loop.call_later(max(wait.seconds, 0.0), _resolve, ready, True)
        self._watch = (fd, write, timer, ready)
        try:
            wait.timed_out = await ready
        finally:
            self._unwatch()

    def _unwatch(self) -> None:
        """Stop watching the socket (before it closes: its number may be reused)."""
        watch, self._watch = self._watch, None
        if watch is None:
            return
        fd, write, timer, ready = watch
        timer.cancel()
        if ready.done() and not ready.cancelled() and ready.result() is False:
            return  # woken by the socket: _ready stopped watching it
        loop = self._loop
        assert loop is not None
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
        if not ready.done():
            ready.set_result(False)

    async def _offload(self, job: Offload[Any]) -> None:
        loop = self._loop
        assert loop is not None
        done: asyncio.Future[bool] = loop.create_future()

        def run() -> None:
            job.run()
            try:
                loop.call_soon_threadsafe(_resolve, done, False)
            except RuntimeError:  # the loop closed: nobody will take the result
                job.abandon()

        task = functools.partial(contextvars.copy_context().run, run)
        if self._workers is not None:
            self._workers.submit(task)
        else:
            threading.Thread(target=task, name=_BUSY_NAME, daemon=True).start()
        timer = None if job.seconds is None else loop.call_later(job.seconds, _resolve, done, True)
        try:
            job.timed_out = await done
        finally:
            if timer is not None:
                timer.cancel()

    def _abort(self) -> None:
        """End a loop-driven run now: abort its network call and close its generator."""
        gen = self._gen
        if gen is None:
            return
        self._gen = _exhausted()
        self._unguard()
        self._unwatch()
        if inspect.getgeneratorstate(gen) != inspect.GEN_CLOSED:
            self._stream.cancel_token.cancel()  # wakes a worker sending the request
            with contextlib.suppress(ValueError):  # closed from inside its own step
                gen.close()

    def _unguard(self) -> None:
        """The stream ended: its loop no longer needs to close it."""
        guard, self._guard = self._guard, None
        if guard is not None:
            with contextlib.suppress(StopIteration, StopAsyncIteration):
                guard.aclose().send(None)

    async def aclose(self) -> None:
        """Stop the stream and close the upstream connection (idempotent).

        Waits at most 0.1 s for the worker to finish its cleanup; a worker stuck
        in a provider that ignores cancellation ends on its own later.
        """
        if self._gen is not None:
            self._abort()
            return
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


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _ready(
    loop: asyncio.AbstractEventLoop,
    fd: int,
    write: bool,
    future: asyncio.Future[bool],
    pacer: Pacer | None,
) -> None:
    """The socket is ready: stop watching it at once (epoll would report it again
    on every iteration until the stream resumes), and wake the stream in its turn."""
    if write:
        loop.remove_writer(fd)
    else:
        loop.remove_reader(fd)
    if pacer is not None:
        pacer.wake(future, False)


async def _closed_with_loop(stream: weakref.ref[AsyncStream]) -> AsyncGenerator[None, None]:
    """Started like any async generator, so the loop's shutdown closes it (and the stream)."""
    try:
        yield
    finally:
        alive = stream()
        if alive is not None and alive._guard is not None:
            alive._guard = None
            alive._abort()


def _exhausted() -> Generator[Any, None, None]:
    """What a closed loop-driven stream iterates: nothing."""
    return
    yield


def _watches_sockets(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` can wait on a socket (``add_reader``; not Windows' proactor)."""
    proactor = getattr(asyncio, "ProactorEventLoop", None)
    return proactor is None or not isinstance(loop, proactor)


class _AsyncItems:
    """``AsyncStream.items()``: the same stream, read item by item."""

    __slots__ = ("_astream",)

    def __init__(self, astream: AsyncStream) -> None:
        self._astream = astream

    def __aiter__(self) -> _AsyncItems:
        return self

    def __anext__(self) -> Awaitable[StreamItem]:
        astream = self._astream
        if astream._started:
            # Once started, the run yields whatever its mode is: the stream's own
            # fast path serves items as well as text (no extra frame per item).
            return astream.__anext__()
        return astream._next(False)


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
