"""provhub errors as OpenAI error objects with the right HTTP status (SPEC §13).

| status | when |
|---|---|
| 400 | bad JSON, parameters or messages; a capability no provider of the model has |
|     | (tools, images, a JSON schema); every provider refused the request itself |
| 401 | missing or wrong bearer key |
| 404 | no provider serves the model (``ModelNotFoundError``) |
| 413 | request body above ``[server] max_body_bytes`` |
| 429 | every attempt was rate limited, or every candidate is over its own limit |
|     | (``rpm``, ``tpm``, ``max_in_flight``: ``RateLimitedError``); with ``Retry-After`` |
| 502 | every provider failed (``AllProvidersFailedError``) |
| 503 | providers serve the model but none is available (``NoProviderError``, open breakers) |
| 504 | the request's deadline passed before the first token |
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from provhub import _openai
from provhub._errors import (
    AllProvidersFailedError,
    InvalidRequestError,
    ModelNotFoundError,
    NoProviderError,
    ProvhubError,
    RateLimitedError,
    StreamInterruptedError,
    UpstreamTimeoutError,
)

if TYPE_CHECKING:
    from provhub.gateway._limits import Deadline

__all__ = ["GatewayError", "from_exception", "from_failure"]


@dataclass(slots=True)
class GatewayError(Exception):
    """An HTTP error answer: status, OpenAI error fields, extra headers."""

    status: int
    message: str
    kind: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: Sequence[tuple[bytes, bytes]] = ()
    provider: str | None = None

    def body(self) -> bytes:
        """The JSON error object."""
        return _openai.error_body(self.message, self.kind, self.code, self.param)

    def event(self) -> bytes:
        """The same error as one SSE event (after the first token)."""
        return _openai.error_event(self.message, self.kind, self.code, self.param)


def deadline_error(seconds: float) -> GatewayError:
    """504: the request's deadline passed."""
    return GatewayError(
        504,
        f"the request took longer than its deadline of {seconds:g} s "
        "([server] deadline); try again, or raise the deadline",
        kind="timeout_error",
        code="deadline_exceeded",
    )


def from_failure(exc: BaseException, deadline: Deadline) -> GatewayError:
    """:func:`from_exception`, except that running out of the deadline is always a 504.

    The hub's own timeouts are capped by the request's deadline, so near it the
    hub's timer and the gateway's race: whichever notices first, a timeout at the
    deadline is the deadline's, not the upstream's failure.
    """
    cause = exc.cause if isinstance(exc, StreamInterruptedError) else exc.__cause__
    if deadline.passed() and isinstance(cause, UpstreamTimeoutError):
        return deadline_error(deadline.seconds)
    return from_exception(exc)


def from_exception(exc: BaseException) -> GatewayError:
    """Map an exception raised by the hub to the answer a client gets."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ModelNotFoundError):
        return GatewayError(404, str(exc), code="model_not_found", param="model")
    if isinstance(exc, InvalidRequestError):
        return GatewayError(400, str(exc), code="invalid_request", param=exc.param)
    if isinstance(exc, RateLimitedError):
        # Every candidate is over its limit (SPEC §14): the client may retry later.
        return GatewayError(
            429,
            str(exc),
            kind="rate_limit_error",
            code="rate_limit_exceeded",
            headers=_retry_after(exc.retry_after if exc.retry_after is not None else 1.0),
        )
    if isinstance(exc, NoProviderError):
        reasons = list(exc.excluded.values())
        if any(r.startswith("lacks capabilities") for r in reasons) and not any(
            "circuit" in r for r in reasons
        ):
            # What the request asks for (tools, images, a JSON schema) keeps the
            # providers out, and none is merely unavailable for now: the client
            # must change the request; waiting will not help.
            return GatewayError(400, str(exc), code="unsupported_capability")
        return GatewayError(
            503,
            str(exc),
            kind="service_unavailable_error",
            code="no_provider_available",
            headers=_retry_after(_cooldown(exc)),
        )
    if isinstance(exc, AllProvidersFailedError):
        return _all_failed(exc)
    if isinstance(exc, StreamInterruptedError):
        return GatewayError(
            502, str(exc), kind="upstream_error", code="stream_interrupted", provider=exc.provider
        )
    if isinstance(exc, ProvhubError):
        return GatewayError(502, str(exc), kind="upstream_error", code="upstream_error")
    return GatewayError(
        500,
        f"internal error ({type(exc).__name__}); see the server's log",
        kind="server_error",
        code="internal_error",
    )


def _all_failed(exc: AllProvidersFailedError) -> GatewayError:
    attempts = exc.attempts
    provider = attempts[-1].provider if attempts else None
    tried = [a for a in attempts if not a.skipped]
    if not tried:
        # Nothing was sent: every candidate was skipped (breaker open, over a limit).
        return GatewayError(
            503,
            str(exc),
            kind="service_unavailable_error",
            code="no_provider_available",
            headers=_retry_after(1.0),
            provider=provider,
        )
    kinds = {a.kind for a in tried}
    if kinds == {"context_length"} or kinds == {"content_policy"}:
        # The request is at fault wherever it goes: the client must change it.
        code = "context_length_exceeded" if kinds == {"context_length"} else "content_policy"
        return GatewayError(400, str(exc), code=code, provider=provider)
    if all(a.status == 429 or a.kind == "rate_limited" for a in tried):
        return GatewayError(
            429,
            str(exc),
            kind="rate_limit_error",
            code="rate_limit_exceeded",
            headers=_retry_after(_retry_after_of(exc)),
            provider=provider,
        )
    return GatewayError(
        502, str(exc), kind="upstream_error", code="all_providers_failed", provider=provider
    )


def _retry_after_of(exc: AllProvidersFailedError) -> float:
    # The typed RateLimitedError (SPEC §14) carries retry_after; until then the
    # chained ProviderError of the last attempt does.
    value = getattr(exc, "retry_after", None)
    cause = exc.__cause__
    if value is None and cause is not None:
        value = getattr(cause, "retry_after", None)
    return float(value) if isinstance(value, int | float) and value > 0 else 1.0


def _cooldown(exc: NoProviderError) -> float:
    return 1.0 if any("circuit" in reason for reason in exc.excluded.values()) else 0.0


def _retry_after(seconds: float) -> tuple[tuple[bytes, bytes], ...]:
    if seconds <= 0:
        return ()
    return ((b"retry-after", str(max(1, math.ceil(seconds))).encode()),)
