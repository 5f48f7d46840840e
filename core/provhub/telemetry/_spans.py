"""Spans from a hub's events: one per request, a child per attempt (SPEC §16).

:class:`SpanBridge` is a hub subscriber. It never runs inside the request's
code: it reads the events the run emits, in the thread that emits them (the
caller's thread for ``stream``/``complete``, the worker thread of ``astream``,
which runs in a copy of the caller's contextvars). A span started there is a
child of the caller's current span. Events of different requests may arrive on
different threads at once, so the bookkeeping is a dict keyed by ``request_id``
under a lock; the events of one request arrive one after the other.

Requests whose ``route.planned`` the bridge did not see (they began before
:func:`~provhub.telemetry.instrument`) get no span; nor do requests whose span
the sampler dropped, which then cost one non-recording span and nothing more.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from provhub.telemetry import _semconv as sc

__all__ = ["SpanBridge"]

# What the caller receives when a request ends this way (``error.type`` of the
# request span and of the operation metrics).
FAILED = "AllProvidersFailedError"
INTERRUPTED = "StreamInterruptedError"
CANCELLED = "cancelled"
ABANDONED = "abandoned"


class _Request:
    """The live spans of one request and the attributes they end with.

    Attributes are collected in plain dicts and handed to the SDK once, when a
    span ends: each ``set_attribute`` call takes the span's lock and validates
    the value, and that, not the span itself, is most of the SDK's price.
    """

    __slots__ = (
        "attempt",
        "attempt_attrs",
        "attempts",
        "attrs",
        "interrupted",
        "span",
        "started",
        "stream",
        "ttft",
        "upstream_model",
    )

    def __init__(self, span: Span, stream: bool, started: float, attrs: dict[str, Any]) -> None:
        self.span = span
        self.stream = stream
        self.started = started
        self.attrs = attrs
        self.attempt: Span | None = None
        self.attempt_attrs: dict[str, Any] = {}
        self.attempts = 0
        self.ttft: float | None = None
        self.upstream_model: str | None = None
        # Set by stream.interrupted: the attempt.failed that follows closes both spans.
        self.interrupted = False

    def end_attempt(self, status: Status | None = None) -> None:
        attempt = self.attempt
        if attempt is None:
            return
        self.attempt = None
        if self.attempt_attrs:
            attempt.set_attributes(self.attempt_attrs)
            self.attempt_attrs = {}
        if status is not None:
            attempt.set_status(status)
        attempt.end()


class SpanBridge:
    """A hub subscriber turning request events into OpenTelemetry spans.

    ``SpanBridge(tracer, *, log_content=False, stale_after=900.0)``: with
    ``log_content`` the request span also carries the input messages
    (``gen_ai.input.messages``) and error descriptions carry the upstream's
    message; never credentials. A request with no closing event for
    ``stale_after`` seconds (a stream dropped but still referenced) has its spans
    ended with ``error.type`` ``abandoned``.
    """

    def __init__(
        self,
        tracer: Tracer,
        *,
        log_content: bool = False,
        stale_after: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracer = tracer
        self._log_content = log_content
        self._stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, _Request] = {}
        self._next_sweep = clock() + stale_after
        self._handlers: dict[str, Callable[[_Request, Mapping[str, Any]], None]] = {
            "attempt.started": self._attempt_started,
            "stream.first_token": self._first_token,
            "stream.completed": self._completed,
            "attempt.failed": self._attempt_failed,
            "route.fallback": self._fallback,
            "route.exhausted": self._exhausted,
            "stream.interrupted": self._interrupted,
            "stream.cancelled": self._cancelled,
            "circuit.opened": self._circuit,
            "circuit.half_open": self._circuit,
            "circuit.closed": self._circuit,
        }

    @property
    def open_requests(self) -> int:
        """Requests whose span is started and not yet ended."""
        return len(self._requests)

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Receive one hub event (the subscriber interface)."""
        name = event.get("event")
        if name == "route.planned":
            self._planned(event)
            return
        handler = self._handlers.get(name)  # type: ignore[arg-type]
        request_id = event.get("request_id")
        if handler is None or type(request_id) is not str:
            return
        request = self._requests.get(request_id)
        if request is not None:
            handler(request, event)

    def close(self) -> None:
        """End every open span (as ``abandoned``): the bridge is being detached."""
        with self._lock:
            pending = list(self._requests.values())
            self._requests.clear()
        for request in pending:
            self._end_abandoned(request)

    # -- the request span -----------------------------------------------------

    def _planned(self, event: Mapping[str, Any]) -> None:
        request_id = event.get("request_id")
        model = event.get("model")
        if not isinstance(request_id, str) or not isinstance(model, str):
            return
        if request_id in self._requests:
            return  # a repeated route.planned: the request's span is already open
        # No context argument: the parent is the current span of the thread (and
        # contextvars) emitting the event, which is the caller's. The attributes a
        # sampler may look at are given at creation, the rest when the span ends.
        span = self._tracer.start_span(
            f"{sc.OPERATION} {model}",
            kind=SpanKind.CLIENT,
            attributes={sc.OPERATION_NAME: sc.OPERATION, sc.REQUEST_MODEL: model},
        )
        if not span.is_recording():
            return  # sampled out, or the API without an SDK: nothing to keep
        stream = event.get("stream") is True
        attrs: dict[str, Any] = {sc.REQUEST_STREAM: stream, "provhub.request_id": request_id}
        if self._log_content:
            messages = event.get("messages")
            if isinstance(messages, list):
                attrs[sc.INPUT_MESSAGES] = _input_messages(messages)
        now = self._clock()
        with self._lock:
            self._requests[request_id] = _Request(span, stream, now, attrs)
            sweep = now >= self._next_sweep
        if sweep:
            self._sweep(now)

    def _finish(
        self,
        event: Mapping[str, Any],
        request: _Request,
        outcome: str,
        error_type: str | None,
        description: str | None = None,
    ) -> None:
        with self._lock:
            if self._requests.pop(str(event.get("request_id")), None) is None:
                return  # ended already
        attrs = request.attrs
        attrs["provhub.outcome"] = outcome
        attrs["provhub.attempts"] = request.attempts
        provider = event.get("provider")
        if isinstance(provider, str):
            _set_provider(attrs, provider)
        if error_type is not None:
            attrs[sc.ERROR_TYPE] = error_type
        span = request.span
        span.set_attributes(attrs)
        if description is not None:
            span.set_status(Status(StatusCode.ERROR, description))
        span.end()

    def _end_abandoned(self, request: _Request) -> None:
        request.attempt_attrs[sc.ERROR_TYPE] = ABANDONED
        request.end_attempt()
        attrs = request.attrs
        attrs["provhub.outcome"] = ABANDONED
        attrs[sc.ERROR_TYPE] = ABANDONED
        attrs["provhub.attempts"] = request.attempts
        request.span.set_attributes(attrs)
        request.span.end()

    def _sweep(self, now: float) -> None:
        cutoff = now - self._stale_after
        with self._lock:
            self._next_sweep = now + self._stale_after / 4
            stale = [k for k, r in self._requests.items() if r.started < cutoff]
            requests = [self._requests.pop(k) for k in stale]
        for request in requests:
            self._end_abandoned(request)

    # -- attempts ---------------------------------------------------------------

    def _attempt_started(self, request: _Request, event: Mapping[str, Any]) -> None:
        provider = event.get("provider")
        if not isinstance(provider, str):
            return
        request.end_attempt()  # never left open by the run; be safe
        request.attempts += 1
        attributes: dict[str, Any] = {"provhub.attempt": event.get("attempt") or request.attempts}
        _set_provider(attributes, provider)
        upstream_model = event.get("upstream_model")
        if isinstance(upstream_model, str):
            # What this attempt asked its upstream for: with aliases and groups,
            # each attempt of one request may ask for a different model.
            attributes[sc.REQUEST_MODEL] = upstream_model
            request.upstream_model = upstream_model
        else:
            request.upstream_model = None
        request.attempt = self._tracer.start_span(
            f"attempt {provider}",
            context=trace.set_span_in_context(request.span),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )

    def _first_token(self, request: _Request, event: Mapping[str, Any]) -> None:
        if request.ttft is None:
            request.ttft = ttft = self._clock() - request.started
            if request.stream:
                request.attrs[sc.RESPONSE_TTFC] = ttft

    def _completed(self, request: _Request, event: Mapping[str, Any]) -> None:
        request.end_attempt()
        attrs = request.attrs
        if request.upstream_model is not None:
            attrs[sc.RESPONSE_MODEL] = request.upstream_model
        finish = event.get("finish_reason")
        if isinstance(finish, str):
            attrs[sc.RESPONSE_FINISH_REASONS] = (finish,)
        usage = event.get("usage")
        if isinstance(usage, Mapping):
            # Usage only on the request span: summing tokens over spans counts each once.
            for key, attribute in _USAGE:
                count = _int(usage.get(key))
                if count is not None:
                    attrs[attribute] = count
            cost = usage.get("cost")
            if isinstance(cost, int | float) and not isinstance(cost, bool):
                attrs["provhub.usage.cost"] = float(cost)
        tool_calls = _int(event.get("tool_calls"))
        if tool_calls:
            attrs["provhub.tool_calls"] = tool_calls
        self._finish(event, request, "ok", None)

    def _attempt_failed(self, request: _Request, event: Mapping[str, Any]) -> None:
        error_type = str(event.get("error_type") or "_OTHER")
        status = _int(event.get("status"))
        if request.attempt is not None:
            attrs = request.attempt_attrs
            attrs[sc.ERROR_TYPE] = error_type
            if status is not None:
                attrs[sc.HTTP_STATUS] = status
            retryable = event.get("retryable")
            if isinstance(retryable, bool):
                attrs["provhub.retryable"] = retryable
            backoff = event.get("backoff_ms")
            if isinstance(backoff, int | float):
                attrs["provhub.backoff_ms"] = backoff
            kind = event.get("kind")
            if isinstance(kind, str):
                attrs["provhub.failure_kind"] = kind
            description = self._describe(error_type, status, event.get("error"))
            request.end_attempt(Status(StatusCode.ERROR, description))
        if request.interrupted:
            self._finish(
                event,
                request,
                "interrupted",
                INTERRUPTED,
                f"{INTERRUPTED}: {self._describe(error_type, status, event.get('error'))}",
            )

    def _describe(self, error_type: str, status: int | None, detail: Any) -> str:
        # The upstream's own message may quote the request: only with log_content.
        text = error_type if status is None else f"{error_type} (HTTP {status})"
        if self._log_content and isinstance(detail, str) and detail:
            text = f"{text}: {detail}"
        return text

    # -- other endings and milestones ------------------------------------------

    def _exhausted(self, request: _Request, event: Mapping[str, Any]) -> None:
        request.end_attempt()
        attempts = _int(event.get("attempts")) or 0
        self._finish(event, request, "failed", FAILED, f"{FAILED}: {attempts} attempt(s) failed")

    def _interrupted(self, request: _Request, event: Mapping[str, Any]) -> None:
        request.interrupted = True
        chunks = _int(event.get("chunks")) or 0
        if request.attempt is not None:
            request.attempt_attrs["provhub.chunks"] = chunks
        else:  # no attempt.failed will close the request: close it now
            request.attrs["provhub.chunks"] = chunks
            self._finish(event, request, "interrupted", INTERRUPTED, INTERRUPTED)

    def _cancelled(self, request: _Request, event: Mapping[str, Any]) -> None:
        request.attempt_attrs[sc.ERROR_TYPE] = CANCELLED
        request.attempt_attrs["provhub.chunks"] = _int(event.get("chunks")) or 0
        request.end_attempt()
        # The caller chose to stop: not a failure of the operation (status stays unset).
        self._finish(event, request, "cancelled", CANCELLED)

    def _fallback(self, request: _Request, event: Mapping[str, Any]) -> None:
        request.span.add_event(
            "route.fallback",
            {
                "provhub.from_provider": str(event.get("from_provider")),
                "provhub.to_provider": str(event.get("to_provider")),
            },
        )

    def _circuit(self, request: _Request, event: Mapping[str, Any]) -> None:
        request.span.add_event(
            str(event.get("event")), {"provhub.provider": str(event.get("provider"))}
        )


_USAGE = (
    ("prompt_tokens", sc.USAGE_INPUT),
    ("completion_tokens", sc.USAGE_OUTPUT),
    ("cached_tokens", sc.USAGE_CACHE_READ),
    ("reasoning_tokens", sc.USAGE_REASONING),
)


def _set_provider(attrs: dict[str, Any], provider: str) -> None:
    name = sc.provider_name(provider)
    attrs[sc.PROVIDER_NAME] = name
    if name != provider:  # the registered name, where the conventions' value differs
        attrs["provhub.provider"] = provider


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _input_messages(messages: list[Any]) -> str:
    """The messages in the conventions' ``gen_ai.input.messages`` shape, as JSON.

    Only roles, text, tool calls and tool results: image parts are named, not
    copied (a data URL would be megabytes of attribute).
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role"))
        parts: list[dict[str, Any]] = []
        content = message.get("content")
        if isinstance(content, str):
            if role == "tool":
                parts.append(
                    {
                        "type": "tool_call_response",
                        "id": message.get("tool_call_id"),
                        "result": content,
                    }
                )
            else:
                parts.append({"type": "text", "content": content})
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    parts.append({"type": "text", "content": part.get("text")})
                elif isinstance(part, Mapping):
                    parts.append({"type": str(part.get("type"))})
        for call in message.get("tool_calls") or ():
            if isinstance(call, Mapping):
                function = call.get("function")
                function = function if isinstance(function, Mapping) else {}
                parts.append(
                    {
                        "type": "tool_call",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "arguments": function.get("arguments"),
                    }
                )
        out.append({"role": role, "parts": parts})
    return json.dumps(out, ensure_ascii=False, default=str)
