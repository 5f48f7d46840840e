"""The ``Stream``: one request executed over a route plan (SPEC §4, §5, §7).

Runs attempts in plan order, retries with backoff, falls back only before the
first token reached the caller, updates health and emits events. The per-token
path does as little as possible: a type check, two counters, one list append.

Event levels follow what an operator needs at INFO: one event per successful
request (``stream.completed``, which carries ``ttft_ms``), and every failure,
retry and fallback at WARNING or above. The steps of a healthy request
(``route.planned``, ``attempt.started``, ``stream.first_token``) are DEBUG, so
INFO logging costs one log record per request.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from provhub._config import Timeouts
from provhub._context import bind_call, unbind_call
from provhub._errors import (
    AllProvidersFailedError,
    ProvhubError,
    ProviderError,
    ProviderSpecError,
    StreamInterruptedError,
)
from provhub._events import DEBUG, ERROR, INFO, WARNING
from provhub._router import Attempt, RoutePlan, backoff_delay
from provhub._spec import FinishReason, ProviderInfo, Usage
from provhub._transport import CancelToken, RequestTooLargeError, parse_retry_after

if TYPE_CHECKING:
    from provhub._hub import Hub

__all__ = ["Completion", "Stream", "as_provider_error"]

_END = object()
# Statuses that say the request is at fault, not the provider: they must not
# push a healthy provider's breaker towards open.
_REQUEST_FAULT = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class Completion:
    """The result of ``Hub.complete``: the whole answer and how it was produced."""

    text: str
    provider: str
    model: str
    request_id: str
    finish_reason: str | None
    usage: Usage | None
    attempts: tuple[Attempt, ...]

    def __str__(self) -> str:
        return self.text


def as_provider_error(exc: BaseException, provider: str) -> ProviderError:
    """Map anything a provider raised to a :class:`ProviderError` (cause chained)."""
    if isinstance(exc, ProviderError):
        if exc.provider is None:
            exc.provider = provider
        return exc
    error: ProviderError
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        error = ProviderError(
            f"HTTP {status}",
            provider=provider,
            status=status,
            retryable=status in (408, 409, 425, 429) or status >= 500,
            retry_after=parse_retry_after(exc.response.headers.get("retry-after")),
        )
    elif isinstance(exc, requests.Timeout | requests.ConnectionError | TimeoutError):
        error = ProviderError(f"{type(exc).__name__}", provider=provider, retryable=True)
    elif isinstance(exc, ProviderSpecError):
        error = ProviderError(f"broke the provider spec: {exc.reason}", provider=provider)
    elif isinstance(exc, ProvhubError):
        error = ProviderError(f"{type(exc).__name__}: {exc}", provider=provider)
    else:
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        error = ProviderError(
            f"provider raised {type(exc).__name__}" + (f": {text}" if text else ""),
            provider=provider,
        )
    error.__cause__ = exc
    return error


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


class Stream:
    """A streamed answer: iterate it for ``str`` tokens.

    Metadata is live during iteration and final after it: ``provider`` (of the
    current or final attempt), ``request_id``, ``attempts``, ``finish_reason``,
    ``usage``, ``text``. Use it as a context manager, or call :meth:`close`, to
    release the upstream connection when you stop early; a stream dropped
    unfinished releases it as soon as it is garbage.
    """

    __slots__ = ("_gen", "_run")

    def __init__(self, run: Run) -> None:
        self._run = run
        # The generator refers to the run, never to this object: no reference
        # cycle, so dropping an unfinished stream closes its connection at once
        # instead of at the next cyclic garbage collection.
        self._gen = run.execute()

    def __iter__(self) -> Iterator[str]:
        # Hand out the generator itself: no extra Python frame per token.
        return self._gen

    def __next__(self) -> str:
        return next(self._gen)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Stream request_id={self.request_id} model={self.model!r} "
            f"provider={self.provider!r} attempts={len(self.attempts)}>"
        )

    @property
    def request_id(self) -> str:
        """The request's id, as on its events."""
        return self._run.request_id

    @property
    def model(self) -> str:
        """The model asked for."""
        return self._run.model

    @property
    def provider(self) -> str | None:
        """Provider of the current or final attempt (None before the first)."""
        return self._run.provider

    @property
    def attempts(self) -> list[Attempt]:
        """Attempts so far, in order (the successful one included)."""
        return self._run.attempts

    @property
    def finish_reason(self) -> str | None:
        """Why the upstream stopped, when it said so."""
        return self._run.finish_reason

    @property
    def usage(self) -> Usage | None:
        """Token usage, when the upstream reported it."""
        return self._run.usage

    @property
    def plan(self) -> RoutePlan:
        """The route plan this request follows."""
        return self._run.plan

    @property
    def cancel_token(self) -> CancelToken:
        """Aborts the network call from another thread (used by ``astream``)."""
        return self._run.cancel_token

    @property
    def text(self) -> str:
        """Everything delivered so far."""
        return "".join(self._run.parts)

    def close(self) -> None:
        """Stop the stream and close the upstream connection (idempotent)."""
        self._gen.close()


class Run:
    """The execution state of one request, owned by the generator that runs it."""

    def __init__(
        self,
        hub: Hub,
        plan: RoutePlan,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        stream: bool,
        request_id: str,
        timeouts: Timeouts,
    ) -> None:
        self.request_id = request_id
        self.model = plan.model
        self.provider: str | None = None
        self.attempts: list[Attempt] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.plan = plan
        self.cancel_token = CancelToken()
        self.parts: list[str] = []
        self._hub = hub
        self._messages = messages
        self._params = params
        self._stream = stream
        self._timeouts = timeouts
        # Number of the attempt running or last run; 0 before the first.
        self._attempt_no = 0

    # -- execution ---------------------------------------------------------

    def _emit(self, level: int, event: str, **fields: Any) -> None:
        self._hub._emit(
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

    def execute(self) -> Generator[str, None, None]:
        hub = self._hub
        health = hub._health
        settings = hub.config.router
        started = time.monotonic()
        deadline = started + self._timeouts.total
        fields: dict[str, Any] = {
            "candidates": [c.name for c in self.plan.candidates],
            "excluded": [{"provider": n, "reason": r} for n, r in self.plan.excluded],
            "stream": self._stream,
        }
        if hub._emitter.log_content:
            fields["messages"] = self._messages
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
                error = yield from self._attempt(info, remaining)
                if error is None:
                    return
                last_error = error
                delay = None
                if error.retryable:
                    delay = backoff_delay(settings, retry, error.retry_after, hub._rng)
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
        self._emit(
            WARNING,
            "attempt.failed",
            error_type=error_type,
            error=error.detail,
            status=error.status,
            retryable=error.retryable,
            backoff_ms=backoff_ms,
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
            )
        )
        if error.status not in _REQUEST_FAULT and not isinstance(error, RequestTooLargeError):
            transition = self._hub._health.failure(info.name)
            if transition:
                self._emit(WARNING, transition, provider=info.name)
        else:
            self._hub._health.release(info.name)

    def _attempt(
        self, info: ProviderInfo, remaining: float
    ) -> Generator[str, None, ProviderError | None]:
        """Run one attempt; yields tokens, returns None on success or the error."""
        hub = self._hub
        name = info.name
        timeouts = self._timeouts
        if remaining < timeouts.total:
            # The attempt gets what is left of the request's deadline (built
            # directly: dataclasses.replace costs ~5 us on every request).
            timeouts = Timeouts(
                timeouts.connect, timeouts.first_token, timeouts.idle, max(remaining, 0.001)
            )
        context = hub._call_context(info, timeouts, self.request_id, self.cancel_token)
        self._attempt_no = len(self.attempts) + 1
        self._emit(DEBUG, "attempt.started")
        model = info.aliases.get(self.model, self.model)
        started = time.monotonic()
        chunk_events = hub._emitter.enabled_for(DEBUG)
        parts = self.parts
        delivered = 0
        chars = 0
        ttft: float | None = None
        iterator: Iterator[Any] | None = None
        completed = False
        hub._health.begin(name)
        try:
            token = bind_call(context)
            try:
                result = info.provider.create_completion(
                    model, self._messages, self._stream, **self._params
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
                        parts.append(item)
                        if chunk_events:
                            self._emit(DEBUG, "stream.chunk", index=delivered, chars=len(item))
                        yield item
                elif isinstance(item, FinishReason):
                    self.finish_reason = item.reason
                elif isinstance(item, Usage):
                    self.usage = item
                else:
                    raise ProviderSpecError(
                        name,
                        f"create_completion yielded {type(item).__name__}; "
                        "yield str tokens, FinishReason or Usage",
                    )
                item = next(iterator, _END)
            completed = True
        except GeneratorExit:
            # The caller closed the stream early (or dropped it): say so, so the
            # request's record (metrics, logs) has an end.
            self._emit(INFO, "stream.cancelled", chunks=delivered, chars=chars)
            raise
        except Exception as exc:
            error = as_provider_error(exc, name)
            if self.cancel_token.cancelled:
                hub._health.release(name)
                self._emit(INFO, "stream.cancelled", chunks=delivered, chars=chars)
                raise StreamInterruptedError(name, "".join(parts), error) from exc
            if delivered:
                self._emit(
                    ERROR,
                    "stream.interrupted",
                    chunks=delivered,
                    chars=chars,
                    error_type=_error_type(error),
                    status=error.status,
                )
                self._record_failure(info, error, None, time.monotonic() - started)
                raise StreamInterruptedError(name, "".join(parts), error) from exc
            return error
        finally:
            hub._health.end(name)
            if iterator is not None and hasattr(iterator, "close"):
                iterator.close()  # closes the HTTP response if still open
            if not completed:
                hub._health.release(name)
        duration = time.monotonic() - started
        transition = hub._health.success(name, ttft if ttft is not None else duration)
        if transition:
            self._emit(INFO, transition, provider=name)
        usage = self.usage
        self._emit(
            INFO,
            "stream.completed",
            ttft_ms=None if ttft is None else round(ttft * 1000, 3),
            chunks=delivered,
            chars=chars,
            duration_ms=round(duration * 1000, 3),
            finish_reason=self.finish_reason,
            usage=None
            if usage is None
            else {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        )
        # The successful attempt is part of the record too (``Attempt.ok``).
        self.attempts.append(
            Attempt(len(self.attempts) + 1, name, True, duration_ms=round(duration * 1000, 3))
        )
        return None
