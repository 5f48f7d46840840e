"""``GET /metrics``: the Prometheus sink of :mod:`provhub._metrics`.

Every figure about hub requests comes from the one derivation in
``provhub._metrics`` (a hub subscriber); this module only turns its records
into prometheus-client metrics. Breaker states are read from ``hub.health()``
at scrape time, so an open breaker whose cooldown ran out reads half-open.

Label values are bounded: ``model`` is one of the model ids and aliases the hub
served at start-up (at most :data:`MAX_MODELS`), ``provider`` one of its
providers; anything else is counted as ``other``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from provhub._metrics import Outcome, RequestRecord

__all__ = ["MAX_MODELS", "PrometheusSink"]

MAX_MODELS = 200
OTHER = "other"
# LLM calls span milliseconds (a cache, a local model) to minutes (long answers).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_BREAKER_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
ROUTES = ("chat", "models", "providers", "health", "metrics", "status", "other")


class _Folder:
    """Maps label values to themselves when known, else to ``other``; capped."""

    def __init__(self, known: Iterable[str], cap: int) -> None:
        self._known = frozenset(list(dict.fromkeys(known))[:cap])

    def __call__(self, value: str | None) -> str:
        return value if value in self._known else OTHER


class PrometheusSink:
    """A :class:`~provhub._metrics.MetricsSink` feeding a prometheus-client registry."""

    def __init__(self, hub: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        infos = hub.providers()
        self._model = _Folder((m for i in infos for m in (*i.models, *i.aliases)), MAX_MODELS)
        self._provider = _Folder((i.name for i in infos), MAX_MODELS)
        self._lock = threading.Lock()
        r = self.registry
        self.requests = Counter(
            "provhub_requests",
            "Hub requests by model, final provider and outcome "
            "(ok, failed, interrupted, cancelled, abandoned).",
            ["model", "provider", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "provhub_request_duration_seconds",
            "Duration of successful requests, from routing to the last token.",
            ["model", "provider"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "provhub_time_to_first_token_seconds",
            "Time from routing to the first token (retries and fallbacks included).",
            ["model", "provider"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "provhub_tokens",
            "Tokens reported by upstreams, by kind (prompt, completion).",
            ["model", "provider", "kind"],
            registry=r,
        )
        self.attempt_failures = Counter(
            "provhub_attempt_failures",
            "Failed attempts (a request may still succeed after them), by HTTP status.",
            ["provider", "status"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "provhub_breaker_transitions",
            "Circuit-breaker transitions by provider and new state.",
            ["provider", "state"],
            registry=r,
        )
        self.in_flight = Gauge(
            "provhub_requests_in_flight", "Hub requests started and not finished.", registry=r
        )
        self.responses = Counter(
            "provhub_http_responses",
            "HTTP responses of the gateway by route and status (499: client went away).",
            ["route", "status"],
            registry=r,
        )
        r.register(_BreakerCollector(hub, self._provider))

    # -- MetricsSink -----------------------------------------------------------

    def request_started(self, model: str) -> None:
        """Count a request in flight."""
        self.in_flight.inc()

    def request_finished(self, record: RequestRecord) -> None:
        """Count the request, its latency and its tokens."""
        self.in_flight.dec()
        model = self._model(record.model)
        provider = self._provider(record.provider) if record.provider else "none"
        self.requests.labels(model, provider, str(record.outcome)).inc()
        if record.ttft is not None:
            self.ttft.labels(model, provider).observe(record.ttft)
        if record.outcome is Outcome.OK:
            self.duration.labels(model, provider).observe(record.duration)
        if record.prompt_tokens:
            self.tokens.labels(model, provider, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            self.tokens.labels(model, provider, "completion").inc(record.completion_tokens)

    def attempt_failed(
        self, model: str, provider: str, error_type: str, status: int | None
    ) -> None:
        """Count a failed attempt (status ``none`` for connection errors and timeouts)."""
        label = str(status) if status is not None and 100 <= status <= 599 else "none"
        self.attempt_failures.labels(self._provider(provider), label).inc()

    def breaker_changed(self, provider: str, state: str) -> None:
        """Count a breaker transition."""
        self.breaker_transitions.labels(self._provider(provider), state).inc()

    # -- the gateway's own ----------------------------------------------------

    def response(self, route: str, status: int) -> None:
        """Count one HTTP response of the gateway."""
        self.responses.labels(route if route in ROUTES else "other", str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _BreakerCollector:
    """``provhub_breaker_state{provider}``: 0 closed, 1 half-open, 2 open (read at scrape)."""

    def __init__(self, hub: Any, fold: _Folder) -> None:
        self._hub = hub
        self._fold = fold

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "provhub_breaker_state",
            "Circuit-breaker state per provider: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )
        health = self._hub.health()
        for info in self._hub.providers():
            state = health.get(info.name, {}).get("state", "closed")
            family.add_metric([self._fold(info.name)], _BREAKER_VALUES.get(str(state), 0.0))
        yield family
