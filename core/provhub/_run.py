"""Executing one request over its route plan (SPEC §5, §7, §11).

A :class:`Run` tries the plan's candidates in order, retries with backoff,
falls back only before the first item reached the caller, updates health and
emits events. It gets everything it uses passed in (:class:`RunDeps`, the
validated :class:`~provhub._request.Request`, the plan); it never reaches back
into the hub.

The per-token path does as little as possible: a type check, two counters, one
list append. Event levels follow what an operator needs at INFO: one event per
successful request (``stream.completed``, which carries ``ttft_ms``), and every
failure, retry and fallback at WARNING or above. The steps of a healthy request
(``route.planned``, ``attempt.started``, ``stream.first_token``) are DEBUG.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from provhub._attempt import Attempt
from provhub._cancel import CancelToken
from provhub._config import RouterConfig, Timeouts
from provhub._context import CallContext, bind_call, unbind_call
from provhub._errors import (
    AllProvidersFailedError,
    ProviderError,
    ProviderSpecError,
    RequestTooLargeError,
    StreamInterruptedError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
    as_provider_error,
)
from provhub._events import DEBUG, ERROR, INFO, WARNING, EventEmitter
from provhub._health import Health
from provhub._request import Request
from provhub._router import RoutePlan, backoff_delay
from provhub._spec import (
    FinishReason,
    ProviderInfo,
    Reasoning,
    Refusal,
    StreamItem,
    ToolCallDelta,
    Usage,
)
from provhub._toolcalls import ToolCall, ToolCallAssembler

__all__ = ["Run", "RunDeps"]

_END = object()
# Statuses that say the request is at fault, not the provider: they must not
# push a healthy provider's breaker towards open.
_REQUEST_FAULT = frozenset({400, 413, 422})

CallContextFactory = Callable[[ProviderInfo, Timeouts, str, CancelToken], CallContext]


@dataclass(frozen=True, slots=True)
class RunDeps:
    """What a run uses from its hub: health, events, settings, randomness, call contexts."""

    health: Health
    emitter: EventEmitter
    settings: RouterConfig
    rng: random.Random
    call_context: CallContextFactory


def _error_type(error: ProviderError) -> str:
    """The ``error_type`` of an attempt: stable, whatever the HTTP stack raised inside.

    provhub's typed errors name themselves (``UpstreamConnectionError``, not the
    ``requests``/``urllib3`` exception chained below them); a plain
    :class:`ProviderError` wrapping what a provider raised names that exception.
    """
    cause = error.__cause__
    if type(error) is ProviderError and cause is not None:
        return type(cause).__name__
    return type(error).__name__


def _bad_item(name: str, reason: str) -> ProviderSpecError:
    return ProviderSpecError(name, reason)


def _check_delta(delta: ToolCallDelta, name: str) -> None:
    """Refuse a malformed fragment from a provider before it reaches the assembler."""
    index = delta.index
    if index is not None and (type(index) is not int or index < 0):
        raise _bad_item(name, "ToolCallDelta.index must be None or an int >= 0")
    if (delta.id is not None and type(delta.id) is not str) or (
        delta.name is not None and type(delta.name) is not str
    ):
        raise _bad_item(name, "ToolCallDelta.id and .name must be None or a str")
    if type(delta.arguments) is not str:
        raise _bad_item(name, "ToolCallDelta.arguments must be a str (a fragment of JSON text)")


class Run:
    """The execution state of one request, owned by the generator that runs it.

    Its records are live during the run and final after it: ``provider``,
    ``attempts``, ``items`` (everything delivered, in order), ``finish_reason``,
    ``usage``, and the assembled ``tool_calls``, ``reasoning`` and ``refusal``.
    """

    def __init__(
        self, deps: RunDeps, plan: RoutePlan, request: Request, *, request_id: str
    ) -> None:
        self.request_id = request_id
        self.request = request
        self.model = plan.model
        self.plan = plan
        self.provider: str | None = None
        self.attempts: list[Attempt] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.cancel_token = CancelToken()
        self.items: list[StreamItem] = []
        self._reasoning: list[str] = []
        self._refusal: list[str] = []
        self._tool_calls: ToolCallAssembler | None = None
        self._deps = deps
        self._timeouts = request.timeouts or deps.settings.timeouts
        # Number of the attempt running or last run; 0 before the first.
        self._attempt_no = 0

    # -- records -----------------------------------------------------------

    @property
    def text(self) -> str:
        """The text delivered so far."""
        return "".join([item for item in self.items if type(item) is str])

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Tool calls assembled from the fragments delivered so far."""
        return [] if self._tool_calls is None else self._tool_calls.calls()

    @property
    def reasoning(self) -> str | None:
        """The reasoning text delivered so far, or None when there was none."""
        return "".join(self._reasoning) if self._reasoning else None

    @property
    def refusal(self) -> str | None:
        """The refusal text delivered so far, or None when there was none."""
        return "".join(self._refusal) if self._refusal else None

    # -- execution ---------------------------------------------------------

    def _emit(self, level: int, event: str, **fields: Any) -> None:
        self._deps.emitter.emit(
            level,
            event,
            {
                "request_id": self.request_id,
                "model": self.model,
                "provider": self.provider,
                "attempt": self._attempt_no,
                **fields,
            },
        )

    def execute(self, *, text_only: bool) -> Generator[StreamItem, None, None]:
        """Run the request, yielding text (``text_only``) or every item."""
        deps = self._deps
        health = deps.health
        settings = deps.settings
        started = time.monotonic()
        deadline = started + self._timeouts.total
        fields: dict[str, Any] = {
            "candidates": [c.name for c in self.plan.candidates],
            "excluded": [{"provider": n, "reason": r} for n, r in self.plan.excluded],
            "stream": self.request.stream,
        }
        if deps.emitter.log_content:
            fields["messages"] = list(self.request.messages)
        self._emit(DEBUG, "route.planned", **fields)
        previous: str | None = None
        # The last failure becomes the __cause__ of AllProvidersFailedError, so a
        # traceback shows what finally went wrong (the others are in .attempts).
        last_error: ProviderError | None = None
        for info in self.plan.candidates:
            if previous is not None:
                self._emit(WARNING, "route.fallback", from_provider=previous, to_provider=info.name)
            previous = info.name
            retry = 0
            while not self.cancel_token.cancelled:
                allowed, transition = health.acquire(info.name)
                if transition:
                    self._emit(WARNING, transition, provider=info.name)
                if not allowed:
                    self.attempts.append(
                        Attempt(
                            len(self.attempts) + 1,
                            info.name,
                            False,
                            "CircuitOpen",
                            error="circuit open",
                        )
                    )
                    break
                self.provider = info.name
                attempt_started = time.monotonic()
                remaining = deadline - attempt_started
                error = yield from self._attempt(info, remaining, text_only)
                if error is None:
                    return
                last_error = error
                delay = None
                if error.retryable:
                    delay = backoff_delay(settings, retry, error.retry_after, deps.rng)
                    if delay is not None and delay >= deadline - time.monotonic():
                        delay = None
                self._record_failure(info, error, delay, time.monotonic() - attempt_started)
                if delay is None or self.cancel_token.event.wait(delay):
                    break
                retry += 1
            if self.cancel_token.cancelled or time.monotonic() >= deadline:
                break
        self._emit(ERROR, "route.exhausted", attempts=len(self.attempts))
        raise AllProvidersFailedError(self.model, self.attempts) from last_error

    def _record_failure(
        self, info: ProviderInfo, error: ProviderError, delay: float | None, duration: float
    ) -> None:
        backoff_ms = None if delay is None else round(delay * 1000, 3)
        error_type = _error_type(error)
        kind = None if error.kind is None else str(error.kind)
        self._emit(
            WARNING,
            "attempt.failed",
            error_type=error_type,
            error=error.detail,
            status=error.status,
            retryable=error.retryable,
            backoff_ms=backoff_ms,
            kind=kind,
        )
        self.attempts.append(
            Attempt(
                len(self.attempts) + 1,
                info.name,
                False,
                error_type,
                error.status,
                error.retryable,
                error.detail,
                backoff_ms,
                round(duration * 1000, 3),
                kind,
            )
        )
        health = self._deps.health
        if error.status not in _REQUEST_FAULT and not isinstance(error, RequestTooLargeError):
            transition = health.failure(info.name)
            if transition:
                self._emit(WARNING, transition, provider=info.name)
        else:
            health.release(info.name)

    def _take(self, item: Any, name: str) -> StreamItem:
        """Record a non-text item; return it as the caller sees it."""
        kind = type(item)
        if isinstance(item, ToolCallDelta):
            _check_delta(item, name)
            assembler = self._tool_calls
            if assembler is None:
                assembler = self._tool_calls = ToolCallAssembler()
            item = assembler.add(item)
        elif isinstance(item, Reasoning | Refusal):
            if type(item.text) is not str:
                raise _bad_item(name, f"{kind.__name__}.text must be a str")
            (self._reasoning if isinstance(item, Reasoning) else self._refusal).append(item.text)
        elif isinstance(item, FinishReason):
            if type(item.reason) is not str:
                raise _bad_item(name, "FinishReason.reason must be a str")
            self.finish_reason = item.reason
        elif isinstance(item, Usage):
            self.usage = item
        else:
            raise _bad_item(
                name,
                f"create_completion yielded {kind.__name__}; yield str tokens, "
                "FinishReason, Usage, ToolCallDelta, Reasoning or Refusal",
            )
        self.items.append(item)
        return item  # type: ignore[no-any-return]

    def _attempt(
        self, info: ProviderInfo, remaining: float, text_only: bool
    ) -> Generator[StreamItem, None, ProviderError | None]:
        """Run one attempt; yields items, returns None on success or the error."""
        deps = self._deps
        health = deps.health
        name = info.name
        timeouts = self._timeouts
        if remaining < timeouts.total:
            # The attempt gets what is left of the request's deadline (built
            # directly: dataclasses.replace costs ~5 us on every request).
            timeouts = Timeouts(
                timeouts.connect, timeouts.first_token, timeouts.idle, max(remaining, 0.001)
            )
        context = deps.call_context(info, timeouts, self.request_id, self.cancel_token)
        self._attempt_no = len(self.attempts) + 1
        model = info.aliases.get(self.model, self.model)
        self._emit(DEBUG, "attempt.started", upstream_model=model)
        started = time.monotonic()
        chunk_events = deps.emitter.enabled_for(DEBUG)
        items = self.items
        take = self._take
        delivered = 0  # text chunks
        others = 0  # other items
        chars = 0
        ttft: float | None = None
        iterator: Iterator[Any] | None = None
        completed = False
        finished = False  # the upstream said why it stopped (a finish reason)
        request = self.request
        health.begin(name)
        try:
            token = bind_call(context)
            try:
                result = info.provider.create_completion(
                    model, request.provider_messages(), request.stream, **request.params
                )
                iterator = iter(result)
                item = next(iterator, _END)
            finally:
                unbind_call(token)
            while item is not _END:
                if type(item) is str:
                    if item:
                        if ttft is None:
                            ttft = time.monotonic() - started
                            self._emit(DEBUG, "stream.first_token", ttft_ms=round(ttft * 1000, 3))
                        delivered += 1
                        chars += len(item)
                        items.append(item)
                        if chunk_events:
                            self._emit(DEBUG, "stream.chunk", index=delivered, chars=len(item))
                        yield item
                else:
                    taken = take(item, name)
                    others += 1
                    if type(taken) is FinishReason:
                        finished = True
                    if ttft is None and not isinstance(taken, FinishReason | Usage):
                        ttft = time.monotonic() - started
                        self._emit(DEBUG, "stream.first_token", ttft_ms=round(ttft * 1000, 3))
                    if not text_only:
                        yield taken
                item = next(iterator, _END)
            completed = True
        except GeneratorExit:
            # The caller closed the stream early (or dropped it): say so, so the
            # request's record (metrics, logs) has an end.
            self._emit(INFO, "stream.cancelled", chunks=delivered, chars=chars)
            raise
        except Exception as exc:
            error = self._masked(as_provider_error(exc, name), context)
            if self.cancel_token.cancelled:
                health.release(name)
                self._emit(INFO, "stream.cancelled", chunks=delivered, chars=chars)
                raise self._interrupted(name, error) from exc
            if finished and isinstance(error, UpstreamTimeoutError | UpstreamConnectionError):
                # The answer is whole once its finish reason arrived: a stall or a
                # broken connection after it (an overstated Content-Length, no
                # [DONE]) costs at most the usage chunk, never the answer.
                self._emit(
                    WARNING,
                    "stream.tail_failed",
                    error_type=_error_type(error),
                    error=error.detail,
                    chunks=delivered,
                )
                completed = True
            elif delivered or others:
                # SPEC §11: once any item reached the caller, no retry or fallback.
                self._emit(
                    ERROR,
                    "stream.interrupted",
                    chunks=delivered,
                    chars=chars,
                    error_type=_error_type(error),
                    status=error.status,
                )
                self._record_failure(info, error, None, time.monotonic() - started)
                raise self._interrupted(name, error) from exc
            else:
                return error
        finally:
            health.end(name)
            if iterator is not None and hasattr(iterator, "close"):
                iterator.close()  # closes the HTTP response if still open
            if not completed:
                health.release(name)
        duration = time.monotonic() - started
        transition = health.success(name, ttft if ttft is not None else duration)
        if transition:
            self._emit(INFO, transition, provider=name)
        usage = self.usage
        extra: dict[str, Any] = {}
        if self._tool_calls is not None:
            extra["tool_calls"] = len(self._tool_calls)
        self._emit(
            INFO,
            "stream.completed",
            ttft_ms=None if ttft is None else round(ttft * 1000, 3),
            chunks=delivered,
            chars=chars,
            duration_ms=round(duration * 1000, 3),
            finish_reason=self.finish_reason,
            usage=None if usage is None else usage.as_dict(),
            **extra,
        )
        # The successful attempt is part of the record too (``Attempt.ok``).
        self.attempts.append(
            Attempt(len(self.attempts) + 1, name, True, duration_ms=round(duration * 1000, 3))
        )
        return None

    def _interrupted(self, name: str, error: ProviderError) -> StreamInterruptedError:
        return StreamInterruptedError(
            name, self.text, error, items=self.items, tool_calls=self.tool_calls
        )

    @staticmethod
    def _masked(error: ProviderError, context: CallContext) -> ProviderError:
        """``error`` with the call's credentials masked in its message and body.

        Whatever produced the text (an HTTP body, a reason phrase, an error object
        inside a stream, a provider's own message), an echoed key stops here.
        """
        secrets = context.secrets()
        if secrets:
            error.detail = secrets.mask(error.detail)
            error.body = secrets.mask(error.body)
            error.args = tuple(
                secrets.mask(arg) if isinstance(arg, str) else arg for arg in error.args
            )
        return error
