"""``Attempt``: one try of one provider, a value of a request's record.

Kept apart so that errors (``AllProvidersFailedError.attempts``), the run that
records attempts and the results that carry them all import it downward.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Attempt"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one provider within a request.

    ``ok`` marks the successful attempt; failed ones carry ``error_type`` (a
    stable class name), ``status``, ``retryable``, ``error`` (a short message),
    ``backoff_ms`` (the wait before the next try, None when none followed),
    ``kind`` (the failure kind's value, see :class:`~provhub.FailureKind`),
    ``model`` (the model id sent, which differs from the request's for a model
    group), ``cost`` (what the attempt cost per ``[prices]``, reported or
    estimated; None without a price or when nothing was answered) and
    ``skipped`` (the provider was not called: its circuit was open, it was over
    a limit, or its context window was too small; ``error`` says which).
    """

    number: int
    provider: str
    ok: bool
    error_type: str | None = None
    status: int | None = None
    retryable: bool = False
    error: str | None = None
    backoff_ms: float | None = None
    duration_ms: float = 0.0
    kind: str | None = None
    model: str | None = None
    cost: float | None = None
    skipped: bool = False
