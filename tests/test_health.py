"""The per-provider circuit breaker (SPEC §5 Health) and its events (SPEC §7).

The state machine is checked with an injected clock (no sleeps); the hub tests check that
the breaker really gates requests to a real loopback upstream and that its transitions are
reported as ``circuit.*`` events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from provhub import AllProvidersFailedError, Hub, NoProviderError
from provhub._health import BreakerState, Health
from provhub.testing import Behaviour, FakeUpstream, Fault
from provhub_providers import OpenAICompatible

MESSAGES = [{"role": "user", "content": "hi"}]
COOLDOWN = 10.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(threshold=3, cooldown=10.0, clock=clock)


def open_breaker(health: Health, name: str = "a") -> None:
    for _ in range(health.threshold):
        health.failure(name)
    assert health.state(name) is BreakerState.OPEN


# -- the state machine ----------------------------------------------------------------------


def test_unknown_provider_is_closed_and_allowed(health: Health) -> None:
    assert health.state("a") is BreakerState.CLOSED
    assert health.exclusion("a") is None
    assert health.acquire("a") == (True, None)


def test_breaker_opens_after_threshold_consecutive_failures(health: Health) -> None:
    assert health.failure("a") is None
    assert health.failure("a") is None
    assert health.state("a") is BreakerState.CLOSED
    assert health.failure("a") == "circuit.opened"
    assert health.state("a") is BreakerState.OPEN
    assert health.acquire("a") == (False, None)
    reason = health.exclusion("a")
    assert reason is not None
    assert reason.startswith("circuit open after 3 failures")
    assert "retry in 10.0 s" in reason


def test_a_success_resets_the_consecutive_failure_count(health: Health) -> None:
    health.failure("a")
    health.failure("a")
    assert health.success("a") is None
    health.failure("a")
    health.failure("a")
    assert health.state("a") is BreakerState.CLOSED
    assert health.failure("a") == "circuit.opened"


def test_breakers_are_per_provider(health: Health) -> None:
    open_breaker(health, "a")
    assert health.state("b") is BreakerState.CLOSED
    assert health.acquire("b") == (True, None)


def test_open_breaker_stays_open_for_the_cooldown(health: Health, clock: FakeClock) -> None:
    open_breaker(health)
    clock.advance(9.9)
    assert health.state("a") is BreakerState.OPEN
    assert health.acquire("a") == (False, None)
    assert "retry in 0.1 s" in (health.exclusion("a") or "")


def test_after_cooldown_exactly_one_half_open_trial_is_allowed(
    health: Health, clock: FakeClock
) -> None:
    open_breaker(health)
    clock.advance(10.0)
    assert health.state("a") is BreakerState.HALF_OPEN
    assert health.exclusion("a") is None  # the planner may offer it for the trial
    assert health.acquire("a") == (True, "circuit.half_open")
    assert health.acquire("a") == (False, None)
    assert health.exclusion("a") == "circuit half-open: a trial request is in flight"


def test_half_open_trial_is_granted_once_under_many_threads(
    health: Health, clock: FakeClock
) -> None:
    open_breaker(health)
    clock.advance(10.0)
    threads = 32
    barrier = threading.Barrier(threads)
    results: list[tuple[bool, str | None]] = []
    lock = threading.Lock()

    def contend() -> None:
        barrier.wait()
        outcome = health.acquire("a")
        with lock:
            results.append(outcome)

    workers = [threading.Thread(target=contend) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(results) == threads
    assert results.count((True, "circuit.half_open")) == 1
    assert results.count((False, None)) == threads - 1


def test_successful_trial_closes_the_breaker(health: Health, clock: FakeClock) -> None:
    open_breaker(health)
    clock.advance(10.0)
    health.acquire("a")
    assert health.success("a", ttft=0.05) == "circuit.closed"
    assert health.state("a") is BreakerState.CLOSED
    assert health.exclusion("a") is None
    assert health.acquire("a") == (True, None)
    assert health.acquire("a") == (True, None)
    # Closed means counting from zero again.
    health.failure("a")
    health.failure("a")
    assert health.state("a") is BreakerState.CLOSED


def test_failed_trial_opens_the_breaker_for_a_new_cooldown(
    health: Health, clock: FakeClock
) -> None:
    open_breaker(health)
    clock.advance(10.0)
    health.acquire("a")
    clock.advance(3.0)
    assert health.failure("a") == "circuit.opened"
    assert health.state("a") is BreakerState.OPEN
    clock.advance(9.9)  # the cooldown restarts at the failed trial
    assert health.acquire("a") == (False, None)
    clock.advance(0.1)
    assert health.acquire("a") == (True, "circuit.half_open")


def test_an_abandoned_trial_lets_the_next_request_try(health: Health, clock: FakeClock) -> None:
    open_breaker(health)
    clock.advance(10.0)
    assert health.acquire("a") == (True, "circuit.half_open")
    health.release("a")
    assert health.state("a") is BreakerState.HALF_OPEN
    assert health.acquire("a") == (True, None)
    assert health.acquire("a") == (False, None)


def test_concurrent_failures_open_the_breaker_exactly_once(clock: FakeClock) -> None:
    health = Health(threshold=16, cooldown=10.0, clock=clock)
    barrier = threading.Barrier(16)
    transitions: list[str | None] = []
    lock = threading.Lock()

    def fail() -> None:
        barrier.wait()
        transition = health.failure("a")
        with lock:
            transitions.append(transition)

    workers = [threading.Thread(target=fail) for _ in range(16)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert transitions.count("circuit.opened") == 1
    assert health.snapshot()["a"]["consecutive_failures"] == 16


def test_snapshot_reports_state_failures_ttft_and_in_flight(
    health: Health, clock: FakeClock
) -> None:
    health.success("a", ttft=0.25)
    health.begin("a")
    open_breaker(health, "b")
    snapshot = health.snapshot()
    assert snapshot["a"] == {
        "state": "closed",
        "consecutive_failures": 0,
        "ttft_ms": 250.0,
        "in_flight": 1,
    }
    assert snapshot["b"]["state"] == "open"
    clock.advance(10.0)
    assert health.snapshot()["b"]["state"] == "half_open"


# -- through a hub --------------------------------------------------------------------------


def hub_for(
    make_hub: Callable[..., Hub], upstream: FakeUpstream
) -> tuple[Hub, list[Any], FakeClock]:
    hub = make_hub(breaker_cooldown=COOLDOWN)
    # Hub has no clock parameter; the breaker's own injection point keeps these tests
    # free of sleeps and of races with a real cooldown on a loaded machine.
    clock = FakeClock()
    hub._health._clock = clock
    hub.register(OpenAICompatible("a", upstream.base_url, ["gpt-4"]))
    events: list[Any] = []
    hub.subscribe(events.append)
    return hub, events, clock


def circuit_events(events: list[Any]) -> list[tuple[str, str]]:
    return [(e["event"], e["provider"]) for e in events if e["event"].startswith("circuit.")]


def trip(hub: Hub, upstream: FakeUpstream) -> None:
    """Three failing attempts (retries=2, threshold=3) open the breaker of ``a``."""
    upstream.script(*[Behaviour(status=500)] * 3)
    with pytest.raises(AllProvidersFailedError):
        "".join(hub.stream("gpt-4", MESSAGES))


def test_hub_breaker_opens_and_excludes_the_provider(
    make_hub: Callable[..., Hub], upstream: FakeUpstream
) -> None:
    hub, events, clock = hub_for(make_hub, upstream)
    trip(hub, upstream)
    assert circuit_events(events) == [("circuit.opened", "a")]
    opened = next(e for e in events if e["event"] == "circuit.opened")
    assert opened["level"] == "warning"
    assert hub.health()["a"]["state"] == "open"
    plan = hub.route("gpt-4")
    assert plan.candidates == ()
    assert dict(plan.excluded)["a"].startswith("circuit open")
    with pytest.raises(NoProviderError) as info:
        hub.stream("gpt-4", MESSAGES)
    assert "circuit open" in info.value.excluded["a"]
    clock.advance(COOLDOWN - 0.1)
    assert hub.route("gpt-4").candidates == ()
    assert len(upstream.requests) == 3


def test_hub_half_open_trial_success_closes_the_circuit(
    make_hub: Callable[..., Hub], upstream: FakeUpstream
) -> None:
    hub, events, clock = hub_for(make_hub, upstream)
    trip(hub, upstream)
    clock.advance(COOLDOWN)
    # The trial streams slowly so it is still in flight while we look.
    upstream.script(
        Behaviour(tokens=("ok", "!"), fault=Fault.HANG_BETWEEN_CHUNKS, hang_seconds=0.2)
    )
    with hub.stream("gpt-4", MESSAGES) as trial:
        assert next(trial) == "ok"
        assert circuit_events(events)[-1] == ("circuit.half_open", "a")
        plan = hub.route("gpt-4")
        assert dict(plan.excluded) == {"a": "circuit half-open: a trial request is in flight"}
        with pytest.raises(NoProviderError):
            hub.stream("gpt-4", MESSAGES)
        assert "".join(trial) == "!"
    assert circuit_events(events) == [
        ("circuit.opened", "a"),
        ("circuit.half_open", "a"),
        ("circuit.closed", "a"),
    ]
    assert hub.health()["a"]["state"] == "closed"
    assert "".join(hub.stream("gpt-4", MESSAGES)) == Behaviour().text()
    assert len(upstream.requests) == 5


def test_hub_half_open_trial_failure_opens_the_circuit_again(
    make_hub: Callable[..., Hub], upstream: FakeUpstream
) -> None:
    hub, events, clock = hub_for(make_hub, upstream)
    trip(hub, upstream)
    clock.advance(COOLDOWN)
    upstream.script(Behaviour(status=503))
    with pytest.raises(AllProvidersFailedError) as info:
        "".join(hub.stream("gpt-4", MESSAGES))
    # One trial only: the retry finds the circuit open again and does not reach the upstream.
    assert len(upstream.requests) == 4
    assert [a.error_type for a in info.value.attempts] == ["UpstreamHTTPError", "CircuitOpen"]
    assert circuit_events(events) == [
        ("circuit.opened", "a"),
        ("circuit.half_open", "a"),
        ("circuit.opened", "a"),
    ]
    assert hub.route("gpt-4").candidates == ()


def test_request_faults_do_not_open_the_circuit(
    make_hub: Callable[..., Hub], upstream: FakeUpstream
) -> None:
    hub, events, _ = hub_for(make_hub, upstream)
    upstream.script(*[Behaviour(status=400)] * 5)
    for _ in range(5):
        with pytest.raises(AllProvidersFailedError):
            "".join(hub.stream("gpt-4", MESSAGES))
    assert circuit_events(events) == []
    assert hub.health()["a"]["state"] == "closed"
