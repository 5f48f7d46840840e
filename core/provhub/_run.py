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

import contextlib
import random
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from provhub._attempt import Attempt
from provhub._cancel import CancelToken
from provhub._config import Price, RouterConfig, Timeouts
from provhub._context import CallContext, bind_call, unbind_call
from provhub._errors import (
    AllProvidersFailedError,
    FailureKind,
    ProviderError,
    ProviderSpecError,
    RequestTooLargeError,
    StreamInterruptedError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
    as_provider_error,
)
from provhub._events import DEBUG, ERROR, INFO, WARNING, EventEmitter
from provhub._prices import cost_of, estimated_usage, price_for
from provhub._request import Request
from provhub._router import Candidate, RoutePlan, backoff_delay, fits_after
from provhub._spec import (
    FinishReason,
    ProviderInfo,
    Reasoning,
    Refusal,
    StreamItem,
    ToolCallDelta,
    Usage,
)
from provhub._state import Lease, MemoryStateStore, Outcome, Skip, StateStore, Verdict
from provhub._suspend import Sleep, Suspend
from provhub._toolcalls import ToolCall, ToolCallAssembler

__all__ = ["Run", "RunDeps"]

_END = object()
# Statuses that say the request is at fault, not the provider: they must not
# push a healthy provider's breaker towards open.
_REQUEST_FAULT = frozenset({400, 413, 422})
# Failure kinds that blame the request, not the provider (SPEC §14).
_REQUEST_KINDS = frozenset({FailureKind.CONTEXT_LENGTH, FailureKind.CONTENT_POLICY})
# Seconds a lease outlives its request's deadline before a shared store expires it
# (only a crashed process leaves a lease unfinished).
_LEASE_MARGIN = 5.0

CallContextFactory = Callable[[ProviderInfo, Timeouts, str, CancelToken, bool], CallContext]


@dataclass(frozen=True, slots=True)
class RunDeps:
    """What a run uses from its hub: state, events, settings, randomness, call
    contexts and prices."""

    state: StateStore
    emitter: EventEmitter
    settings: RouterConfig
    rng: random.Random
    call_context: CallContextFactory
    prices: Mapping[str, Price] = field(default_factory=dict)


def outcome_of(error: ProviderError) -> Outcome:
    """What a failed attempt means for the provider's breaker (SPEC §14).

    The request's fault (400/413/422, too large, ``context_length``,
    ``content_policy``) changes nothing; ``auth`` counts on this hub's own
    breaker only (other hubs may hold a good key); ``rate_limited`` with a
    ``Retry-After`` is not a fault but a cooldown. A ``Retry-After`` always
    becomes a cooldown every hub on the store honours.
    """
    kind = error.kind
    if (
        error.status in _REQUEST_FAULT
        or isinstance(error, RequestTooLargeError)
        or kind in _REQUEST_KINDS
    ):
        verdict = Verdict.NEUTRAL
    elif kind is FailureKind.AUTH:
        verdict = Verdict.LOCAL_FAILURE
    elif kind is FailureKind.RATE_LIMITED and error.retry_after is not None:
        verdict = Verdict.NEUTRAL
    else:
        verdict = Verdict.FAILURE
    return Outcome(verdict, cooldown=error.retry_after or None)


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
        self,
        deps: RunDeps,
        plan: RoutePlan,
        request: Request,
        *,
        request_id: str,
        lease: Lease | None = None,
        prompt_tokens: int = 0,
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
        # The admission of plan.candidates[0], taken when the plan was made; the
        # run owns it from its start (or gives it back, unused, if never started).
        self._lease = lease
        self._prompt_tokens = prompt_tokens
        self._price: Price | None = None
        # Driven by the event loop (provhub._suspend): the run yields Suspend
        # objects where it would block, and its providers' calls do too.
        self.suspend = False

    def __del__(self) -> None:
        # A stream dropped before its first item: give the admission back.
        if getattr(self, "_lease", None) is not None:
            self.abandon()

    def abandon(self) -> None:
        """Give back the admission of a run that never started (idempotent)."""
        lease, self._lease = self._lease, None
        if lease is not None and not lease.done:
            # Also called at garbage collection, where nothing may raise.
            with contextlib.suppress(Exception):
                self._deps.state.finish(lease, Outcome(Verdict.UNUSED))

    def can_suspend(self) -> bool:
        """Whether an event loop can drive this run itself (:mod:`provhub._suspend`).

        True when every candidate declares ``asyncio_native`` and the state store
        never waits on the network.
        """
        return isinstance(self._deps.state, MemoryStateStore) and all(
            getattr(c.info.provider, "asyncio_native", False) is True for c in self.plan.candidates
        )

    @property
    def cost(self) -> float | None:
        """What the attempts cost per ``[prices]`` (None when none was priced)."""
        costs = [a.cost for a in self.attempts if a.cost is not None]
        return round(sum(costs), 8) if costs else None

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
        state = deps.state
        settings = deps.settings
        started = time.monotonic()
        deadline = started + self._timeouts.total
        fields: dict[str, Any] = {
            "candidates": [c.label for c in self.plan.candidates],
            "excluded": [{"provider": n, "reason": r} for n, r in self.plan.excluded],
            "stream": self.request.stream,
        }
        if deps.emitter.log_content:
            fields["messages"] = list(self.request.messages)
        self._emit(DEBUG, "route.planned", **fields)
        candidates = self.plan.candidates
        tokens = self.plan.tokens
        lease, self._lease = self._lease, None
        # A failed attempt whose finish rides on the next acquire (one round trip).
        pending: tuple[Lease, Outcome] | None = None
        previous: Candidate | None = None
        # The last failure becomes the __cause__ of AllProvidersFailedError, so a
        # traceback shows what finally went wrong (the others are in .attempts).
        last_error: ProviderError | None = None
        position = 0
        try:
            while position < len(candidates) and not self.cancel_token.cancelled:
                if lease is None:
                    rest = self._fitting(candidates[position:], previous, last_error)
                    ttl = deadline - time.monotonic() + _LEASE_MARGIN
                    got = state.acquire(rest, tokens=tokens, ttl=ttl, finish=pending)
                    pending = None
                    self._transitions(got.transitions)
                    for skip in got.skipped:
                        self._record_skip(rest[skip.index], skip)
                    if got.lease is None or got.index is None:
                        break
                    lease = got.lease
                    chosen = rest[got.index]
                    while candidates[position] is not chosen:
                        position += 1
                candidate = candidates[position]
                if previous is not None and previous is not candidate:
                    self._emit(
                        WARNING,
                        "route.fallback",
                        from_provider=previous.name,
                        to_provider=candidate.name,
                    )
                previous = candidate
                retry = 0
                while lease is not None:
                    self.provider = candidate.name
                    attempt_started = time.monotonic()
                    remaining = deadline - attempt_started
                    error = yield from self._attempt(candidate, lease, remaining, text_only)
                    if error is None:
                        return
                    last_error = error
                    delay = None
                    if error.retryable:
                        delay = backoff_delay(settings, retry, error.retry_after, deps.rng)
                        if delay is not None and delay >= deadline - time.monotonic():
                            delay = None
                    self._record_failure(
                        candidate, error, delay, time.monotonic() - attempt_started
                    )
                    outcome = outcome_of(error)
                    if delay is None:
                        pending, lease = (lease, outcome), None
                        break
                    self._transitions(state.finish(lease, outcome))
                    lease = None
                    if self.suspend:
                        try:
                            yield Sleep(delay)  # type: ignore[misc]
                        except GeneratorExit:
                            self._emit(INFO, "stream.cancelled", chunks=0, chars=0)
                            raise
                        if self.cancel_token.cancelled:
                            break
                    elif self.cancel_token.event.wait(delay):
                        break
                    retry += 1
                    ttl = deadline - time.monotonic() + _LEASE_MARGIN
                    # retry=True: the cooldown this provider's Retry-After set was
                    # just waited out by this very request.
                    got = state.acquire(
                        [candidate], tokens=tokens, ttl=ttl, retry=error.retry_after is not None
                    )
                    self._transitions(got.transitions)
                    for skip in got.skipped:
                        self._record_skip(candidate, skip)
                    lease = got.lease
                position += 1
                if self.cancel_token.cancelled or time.monotonic() >= deadline:
                    break
        finally:
            if pending is not None:
                self._transitions(state.finish(*pending))
            if lease is not None and not lease.done:
                self._transitions(state.finish(lease, Outcome(Verdict.NEUTRAL)))
        self._emit(ERROR, "route.exhausted", attempts=len(self.attempts))
        raise AllProvidersFailedError(self.model, self.attempts) from last_error

    def _fitting(
        self,
        rest: tuple[Candidate, ...],
        failed: Candidate | None,
        error: ProviderError | None,
    ) -> list[Candidate]:
        """The candidates a fallback may go to: after ``context_length``, larger windows."""
        if failed is None or error is None or error.kind is not FailureKind.CONTEXT_LENGTH:
            return list(rest)
        fitting: list[Candidate] = []
        for candidate in rest:
            reason = fits_after(failed, error, candidate)
            if reason is None:
                fitting.append(candidate)
            else:
                self._record_skip(candidate, Skip(0, reason, None, False), "ContextWindow")
        return fitting

    def _transitions(self, transitions: tuple[tuple[str, str], ...]) -> None:
        for event, provider in transitions:
            level = INFO if event == "circuit.closed" else WARNING
            self._emit(level, event, provider=provider)

    def _record_skip(self, candidate: Candidate, skip: Skip, error_type: str | None = None) -> None:
        """A candidate the run did not call: its breaker, a limit, or its window."""
        if error_type is None:
            error_type = "LimitReached" if skip.limited else "CircuitOpen"
        self.attempts.append(
            Attempt(
                len(self.attempts) + 1,
                candidate.name,
                False,
                error_type,
                error=skip.reason,
                kind=str(FailureKind.RATE_LIMITED) if skip.limited else None,
                model=candidate.model,
                skipped=True,
            )
        )

    def _record_failure(
        self,
        candidate: Candidate,
        error: ProviderError,
        delay: float | None,
        duration: float,
        cost: float | None = None,
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
                candidate.name,
                False,
                error_type,
                error.status,
                error.retryable,
                error.detail,
                backoff_ms,
                round(duration * 1000, 3),
                kind,
                candidate.model,
                cost,
            )
        )

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
            price = self._price
            if price is not None and item.cost is None:
                cost = cost_of(item, price)
                if cost is not None:
                    item = replace(item, cost=cost)
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
        self, candidate: Candidate, lease: Lease, remaining: float, text_only: bool
    ) -> Generator[StreamItem, None, ProviderError | None]:
        """Run one attempt; yields items, returns None on success or the error.

        The attempt finishes its lease itself when it ends the request (success,
        interruption, cancellation); a failure before any item is handed back
        with the lease unfinished, for the run to finish (with the next acquire).
        """
        deps = self._deps
        info = candidate.info
        name = info.name
        timeouts = self._timeouts
        if remaining < timeouts.total:
            # The attempt gets what is left of the request's deadline (built
            # directly: dataclasses.replace costs ~5 us on every request).
            timeouts = Timeouts(
                timeouts.connect, timeouts.first_token, timeouts.idle, max(remaining, 0.001)
            )
        suspend = self.suspend
        context = deps.call_context(info, timeouts, self.request_id, self.cancel_token, suspend)
        self._attempt_no = len(self.attempts) + 1
        model = info.aliases.get(candidate.model, candidate.model)
        self._emit(DEBUG, "attempt.started", upstream_model=model)
        prices = deps.prices
        self._price = price_for(prices, name, model, self.model) if prices else None
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
        handed_back = False
        finished = False  # the upstream said why it stopped (a finish reason)
        request = self.request
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
                elif suspend and isinstance(item, Suspend):
                    yield item  # type: ignore[misc]  # the event loop waits on it
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
                cost, estimated = self._cost(chars)
                self._emit(
                    ERROR,
                    "stream.interrupted",
                    chunks=delivered,
                    chars=chars,
                    error_type=_error_type(error),
                    status=error.status,
                    cost=cost,
                    **({} if cost is None else {"cost_estimated": estimated}),
                )
                self._record_failure(candidate, error, None, time.monotonic() - started, cost)
                outcome = outcome_of(error)
                self._transitions(
                    deps.state.finish(
                        lease, Outcome(outcome.verdict, None, self._used(chars), outcome.cooldown)
                    )
                )
                raise self._interrupted(name, error) from exc
            else:
                handed_back = True
                return error
        finally:
            if iterator is not None and hasattr(iterator, "close"):
                iterator.close()  # closes the HTTP response if still open
            if not completed and not handed_back and not lease.done:
                # Cancelled or closed by the caller: no verdict on the provider.
                deps.state.finish(lease, Outcome(Verdict.NEUTRAL, tokens=self._used(chars)))
        duration = time.monotonic() - started
        self._transitions(
            deps.state.finish(
                lease,
                Outcome(
                    Verdict.SUCCESS,
                    ttft if ttft is not None else duration,
                    self._used(chars),
                ),
            )
        )
        usage = self.usage
        cost, estimated = self._cost(chars)
        extra: dict[str, Any] = {}
        if self._tool_calls is not None:
            extra["tool_calls"] = len(self._tool_calls)
        if cost is not None:
            extra["cost_estimated"] = estimated
        if candidate.member:
            extra["served_model"] = candidate.label
        self._emit(
            INFO,
            "stream.completed",
            ttft_ms=None if ttft is None else round(ttft * 1000, 3),
            chunks=delivered,
            chars=chars,
            duration_ms=round(duration * 1000, 3),
            finish_reason=self.finish_reason,
            usage=None if usage is None else usage.as_dict(),
            cost=cost,
            **extra,
        )
        # The successful attempt is part of the record too (``Attempt.ok``).
        self.attempts.append(
            Attempt(
                len(self.attempts) + 1,
                name,
                True,
                duration_ms=round(duration * 1000, 3),
                model=candidate.model,
                cost=cost,
            )
        )
        return None

    def _used(self, chars: int) -> int | None:
        """Tokens the attempt used, for ``tpm``: as reported, else estimated."""
        usage = self.usage
        if usage is not None:
            if usage.total_tokens is not None:
                return usage.total_tokens
            if usage.prompt_tokens is not None or usage.completion_tokens is not None:
                return (usage.prompt_tokens or 0) + (usage.completion_tokens or 0)
        if not self.plan.tokens:
            return None  # nothing reserved, nothing to reconcile
        return estimated_usage(self._prompt_tokens, chars).total_tokens

    def _cost(self, chars: int) -> tuple[float | None, bool]:
        """The attempt's cost and whether it is an estimate (no usage reported)."""
        price = self._price
        if price is None:
            return None, False
        usage = self.usage
        if usage is not None:
            cost = usage.cost if usage.cost is not None else cost_of(usage, price)
            if cost is not None:
                return cost, False
        return cost_of(estimated_usage(self._prompt_tokens, chars), price), True

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
