"""asyncio front end (SPEC §4): ``hub.astream`` / ``hub.acomplete`` against a real upstream.

The promises checked here: the same tokens as the sync stream, an event loop that keeps
ticking while a slow upstream streams, cancellation that reaches the upstream socket at once
and leaves no worker thread behind, and typed errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from provhub import (
    AllProvidersFailedError,
    AsyncStream,
    Completion,
    Hub,
    InvalidRequestError,
    ModelNotFoundError,
    StreamInterruptedError,
    Timeouts,
    Usage,
)
from provhub.testing import Behaviour, FakeUpstream, Fault
from provhub_providers import OpenAICompatible

MESSAGES = [{"role": "user", "content": "Say hello"}]
HELLO = Behaviour(tokens=("Hel", "lo", " there"))
MakeHub = Callable[..., Hub]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


def hub_for(make_hub: MakeHub, *upstreams: FakeUpstream, **router: Any) -> Hub:
    hub = make_hub(**router)
    for name, upstream in zip("ab", upstreams, strict=False):
        hub.register(OpenAICompatible(name, upstream.base_url, ["gpt-4"]))
    return hub


def astream_threads() -> list[threading.Thread]:
    """Worker threads still busy with an async stream (given 2 s to finish).

    Workers are pooled: one that finished its stream is renamed
    ``provhub-astream-idle`` and waits for the next one (``hub.close()`` ends it).
    """
    deadline = time.monotonic() + 2.0
    while True:
        busy = [t for t in threading.enumerate() if t.name == "provhub-astream"]
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.01)


class LagMeter:
    """A ticker task: how late does the loop run a callback scheduled every few ms?"""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.worst = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            self.worst = max(self.worst, loop.time() - before - self.interval)
            self.ticks += 1

    async def __aenter__(self) -> LagMeter:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def test_astream_yields_the_same_tokens_as_the_sync_stream(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_for(make_hub, upstream)
    upstream.default = Behaviour(chunks=200)
    sync_tokens = list(hub.stream("gpt-4", MESSAGES))

    async def main() -> tuple[list[str], AsyncStream]:
        stream = hub.astream("gpt-4", MESSAGES)
        return [token async for token in stream], stream

    tokens, stream = run(main())
    assert tokens == sync_tokens
    assert len(tokens) == 200
    assert stream.provider == "a"
    assert stream.finish_reason == "stop"
    assert stream.usage == Usage(2, 200, 202)
    assert stream.text == "".join(tokens)
    assert [a.ok for a in stream.attempts] == [True]
    assert len(stream.request_id) >= 8
    assert astream_threads() == []


def test_astream_retries_and_falls_back_like_the_sync_stream(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_for(make_hub, upstream, second_upstream)
    upstream.script(Behaviour(status=500), Behaviour(status=401))
    second_upstream.script(HELLO)

    async def main() -> tuple[list[str], AsyncStream]:
        stream = hub.astream("gpt-4", MESSAGES)
        return [token async for token in stream], stream

    tokens, stream = run(main())
    assert tokens == ["Hel", "lo", " there"]
    assert stream.provider == "b"
    assert [(a.provider, a.status) for a in stream.attempts] == [
        ("a", 500),
        ("a", 401),
        ("b", None),
    ]


def test_the_event_loop_is_never_blocked_while_streaming(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_for(make_hub, upstream)
    # A slow start (0.2 s before headers) and slow chunks: everything a blocking client
    # would stall the loop on.
    upstream.default = Behaviour(
        chunks=20, chunk_delay=0.02, fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=0.2
    )

    async def main() -> tuple[list[str], LagMeter]:
        async with LagMeter() as meter:
            tokens = [token async for token in hub.astream("gpt-4", MESSAGES)]
            result = await hub.acomplete("gpt-4", MESSAGES)
        assert result.text == "".join(tokens)
        return tokens, meter

    started = time.monotonic()
    tokens, meter = run(main())
    elapsed = time.monotonic() - started
    assert len(tokens) == 20
    assert elapsed > 0.6  # it really was slow ...
    assert meter.ticks > 50  # ... and the loop ran all along
    assert meter.worst < 0.05


def test_many_concurrent_astreams_in_one_loop(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = hub_for(make_hub, upstream)
    upstream.default = Behaviour(chunks=30, chunk_delay=0.005)

    async def one() -> str:
        return "".join([token async for token in hub.astream("gpt-4", MESSAGES)])

    async def main() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(20)))

    assert run(main()) == [Behaviour(chunks=30).text()] * 20
    assert astream_threads() == []


def test_cancelling_the_consumer_closes_the_upstream_connection_promptly(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_for(make_hub, upstream, timeouts={"first_token": 10, "idle": 10, "total": 30})
    upstream.default = Behaviour(chunks=5, fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=1)

    async def main() -> tuple[float, list[str]]:
        stream = hub.astream("gpt-4", MESSAGES)
        received: list[str] = []
        first = asyncio.Event()

        async def consume() -> None:
            async for token in stream:
                received.append(token)
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 5)
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - cancelled_at, received

    took, received = run(main())
    assert received == ["w0 "]
    assert took < 1.0
    assert upstream.wait_for_disconnects(1, timeout=2.0)
    assert astream_threads() == []
    assert hub.health()["a"]["in_flight"] == 0


def test_cancelling_before_the_first_token_closes_the_upstream_connection_promptly(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    # first_token 2 s bounds what the known gap costs (aclose waits for the worker).
    hub = hub_for(make_hub, upstream, timeouts={"first_token": 2, "idle": 10, "total": 30})
    upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=30)

    async def main() -> float:
        stream = hub.astream("gpt-4", MESSAGES)

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.create_task(consume())
        # Wait until the request is on the wire and the upstream is hanging.
        for _ in range(500):
            if upstream.requests:
                break
            await asyncio.sleep(0.01)
        assert upstream.requests
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - cancelled_at

    took = run(main())
    assert took < 1.0
    assert upstream.wait_for_disconnects(1, timeout=2.0)
    assert astream_threads() == []


def test_async_with_exits_early_and_closes_the_upstream(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_for(make_hub, upstream)
    upstream.default = Behaviour(chunks=5, fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=2)

    async def main() -> str:
        async with hub.astream("gpt-4", MESSAGES) as stream:
            async for token in stream:
                return token
        raise AssertionError("no token")

    assert run(main()) == "w0 "
    assert upstream.wait_for_disconnects(1, timeout=2.0)
    assert astream_threads() == []


def test_abandoning_an_async_stream_without_aclose_ends_its_worker(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_for(make_hub, upstream)
    upstream.default = Behaviour(chunks=6000)

    async def main() -> None:
        async for _ in hub.astream("gpt-4", MESSAGES):
            break  # no aclose(), no async with: the stream is dropped here

    run(main())
    gc.collect()
    deadline = time.monotonic() + 3.0
    while astream_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert astream_threads() == []
    # The answer fits in kernel buffers, so the server may have finished writing;
    # the client side closing its unread connection is what must happen.
    assert upstream.wait_for_open_connections(0, timeout=2.0)


def test_a_closed_event_loop_ends_the_worker_of_a_stream_still_referenced(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_for(make_hub, upstream)
    upstream.default = Behaviour(chunks=6000)
    kept: list[AsyncStream] = []

    async def main() -> None:
        stream = hub.astream("gpt-4", MESSAGES)
        kept.append(stream)
        async for _ in stream:
            break

    run(main())
    deadline = time.monotonic() + 3.0
    while astream_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert astream_threads() == []
    # The answer fits in kernel buffers, so the server may have finished writing;
    # the client side closing its unread connection is what must happen.
    assert upstream.wait_for_open_connections(0, timeout=2.0)


def test_aclose_before_iterating_is_harmless(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = hub_for(make_hub, upstream)

    async def main() -> None:
        stream = hub.astream("gpt-4", MESSAGES)
        await stream.aclose()
        await stream.aclose()

    run(main())
    assert upstream.requests == []


def test_acomplete_returns_the_whole_result(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_for(make_hub, upstream, second_upstream)
    upstream.script(Behaviour(status=403))
    second_upstream.script(HELLO)
    result = run(hub.acomplete("gpt-4", MESSAGES, temperature=0.3))
    assert isinstance(result, Completion)
    assert result.text == "Hello there"
    assert result.provider == "b"
    assert result.model == "gpt-4"
    assert result.finish_reason == "stop"
    assert result.usage == Usage(2, 3, 5)
    assert [(a.provider, a.ok) for a in result.attempts] == [("a", False), ("b", True)]
    assert second_upstream.requests[0].json["temperature"] == 0.3
    assert second_upstream.requests[0].json["stream"] is False
    assert astream_threads() == []


def test_astream_raises_all_providers_failed(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = hub_for(make_hub, upstream)
    upstream.default = Behaviour(status=500)

    async def main() -> None:
        async for _ in hub.astream("gpt-4", MESSAGES):
            pass

    with pytest.raises(AllProvidersFailedError) as info:
        run(main())
    assert [a.status for a in info.value.attempts] == [500, 500, 500]
    assert astream_threads() == []


def test_astream_raises_stream_interrupted_with_the_delivered_text(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_for(make_hub, upstream, second_upstream)
    upstream.script(Behaviour(chunks=5, fault=Fault.DROP_MID_STREAM, fault_after=2))
    received: list[str] = []

    async def main() -> None:
        async for token in hub.astream("gpt-4", MESSAGES):
            received.append(token)

    with pytest.raises(StreamInterruptedError) as info:
        run(main())
    assert info.value.text == "w0 w1 " == "".join(received)
    assert info.value.provider == "a"
    assert second_upstream.requests == []


def test_acomplete_raises_typed_errors(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = hub_for(make_hub, upstream, retries=0)
    upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=10)
    with pytest.raises(AllProvidersFailedError) as info:
        run(hub.acomplete("gpt-4", MESSAGES, timeouts=Timeouts(first_token=0.3)))
    assert info.value.attempts[0].error_type == "UpstreamTimeoutError"


def test_bad_requests_raise_before_any_io(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = hub_for(make_hub, upstream)
    with pytest.raises(ModelNotFoundError):
        hub.astream("gpt-5", MESSAGES)
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]"):
        hub.astream("gpt-4", [{"role": "nobody", "content": "x"}])
    with pytest.raises(InvalidRequestError):
        run(hub.acomplete("gpt-4", []))
    assert upstream.requests == []
