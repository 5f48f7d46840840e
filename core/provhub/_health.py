"""Provider health: circuit breakers, latency statistics, in-flight counts.

A sans-I/O state machine (SPEC §5): N consecutive failures open the breaker for
a cooldown, then exactly one half-open trial decides between closed and open
again. The clock is injectable so tests need no sleeps. One ``Health`` belongs
to one state store (:mod:`provhub._state`), which belongs to one ``Hub``; every
method is thread-safe.

A provider can also *cool down*: an upstream that answered with ``Retry-After``
is skipped until then (SPEC §14, ``rate_limited`` honours ``retry_after``),
without counting as a failure. The Redis store keeps the same state machine in
a server-side script; the reason texts below are shared so both read alike.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TRIAL_REASON", "BreakerState", "Health", "cooldown_reason", "open_reason"]

TRIAL_REASON = "circuit half-open: a trial request is in flight"


def open_reason(failures: int, remaining: float) -> str:
    """Why an open breaker excludes a provider."""
    return f"circuit open after {failures} failures (retry in {remaining:.1f} s)"


def cooldown_reason(remaining: float) -> str:
    """Why a provider that asked to wait (``Retry-After``) is skipped."""
    return f"the upstream asked to wait (retry in {remaining:.1f} s)"


class BreakerState(enum.StrEnum):
    """State of a provider's circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class _ProviderHealth:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False
    ttft: float | None = None
    in_flight: int = 0
    cooldown_until: float = 0.0


# Weight of the newest time-to-first-token sample in the moving average: recent
# enough to react within a few requests, smooth enough to ignore one outlier.
_EWMA_WEIGHT = 0.3


class Health:
    """Breakers and statistics for every provider of one hub."""

    def __init__(
        self,
        *,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._providers: dict[str, _ProviderHealth] = {}

    def _get(self, name: str) -> _ProviderHealth:
        health = self._providers.get(name)
        if health is None:
            health = self._providers.setdefault(name, _ProviderHealth())
        return health

    def state(self, name: str) -> BreakerState:
        """Current breaker state (an expired open breaker reads as half-open)."""
        health = self._providers.get(name)
        if health is None:
            return BreakerState.CLOSED
        if health.state is BreakerState.OPEN and self._clock() - health.opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return health.state

    def exclusion(self, name: str) -> str | None:
        """Why the breaker keeps ``name`` out of a plan right now, or None."""
        health = self._providers.get(name)
        if health is None or health.state is BreakerState.CLOSED:
            return None
        if health.state is BreakerState.OPEN:
            remaining = self.cooldown - (self._clock() - health.opened_at)
            if remaining > 0:
                return open_reason(health.failures, remaining)
            return None
        return TRIAL_REASON if health.trial_in_flight else None

    def open_remaining(self, name: str) -> float | None:
        """Seconds until an open breaker allows a trial, or None when it is not open."""
        health = self._providers.get(name)
        if health is None or health.state is not BreakerState.OPEN:
            return None
        remaining = self.cooldown - (self._clock() - health.opened_at)
        return remaining if remaining > 0 else None

    def cool_down(self, name: str, seconds: float) -> None:
        """Skip ``name`` for ``seconds`` (the upstream's ``Retry-After``)."""
        with self._lock:
            health = self._get(name)
            health.cooldown_until = max(health.cooldown_until, self._clock() + seconds)

    def cooling(self, name: str) -> float | None:
        """Seconds left of a cooldown, or None when there is none."""
        health = self._providers.get(name)
        if health is None:
            return None
        remaining = health.cooldown_until - self._clock()
        return remaining if remaining > 0 else None

    def acquire(self, name: str) -> tuple[bool, str | None]:
        """Ask to send a request to ``name``.

        Returns ``(allowed, transition)``: ``transition`` is ``"circuit.half_open"``
        when this call starts the one trial of a half-open breaker.
        """
        with self._lock:
            health = self._get(name)
            if health.state is BreakerState.CLOSED:
                return True, None
            if health.state is BreakerState.OPEN:
                if self._clock() - health.opened_at < self.cooldown:
                    return False, None
                health.state = BreakerState.HALF_OPEN
                health.trial_in_flight = True
                return True, "circuit.half_open"
            if health.trial_in_flight:
                return False, None
            health.trial_in_flight = True
            return True, None

    def success(self, name: str, ttft: float | None = None) -> str | None:
        """Record a success; returns ``"circuit.closed"`` if it closed the breaker."""
        with self._lock:
            health = self._get(name)
            if ttft is not None:
                health.ttft = (
                    ttft
                    if health.ttft is None
                    else health.ttft + _EWMA_WEIGHT * (ttft - health.ttft)
                )
            health.failures = 0
            health.trial_in_flight = False
            if health.state is not BreakerState.CLOSED:
                health.state = BreakerState.CLOSED
                return "circuit.closed"
            return None

    def failure(self, name: str) -> str | None:
        """Record a failure; returns ``"circuit.opened"`` if it opened the breaker."""
        with self._lock:
            health = self._get(name)
            health.failures += 1
            health.trial_in_flight = False
            reopen = health.state is BreakerState.HALF_OPEN
            if reopen or (
                health.state is BreakerState.CLOSED and health.failures >= self.threshold
            ):
                health.state = BreakerState.OPEN
                health.opened_at = self._clock()
                return "circuit.opened"
            return None

    def release(self, name: str) -> None:
        """End a trial that ended neither in success nor failure (e.g. abandoned)."""
        with self._lock:
            self._get(name).trial_in_flight = False

    def begin(self, name: str) -> None:
        """Count a request in flight (for ``least_busy``)."""
        with self._lock:
            self._get(name).in_flight += 1

    def end(self, name: str) -> None:
        """Count a request finished."""
        with self._lock:
            self._get(name).in_flight -= 1

    def in_flight(self, name: str) -> int:
        """Requests currently in flight to ``name``."""
        health = self._providers.get(name)
        return health.in_flight if health else 0

    def ttft(self, name: str) -> float | None:
        """Moving average of time to first token in seconds, None before any sample."""
        health = self._providers.get(name)
        return health.ttft if health else None

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Plain-data view of every provider's health (for status displays)."""
        return {
            name: {
                "state": str(self.state(name)),
                "consecutive_failures": h.failures,
                "ttft_ms": None if h.ttft is None else round(h.ttft * 1000, 3),
                "in_flight": h.in_flight,
            }
            for name, h in list(self._providers.items())
        }
