"""The GenAI client metrics, as a sink of :mod:`provhub._metrics` (SPEC §16).

Not a second count of the events: :class:`~provhub._metrics.RequestMetrics`
derives one :class:`~provhub._metrics.RequestRecord` per finished request (the
same derivation the gateway's ``/metrics`` reads), and :class:`OTelMetricsSink`
records it on three histograms:

- ``gen_ai.client.operation.duration`` (s): every request, with ``error.type``
  when it did not end ``ok``;
- ``gen_ai.client.operation.time_to_first_chunk`` (s): streamed requests whose
  first item arrived, measured from the request's start;
- ``gen_ai.client.token.usage`` ({token}): the reported input and output counts,
  ``gen_ai.token.type`` ``input`` / ``output``.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.metrics import Meter

from provhub._metrics import Outcome, RequestRecord
from provhub.telemetry import _semconv as sc

__all__ = ["OTelMetricsSink"]

# The conventions give these boundaries for the TTFT of model servers; the client's
# time to first chunk measures the same wait from the other side.
TTFC_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

_ERROR_TYPES = {
    Outcome.FAILED: "AllProvidersFailedError",
    Outcome.INTERRUPTED: "StreamInterruptedError",
    Outcome.CANCELLED: "cancelled",
    Outcome.ABANDONED: "abandoned",
}


class OTelMetricsSink:
    """A :class:`~provhub._metrics.MetricsSink` recording OpenTelemetry histograms.

    Attributes of every point: ``gen_ai.operation.name`` (``chat``),
    ``gen_ai.provider.name`` (the last attempt's provider; ``none`` when no
    attempt ran), ``gen_ai.request.model``, ``gen_ai.response.model`` (success),
    ``error.type`` (not ok). Model and provider names are those the hub
    serves, so the series stay bounded.
    """

    def __init__(self, meter: Meter) -> None:
        self._duration = meter.create_histogram(
            sc.METRIC_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=sc.DURATION_BUCKETS,
        )
        self._ttfc = meter.create_histogram(
            sc.METRIC_TTFC,
            unit="s",
            description="Time to receive the first chunk, measured from when the client "
            "issues the generation request to when the first chunk is received in the "
            "response stream.",
            explicit_bucket_boundaries_advisory=TTFC_BUCKETS,
        )
        self._tokens = meter.create_histogram(
            sc.METRIC_TOKENS,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=sc.TOKEN_BUCKETS,
        )

    def request_started(self, model: str) -> None:
        """Nothing to record: the histograms count finished requests."""

    def request_finished(self, record: RequestRecord) -> None:
        """Record the request's duration, time to first chunk and token usage."""
        provider = record.provider
        attrs: dict[str, Any] = {
            sc.OPERATION_NAME: sc.OPERATION,
            sc.PROVIDER_NAME: "none" if provider is None else sc.provider_name(provider),
            sc.REQUEST_MODEL: record.model,
        }
        response_model = record.response_model
        if response_model is not None and record.outcome is Outcome.OK:
            attrs[sc.RESPONSE_MODEL] = response_model
        error_type = _ERROR_TYPES.get(record.outcome)
        if error_type is not None:
            attrs[sc.ERROR_TYPE] = error_type
        self._duration.record(record.duration, attrs)
        if record.stream and record.ttft is not None:
            self._ttfc.record(record.ttft, attrs)
        if record.prompt_tokens is not None:
            self._tokens.record(record.prompt_tokens, {**attrs, sc.TOKEN_TYPE: "input"})
        if record.completion_tokens is not None:
            self._tokens.record(record.completion_tokens, {**attrs, sc.TOKEN_TYPE: "output"})

    def attempt_failed(
        self, model: str, provider: str, error_type: str, status: int | None
    ) -> None:
        """Not a GenAI metric: failed attempts are on the attempt spans."""

    def breaker_changed(self, provider: str, state: str) -> None:
        """Not a GenAI metric: breaker changes are span events."""
