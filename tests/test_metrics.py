"""``provhub._metrics``: request records derived from a real hub's events, for every sink."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from provhub import AllProvidersFailedError, Hub, StreamInterruptedError
from provhub._metrics import (
    LatencyWindow,
    MetricsSink,
    Outcome,
    RequestMetrics,
    RequestRecord,
)
from provhub.testing import Behaviour, FakeUpstream, Fault
from provhub_providers import OpenAICompatible

HI = [{"role": "user", "content": "hi"}]
MakeHub = Callable[..., Hub]


class Recorder:
    """A sink that keeps everything it is told (thread-safe like a real one)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.finished: list[RequestRecord] = []
        self.failures: list[tuple[str, str, str, int | None]] = []
        self.breakers: list[tuple[str, str]] = []

    def request_started(self, model: str) -> None:
        with self.lock:
            self.started.append(model)

    def request_finished(self, record: RequestRecord) -> None:
        with self.lock:
            self.finished.append(record)

    def attempt_failed(
        self, model: str, provider: str, error_type: str, status: int | None
    ) -> None:
        with self.lock:
            self.failures.append((model, provider, error_type, status))

    def breaker_changed(self, provider: str, state: str) -> None:
        with self.lock:
            self.breakers.append((provider, state))


def _hub(make_hub: MakeHub, *upstreams: FakeUpstream, **router: Any) -> Hub:
    hub = make_hub(**router)
    for name, upstream in zip("ab", upstreams, strict=False):
        hub.register(OpenAICompatible(name, upstream.base_url, ["gpt-4"]))
    return hub


def _metrics(hub: Hub) -> tuple[Recorder, RequestMetrics]:
    sink = Recorder()
    metrics = RequestMetrics(sink)
    metrics.attach(hub)
    return sink, metrics


def test_recorder_satisfies_the_sink_protocol() -> None:
    sink: MetricsSink = Recorder()
    window: MetricsSink = LatencyWindow()
    assert sink is not None
    assert window is not None


def test_a_successful_stream_is_one_ok_record_with_ttft_and_tokens(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = _hub(make_hub, upstream)
    sink, metrics = _metrics(hub)
    upstream.default = Behaviour(tokens=("a", "b", "c"))
    assert "".join(hub.stream("gpt-4", HI)) == "abc"
    (record,) = sink.finished
    assert sink.started == ["gpt-4"]
    assert record.outcome is Outcome.OK
    assert (record.model, record.provider, record.attempts) == ("gpt-4", "a", 1)
    assert record.ttft is not None
    assert 0 < record.ttft <= record.duration
    assert record.completion_tokens == 3
    assert record.prompt_tokens == 1
    assert metrics.in_flight == 0


def test_retries_and_fallback_count_failed_attempts_and_one_request(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = _hub(make_hub, upstream, second_upstream, retries=1)
    sink, _ = _metrics(hub)
    upstream.script(Behaviour(status=503), Behaviour(status=503))
    assert hub.complete("gpt-4", HI).provider == "b"
    assert [(f[1], f[3]) for f in sink.failures] == [("a", 503), ("a", 503)]
    (record,) = sink.finished
    assert (record.outcome, record.provider, record.attempts) == (Outcome.OK, "b", 3)


def test_every_provider_failing_is_one_failed_record(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = _hub(make_hub, upstream, retries=0)
    sink, metrics = _metrics(hub)
    upstream.default = Behaviour(status=500)
    with pytest.raises(AllProvidersFailedError):
        hub.complete("gpt-4", HI)
    (record,) = sink.finished
    assert record.outcome is Outcome.FAILED
    assert record.ttft is None
    assert metrics.in_flight == 0


def test_interruption_is_counted_once_though_an_attempt_event_follows_it(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = _hub(make_hub, upstream)
    sink, metrics = _metrics(hub)
    upstream.script(Behaviour(chunks=5, fault=Fault.DROP_MID_STREAM, fault_after=2))
    with pytest.raises(StreamInterruptedError):
        list(hub.stream("gpt-4", HI))
    (record,) = sink.finished
    assert record.outcome is Outcome.INTERRUPTED
    assert record.error_type == "UpstreamConnectionError"
    # attempt.failed arrives after stream.interrupted: still a failed attempt, no new request.
    assert len(sink.failures) == 1
    assert sink.started == ["gpt-4"]
    assert metrics.in_flight == 0


def test_closing_a_stream_early_is_a_cancelled_record(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = _hub(make_hub, upstream)
    sink, metrics = _metrics(hub)
    upstream.default = Behaviour(chunks=50, chunk_delay=0.01)
    with hub.stream("gpt-4", HI) as stream:
        next(iter(stream))
    (record,) = sink.finished
    assert record.outcome is Outcome.CANCELLED
    assert metrics.in_flight == 0


def test_cancelling_an_async_stream_is_a_cancelled_record(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = _hub(make_hub, upstream)
    sink, metrics = _metrics(hub)
    upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=10)

    async def main() -> None:
        async def consume() -> None:
            async for _ in hub.astream("gpt-4", HI):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (record,) = sink.finished
    assert record.outcome is Outcome.CANCELLED
    assert record.ttft is None
    assert metrics.in_flight == 0


def test_breaker_transitions_reach_the_sinks(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = _hub(make_hub, upstream, retries=0, breaker_threshold=2, breaker_cooldown=0.1)
    sink, _ = _metrics(hub)
    upstream.default = Behaviour(status=500)
    for _ in range(2):
        with pytest.raises(AllProvidersFailedError):
            hub.complete("gpt-4", HI)
    assert sink.breakers == [("a", "open")]
    upstream.default = Behaviour()
    import time

    time.sleep(0.15)
    hub.complete("gpt-4", HI)
    assert sink.breakers == [("a", "open"), ("a", "half_open"), ("a", "closed")]


def test_requests_without_a_closing_event_are_abandoned_after_stale_after() -> None:
    now = [100.0]
    sink = Recorder()
    metrics = RequestMetrics(sink, stale_after=10.0, clock=lambda: now[0])
    metrics({"event": "route.planned", "request_id": "r1", "model": "m"})
    assert metrics.in_flight == 1
    now[0] = 111.0
    metrics({"event": "route.planned", "request_id": "r2", "model": "m"})
    assert [r.outcome for r in sink.finished] == [Outcome.ABANDONED]
    assert sink.finished[0].request_id == "r1"
    assert metrics.in_flight == 1


def test_events_without_route_planned_still_make_a_record() -> None:
    # A host whose hub does not hand DEBUG events to subscribers, or one that subscribed
    # mid-request: the closing event alone yields a record.
    sink = Recorder()
    metrics = RequestMetrics(sink)
    metrics({"event": "stream.completed", "request_id": "r", "model": "m", "provider": "p"})
    (record,) = sink.finished
    assert (record.outcome, record.provider) == (Outcome.OK, "p")
    assert sink.started == ["m"]


def test_unrelated_and_malformed_events_are_ignored() -> None:
    sink = Recorder()
    metrics = RequestMetrics(sink)
    for event in (
        {"event": "plugin.loaded"},
        {"event": "stream.completed"},  # no request id
        {"event": 42},
        {},
        {"event": "circuit.opened", "provider": None},
    ):
        metrics(event)
    assert sink.finished == sink.failures == sink.breakers == []


def test_latency_window_reports_recent_quantiles_per_provider() -> None:
    window = LatencyWindow(size=100)
    for index in range(200):
        window.request_finished(
            RequestRecord(str(index), "m", "p", Outcome.OK, index / 1000, index / 2000, 1)
        )
    window.request_finished(RequestRecord("x", "m", "p", Outcome.FAILED, 99.0, None, 1))
    window.attempt_failed("m", "q", "UpstreamHTTPError", 500)
    summary = window.summary()
    assert summary["p"]["samples"] == 100  # only the last 100
    assert summary["p"]["p50_ms"] == pytest.approx(150, abs=1)
    assert summary["p"]["p95_ms"] == pytest.approx(195, abs=1)
    assert summary["p"]["ttft_p50_ms"] == pytest.approx(75, abs=1)
    assert summary["q"] == {
        "samples": 0,
        "p50_ms": None,
        "p95_ms": None,
        "ttft_p50_ms": None,
        "errors": 1,
    }


def test_concurrent_requests_are_all_counted(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = _hub(make_hub, upstream)
    sink, metrics = _metrics(hub)
    threads = [
        threading.Thread(target=lambda: [hub.complete("gpt-4", HI) for _ in range(10)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(sink.finished) == 80
    assert len({r.request_id for r in sink.finished}) == 80
    assert metrics.in_flight == 0
