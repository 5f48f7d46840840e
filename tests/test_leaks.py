"""Nothing leaks: threads, sockets and file descriptors return to their baseline.

Hundreds of requests against faulty upstreams, mixed with streams abandoned half-read (``break``,
``del``, garbage collection) and asyncio tasks cancelled mid-stream, must leave the process as
they found it once the hub is closed and a short settle time has passed. Sockets are counted
from ``/proc/self/fd`` (Linux), where both ends of every loopback connection show up: the
client's and the fake upstream's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import requests

from provhub import AllProvidersFailedError, Hub, ProvhubError
from provhub.testing import Behaviour, FakeUpstream, Fault, unused_port_url
from provhub_providers.openai_compatible import OpenAICompatible

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc (Linux)"
)

MODEL = "gpt-4"
MESSAGES = [{"role": "user", "content": "leak check"}]
# retries=0: every fault goes straight to the next provider, so hundreds of faulty requests
# take seconds; the breaker threshold is out of reach so every request meets its fault.
ROUTER = {
    "retries": 0,
    "breaker_threshold": 1_000_000,
    "timeouts": {"connect": 1.0, "first_token": 0.2, "idle": 0.1, "total": 3.0},
}
SETTLE = 5.0  # seconds allowed for sockets and threads to wind down after hub.close()

# A slow enough stream that abandoning or cancelling it happens mid-body.
SLOW = Behaviour(chunks=40, chunk_delay=0.005)
FAULTS = (
    Behaviour(),
    Behaviour(fault=Fault.DROP_AFTER_HEADERS),
    Behaviour(fault=Fault.DROP_MID_STREAM),
    Behaviour(fault=Fault.DROP_MID_STREAM, fault_after=0),
    Behaviour(fault=Fault.MALFORMED_JSON),
    Behaviour(fault=Fault.INVALID_UTF8, fault_after=0),
    Behaviour(fault=Fault.ERROR_OBJECT),
    Behaviour(fault=Fault.MODEL_MISSING),
    Behaviour(fault=Fault.HANG_BETWEEN_CHUNKS, hang_seconds=1.0),
    Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=1.0),
    Behaviour(status=500),
    Behaviour(status=503, retry_after="0"),
    Behaviour(status=400),
    Behaviour(status=429, retry_after="0"),
    SLOW,
)


@dataclass(frozen=True)
class Resources:
    """What the process holds right now (``targets``: what each descriptor points to)."""

    threads: int
    os_threads: int
    sockets: int
    fds: int
    targets: dict[int, str] = field(default_factory=dict, compare=False, repr=False)

    def new_since(self, baseline: Resources) -> dict[int, str]:
        """Descriptors open now that were not open (or pointed elsewhere) at ``baseline``."""
        return {
            fd: target for fd, target in self.targets.items() if baseline.targets.get(fd) != target
        }

    def most(self, other: Resources) -> Resources:
        """The larger of each count."""
        return Resources(
            max(self.threads, other.threads),
            max(self.os_threads, other.os_threads),
            max(self.sockets, other.sockets),
            max(self.fds, other.fds),
        )

    def within(self, baseline: Resources) -> bool:
        return (
            self.threads <= baseline.threads
            and self.os_threads <= baseline.os_threads
            and self.sockets <= baseline.sockets
            and self.fds <= baseline.fds
        )


def resources() -> Resources:
    targets: dict[int, str] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed between listdir and readlink (e.g. the listdir fd itself)
            continue
    return Resources(
        threads=threading.active_count(),
        os_threads=len(os.listdir("/proc/self/task")),
        sockets=sum(t.startswith("socket:") for t in targets.values()),
        fds=len(targets),
        targets=targets,
    )


def ready(*upstreams: FakeUpstream) -> None:
    """Wait until each upstream's accept loop runs (its selector is an fd of its own).

    ``FakeUpstream.start()`` returns before the accept thread has opened its selector, so a
    baseline taken at once could miss that descriptor. One answered request proves it open.
    """
    with requests.Session() as session:
        for server in upstreams:
            assert session.get(server.url + "/v1/models", timeout=5).ok
    for server in upstreams:
        assert server.wait_for_open_connections(0)
        server.reset()


def settled(baseline: Resources, timeout: float = SETTLE) -> Resources:
    """Wait until resources are back within ``baseline`` (or the timeout); return them."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = resources()
        if now.within(baseline) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)  # polling /proc: there is no event to wait on


@pytest.fixture
def faulty_hub(
    upstream: FakeUpstream, second_upstream: FakeUpstream, make_hub: Callable[..., Hub]
) -> tuple[Hub, FakeUpstream]:
    """A hub whose first choice refuses connections, second is faulty, third is healthy."""
    second_upstream.default = Behaviour(tokens=("fine",))
    hub = make_hub(**ROUTER)
    hub.register(OpenAICompatible("dead", unused_port_url(), [MODEL]))
    hub.register(OpenAICompatible("faulty", upstream.base_url, [MODEL]))
    hub.register(OpenAICompatible("healthy", second_upstream.base_url, [MODEL]))
    return hub, upstream


def _drain(stream: Iterator[str]) -> None:
    try:
        for _ in stream:
            pass
    except ProvhubError:
        pass


def test_hundreds_of_faulty_requests_and_abandoned_streams_leak_nothing(
    faulty_hub: tuple[Hub, FakeUpstream], upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub, faulty = faulty_hub
    ready(upstream, second_upstream)
    baseline = resources()
    peak = baseline
    faults = itertools.cycle(FAULTS)
    for index in range(300):
        faulty.default = next(faults)
        kind = index % 4
        if kind == 0:
            with hub.stream(MODEL, MESSAGES) as stream:
                _drain(stream)
        elif kind == 1:
            with contextlib.suppress(ProvhubError):
                hub.complete(MODEL, MESSAGES)
        elif kind == 2:
            # Abandoned without close(): break out, drop the last reference, collect.
            stream = hub.stream(MODEL, MESSAGES)
            try:
                for _ in stream:
                    break
            except ProvhubError:
                pass
            del stream
            gc.collect()
        else:
            # An iterator dropped after one token, never closed, left to the collector.
            with contextlib.suppress(ProvhubError, StopIteration):
                next(iter(hub.stream(MODEL, MESSAGES)))
        if index % 25 == 0:
            peak = peak.most(resources())
    # While the hub is open, pooled connections stay bounded: no growth per request.
    assert peak.sockets <= baseline.sockets + 16, (baseline, peak)
    assert peak.threads <= baseline.threads + 8, (baseline, peak)

    hub.close()
    # A Stream and its generator reference each other, so a stream dropped without
    # close() is released by the cyclic collector, not at once (docs/reliability.md).
    gc.collect()
    assert upstream.wait_for_open_connections(0)
    assert second_upstream.wait_for_open_connections(0)
    after = settled(baseline)
    assert after.within(baseline), f"{baseline=} {after=} new: {after.new_since(baseline)}"


def test_cancelled_and_abandoned_async_streams_leak_nothing(
    faulty_hub: tuple[Hub, FakeUpstream], upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub, faulty = faulty_hub
    ready(upstream, second_upstream)
    baseline = resources()

    async def consume(first: asyncio.Event) -> None:
        async for _ in hub.astream(MODEL, MESSAGES):
            first.set()

    async def run() -> None:
        faults = itertools.cycle(FAULTS)
        for index in range(150):
            faulty.default = next(faults)
            kind = index % 3
            if kind == 0:
                # Cancelled mid-stream by its owner.
                faulty.default = SLOW
                first = asyncio.Event()
                task = asyncio.create_task(consume(first))
                await asyncio.wait_for(first.wait(), 5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            elif kind == 1:
                # Abandoned: break out without aclose(); its worker thread must still end.
                try:
                    async for _ in hub.astream(MODEL, MESSAGES):
                        break
                except ProvhubError:
                    pass
            else:
                with contextlib.suppress(ProvhubError):
                    await hub.acomplete(MODEL, MESSAGES)

    asyncio.run(run())
    hub.close()
    assert upstream.wait_for_open_connections(0)
    assert second_upstream.wait_for_open_connections(0)
    after = settled(baseline)
    assert after.within(baseline), f"{baseline=} {after=} new: {after.new_since(baseline)}"
    # Busy, idle or spawning: no pooled worker thread outlives its work. This hub's
    # ended at close(); an idle one of a hub another test left open ends within 2 s.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(
        t.name.startswith("provhub-astream") for t in threading.enumerate()
    ):
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith("provhub-astream")]


def test_closing_the_hub_releases_every_pooled_connection(
    upstream: FakeUpstream, make_hub: Callable[..., Hub]
) -> None:
    hub = make_hub(**ROUTER)
    hub.register(OpenAICompatible("one", upstream.base_url, [MODEL]))
    ready(upstream)
    baseline = resources()
    for _ in range(50):
        assert hub.complete(MODEL, MESSAGES).text == Behaviour().text()
    # Sequential requests reuse one pooled connection: two sockets (client and server end).
    assert upstream.connections_accepted == 1
    assert resources().sockets == baseline.sockets + 2
    hub.close()
    assert upstream.wait_for_open_connections(0)
    assert settled(baseline).sockets == baseline.sockets


def test_closing_the_hub_closes_idle_connections_even_while_an_error_holds_its_response(
    upstream: FakeUpstream, make_hub: Callable[..., Hub]
) -> None:
    upstream.default = Behaviour(status=429, retry_after="0")
    hub = make_hub(**ROUTER)
    hub.register(OpenAICompatible("one", upstream.base_url, [MODEL]))
    with pytest.raises(AllProvidersFailedError) as caught:
        hub.complete(MODEL, MESSAGES)
    # A host keeping the error keeps its requests.Response (a requests.HTTPError's
    # .response), which references the connection pool.
    held = caught.value.__cause__
    assert isinstance(held, requests.HTTPError)
    assert held.response is not None
    assert held.response.status_code == 429
    hub.close()
    assert upstream.wait_for_open_connections(0)
