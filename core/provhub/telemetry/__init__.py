"""OpenTelemetry traces and metrics bridged from a hub's events (SPEC §16, extra ``otel``).

::

    import provhub.telemetry

    handle = provhub.telemetry.instrument(hub)   # the global tracer/meter providers
    ...
    handle.uninstrument()

Or ``[telemetry] enabled = true`` in the config file: the hub instruments itself
when it is created (``hub.telemetry`` is the handle). Telemetry is a subscriber of
the hub's events, never code inside a request: a span per request (``chat
{model}``, kind CLIENT) with a child span per attempt, and the GenAI metrics,
following the OpenTelemetry GenAI semantic conventions v1.41.0. Only the
OpenTelemetry *API* is needed here; the host brings the SDK and its exporters.
No message content or secret is recorded unless the hub was created with
``log_content=True`` (then the input messages, never a credential).

This module imports OpenTelemetry only when :func:`instrument` is called.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from provhub._hub import Hub
    from provhub.telemetry._spans import SpanBridge

__all__ = ["INSTALL_HINT", "Instrumentation", "available", "instrument"]

INSTALL_HINT = "pip install 'provhub[otel]'"
"""How to install what :func:`instrument` needs."""


class Instrumentation:
    """The handle :func:`instrument` returns: call :meth:`uninstrument` to stop.

    ``spans`` is the span bridge (a hub subscriber); use the handle as a context
    manager to uninstrument on exit.
    """

    def __init__(self, hub: Hub, spans: SpanBridge, unsubscribers: list[Callable[[], None]]):
        self._hub = hub
        self.spans = spans
        self._unsubscribers = unsubscribers
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether the hub is still instrumented by this handle."""
        return bool(self._unsubscribers)

    def uninstrument(self) -> None:
        """Stop bridging: nothing more is recorded; open spans end as ``abandoned``.

        Idempotent. The hub can be instrumented again afterwards.
        """
        with self._lock:
            unsubscribers, self._unsubscribers = self._unsubscribers, []
        if not unsubscribers:
            return
        for unsubscribe in unsubscribers:
            unsubscribe()
        self.spans.close()
        if getattr(self._hub, "_telemetry", None) is self:
            self._hub._telemetry = None

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstrument()

    def __repr__(self) -> str:
        state = "active" if self.active else "uninstrumented"
        return f"<Instrumentation {state} open_requests={self.spans.open_requests}>"


def available() -> bool:
    """Whether the OpenTelemetry API is installed (the ``otel`` extra)."""
    try:
        import opentelemetry.metrics
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def _require_opentelemetry() -> None:
    if not available():
        raise ImportError(
            f"provhub.telemetry needs the OpenTelemetry API, which is not installed: {INSTALL_HINT}"
        )


def instrument(
    hub: Hub,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Instrumentation:
    """Bridge ``hub``'s events to OpenTelemetry spans and metrics; returns the handle.

    ``tracer_provider`` / ``meter_provider`` default to the global ones
    (``opentelemetry.trace.get_tracer_provider()``...), which follow an SDK the
    host installs later. Raises ``ImportError`` (saying how to install it) when
    the OpenTelemetry API is missing, and ``RuntimeError`` when ``hub`` is
    already instrumented (``hub.telemetry.uninstrument()`` first).
    """
    _require_opentelemetry()
    from opentelemetry import metrics, trace

    from provhub import __version__
    from provhub.telemetry import _semconv
    from provhub.telemetry._metrics import OTelMetricsSink
    from provhub.telemetry._spans import SpanBridge

    current: Any = getattr(hub, "_telemetry", None)
    if current is not None and current.active:
        raise RuntimeError(
            "this hub is already instrumented; call hub.telemetry.uninstrument() before "
            "instrumenting it again (with [telemetry] enabled = true the hub instruments itself)"
        )
    tracer = trace.get_tracer(
        "provhub",
        __version__,
        tracer_provider=tracer_provider,
        schema_url=_semconv.SCHEMA_URL,
    )
    meter = metrics.get_meter(
        "provhub",
        __version__,
        meter_provider=meter_provider,
        schema_url=_semconv.SCHEMA_URL,
    )
    spans = SpanBridge(tracer, log_content=hub._emitter.log_content)
    # Spans need every event of a request, in order, so they subscribe; metrics
    # are a sink of the hub's one request derivation, shared with the gateway.
    unsubscribers = [hub.subscribe(spans), hub.metrics.add_sink(OTelMetricsSink(meter))]
    handle = Instrumentation(hub, spans, unsubscribers)
    hub._telemetry = handle
    return handle
