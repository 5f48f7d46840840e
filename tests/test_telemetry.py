"""OpenTelemetry bridge (SPEC §16): span trees, attributes, context, redaction, lifecycle.

Every request runs against real loopback upstreams (``FakeUpstream``); the spans
are read from the OpenTelemetry SDK's in-memory exporter behind a
``SimpleSpanProcessor``, so a span is exported the moment it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

import provhub.telemetry
from provhub import AllProvidersFailedError, Config, Hub, StreamInterruptedError
from provhub.telemetry._spans import SpanBridge
from provhub.testing import Behaviour, FakeUpstream, Fault, unused_port_url
from provhub_providers import OpenAICompatible

MakeHub = Callable[..., Hub]
MESSAGES = [{"role": "user", "content": "Say hello"}]
HELLO = Behaviour(tokens=("Hel", "lo", " there"))


class Traces:
    """Tracer and meter providers exporting to memory; spans by role, metric points."""

    def __init__(self, sampler: Any = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])

    def metrics(self) -> dict[str, Any]:
        """Metric name -> the metric (its ``data.data_points``), as collected now."""
        found: dict[str, Any] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of one metric; empty when nothing was recorded."""
        metric = self.metrics().get(name)
        if metric is None:
            return []
        return [(dict(p.attributes), p) for p in metric.data.data_points]

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def requests(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith("chat ")]

    def request(self) -> ReadableSpan:
        (span,) = self.requests()
        return span

    def attempts_of(self, request: ReadableSpan) -> list[ReadableSpan]:
        found = [
            s
            for s in self.spans()
            if s.parent is not None and s.parent.span_id == request.context.span_id
        ]
        return sorted(found, key=lambda s: s.attributes["provhub.attempt"])


@pytest.fixture
def traces() -> Iterator[Traces]:
    found = Traces()
    yield found
    found.provider.shutdown()
    found.meters.shutdown()


def endpoint(name: str, where: FakeUpstream | str, **kw: Any) -> OpenAICompatible:
    url = where if isinstance(where, str) else where.base_url
    return OpenAICompatible(name, url, ["gpt-4"], **kw)


def instrumented(hub: Hub, traces: Traces) -> provhub.telemetry.Instrumentation:
    return provhub.telemetry.instrument(
        hub, tracer_provider=traces.provider, meter_provider=traces.meters
    )


# -- the span tree ------------------------------------------------------------------------


def test_retry_then_fallback_gives_one_request_span_with_a_child_per_attempt(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = make_hub(retries=1)
    hub.register(endpoint("a", upstream))
    hub.register(endpoint("b", second_upstream))
    upstream.script(Behaviour(status=503), Behaviour(status=500))
    second_upstream.script(HELLO)
    instrumented(hub, traces)

    stream = hub.stream("gpt-4", MESSAGES)
    assert "".join(stream) == "Hello there"

    request = traces.request()
    assert request.name == "chat gpt-4"
    assert request.kind is SpanKind.CLIENT
    assert request.parent is None
    assert request.status.status_code is StatusCode.UNSET
    attrs = request.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "gpt-4"
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.provider.name"] == "b"
    assert attrs["gen_ai.response.model"] == "gpt-4"
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == 2  # the fake counts prompt words
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["gen_ai.response.time_to_first_chunk"] > 0
    assert attrs["provhub.request_id"] == stream.request_id
    assert attrs["provhub.outcome"] == "ok"
    assert attrs["provhub.attempts"] == 3
    assert "error.type" not in attrs
    assert [e.name for e in request.events] == ["route.fallback"]
    assert dict(request.events[0].attributes or {}) == {
        "provhub.from_provider": "a",
        "provhub.to_provider": "b",
    }

    attempts = traces.attempts_of(request)
    assert [(s.name, s.attributes["provhub.attempt"]) for s in attempts] == [
        ("attempt a", 1),
        ("attempt a", 2),
        ("attempt b", 3),
    ]
    assert all(s.kind is SpanKind.INTERNAL for s in attempts)
    assert all(s.context.trace_id == request.context.trace_id for s in attempts)
    first, second, third = attempts
    for span, status in ((first, 503), (second, 500)):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == f"UpstreamHTTPError (HTTP {status})"
        assert span.attributes["error.type"] == "UpstreamHTTPError"
        assert span.attributes["http.response.status_code"] == status
        assert span.attributes["provhub.retryable"] is True
        assert span.attributes["gen_ai.provider.name"] == "a"
    assert first.attributes["provhub.backoff_ms"] >= 0  # a retry on a followed
    assert "provhub.backoff_ms" not in second.attributes  # a fallback followed
    assert third.status.status_code is StatusCode.UNSET
    assert "error.type" not in third.attributes
    assert dict(third.attributes) == {
        "gen_ai.provider.name": "b",
        "provhub.attempt": 3,
        "gen_ai.request.model": "gpt-4",
    }
    # Usage only once per request: summing spans does not double-count tokens.
    assert not any("gen_ai.usage.input_tokens" in s.attributes for s in attempts)
    assert "provhub.provider" not in attrs  # only where the conventions' name differs
    # The attempts lie inside the request, one after the other.
    assert request.start_time <= first.start_time < first.end_time <= second.start_time
    assert third.end_time <= request.end_time


def test_exhausted_request_span_is_an_error_with_the_callers_error_type(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub(retries=0)
    hub.register(endpoint("a", upstream))
    hub.register(endpoint("dead", unused_port_url()))
    upstream.script(Behaviour(status=429))
    instrumented(hub, traces)

    with pytest.raises(AllProvidersFailedError):
        hub.complete("gpt-4", MESSAGES)

    request = traces.request()
    assert request.status.status_code is StatusCode.ERROR
    assert request.status.description == "AllProvidersFailedError: 2 attempt(s) failed"
    assert request.attributes["error.type"] == "AllProvidersFailedError"
    assert request.attributes["provhub.outcome"] == "failed"
    assert request.attributes["gen_ai.provider.name"] == "dead"  # the last one tried
    assert request.attributes["gen_ai.request.stream"] is False
    assert "gen_ai.response.time_to_first_chunk" not in request.attributes
    a, dead = traces.attempts_of(request)
    assert a.attributes["error.type"] == "UpstreamHTTPError"
    assert a.attributes["http.response.status_code"] == 429
    assert a.attributes["provhub.failure_kind"] == "rate_limited"
    assert dead.attributes["error.type"] == "UpstreamConnectionError"
    assert "http.response.status_code" not in dead.attributes
    assert dead.status.status_code is StatusCode.ERROR


def test_non_streamed_complete_records_no_time_to_first_chunk(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.script(HELLO)
    instrumented(hub, traces)

    assert hub.complete("gpt-4", MESSAGES).text == "Hello there"

    request = traces.request()
    assert request.attributes["gen_ai.request.stream"] is False
    assert "gen_ai.response.time_to_first_chunk" not in request.attributes
    (attempt,) = traces.attempts_of(request)
    assert "gen_ai.response.time_to_first_chunk" not in attempt.attributes
    assert request.attributes["gen_ai.usage.output_tokens"] == 3


def test_interrupted_stream_ends_both_spans_as_errors(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    hub.register(endpoint("b", second_upstream))
    upstream.script(
        Behaviour(tokens=("one ", "two ", "three"), fault=Fault.DROP_MID_STREAM, fault_after=2)
    )
    instrumented(hub, traces)

    stream = hub.stream("gpt-4", MESSAGES)
    with pytest.raises(StreamInterruptedError):
        for _ in stream:
            pass

    request = traces.request()
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes["error.type"] == "StreamInterruptedError"
    assert request.attributes["provhub.outcome"] == "interrupted"
    assert request.status.description.startswith("StreamInterruptedError: Upstream")
    (attempt,) = traces.attempts_of(request)  # no fallback after tokens
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.attributes["error.type"].startswith("Upstream")
    assert attempt.attributes["provhub.chunks"] == 2
    assert second_upstream.requests == []


def test_alias_resolution_shows_as_the_response_model(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(OpenAICompatible("a", upstream.base_url, ["gpt-4"], aliases={"smart": "gpt-4"}))
    upstream.script(HELLO)
    instrumented(hub, traces)

    hub.complete("smart", MESSAGES)

    request = traces.request()
    assert request.name == "chat smart"
    assert request.attributes["gen_ai.request.model"] == "smart"
    assert request.attributes["gen_ai.response.model"] == "gpt-4"


def test_a_group_falling_back_across_models_names_each_attempts_model(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = Hub(
        Config.from_mapping(
            {
                "router": {"retries": 0},
                "groups": {"smart": {"members": ["a/big-model", "b/small-model"]}},
            }
        ),
        load_plugins=False,
    )
    hub.register(OpenAICompatible("a", upstream.base_url, ["big-model"]))
    hub.register(OpenAICompatible("b", second_upstream.base_url, ["small-model"]))
    upstream.script(Behaviour(status=503))
    second_upstream.script(HELLO)
    instrumented(hub, traces)

    hub.complete("smart", MESSAGES)

    request = traces.request()
    assert request.name == "chat smart"
    assert request.attributes["gen_ai.request.model"] == "smart"
    assert request.attributes["gen_ai.response.model"] == "small-model"
    assert request.attributes["gen_ai.provider.name"] == "b"
    attempts = traces.attempts_of(request)
    assert [(s.name, s.attributes["gen_ai.request.model"]) for s in attempts] == [
        ("attempt a", "big-model"),
        ("attempt b", "small-model"),
    ]
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    hub.close()


def test_well_known_provider_names_use_the_conventions_value(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("OpenAI", upstream))
    upstream.script(HELLO)
    instrumented(hub, traces)

    hub.complete("gpt-4", MESSAGES)

    request = traces.request()
    assert request.attributes["gen_ai.provider.name"] == "openai"
    assert request.attributes["provhub.provider"] == "OpenAI"


# -- cancellation -------------------------------------------------------------------------


def test_a_stream_closed_mid_answer_ends_its_spans_as_cancelled(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.script(Behaviour(chunks=50, chunk_delay=0.01))
    instrumented(hub, traces)

    with hub.stream("gpt-4", MESSAGES) as stream:
        assert next(iter(stream)) == "w0 "

    request = traces.request()
    assert request.status.status_code is StatusCode.UNSET  # the caller chose to stop
    assert request.attributes["provhub.outcome"] == "cancelled"
    assert request.attributes["error.type"] == "cancelled"
    (attempt,) = traces.attempts_of(request)
    assert attempt.attributes["error.type"] == "cancelled"
    assert attempt.attributes["provhub.chunks"] == 1
    assert attempt.end_time <= request.end_time
    ((attrs, point),) = traces.points("gen_ai.client.operation.duration")
    assert attrs["error.type"] == "cancelled"
    assert point.count == 1


def test_cancelling_the_task_reading_an_astream_ends_its_spans(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.script(Behaviour(chunks=200, chunk_delay=0.01))
    handle = instrumented(hub, traces)
    tracer = traces.provider.get_tracer("host")

    async def main() -> int:
        first = asyncio.Event()

        async def read() -> None:
            async for _ in hub.astream("gpt-4", MESSAGES):
                first.set()

        with tracer.start_as_current_span("caller") as caller:
            task = asyncio.create_task(read())
            await first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return caller.get_span_context().span_id

    caller_id = asyncio.run(main())

    request = traces.request()
    assert request.parent is not None
    assert request.parent.span_id == caller_id
    assert request.attributes["provhub.outcome"] == "cancelled"
    (attempt,) = traces.attempts_of(request)
    assert attempt.attributes["error.type"] == "cancelled"
    assert handle.spans.open_requests == 0


# -- context propagation ------------------------------------------------------------------


def test_request_span_is_a_child_of_the_callers_current_span(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.script(HELLO)
    instrumented(hub, traces)
    tracer = traces.provider.get_tracer("host")

    with tracer.start_as_current_span("handler") as caller:
        hub.complete("gpt-4", MESSAGES)

    request = traces.request()
    assert request.parent is not None
    assert request.parent.span_id == caller.get_span_context().span_id
    assert request.context.trace_id == caller.get_span_context().trace_id


class ThreadBound(OpenAICompatible):
    """The same endpoint, not declared asyncio-native: astream runs it on a worker thread."""

    asyncio_native = False


@pytest.mark.parametrize(
    ("provider_class", "events_thread"),
    [(OpenAICompatible, "MainThread"), (ThreadBound, "provhub-astream")],
    ids=["on-the-loop", "worker-thread"],
)
def test_astream_request_span_is_a_child_of_the_callers_span_on_the_loop_or_a_worker(
    make_hub: MakeHub,
    traces: Traces,
    upstream: FakeUpstream,
    provider_class: type[OpenAICompatible],
    events_thread: str,
) -> None:
    hub = make_hub()
    hub.register(provider_class("a", upstream.base_url, ["gpt-4"]))
    upstream.script(HELLO)
    threads: set[str] = set()
    hub.subscribe(lambda event: threads.add(threading.current_thread().name))
    instrumented(hub, traces)
    tracer = traces.provider.get_tracer("host")

    async def main() -> tuple[str, int]:
        with tracer.start_as_current_span("async handler") as caller:
            text = "".join([token async for token in hub.astream("gpt-4", MESSAGES)])
            return text, caller.get_span_context().span_id

    text, caller_id = asyncio.run(main())

    assert text == "Hello there"
    assert threads == {events_thread}  # where the run went: the loop, or a worker
    request = traces.request()
    assert request.parent is not None
    assert request.parent.span_id == caller_id
    (attempt,) = traces.attempts_of(request)
    assert attempt.status.status_code is StatusCode.UNSET


def test_acomplete_spans_follow_the_calling_task(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.default = HELLO
    instrumented(hub, traces)
    tracer = traces.provider.get_tracer("host")

    async def one(name: str) -> int:
        with tracer.start_as_current_span(name) as caller:
            await hub.acomplete("gpt-4", MESSAGES)
            return caller.get_span_context().span_id

    async def main() -> list[int]:
        return await asyncio.gather(*(one(f"task {n}") for n in range(4)))

    callers = asyncio.run(main())

    parents = sorted(s.parent.span_id for s in traces.requests() if s.parent is not None)
    assert parents == sorted(callers)


def test_concurrent_requests_from_many_threads_keep_their_own_trees(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.default = HELLO
    handle = instrumented(hub, traces)
    tracer = traces.provider.get_tracer("host")
    callers: dict[str, int] = {}
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(5):
            with tracer.start_as_current_span(f"caller {n}.{i}") as caller:
                stream = hub.stream("gpt-4", MESSAGES)
                assert "".join(stream) == "Hello there"
                with lock:
                    callers[stream.request_id] = caller.get_span_context().span_id

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    requests = traces.requests()
    assert len(requests) == 40
    for request in requests:
        assert request.parent is not None
        assert request.parent.span_id == callers[str(request.attributes["provhub.request_id"])]
        (attempt,) = traces.attempts_of(request)
        assert attempt.context.trace_id == request.context.trace_id
    assert handle.spans.open_requests == 0


# -- metrics ------------------------------------------------------------------------------

DURATION = "gen_ai.client.operation.duration"
TTFC = "gen_ai.client.operation.time_to_first_chunk"
TOKENS = "gen_ai.client.token.usage"


def test_metrics_of_a_retried_and_fallen_back_stream_follow_the_conventions(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = make_hub(retries=1)
    hub.register(endpoint("a", upstream))
    hub.register(endpoint("b", second_upstream))
    upstream.script(Behaviour(status=503), Behaviour(status=500))
    second_upstream.script(HELLO)
    instrumented(hub, traces)

    assert "".join(hub.stream("gpt-4", MESSAGES)) == "Hello there"

    metrics = traces.metrics()
    assert metrics[DURATION].unit == "s"
    assert metrics[TTFC].unit == "s"
    assert metrics[TOKENS].unit == "{token}"
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "b",
        "gen_ai.request.model": "gpt-4",
        "gen_ai.response.model": "gpt-4",
    }
    ((attrs, duration),) = traces.points(DURATION)
    assert attrs == common  # no error.type: the request succeeded
    assert duration.count == 1
    assert duration.explicit_bounds[:3] == (0.01, 0.02, 0.04)
    assert duration.explicit_bounds[-1] == 81.92
    span = traces.request()
    assert duration.sum == pytest.approx((span.end_time - span.start_time) / 1e9, abs=0.005)
    ((attrs, ttfc),) = traces.points(TTFC)
    assert attrs == common
    assert ttfc.count == 1
    assert 0 < ttfc.sum < duration.sum
    tokens = {attrs["gen_ai.token.type"]: p for attrs, p in traces.points(TOKENS)}
    assert tokens["input"].sum == 2
    assert tokens["output"].sum == 3
    assert tokens["input"].explicit_bounds[:4] == (1, 4, 16, 64)


def test_a_non_streamed_request_records_no_time_to_first_chunk(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.script(HELLO)
    instrumented(hub, traces)

    hub.complete("gpt-4", MESSAGES)

    assert len(traces.points(DURATION)) == 1
    assert traces.points(TTFC) == []
    assert len(traces.points(TOKENS)) == 2


@pytest.mark.parametrize(
    ("script", "error_type"),
    [
        pytest.param([Behaviour(status=503)], "AllProvidersFailedError", id="failed"),
        pytest.param(
            [Behaviour(tokens=("a ", "b "), fault=Fault.DROP_MID_STREAM, fault_after=1)],
            "StreamInterruptedError",
            id="interrupted",
        ),
    ],
)
def test_failed_requests_are_recorded_with_the_callers_error_type(
    make_hub: MakeHub,
    traces: Traces,
    upstream: FakeUpstream,
    script: list[Behaviour],
    error_type: str,
) -> None:
    hub = make_hub(retries=0)
    hub.register(endpoint("a", upstream))
    upstream.script(*script)
    instrumented(hub, traces)

    with pytest.raises((AllProvidersFailedError, StreamInterruptedError)):
        list(hub.stream("gpt-4", MESSAGES))

    ((attrs, point),) = traces.points(DURATION)
    assert attrs["error.type"] == error_type
    assert attrs["gen_ai.provider.name"] == "a"
    assert "gen_ai.response.model" not in attrs
    assert point.count == 1
    assert traces.points(TOKENS) == []  # nothing reported, nothing recorded
    assert traces.request().attributes["error.type"] == error_type


def test_gateway_and_telemetry_read_one_derivation_of_the_hubs_events(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from provhub._metrics import RequestMetrics
    from provhub.gateway import create_app

    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.default = HELLO
    instrumented(hub, traces)
    body = {"model": "gpt-4", "messages": MESSAGES}

    with TestClient(create_app(hub, close_hub=False)) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        for _ in range(2):
            hub.complete("gpt-4", MESSAGES)  # not through the gateway: counted all the same
        scraped = client.get("/metrics").text

    derivations = [s for s in hub._emitter._subscribers if isinstance(s, RequestMetrics)]
    assert derivations == [hub.metrics]  # one count of the events, read by both
    (line,) = [
        line
        for line in scraped.splitlines()
        if line.startswith("provhub_requests_total{") and 'outcome="ok"' in line
    ]
    ((_, duration),) = traces.points(DURATION)
    assert float(line.rsplit(" ", 1)[1]) == duration.count == 5


# -- content and secrets ------------------------------------------------------------------


PROMPT_SENTINEL = "PROMPT-SENTINEL-4b1d9e"
KEY_SENTINEL = "sk-KEY-SENTINEL-0c77f2a9e1"
KEY_ENV = "PROVHUB_TELEMETRY_TEST_KEY"


def _exported_text(spans: Sequence[ReadableSpan]) -> str:
    """Everything a span exporter would ship, as one string to search."""
    return "\n".join(span.to_json() for span in spans)


@pytest.mark.parametrize("log_content", [False, True], ids=["default", "log_content"])
def test_no_prompt_and_never_the_key_in_any_exported_span(
    traces: Traces,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    log_content: bool,
) -> None:
    from tests.conftest import make_config

    monkeypatch.setenv(KEY_ENV, KEY_SENTINEL)
    hub = Hub(make_config(retries=0), load_plugins=False, log_content=log_content)
    hub.register(endpoint("a", upstream, api_key_env=KEY_ENV))
    hub.register(endpoint("b", second_upstream, api_key_env=KEY_ENV))
    # A hostile upstream quoting the key and the prompt back: in an HTTP error body,
    # and in an error object inside a stream (which becomes the event's ``error``).
    echo = json.dumps({"error": {"message": f"bad key {KEY_SENTINEL} for {PROMPT_SENTINEL}"}})
    upstream.script(
        Behaviour(status=401, body=echo.encode()),
        Behaviour(body=f"data: {echo}\n\n".encode(), content_type="text/event-stream"),
    )
    second_upstream.script(Behaviour(tokens=("a", "b"), fault=Fault.ERROR_OBJECT, fault_after=1))
    instrumented(hub, traces)
    messages = [{"role": "user", "content": f"what is {PROMPT_SENTINEL}?"}]

    with pytest.raises(StreamInterruptedError):
        list(hub.stream("gpt-4", messages))
    second_upstream.script(HELLO)
    assert "".join(hub.stream("gpt-4", messages)) == "Hello there"
    hub.close()

    spans = traces.spans()
    assert len(traces.requests()) == 2
    assert len(spans) == 6
    metrics = traces.reader.get_metrics_data()
    assert metrics is not None
    exported = _exported_text(spans) + metrics.to_json()
    assert "gen_ai.client.operation.duration" in exported
    assert KEY_SENTINEL not in exported
    assert KEY_SENTINEL[3:] not in exported  # nor the key without its prefix
    if log_content:
        (first, _) = traces.requests()
        messages_attr = json.loads(str(first.attributes["gen_ai.input.messages"]))
        assert messages_attr == [
            {"role": "user", "parts": [{"type": "text", "content": messages[0]["content"]}]}
        ]
        # The upstream's message is in the description, with the key masked.
        (_, second) = traces.requests()
        (echoed, _) = traces.attempts_of(second)
        assert f"bad key *** for {PROMPT_SENTINEL}" in (echoed.status.description or "")
    else:
        assert PROMPT_SENTINEL not in exported
        assert "gen_ai.input.messages" not in exported


# -- lifecycle ----------------------------------------------------------------------------


def test_uninstrument_stops_exporting_and_the_hub_can_be_instrumented_again(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.default = HELLO
    handle = instrumented(hub, traces)
    assert hub.telemetry is handle
    with pytest.raises(RuntimeError, match="already instrumented"):
        instrumented(hub, traces)

    hub.complete("gpt-4", MESSAGES)
    assert len(traces.requests()) == 1
    handle.uninstrument()
    handle.uninstrument()  # idempotent
    assert hub.telemetry is None
    assert not handle.active
    hub.complete("gpt-4", MESSAGES)
    assert len(traces.requests()) == 1
    ((_, duration),) = traces.points(DURATION)
    assert duration.count == 1  # the metrics stopped too
    assert hub.metrics._sinks == ()

    with instrumented(hub, traces):
        hub.complete("gpt-4", MESSAGES)
    assert len(traces.requests()) == 2
    hub.complete("gpt-4", MESSAGES)
    assert len(traces.requests()) == 2


def test_uninstrument_mid_request_ends_the_open_spans_as_abandoned(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.script(HELLO)
    handle = instrumented(hub, traces)

    stream = hub.stream("gpt-4", MESSAGES)
    assert next(iter(stream)) == "Hel"
    handle.uninstrument()
    assert "".join(stream) == "lo there"

    request = traces.request()
    assert request.attributes["provhub.outcome"] == "abandoned"
    assert request.attributes["error.type"] == "abandoned"
    (attempt,) = traces.attempts_of(request)
    assert attempt.attributes["error.type"] == "abandoned"


def test_request_begun_before_instrument_gets_no_span_and_breaks_nothing(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.script(HELLO)

    stream = hub.stream("gpt-4", MESSAGES)
    assert next(iter(stream)) == "Hel"
    handle = instrumented(hub, traces)
    assert "".join(stream) == "lo there"

    assert traces.spans() == ()
    assert handle.spans.open_requests == 0


def test_sampled_out_requests_keep_no_state(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    traces = Traces(sampler=ALWAYS_OFF)
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.default = HELLO
    handle = instrumented(hub, traces)

    stream = hub.stream("gpt-4", MESSAGES)
    next(iter(stream))
    assert handle.spans.open_requests == 0
    stream.close()
    hub.complete("gpt-4", MESSAGES)

    assert traces.spans() == ()


def test_a_request_without_closing_event_is_ended_as_abandoned_after_stale_after(
    make_hub: MakeHub, traces: Traces, upstream: FakeUpstream
) -> None:
    now = [1000.0]
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.default = HELLO
    bridge = SpanBridge(
        traces.provider.get_tracer("provhub"), stale_after=60.0, clock=lambda: now[0]
    )
    hub.subscribe(bridge)

    held = hub.stream("gpt-4", MESSAGES)
    assert next(iter(held)) == "Hel"  # held open, never finished
    now[0] += 61.0
    hub.complete("gpt-4", MESSAGES)  # its route.planned sweeps

    outcomes = sorted(str(s.attributes["provhub.outcome"]) for s in traces.requests())
    assert outcomes == ["abandoned", "ok"]
    assert bridge.open_requests == 0
    assert "".join(held) == "lo there"  # the late events of the swept request are ignored
    assert len(traces.requests()) == 2


# -- installation and the config switch ---------------------------------------------------


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_instrument_without_opentelemetry_says_how_to_install_it() -> None:
    result = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        import provhub, provhub.telemetry
        assert not provhub.telemetry.available()
        hub = provhub.Hub(load_plugins=False)
        try:
            provhub.telemetry.instrument(hub)
        except ImportError as exc:
            print(exc)
        """,
        PROVHUB_CONFIG="",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "provhub.telemetry needs the OpenTelemetry API, which is not installed: "
        "pip install 'provhub[otel]'"
    )


def test_config_switch_without_opentelemetry_is_a_one_line_config_error(
    tmp_path: Any,
) -> None:
    config = tmp_path / "provhub.toml"
    config.write_text("[telemetry]\nenabled = true\n")
    result = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None
        import provhub
        try:
            provhub.Hub(load_plugins=False)
        except provhub.ConfigError as exc:
            print(exc)
        """,
        PROVHUB_CONFIG=str(config),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "telemetry.enabled" in lines[0]
    assert "pip install 'provhub[otel]'" in lines[0]


def test_config_switch_instruments_the_hub_with_the_global_providers(
    tmp_path: Any, upstream: FakeUpstream
) -> None:
    config = tmp_path / "provhub.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [telemetry]
            enabled = true

            [providers.fake]
            type = "openai-compatible"
            base_url = "{upstream.base_url}"
            models = ["fake-model"]
            """
        )
    )
    upstream.default = HELLO
    result = _python(
        """
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import provhub

        hub = provhub.Hub()  # before the SDK: the global proxy follows it
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        assert hub.telemetry is not None and hub.telemetry.active
        hub.complete("fake-model", [{"role": "user", "content": "hi"}])
        print(json.dumps(sorted(s.name for s in exporter.get_finished_spans())))
        """,
        PROVHUB_CONFIG=str(config),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["attempt fake", "chat fake-model"]


# -- hostile event streams ----------------------------------------------------------------

_NAMES = (
    "route.planned",
    "attempt.started",
    "stream.first_token",
    "stream.completed",
    "attempt.failed",
    "route.fallback",
    "route.exhausted",
    "stream.interrupted",
    "stream.cancelled",
    "circuit.opened",
    "circuit.closed",
    "plugin.loaded",
    None,
)
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["prompt_tokens", "cost", "x"]), st.integers(), max_size=3),
)
_FIELDS = (
    "attempt",
    "stream",
    "status",
    "error_type",
    "error",
    "retryable",
    "backoff_ms",
    "kind",
    "usage",
    "finish_reason",
    "ttft_ms",
    "chunks",
    "attempts",
    "upstream_model",
    "messages",
)
_EVENT = st.fixed_dictionaries(
    {
        "event": st.sampled_from(_NAMES),
        "request_id": st.one_of(st.sampled_from(["r0", "r1", "r2"]), _ANY),
    },
    optional={
        **dict.fromkeys(_FIELDS, _ANY),
        "model": st.one_of(st.sampled_from(["gpt-4", "m"]), _ANY),
        "provider": st.one_of(st.sampled_from(["a", "OpenAI"]), _ANY),
    },
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_EVENT, max_size=40), log_content=st.booleans())
def test_any_event_sequence_never_raises_and_ends_every_span_once(
    traces: Traces, events: list[dict[str, Any]], log_content: bool
) -> None:
    traces.exporter.clear()
    bridge = SpanBridge(traces.provider.get_tracer("provhub"), log_content=log_content)
    for event in events:
        bridge(event)
    bridge.close()

    assert bridge.open_requests == 0
    spans = traces.spans()
    ids = [s.context.span_id for s in spans]
    assert len(ids) == len(set(ids))  # exported once: ended once
    requests = {s.context.span_id for s in spans if s.name.startswith("chat ")}
    for span in spans:
        if not span.name.startswith("chat "):
            assert span.parent is not None
            assert span.parent.span_id in requests
    for span in spans:
        if span.name.startswith("chat "):
            assert span.attributes["provhub.outcome"] in {
                "ok",
                "failed",
                "interrupted",
                "cancelled",
                "abandoned",
            }
