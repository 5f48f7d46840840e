"""Per-request measurements derived from a hub's events, handed to metric sinks.

One counting path for every metrics backend (the gateway's Prometheus
``/metrics``, an OpenTelemetry bridge, a host's own): :class:`RequestMetrics` is
a hub subscriber that follows each request through its events
(``route.planned`` -> ``stream.first_token`` -> ``stream.completed`` or
``route.exhausted`` / ``stream.interrupted`` / ``stream.cancelled``) and tells
every :class:`MetricsSink` what happened, as plain values::

    metrics = RequestMetrics(my_sink)
    unsubscribe = hub.subscribe(metrics)

A sink implements four methods; each is called on the thread that emitted the
event (a hub's worker threads), so a sink must be thread-safe and quick, and
must not raise (an exception is isolated by the hub, but the measurement is
lost). No optional dependency is imported here.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "LatencyWindow",
    "MetricsSink",
    "Outcome",
    "RequestMetrics",
    "RequestRecord",
]


class Outcome(enum.StrEnum):
    """How a request ended."""

    OK = "ok"
    """An answer was delivered whole."""
    FAILED = "failed"
    """Every attempt failed before the first token (``AllProvidersFailedError``)."""
    INTERRUPTED = "interrupted"
    """The upstream broke after tokens were delivered (``StreamInterruptedError``)."""
    CANCELLED = "cancelled"
    """The caller stopped it (closed the stream, cancelled the task, disconnected)."""
    ABANDONED = "abandoned"
    """No closing event arrived within ``stale_after`` seconds (counted, then forgotten)."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The measurements of one finished request.

    ``provider`` is the provider of the last attempt (None when none ran);
    ``duration`` and ``ttft`` are seconds from the request's start (``ttft`` is
    None when no token arrived); token counts are what the upstream reported
    (None when it did not); ``error_type`` names the final failure, if any.
    ``stream`` says whether the request was streamed (None when its
    ``route.planned`` was not seen); ``response_model`` is the model id sent to
    the last attempt's provider (the alias resolved), None when none ran.
    """

    request_id: str
    model: str
    provider: str | None
    outcome: Outcome
    duration: float
    ttft: float | None
    attempts: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_type: str | None = None
    stream: bool | None = None
    response_model: str | None = None


class MetricsSink(Protocol):
    """Where :class:`RequestMetrics` sends what it derived. All methods are thread-safe."""

    def request_started(self, model: str) -> None:
        """A request was planned (counts it in flight)."""

    def request_finished(self, record: RequestRecord) -> None:
        """A request ended (successfully or not): one call per started request."""

    def attempt_failed(
        self, model: str, provider: str, error_type: str, status: int | None
    ) -> None:
        """One attempt failed (the request may still succeed on a retry or fallback)."""

    def breaker_changed(self, provider: str, state: str) -> None:
        """A provider's breaker moved to ``state`` (``open``, ``half_open``, ``closed``)."""


@dataclass(slots=True)
class _Pending:
    model: str
    started: float
    provider: str | None = None
    ttft: float | None = None
    attempts: int = 0
    stream: bool | None = None
    upstream_model: str | None = None


_DONE_KEPT = 4096
_BREAKER_EVENTS = {
    "circuit.opened": "open",
    "circuit.half_open": "half_open",
    "circuit.closed": "closed",
}


class RequestMetrics:
    """A hub subscriber deriving :class:`RequestRecord` values for metric sinks.

    ``RequestMetrics(*sinks, stale_after=900.0, clock=time.monotonic)``: a
    request whose closing event never arrives (a host that drops a stream
    without closing it, on a hub that does not emit ``stream.cancelled``) is
    reported as :attr:`Outcome.ABANDONED` once it is ``stale_after`` seconds
    old, so the in-flight count cannot grow without bound.
    """

    def __init__(
        self,
        *sinks: MetricsSink,
        stale_after: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sinks = tuple(sinks)
        self._stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        # Ids of the last finished requests, so a late event does not start a new record.
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._next_sweep = clock() + stale_after
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "route.planned": self._planned,
            "attempt.started": self._attempt_started,
            "stream.first_token": self._first_token,
            "stream.completed": self._completed,
            "attempt.failed": self._attempt_failed,
            "route.exhausted": self._exhausted,
            "stream.interrupted": self._interrupted,
            "stream.cancelled": self._cancelled,
        }

    @property
    def in_flight(self) -> int:
        """Requests started and not yet finished."""
        return len(self._pending)

    def attach(self, hub: Any) -> Callable[[], None]:
        """Subscribe to ``hub``; returns its unsubscribe function."""
        unsubscribe: Callable[[], None] = hub.subscribe(self)
        return unsubscribe

    def add_sink(self, sink: MetricsSink) -> Callable[[], None]:
        """Send this derivation's measurements to ``sink`` too; returns its remover.

        How several backends share one count (``hub.metrics``: the gateway's
        Prometheus sink, the OpenTelemetry sink). A sink added while requests
        are in flight gets their ``request_finished`` without their
        ``request_started``.
        """
        with self._lock:
            self._sinks = (*self._sinks, sink)

        def remove() -> None:
            with self._lock:
                self._sinks = tuple(s for s in self._sinks if s is not sink)

        return remove

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Receive one hub event (the subscriber interface)."""
        name = event.get("event")
        handler = self._handlers.get(name) if isinstance(name, str) else None
        if handler is not None:
            handler(event)
        elif name in _BREAKER_EVENTS:
            provider = event.get("provider")
            if isinstance(provider, str):
                for sink in self._sinks:
                    sink.breaker_changed(provider, _BREAKER_EVENTS[name])

    # -- the request's life --------------------------------------------------

    def _get(self, event: Mapping[str, Any]) -> _Pending | None:
        request_id = event.get("request_id")
        if not isinstance(request_id, str):
            return None
        pending = self._pending.get(request_id)
        if pending is None:
            if request_id in self._done:
                return None  # an event after the closing one (attempt.failed follows
                # stream.interrupted): the request is already counted
            # No route.planned seen (subscribed mid-request, or the hub filters
            # DEBUG events for subscribers): start the record now.
            pending = self._start(request_id, str(event.get("model") or "unknown"))
        return pending

    def _start(self, request_id: str, model: str) -> _Pending:
        now = self._clock()
        pending = _Pending(model=model, started=now)
        with self._lock:
            self._pending[request_id] = pending
            sweep = now >= self._next_sweep
        for sink in self._sinks:
            sink.request_started(model)
        if sweep:
            self._sweep(now)
        return pending

    def _planned(self, event: Mapping[str, Any]) -> None:
        request_id = event.get("request_id")
        if isinstance(request_id, str) and request_id not in self._pending:
            pending = self._start(request_id, str(event.get("model") or "unknown"))
            stream = event.get("stream")
            pending.stream = stream if isinstance(stream, bool) else None

    def _attempt_started(self, event: Mapping[str, Any]) -> None:
        pending = self._get(event)
        if pending is not None:
            pending.attempts += 1
            provider = event.get("provider")
            if isinstance(provider, str):
                pending.provider = provider
            model = event.get("upstream_model")
            pending.upstream_model = model if isinstance(model, str) else None

    def _first_token(self, event: Mapping[str, Any]) -> None:
        pending = self._get(event)
        if pending is not None and pending.ttft is None:
            pending.ttft = self._clock() - pending.started

    def _attempt_failed(self, event: Mapping[str, Any]) -> None:
        pending = self._get(event)
        provider = event.get("provider")
        if not isinstance(provider, str):
            return
        model = pending.model if pending is not None else str(event.get("model") or "unknown")
        status = event.get("status")
        error_type = str(event.get("error_type") or "error")
        for sink in self._sinks:
            sink.attempt_failed(
                model, provider, error_type, status if isinstance(status, int) else None
            )

    def _completed(self, event: Mapping[str, Any]) -> None:
        pending = self._get(event)
        if pending is None:
            return
        if pending.ttft is None and isinstance(event.get("ttft_ms"), int | float):
            pending.ttft = float(event["ttft_ms"]) / 1000.0
        usage = event.get("usage")
        prompt = completion = None
        if isinstance(usage, Mapping):
            prompt = _count(usage.get("prompt_tokens"))
            completion = _count(usage.get("completion_tokens"))
        self._finish(event, pending, Outcome.OK, prompt=prompt, completion=completion)

    def _exhausted(self, event: Mapping[str, Any]) -> None:
        pending = self._get(event)
        if pending is not None:
            self._finish(event, pending, Outcome.FAILED, error="AllProvidersFailedError")

    def _interrupted(self, event: Mapping[str, Any]) -> None:
        pending = self._get(event)
        if pending is not None:
            error = event.get("error_type")
            self._finish(event, pending, Outcome.INTERRUPTED, error=str(error or "interrupted"))

    def _cancelled(self, event: Mapping[str, Any]) -> None:
        pending = self._get(event)
        if pending is not None:
            self._finish(event, pending, Outcome.CANCELLED)

    def _finish(
        self,
        event: Mapping[str, Any],
        pending: _Pending,
        outcome: Outcome,
        *,
        prompt: int | None = None,
        completion: int | None = None,
        error: str | None = None,
    ) -> None:
        request_id = str(event.get("request_id"))
        with self._lock:
            if self._pending.pop(request_id, None) is None:
                return  # already finished (two closing events): count it once
            self._done[request_id] = None
            if len(self._done) > _DONE_KEPT:
                self._done.popitem(last=False)
        provider = event.get("provider")
        record = RequestRecord(
            request_id=request_id,
            model=pending.model,
            provider=provider if isinstance(provider, str) else pending.provider,
            outcome=outcome,
            duration=self._clock() - pending.started,
            ttft=pending.ttft,
            attempts=max(pending.attempts, _count(event.get("attempt")) or 0),
            prompt_tokens=prompt,
            completion_tokens=completion,
            error_type=error,
            stream=pending.stream,
            response_model=pending.upstream_model,
        )
        for sink in self._sinks:
            sink.request_finished(record)

    def _sweep(self, now: float) -> None:
        cutoff = now - self._stale_after
        with self._lock:
            self._next_sweep = now + self._stale_after / 4
            stale = [(k, p) for k, p in self._pending.items() if p.started < cutoff]
            for key, _ in stale:
                del self._pending[key]
        for key, pending in stale:
            record = RequestRecord(
                request_id=key,
                model=pending.model,
                provider=pending.provider,
                outcome=Outcome.ABANDONED,
                duration=now - pending.started,
                ttft=pending.ttft,
                attempts=pending.attempts,
                stream=pending.stream,
                response_model=pending.upstream_model,
            )
            for sink in self._sinks:
                sink.request_finished(record)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class LatencyWindow:
    """A sink keeping the last ``size`` successful requests per provider, for quantiles.

    What a status page shows as "recent latency": :meth:`summary` gives, per
    provider, the number of samples and the p50/p95 of duration and
    time-to-first-token in milliseconds, plus the recent error count.
    """

    def __init__(self, size: int = 200) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._durations: dict[str, deque[float]] = {}
        self._ttfts: dict[str, deque[float]] = {}
        self._errors: dict[str, int] = {}

    def request_started(self, model: str) -> None:
        """Not needed for latency."""

    def request_finished(self, record: RequestRecord) -> None:
        """Record the duration and TTFT of a successful request."""
        if record.outcome is not Outcome.OK or record.provider is None:
            return
        with self._lock:
            durations = self._durations.get(record.provider)
            if durations is None:
                durations = self._durations[record.provider] = deque(maxlen=self._size)
                self._ttfts[record.provider] = deque(maxlen=self._size)
            durations.append(record.duration)
            if record.ttft is not None:
                self._ttfts[record.provider].append(record.ttft)

    def attempt_failed(
        self, model: str, provider: str, error_type: str, status: int | None
    ) -> None:
        """Count a failed attempt against ``provider``."""
        with self._lock:
            self._errors[provider] = self._errors.get(provider, 0) + 1

    def breaker_changed(self, provider: str, state: str) -> None:
        """Not needed for latency."""

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per provider: ``samples``, ``p50_ms``, ``p95_ms``, ``ttft_p50_ms``, ``errors``."""
        with self._lock:
            durations = {k: sorted(v) for k, v in self._durations.items()}
            ttfts = {k: sorted(v) for k, v in self._ttfts.items()}
            errors = dict(self._errors)
        out: dict[str, dict[str, Any]] = {}
        for name in durations.keys() | errors.keys():
            values = durations.get(name, [])
            out[name] = {
                "samples": len(values),
                "p50_ms": _quantile_ms(values, 0.5),
                "p95_ms": _quantile_ms(values, 0.95),
                "ttft_p50_ms": _quantile_ms(ttfts.get(name, []), 0.5),
                "errors": errors.get(name, 0),
            }
        return out


def _quantile_ms(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    return round(ordered[index] * 1000, 3)
