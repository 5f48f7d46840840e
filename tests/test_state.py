"""The state store seam (SPEC §15): limits, breakers, latency and in-flight counts.

Every rule is checked on both stores: the in-process one with a clock moved by hand,
and the Redis one against a real ``redis-server`` (marked ``redis``) with the same
calls, so the server-side script and the Python code cannot drift apart. Time-based
rules (windows sliding, cooldowns) run on the memory store's fake clock; the Redis
store's clock is the server's, so its few timed checks use a short window.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provhub._config import StateConfig
from provhub._limits import LimitSpec, Scope
from provhub._state import MemoryStateStore, Outcome, Verdict
from redis_support import RedisServer, require_redis


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Slot:
    name: str
    scopes: tuple[Scope, ...] = ()


def limited(name: str, *, member: bool = False, **limits: Any) -> Slot:
    key = f"member:g:{name}/m" if member else f"provider:{name}"
    return Slot(name, (Scope(key, LimitSpec(**limits), member=member),))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


_prefixes = itertools.count()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """A factory of fresh stores of one kind (each Redis one under its own key prefix)."""
    if request.param == "memory":
        yield lambda **kw: MemoryStateStore(**kw)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    from provhub._state_redis import RedisStateStore

    stores: list[Any] = []

    def factory(**kw: Any) -> Any:
        kw.pop("clock", None)
        prefix = f"t{os.getpid()}-{next(_prefixes)}"
        store = RedisStateStore(StateConfig(url=server.url, prefix=prefix, timeout=2.0), **kw)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        store.close()


def admit(store: Any, *slots: Slot, tokens: int = 0, **kw: Any) -> Any:
    return store.acquire(list(slots), tokens=tokens, ttl=30.0, **kw)


# -- limits, on both stores ------------------------------------------------------------------


def test_rpm_admits_exactly_the_limit_then_names_it_with_the_time_to_room(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    slot = limited("a", rpm=3)
    leases = [admit(store, slot).lease for _ in range(3)]
    assert all(leases)
    refused = admit(store, slot)
    assert refused.lease is None
    (skip,) = refused.skipped
    assert skip.limited
    assert skip.reason.startswith("rpm limit 3 reached (3 requests in the last minute; room in")
    assert 59.0 < skip.retry_after <= 60.0


def test_finishing_does_not_give_back_an_rpm_slot_but_an_unused_lease_does(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    slot = limited("a", rpm=1)
    first = admit(store, slot).lease
    store.finish(first, Outcome(Verdict.SUCCESS))
    assert admit(store, slot).lease is None
    other = make_store()
    unused = admit(other, slot).lease
    other.finish(unused, Outcome(Verdict.UNUSED))
    assert admit(other, slot).lease is not None


def test_max_in_flight_counts_leases_until_they_finish(make_store: Callable[..., Any]) -> None:
    store = make_store()
    slot = limited("a", max_in_flight=2)
    one, two = admit(store, slot).lease, admit(store, slot).lease
    refused = admit(store, slot)
    assert refused.lease is None
    assert refused.skipped[0].reason == "max_in_flight limit 2 reached (2 in flight)"
    assert refused.skipped[0].retry_after is None
    store.finish(one, Outcome(Verdict.FAILURE))
    assert admit(store, slot).lease is not None
    store.finish(two, Outcome(Verdict.NEUTRAL))


def test_tpm_reserves_the_estimate_and_reconciles_it_with_the_usage(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    slot = limited("a", tpm=1000)
    first = admit(store, slot, tokens=600).lease
    # 600 reserved: another 600 would exceed 1000.
    refused = admit(store, slot, tokens=600)
    assert refused.lease is None
    assert "tpm limit 1000 reached (600 tokens in the last minute, about 600 needed" in (
        refused.skipped[0].reason
    )
    # The answer used only 100: the reservation shrinks and 600 more fit.
    store.finish(first, Outcome(Verdict.SUCCESS, tokens=100))
    second = admit(store, slot, tokens=600).lease
    assert second is not None
    # Reconciled upwards (an answer longer than estimated) it blocks again.
    store.finish(second, Outcome(Verdict.SUCCESS, tokens=850))
    assert admit(store, slot, tokens=100).lease is None


def test_tpm_admits_a_request_larger_than_the_limit_when_the_window_is_empty(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    slot = limited("a", tpm=100)
    assert admit(store, slot, tokens=5000).lease is not None
    assert admit(store, slot, tokens=1).lease is None


def test_the_first_candidate_with_room_is_admitted_and_the_others_are_reasoned(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    full = limited("full", rpm=1)
    admit(store, full)
    got = admit(store, full, Slot("free"), limited("later", rpm=1), check_all=True)
    assert got.index == 1
    assert got.lease.provider == "free"
    assert [(s.index, s.limited) for s in got.skipped] == [(0, True)]
    # check_all looked at the one after the admitted one too, without taking it.
    assert admit(store, limited("later", rpm=1)).lease is not None


def test_a_group_member_limit_is_named_as_such(make_store: Callable[..., Any]) -> None:
    store = make_store()
    member = limited("a", member=True, rpm=1)
    admit(store, member)
    reason = admit(store, member).skipped[0].reason
    assert reason.startswith("group member rpm limit 1 reached")


def test_check_takes_nothing(make_store: Callable[..., Any]) -> None:
    store = make_store()
    slot = limited("a", rpm=1, max_in_flight=1)
    for _ in range(3):
        checked = store.check([slot], tokens=0)
        assert checked.lease is None
        assert checked.skipped == ()
    assert admit(store, slot).lease is not None


def test_finishing_a_lease_twice_counts_once(make_store: Callable[..., Any]) -> None:
    store = make_store(threshold=2)
    lease = admit(store, limited("a", max_in_flight=1)).lease
    store.finish(lease, Outcome(Verdict.FAILURE))
    assert store.finish(lease, Outcome(Verdict.FAILURE)) == ()
    assert admit(store, limited("a", max_in_flight=1)).lease is not None
    assert store.snapshot(["a"])["a"]["consecutive_failures"] == 1


# -- breakers and statistics, on both stores -------------------------------------------------


def test_failures_open_the_breaker_and_the_store_says_so(make_store: Callable[..., Any]) -> None:
    store = make_store(threshold=2, cooldown=30.0)
    a = Slot("a")
    assert store.finish(admit(store, a).lease, Outcome(Verdict.FAILURE)) == ()
    assert store.finish(admit(store, a).lease, Outcome(Verdict.FAILURE)) == (
        ("circuit.opened", "a"),
    )
    refused = admit(store, a)
    assert refused.lease is None
    (skip,) = refused.skipped
    assert not skip.limited
    assert skip.reason.startswith("circuit open after 2 failures (retry in")
    assert store.snapshot(["a"])["a"]["state"] == "open"


def test_the_finish_of_a_fallback_rides_on_the_next_acquire(
    make_store: Callable[..., Any],
) -> None:
    store = make_store(threshold=1)
    first = admit(store, Slot("a"), Slot("b"))
    got = admit(store, Slot("b"), finish=(first.lease, Outcome(Verdict.FAILURE)))
    assert got.transitions == (("circuit.opened", "a"),)
    assert got.lease.provider == "b"
    assert admit(store, Slot("a")).lease is None


def test_request_faults_and_cancellations_leave_the_breaker_alone(
    make_store: Callable[..., Any],
) -> None:
    store = make_store(threshold=1)
    for verdict in (Verdict.NEUTRAL, Verdict.UNUSED):
        store.finish(admit(store, Slot("a")).lease, Outcome(verdict))
    assert admit(store, Slot("a")).lease is not None


def test_a_success_resets_the_failure_count(make_store: Callable[..., Any]) -> None:
    store = make_store(threshold=2)
    a = Slot("a")
    store.finish(admit(store, a).lease, Outcome(Verdict.FAILURE))
    store.finish(admit(store, a).lease, Outcome(Verdict.SUCCESS, ttft=0.2))
    store.finish(admit(store, a).lease, Outcome(Verdict.FAILURE))
    assert admit(store, a).lease is not None
    assert store.snapshot(["a"])["a"]["ttft_ms"] == pytest.approx(200.0)


def test_a_cooldown_skips_the_provider_except_for_the_retry_that_waited_it_out(
    make_store: Callable[..., Any],
) -> None:
    store = make_store(threshold=1)
    a = Slot("a")
    store.finish(admit(store, a).lease, Outcome(Verdict.NEUTRAL, cooldown=20.0))
    refused = admit(store, a)
    assert refused.lease is None
    assert refused.skipped[0].limited
    assert refused.skipped[0].reason.startswith("the upstream asked to wait (retry in")
    assert 19.0 < refused.skipped[0].retry_after <= 20.0
    assert admit(store, a, retry=True).lease is not None


def test_latency_and_least_busy_orders_come_from_the_store(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    slow, fast, new = Slot("slow"), Slot("fast"), Slot("new")
    store.finish(admit(store, slow).lease, Outcome(Verdict.SUCCESS, ttft=0.5))
    store.finish(admit(store, fast).lease, Outcome(Verdict.SUCCESS, ttft=0.1))
    assert store.check([slow, fast, new], tokens=0, order="ttft").order == (2, 1, 0)
    busy = admit(store, fast).lease
    admit(store, fast)
    admit(store, slow)
    assert store.check([fast, slow, new], tokens=0, order="in_flight").order == (2, 1, 0)
    store.finish(busy, Outcome(Verdict.SUCCESS))
    # One in flight each: a tie keeps the order given.
    assert admit(store, slow, fast, order="in_flight").lease.provider == "slow"
    assert admit(store, fast, new, slow, order="in_flight").lease.provider == "new"


# -- time, on the memory store's clock --------------------------------------------------------


def test_rpm_window_slides_one_admission_at_a_time() -> None:
    clock = FakeClock()
    store = MemoryStateStore(clock=clock)
    slot = limited("a", rpm=2)
    admit(store, slot)
    clock.advance(30)
    admit(store, slot)
    clock.advance(29.9)
    assert admit(store, slot).lease is None
    clock.advance(0.2)  # the first admission is now 60.1 s old
    assert admit(store, slot).lease is not None
    assert admit(store, slot).lease is None
    assert admit(store, slot).skipped[0].retry_after == pytest.approx(29.9)


def test_tpm_says_when_enough_tokens_leave_the_window() -> None:
    clock = FakeClock()
    store = MemoryStateStore(clock=clock)
    slot = limited("a", tpm=100)
    admit(store, slot, tokens=40)
    clock.advance(10)
    admit(store, slot, tokens=40)
    clock.advance(10)
    skip = admit(store, slot, tokens=50).skipped[0]
    # 80 used; 50 fit once the first 40 leave, 60 s after they came: 40 s from now.
    assert skip.retry_after == pytest.approx(40.0)
    clock.advance(40.01)
    assert admit(store, slot, tokens=50).lease is not None


def test_cooldown_ends_and_breaker_cools_down_on_the_clock() -> None:
    clock = FakeClock()
    store = MemoryStateStore(threshold=1, cooldown=10.0, clock=clock)
    a = Slot("a")
    store.finish(admit(store, a).lease, Outcome(Verdict.FAILURE, cooldown=3.0))
    clock.advance(10.0)
    trial = admit(store, a)
    assert trial.transitions == (("circuit.half_open", "a"),)
    refused = admit(store, a)
    assert refused.skipped[0].reason == "circuit half-open: a trial request is in flight"
    assert store.finish(trial.lease, Outcome(Verdict.SUCCESS)) == (("circuit.closed", "a"),)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["admit", "finish", "unused", "wait"]),
            st.floats(min_value=0.0, max_value=40.0),
        ),
        max_size=80,
    ),
    rpm=st.integers(min_value=1, max_value=5),
)
def test_no_sixty_second_span_ever_admits_more_than_rpm(
    steps: list[tuple[str, float]], rpm: int
) -> None:
    clock = FakeClock()
    store = MemoryStateStore(clock=clock)
    slot = limited("a", rpm=rpm)
    admitted: list[tuple[float, Any]] = []
    open_leases: list[Any] = []
    for action, amount in steps:
        if action == "admit":
            got = admit(store, slot)
            if got.lease is not None:
                admitted.append((clock.now, got.lease))
                open_leases.append(got.lease)
            else:
                in_window = [t for t, lease in admitted if t > clock.now - 60.0]
                assert len(in_window) >= rpm  # refused only when really full
        elif action in ("finish", "unused") and open_leases:
            lease = open_leases.pop(0)
            verdict = Verdict.UNUSED if action == "unused" else Verdict.SUCCESS
            store.finish(lease, Outcome(verdict))
            if verdict is Verdict.UNUSED:
                admitted = [(t, x) for t, x in admitted if x is not lease]
        else:
            clock.advance(amount)
    times = [t for t, _ in admitted]
    for start in times:
        assert len([t for t in times if start <= t < start + 60.0]) <= rpm


# -- time, on the Redis server's clock ----------------------------------------------------------


@pytest.mark.redis
def test_redis_windows_slide_on_the_server_clock(redis_server: RedisServer) -> None:
    from provhub._state_redis import RedisStateStore

    store = RedisStateStore(
        StateConfig(url=redis_server.url, prefix=f"slide{os.getpid()}"), window=0.5
    )
    slot = limited("a", rpm=1)
    assert admit(store, slot).lease is not None
    assert admit(store, slot).lease is None
    time.sleep(0.6)  # the window's length under test, not a synchronisation
    assert admit(store, slot).lease is not None
    store.close()


@pytest.mark.redis
def test_redis_keys_expire_so_nothing_needs_cleaning(redis_server: RedisServer) -> None:
    from provhub._state_redis import RedisStateStore

    prefix = f"ttl{os.getpid()}"
    store = RedisStateStore(StateConfig(url=redis_server.url, prefix=prefix))
    lease = admit(store, limited("a", rpm=5, tpm=100, max_in_flight=2), tokens=10).lease
    store.finish(lease, Outcome(Verdict.FAILURE, tokens=20))
    client = redis_server.client()
    keys = client.keys(f"{prefix}:*")
    assert keys
    assert all(0 < client.ttl(key) <= 86400 for key in keys)
    client.close()
    store.close()


# -- the finish a request does not wait for ----------------------------------------------------


def _shared_pair(redis_server: RedisServer, **kw: Any) -> tuple[Any, Any]:
    """Two stores on one key prefix: two replicas."""
    from provhub._state_redis import RedisStateStore

    # A timeout longer than the tests' CLIENT PAUSE: waiting is what they look at.
    prefix = f"pair{os.getpid()}-{next(_prefixes)}"
    config = StateConfig(url=redis_server.url, prefix=prefix, timeout=5.0)
    return RedisStateStore(config, **kw), RedisStateStore(config, **kw)


@contextlib.contextmanager
def paused(redis_server: RedisServer, ms: int) -> Iterator[None]:
    """Redis runs no command for ``ms`` (and never longer than the block)."""
    client = redis_server.client()
    client.execute_command("CLIENT", "PAUSE", ms)
    try:
        yield
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        client.close()


@pytest.mark.redis
def test_a_successful_finish_is_not_waited_for_yet_every_replica_sees_it(
    redis_server: RedisServer,
) -> None:
    one, two = _shared_pair(redis_server)
    slot = limited("a", max_in_flight=1)
    lease = admit(one, slot).lease
    assert admit(two, slot).lease is None  # the one slot is taken
    with paused(redis_server, 1000):
        # While Redis runs no command at all, a success's finish returns at once...
        started = time.monotonic()
        assert one.finish(lease, Outcome(Verdict.SUCCESS, ttft=0.05, tokens=10)) == ()
        assert time.monotonic() - started < 0.5
        # ...and the next call on that store reads its reply first, then sees its effect.
        assert one.check([slot], tokens=0).skipped == ()  # the slot is free again
        assert time.monotonic() - started >= 0.9  # that call did wait for the pause
    assert admit(two, slot).lease is not None  # the other replica too
    assert not one.degraded
    assert not two.degraded
    one.close()
    two.close()


@pytest.mark.redis
def test_a_failure_waits_for_redis_so_other_replicas_skip_the_provider_at_once(
    redis_server: RedisServer,
) -> None:
    one, two = _shared_pair(redis_server, threshold=1)
    slot = limited("a", max_in_flight=5)
    lease = admit(one, slot).lease
    with paused(redis_server, 600):
        started = time.monotonic()
        assert one.finish(lease, Outcome(Verdict.FAILURE)) == (("circuit.opened", "a"),)
        assert time.monotonic() - started >= 0.5  # it waited for Redis' answer
    refused = admit(two, slot)
    assert refused.lease is None
    assert refused.skipped[0].reason.startswith("circuit open")
    one.close()
    two.close()


@pytest.mark.redis
def test_the_end_of_a_half_open_trial_is_waited_for_and_reports_the_closed_circuit(
    redis_server: RedisServer,
) -> None:
    one, two = _shared_pair(redis_server, threshold=1, cooldown=0.3)
    slot = limited("a")
    one.finish(admit(one, slot).lease, Outcome(Verdict.FAILURE))
    time.sleep(0.4)  # the cooldown under test, on the server's clock
    trial = admit(one, slot)
    assert trial.transitions == (("circuit.half_open", "a"),)
    assert trial.lease.trial
    assert one.finish(trial.lease, Outcome(Verdict.SUCCESS)) == (("circuit.closed", "a"),)
    assert admit(two, slot).transitions == ()  # closed for the other replica too
    one.close()
    two.close()


@pytest.mark.redis
def test_an_unawaited_finish_lost_to_a_flushed_script_cache_breaks_nothing(
    redis_server: RedisServer,
) -> None:
    one, _ = _shared_pair(redis_server)
    slot = limited("a", rpm=100)
    lease = admit(one, slot).lease
    client = redis_server.client()
    client.script_flush()
    # The finish's EVALSHA is answered NOSCRIPT, unread; the next call reads it,
    # loads the script again and goes on (the lease itself expires at its ttl).
    one.finish(lease, Outcome(Verdict.SUCCESS))
    assert admit(one, slot).lease is not None
    assert not one.degraded
    client.close()
    one.close()


# -- the two stores agree ------------------------------------------------------------------------

_NUMBERS = re.compile(r"\d+\.\d+")


def _decision(got: Any) -> tuple[Any, ...]:
    """What a decision says, without the seconds (the two clocks differ by microseconds)."""
    skips = tuple((s.index, _NUMBERS.sub("N", s.reason), s.limited) for s in got.skipped)
    return got.index, skips, got.transitions


@pytest.mark.redis
@settings(max_examples=25, deadline=None)
@given(
    limits=st.lists(
        st.fixed_dictionaries(
            {
                "rpm": st.none() | st.integers(1, 3),
                "tpm": st.none() | st.integers(20, 120),
                "max_in_flight": st.none() | st.integers(1, 2),
            }
        ),
        min_size=3,
        max_size=3,
    ),
    steps=st.lists(
        st.one_of(
            st.tuples(
                st.just("acquire"),
                st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
                st.integers(0, 60),
            ),
            st.tuples(
                st.just("finish"),
                st.integers(0, 20),
                # Not LOCAL_FAILURE: by design it counts apart from the shared breaker
                # in the Redis store (auth), and with the others in the memory one.
                st.sampled_from([v for v in Verdict if v is not Verdict.LOCAL_FAILURE]),
                st.none() | st.integers(0, 80),
                st.sampled_from([None, 30.0]),
            ),
        ),
        max_size=25,
    ),
)
def test_the_redis_store_decides_exactly_as_the_memory_store(
    redis_server: RedisServer, limits: list[dict[str, Any]], steps: list[tuple[Any, ...]]
) -> None:
    from provhub._state_redis import RedisStateStore

    slots = [limited(name, **spec) for name, spec in zip("abc", limits, strict=True)]
    memory = MemoryStateStore(threshold=2)
    shared = RedisStateStore(
        StateConfig(url=redis_server.url, prefix=f"diff{os.getpid()}-{next(_prefixes)}"),
        threshold=2,
    )
    leases: list[tuple[Any, Any]] = []
    for step in steps:
        if step[0] == "acquire":
            _, picks, tokens = step
            chosen = [slots[i] for i in picks]
            a = admit(memory, *chosen, tokens=tokens, check_all=True)
            b = admit(shared, *chosen, tokens=tokens, check_all=True)
            assert _decision(a) == _decision(b)
            if a.lease is not None:
                leases.append((a.lease, b.lease))
        elif leases:
            _, which, verdict, tokens, cooldown = step
            a_lease, b_lease = leases.pop(which % len(leases))
            outcome = Outcome(verdict, ttft=0.1, tokens=tokens, cooldown=cooldown)
            assert memory.finish(a_lease, outcome) == shared.finish(b_lease, outcome)
    check = [memory.check(slots, tokens=10), shared.check(slots, tokens=10)]
    assert _decision(check[0]) == _decision(check[1])
    shared.close()
