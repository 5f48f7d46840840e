"""The state store seam (SPEC §15): breakers, limit counters, latency, in-flight counts.

A :class:`StateStore` decides, for an ordered list of candidates, which one a
request may use now, and takes it atomically (the *plan/acquire* phase); when
the attempt ends it is told the outcome (the *finish* phase). A fallback does
both in one call: finish the failed attempt and acquire the next candidate. So
a store that lives elsewhere (Redis, :mod:`provhub._state_redis`) needs one
round trip per phase. Every hub has one store; :class:`MemoryStateStore` is the
default and the fallback of the Redis store while Redis is unreachable.

Rate windows are *sliding logs*: a request counts against ``rpm`` for exactly
the 60 seconds after it was admitted, so no 60-second span ever admits more
than the limit (a fixed window admits up to twice the limit around its edge).
``tpm`` is the same log weighted by tokens: a request reserves its estimate
when admitted and the finish reconciles it with the reported usage. A window
with nothing in it admits one request whatever its estimate, so a request
larger than the whole ``tpm`` limit is not refused forever.
"""

from __future__ import annotations

import enum
import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from provhub._health import TRIAL_REASON, BreakerState, Health, cooldown_reason
from provhub._limits import Scope

__all__ = [
    "Acquired",
    "Lease",
    "MemoryStateStore",
    "Outcome",
    "Skip",
    "Slot",
    "StateStore",
    "Verdict",
    "limit_reason",
]

WINDOW = 60.0
"""Seconds of the ``rpm``/``tpm`` window."""

EmitFn = Callable[[int, str, Mapping[str, Any]], None]


class Verdict(enum.StrEnum):
    """How an attempt ended, as far as health and limits care."""

    SUCCESS = "ok"
    FAILURE = "fail"
    LOCAL_FAILURE = "local"
    """Counts on this hub's own breaker only (``auth``: other hubs may hold a good key)."""
    NEUTRAL = "neutral"
    """The request's fault, or cancelled: no breaker change."""
    UNUSED = "unused"
    """Nothing was sent: the request's ``rpm`` and ``tpm`` charges are refunded."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt: verdict, time to first token, tokens really used,
    and ``cooldown`` seconds the upstream asked to be left alone (``Retry-After``)."""

    verdict: Verdict
    ttft: float | None = None
    tokens: int | None = None
    cooldown: float | None = None


class Slot(Protocol):
    """What a store needs of a candidate: its provider's name and its limit scopes."""

    @property
    def name(self) -> str: ...

    @property
    def scopes(self) -> tuple[Scope, ...]: ...


@dataclass(frozen=True, slots=True)
class Skip:
    """A candidate the store would not admit: its index, the reason, and when it
    might (``retry_after`` seconds, None when unknown). ``limited`` is True for a
    limit or an upstream's cooldown, False for a breaker."""

    index: int
    reason: str
    retry_after: float | None
    limited: bool


@dataclass(slots=True)
class Lease:
    """An admitted attempt: what it holds until :meth:`StateStore.finish`.

    ``local`` marks a lease of the in-process store (the memory backend, or the
    Redis backend while degraded); the store finishes it where it was taken.
    ``trial`` marks the trial request of a half-open breaker: its finish closes
    or reopens the breaker.
    """

    id: str
    provider: str
    scopes: tuple[Scope, ...]
    tokens: int
    local: bool
    done: bool = False
    trial: bool = False
    # Memory store only: the log entries to refund or reconcile.
    entries: list[tuple[_Counters, list[Any] | None, list[Any] | None]] = field(
        default_factory=list, repr=False
    )


@dataclass(frozen=True, slots=True)
class Acquired:
    """What a plan/acquire call decided.

    ``lease``/``index``: the admitted candidate (None when none was);
    ``skipped``: every candidate looked at and refused; ``order``: the indexes in
    the order they were considered (a ``latency``/``least_busy`` order comes from
    the store's statistics); ``transitions``: breaker events to emit, as
    ``(event, provider)``.
    """

    lease: Lease | None
    index: int | None
    skipped: tuple[Skip, ...]
    order: tuple[int, ...]
    transitions: tuple[tuple[str, str], ...] = ()


class StateStore(Protocol):
    """Where a hub keeps breakers, limit counters, latency and in-flight counts.

    Implementations are thread-safe. ``order`` is ``"ttft"`` (lowest time to first
    token first, unsampled first of all), ``"in_flight"`` (fewest first) or None
    (as given). ``retry`` marks a retry that already waited for the upstream's
    ``Retry-After``: the cooldown it caused does not apply to it.
    """

    health: Health
    """The in-process breakers (all of them for the memory store; for a shared
    store, this hub's own: failures that must not open a breaker for others)."""

    def check(self, slots: Sequence[Slot], *, tokens: int, order: str | None = None) -> Acquired:
        """Which candidates would be admitted now, taking nothing (``hub.route``)."""
        ...

    def acquire(
        self,
        slots: Sequence[Slot],
        *,
        tokens: int,
        ttl: float,
        order: str | None = None,
        retry: bool = False,
        check_all: bool = False,
        finish: tuple[Lease, Outcome] | None = None,
    ) -> Acquired:
        """Finish ``finish`` if given, then admit the first candidate with room.

        ``tokens`` is the request's estimate (reserved against ``tpm``); ``ttl`` the
        longest the attempt can take (a lease left unfinished by a crashed process
        expires then). ``check_all`` also checks the candidates after the admitted
        one (the first plan of a request lists every exclusion).
        """
        ...

    def finish(self, lease: Lease, outcome: Outcome) -> tuple[tuple[str, str], ...]:
        """End an attempt; returns breaker transitions as ``(event, provider)``."""
        ...

    def snapshot(self, names: Sequence[str]) -> dict[str, dict[str, object]]:
        """Plain-data health of providers (``hub.health()``)."""
        ...

    def close(self) -> None:
        """Release connections (the store stays usable)."""
        ...


def lease_id() -> str:
    """A random lease id, unique across processes.

    From the random module (seeded by the OS, reseeded in a forked child, so
    replicas forked from one parent never share ids), not ``os.urandom``: a
    syscall that releases the GIL, on the event loop for ``astream``.
    """
    return f"{random.getrandbits(64):016x}"


def limit_reason(
    kind: str, scope: Scope, limit: int, used: int, need: int, retry_after: float | None
) -> str:
    """Why a candidate is over a limit, alike for every store.

    ``kind`` is ``rpm``, ``tpm`` or ``max_in_flight``.
    """
    who = "group member " if scope.member else ""
    room = f"; room in {retry_after:.1f} s" if retry_after is not None else ""
    if kind == "rpm":
        return f"{who}rpm limit {limit} reached ({used} requests in the last minute{room})"
    if kind == "tpm":
        return (
            f"{who}tpm limit {limit} reached ({used} tokens in the last minute, "
            f"about {need} needed{room})"
        )
    return f"{who}max_in_flight limit {limit} reached ({used} in flight)"


_IDENTITIES: dict[int, tuple[int, ...]] = {}


def _identity(size: int) -> tuple[int, ...]:
    """``tuple(range(size))``, made once per size."""
    found = _IDENTITIES.get(size)
    if found is None:
        found = _IDENTITIES[size] = tuple(range(size))
    return found


class _Counters:
    """The sliding logs and in-flight count of one scope (memory store)."""

    __slots__ = ("flying", "live", "requests", "tokens", "used")

    def __init__(self) -> None:
        self.requests: deque[list[Any]] = deque()  # [admitted_at, live]
        self.tokens: deque[list[Any]] = deque()  # [admitted_at, tokens, live]
        self.live = 0  # live entries of ``requests`` (refunded ones stay until trimmed)
        self.used = 0
        self.flying = 0

    def trim(self, now: float, window: float) -> None:
        horizon = now - window
        requests = self.requests
        while requests and requests[0][0] <= horizon:
            entry = requests.popleft()
            if entry[1]:
                entry[1] = False
                self.live -= 1
        tokens = self.tokens
        while tokens and tokens[0][0] <= horizon:
            entry = tokens.popleft()
            self.used -= entry[1]
            entry[2] = False

    def token_room_in(self, need: int, limit: int, now: float, window: float) -> float | None:
        freed = 0
        for admitted, tokens, live in self.tokens:
            if live:
                freed += tokens
            if self.used - freed + need <= limit or self.used - freed <= 0:
                return float(admitted) + window - now
        return None


class MemoryStateStore:
    """State in this process: exact, and lost when it exits (the default store).

    ``threshold``/``cooldown`` configure the breakers, ``clock`` is injectable
    (tests move time by hand) and ``window`` is the rate window in seconds (60;
    shorter only in tests and benchmarks).
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW,
    ) -> None:
        self.health = Health(threshold=threshold, cooldown=cooldown, clock=clock)
        self.window = window
        self._lock = threading.Lock()
        self._counters: dict[str, _Counters] = {}
        self._ids = itertools.count()

    def _now(self) -> float:
        # The breakers' clock, so a test that moves it moves the windows too.
        return self.health._clock()

    def _scope(self, key: str) -> _Counters:
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = _Counters()
        return counters

    # -- decisions ----------------------------------------------------------

    def _order(self, slots: Sequence[Slot], order: str | None) -> list[int]:
        indexes = list(range(len(slots)))
        if order == "ttft":
            ttft = self.health.ttft
            indexes.sort(key=lambda i: ttft(slots[i].name) or 0.0)
        elif order == "in_flight":
            busy = self.health.in_flight
            indexes.sort(key=lambda i: busy(slots[i].name))
        return indexes

    def _refusal(self, index: int, slot: Slot, now: float, tokens: int, retry: bool) -> Skip | None:
        name = slot.name
        health = self.health
        known = health._providers.get(name)
        if known is not None:
            if known.state is not BreakerState.CLOSED:
                reason = health.exclusion(name)
                if reason is not None:
                    return Skip(index, reason, health.open_remaining(name), False)
            if not retry and known.cooldown_until > now:
                cooling = known.cooldown_until - now
                return Skip(index, cooldown_reason(cooling), cooling, True)
        if not slot.scopes:
            return None
        for scope in slot.scopes:
            limits = scope.limits
            counters = self._counters.get(scope.key)
            if counters is None:
                continue
            counters.trim(now, self.window)
            if limits.rpm is not None:
                count = counters.live
                if count >= limits.rpm:
                    first = next(e[0] for e in counters.requests if e[1])
                    room = first + self.window - now
                    reason = limit_reason("rpm", scope, limits.rpm, count, tokens, room)
                    return Skip(index, reason, room, True)
            if limits.tpm is not None and counters.used > 0 and counters.used + tokens > limits.tpm:
                room_in = counters.token_room_in(tokens, limits.tpm, now, self.window)
                reason = limit_reason("tpm", scope, limits.tpm, counters.used, tokens, room_in)
                return Skip(index, reason, room_in, True)
            if limits.max_in_flight is not None and counters.flying >= limits.max_in_flight:
                reason = limit_reason(
                    "max_in_flight", scope, limits.max_in_flight, counters.flying, tokens, None
                )
                return Skip(index, reason, None, True)
        return None

    def _take(
        self, slot: Slot, now: float, tokens: int, transitions: list[tuple[str, str]]
    ) -> Lease | None:
        name = slot.name
        allowed, transition = self.health.acquire(name)
        if not allowed:
            return None
        if transition:
            transitions.append((transition, name))
        self.health.begin(name)
        # In-process ids need only be unique here: a counter, not random bytes.
        lease = Lease(str(next(self._ids)), name, slot.scopes, tokens, local=True)
        for scope in slot.scopes:
            counters = self._scope(scope.key)
            limits = scope.limits
            request = token = None
            if limits.rpm is not None:
                request = [now, True]
                counters.requests.append(request)
                counters.live += 1
            if limits.tpm is not None:
                token = [now, tokens, True]
                counters.tokens.append(token)
                counters.used += tokens
            counters.flying += 1
            lease.entries.append((counters, request, token))
        return lease

    def _decide(
        self,
        slots: Sequence[Slot],
        tokens: int,
        order: str | None,
        retry: bool,
        take: bool,
        check_all: bool,
        transitions: list[tuple[str, str]],
    ) -> Acquired:
        now = self._now()
        indexes = self._order(slots, order) if order else _identity(len(slots))
        skipped: list[Skip] = []
        lease: Lease | None = None
        chosen: int | None = None
        for index in indexes:
            if chosen is not None and not check_all:
                break
            slot = slots[index]
            refusal = self._refusal(index, slot, now, tokens, retry)
            if refusal is not None:
                skipped.append(refusal)
            elif take and chosen is None:
                lease = self._take(slot, now, tokens, transitions)
                if lease is None:  # a trial began between the check and the take
                    skipped.append(Skip(index, TRIAL_REASON, None, False))
                else:
                    chosen = index
        return Acquired(lease, chosen, tuple(skipped), tuple(indexes), tuple(transitions))

    # -- the protocol -------------------------------------------------------

    def check(self, slots: Sequence[Slot], *, tokens: int, order: str | None = None) -> Acquired:
        """Which candidates would be admitted now, taking nothing."""
        with self._lock:
            return self._decide(slots, tokens, order, False, False, True, [])

    def acquire(
        self,
        slots: Sequence[Slot],
        *,
        tokens: int,
        ttl: float,
        order: str | None = None,
        retry: bool = False,
        check_all: bool = False,
        finish: tuple[Lease, Outcome] | None = None,
    ) -> Acquired:
        """Finish ``finish`` if given, then admit the first candidate with room."""
        transitions: list[tuple[str, str]] = []
        with self._lock:
            if finish is not None:
                transitions.extend(self._finish(*finish))
            return self._decide(slots, tokens, order, retry, True, check_all, transitions)

    def finish(self, lease: Lease, outcome: Outcome) -> tuple[tuple[str, str], ...]:
        """End an attempt; returns breaker transitions."""
        with self._lock:
            return self._finish(lease, outcome)

    def _finish(self, lease: Lease, outcome: Outcome) -> tuple[tuple[str, str], ...]:
        if lease.done:
            return ()
        lease.done = True
        name = lease.provider
        verdict = outcome.verdict
        for counters, request, token in lease.entries:
            counters.flying -= 1
            if verdict is Verdict.UNUSED:
                if request is not None and request[1]:
                    request[1] = False
                    counters.live -= 1
                if token is not None and token[2]:
                    counters.used -= token[1]
                    token[1] = 0
            elif token is not None and token[2] and outcome.tokens is not None:
                counters.used += outcome.tokens - token[1]
                token[1] = outcome.tokens
        health = self.health
        health.end(name)
        transition = self.record(name, outcome)
        return ((transition, name),) if transition else ()

    def record(self, name: str, outcome: Outcome) -> str | None:
        """Apply an outcome to the breaker of ``name`` (no lease involved)."""
        health = self.health
        verdict = outcome.verdict
        if outcome.cooldown:
            health.cool_down(name, outcome.cooldown)
        if verdict is Verdict.SUCCESS:
            return health.success(name, outcome.ttft)
        if verdict is Verdict.FAILURE or verdict is Verdict.LOCAL_FAILURE:
            return health.failure(name)
        health.release(name)
        return None

    def snapshot(self, names: Sequence[str] = ()) -> dict[str, dict[str, object]]:
        """Plain-data health of every provider seen so far."""
        return self.health.snapshot()

    def close(self) -> None:
        """Nothing to release."""
