"""The cost of being instrumented (issue 18): ``python -m tests.benchmarks.telemetry``.

One hub, one loopback upstream in a process of its own, three states switched
between timed blocks (never inside one), interleaved over rounds with a rotating
order:

- ``plain``: the hub uninstrumented;
- ``noop``: ``provhub.telemetry.instrument(hub)`` with the OpenTelemetry API and no
  SDK (the global no-op providers): what a host pays for the switch alone;
- ``sdk``: the SDK's ``TracerProvider`` with a ``BatchSpanProcessor`` and a
  ``MeterProvider`` with a ``PeriodicExportingMetricReader`` (1 s), both exporting
  to exporters that count and discard, so the figure is provhub's bridge plus the
  SDK's own recording and batching, not a network exporter's serialization.

Two workloads: non-streamed requests over loopback (the figure the issue names),
and the same requests to a provider without I/O, where network noise vanishes and
the added microseconds stand out. Reported: medians of per-round paired
differences to ``plain`` (microseconds per request) and ratios. The machine is
shared: re-run on a quiet one before quoting absolute figures.

Options: ``--rounds N`` (default 15), ``--requests N`` per block (default 400),
``--quick``, ``--profile`` (pyinstrument of the sdk state on the no-I/O path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import provhub.telemetry
from provhub import Config, FinishReason, Hub
from provhub_providers import OpenAICompatible

from .baseline import MESSAGES
from .server import Upstreams
from .workloads import interleave, median, paired_difference, paired_ratio

MODEL = "gpt-4"
GOAL_NOOP_US = 20.0
GOAL_SDK_US = 60.0


class CountingSpanExporter(SpanExporter):
    """Counts the spans the batch processor hands over, keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class CountingMetricExporter(MetricExporter):
    """Counts the metric exports, keeps none."""

    def __init__(self) -> None:
        super().__init__()
        self.exports = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exports += 1
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


class _Constant:
    """A provider answering at once without I/O."""

    name = "constant"
    models = (MODEL,)
    supports_stream = True

    @staticmethod
    def create_completion(model: str, messages: Any, stream: bool, **kw: Any) -> Any:
        yield "w0 w1 w2 "
        yield FinishReason("stop")


class States:
    """Switches one hub between plain, noop and sdk instrumentation."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.spans = CountingSpanExporter()
        self.metrics = CountingMetricExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.spans))
        reader = PeriodicExportingMetricReader(self.metrics, export_interval_millis=1000)
        self.meter_provider = MeterProvider(metric_readers=[reader])
        self._handle: provhub.telemetry.Instrumentation | None = None

    def _switch(self, instrumented: bool, **providers: Any) -> None:
        if self._handle is not None:
            self._handle.uninstrument()
            self._handle = None
        if instrumented:
            self._handle = provhub.telemetry.instrument(self.hub, **providers)

    def plain(self) -> None:
        self._switch(False)

    def noop(self) -> None:
        # The global providers of a process that never installed the SDK (proxies
        # to the API's no-op tracer and meter).
        self._switch(True)

    def sdk(self) -> None:
        self._switch(True, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def close(self) -> None:
        self._switch(False)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _workload(hub: Hub, requests: int, rounds: int) -> dict[str, Any]:
    states = States(hub)

    def call() -> object:
        return hub.complete(MODEL, MESSAGES)

    def block(state: Callable[[], None]) -> Callable[[], float]:
        def run() -> float:
            state()
            started = time.perf_counter()
            for _ in range(requests):
                call()
            return (time.perf_counter() - started) / requests * 1e6

        return run

    for state in (states.plain, states.noop, states.sdk):  # warm-up
        state()
        for _ in range(max(50, requests // 4)):
            call()
    results = interleave(
        {"plain": block(states.plain), "noop": block(states.noop), "sdk": block(states.sdk)},
        rounds,
    )
    states.close()
    sdk_requests = requests * rounds + max(50, requests // 4)
    return {
        "requests_per_block": requests,
        "us_per_request": {name: median(values) for name, values in results.items()},
        "rounds_us_per_request": results,
        "added_us": {name: paired_difference(results, name, "plain") for name in ("noop", "sdk")},
        "ratio": {name: paired_ratio(results, name, "plain") for name in ("noop", "sdk")},
        "spans_exported": states.spans.spans,
        "spans_expected": 2 * sdk_requests,
        "metric_exports": states.metrics.exports,
    }


def _profile(hub: Hub, requests: int) -> str:
    from pyinstrument import Profiler

    states = States(hub)
    states.sdk()
    profiler = Profiler(interval=0.0001)
    profiler.start()
    for _ in range(requests):
        hub.complete(MODEL, MESSAGES)
    profiler.stop()
    states.close()
    return str(profiler.output_text(unicode=False, color=False))


def main(argv: list[str] | None = None) -> int:
    """Run both workloads and print a table and a JSON document."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.telemetry")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    rounds, requests = (3, 100) if args.quick else (args.rounds, args.requests)

    report: dict[str, Any] = {"rounds": rounds}
    with Upstreams() as upstreams:
        hub = Hub(Config(), load_plugins=False)
        hub.register(OpenAICompatible("bench", upstreams.short_url, [MODEL]))
        assert hub.complete(MODEL, MESSAGES).text == "w0 w1 w2 "
        report["loopback"] = _workload(hub, requests, rounds)
        hub.close()
    machinery = Hub(Config(), load_plugins=False)
    machinery.register(_Constant)
    report["no_io"] = _workload(machinery, requests * 5, rounds)
    if args.profile:
        report["profile"] = _profile(machinery, requests * 10)

    print(f"provhub telemetry overhead, {rounds} interleaved rounds (medians of paired rounds)")
    header = ("workload", "plain us", "noop +us", "ratio", "sdk +us", "ratio")
    print("{:<10} {:>9} {:>9} {:>6} {:>8} {:>6}".format(*header))
    for name in ("loopback", "no_io"):
        r = report[name]
        print(
            f"{name:<10} {r['us_per_request']['plain']:9.1f} {r['added_us']['noop']:9.1f} "
            f"{r['ratio']['noop']:6.3f} {r['added_us']['sdk']:8.1f} {r['ratio']['sdk']:6.3f}"
        )
    loop = report["loopback"]["added_us"]
    print(
        f"goals (loopback): noop <= {GOAL_NOOP_US:.0f} us: "
        f"{'met' if loop['noop'] <= GOAL_NOOP_US else 'MISSED'}; "
        f"sdk <= {GOAL_SDK_US:.0f} us: {'met' if loop['sdk'] <= GOAL_SDK_US else 'MISSED'}"
    )
    print(
        f"spans exported {report['loopback']['spans_exported']} "
        f"(expected {report['loopback']['spans_expected']}), "
        f"metric exports {report['loopback']['metric_exports']}"
    )
    if args.profile:
        print(report["profile"])
    print(json.dumps({k: v for k, v in report.items() if k != "profile"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
