"""Route planning, strategies and the retry policy (SPEC §5), without a socket.

The router is sans-I/O: a registry of described providers, a ``Health`` with an injected
clock and plain settings are all it needs, so every rule is checked directly.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provhub import (
    AbstractProvider,
    Capability,
    Config,
    Hub,
    InvalidRequestError,
    ModelNotFoundError,
    RouterConfig,
    Strategy,
)
from provhub._registry import Registry, describe
from provhub._request import required_capabilities
from provhub._router import RoutePlan, Router, backoff_delay
from provhub._state import MemoryStateStore

USER = {"role": "user", "content": "hi"}
SYSTEM = {"role": "system", "content": "be brief"}
ASSISTANT = {"role": "assistant", "content": "hello"}


def _never(model: str, messages: Any, stream: bool, **kwargs: Any) -> Iterator[str]:
    raise AssertionError("the router must not call providers")
    yield ""  # pragma: no cover - makes this a generator


def provider(name: str, *, models: tuple[str, ...] = ("gpt-4",), **attrs: Any) -> type:
    """A g4f-style provider class that is never called (routing is sans-I/O)."""
    namespace: dict[str, Any] = {
        "name": name,
        "models": models,
        "supports_stream": True,
        "create_completion": staticmethod(_never),
        **attrs,
    }
    return type(name.replace("-", "_"), (AbstractProvider,), namespace)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_router(
    *providers: type,
    tables: dict[str, dict[str, Any]] | None = None,
    clock: FakeClock | None = None,
    rng: random.Random | None = None,
    **router: Any,
) -> Router:
    config = Config.from_mapping({"router": router, "providers": tables or {}})
    registry = Registry()
    for cls in providers:
        registry.add(describe(cls))
    state = MemoryStateStore(
        threshold=config.router.breaker_threshold,
        cooldown=config.router.breaker_cooldown,
        clock=clock or FakeClock(),
    )
    return Router(registry, state, config.router, config.providers, rng=rng)


def names(plan: RoutePlan) -> list[str]:
    return [c.name for c in plan.candidates]


# -- candidates -----------------------------------------------------------------------------


def test_candidates_are_providers_serving_the_model_id_or_alias() -> None:
    router = make_router(
        provider("a"),
        provider("b", models=("gpt-4o",), model_aliases={"omni": "gpt-4o"}),
        provider("c", supports_gpt_4=True, models=()),
    )
    assert names(router.plan("gpt-4")) == ["a", "c"]
    assert names(router.plan("gpt-4o")) == ["b"]
    assert names(router.plan("omni")) == ["b"]


def test_supports_gpt_4_flag_does_not_serve_prefixed_model_ids() -> None:
    router = make_router(provider("a", supports_gpt_4=True, models=()), provider("b"))
    with pytest.raises(ModelNotFoundError):
        router.plan("gpt-4o")


def test_provider_disabled_in_config_is_excluded_with_reason() -> None:
    router = make_router(provider("a"), provider("b"), tables={"A": {"enabled": False}})
    plan = router.plan("gpt-4")
    assert names(plan) == ["b"]
    assert plan.excluded == (("a", "disabled in config"),)


def test_provider_not_working_is_excluded_with_reason() -> None:
    router = make_router(provider("a", working=False), provider("b"))
    plan = router.plan("gpt-4")
    assert names(plan) == ["b"]
    assert dict(plan.excluded) == {"a": "not working (working = False)"}


def test_system_message_requires_system_message_capability() -> None:
    router = make_router(provider("plain", supports_system_message=False), provider("full"))
    needed = required_capabilities([SYSTEM, USER])
    assert needed == Capability.SYSTEM_MESSAGE
    plan = router.plan("gpt-4", needed)
    assert names(plan) == ["full"]
    assert dict(plan.excluded) == {"plain": "lacks capabilities: system_message"}


def test_more_than_one_user_turn_requires_message_history() -> None:
    router = make_router(provider("oneshot", supports_message_history=False), provider("chat"))
    assert required_capabilities([USER]) == Capability.NONE
    assert required_capabilities([USER, ASSISTANT]) == Capability.NONE
    needed = required_capabilities([USER, ASSISTANT, USER])
    assert needed == Capability.MESSAGE_HISTORY
    plan = router.plan("gpt-4", needed)
    assert names(plan) == ["chat"]
    assert dict(plan.excluded) == {"oneshot": "lacks capabilities: message_history"}


def test_required_capabilities_add_caller_requirements_to_what_messages_need() -> None:
    needed = required_capabilities([SYSTEM, USER, ASSISTANT, USER], Capability.STREAM)
    assert needed == Capability.STREAM | Capability.SYSTEM_MESSAGE | Capability.MESSAGE_HISTORY
    router = make_router(provider("nostream", supports_stream=False), provider("ok"))
    plan = router.plan("gpt-4", needed)
    assert names(plan) == ["ok"]
    assert dict(plan.excluded) == {"nostream": "lacks capabilities: stream"}


def test_needs_auth_provider_without_its_env_var_is_excluded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROVHUB_TEST_ROUTER_KEY", raising=False)
    keyed = provider("keyed", needs_auth=True, api_key_env="PROVHUB_TEST_ROUTER_KEY")
    router = make_router(keyed, provider("nokey", needs_auth=True), provider("free"))
    plan = router.plan("gpt-4")
    assert names(plan) == ["free"]
    reasons = dict(plan.excluded)
    assert "PROVHUB_TEST_ROUTER_KEY is not set" in reasons["keyed"]
    assert "api_key_env" in reasons["nokey"]

    monkeypatch.setenv("PROVHUB_TEST_ROUTER_KEY", "sk-test")
    assert names(router.plan("gpt-4")) == ["keyed", "free"]


def test_needs_auth_env_var_can_come_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVHUB_TEST_ROUTER_CFG_KEY", "sk-test")
    router = make_router(
        provider("nokey", needs_auth=True),
        tables={"nokey": {"api_key_env": "PROVHUB_TEST_ROUTER_CFG_KEY"}},
    )
    assert names(router.plan("gpt-4")) == ["nokey"]


def test_provider_with_open_circuit_is_excluded_until_cooldown() -> None:
    clock = FakeClock()
    router = make_router(
        provider("a"), provider("b"), clock=clock, breaker_threshold=2, breaker_cooldown=10.0
    )
    router.health.failure("a")
    assert names(router.plan("gpt-4")) == ["a", "b"]
    router.health.failure("a")
    plan = router.plan("gpt-4")
    assert names(plan) == ["b"]
    assert dict(plan.excluded)["a"].startswith("circuit open after 2 failures")
    clock.advance(10.0)
    assert names(router.plan("gpt-4")) == ["a", "b"]


def test_only_restricts_the_plan_to_one_provider_case_insensitively() -> None:
    router = make_router(provider("Alpha"), provider("beta"))
    assert names(router.plan("gpt-4", only="alpha")) == ["Alpha"]
    plan = router.plan("gpt-4", only="gamma")
    assert plan.candidates == ()
    assert plan.excluded[0][0] == "gamma"
    assert "does not serve model 'gpt-4'" in plan.excluded[0][1]


def test_unknown_model_raises_model_not_found_with_close_matches() -> None:
    router = make_router(provider("a", models=("gpt-4", "gpt-3.5-turbo", "llama3")))
    with pytest.raises(ModelNotFoundError) as info:
        router.plan("gpt4")
    error = info.value
    assert error.model == "gpt4"
    assert "gpt-4" in error.suggestions
    assert "llama3" not in error.suggestions
    assert set(error.available) == {"gpt-4", "gpt-3.5-turbo", "llama3"}
    assert "did you mean 'gpt-4'" in str(error)


def test_model_not_found_without_providers_says_none_is_registered() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        make_router().plan("gpt-4")
    assert info.value.suggestions == ()
    assert "no provider is registered" in str(info.value)


def test_plan_as_dict_is_json_ready() -> None:
    router = make_router(provider("a"), provider("b", working=False))
    assert router.plan("gpt-4", Capability.STREAM).as_dict() == {
        "model": "gpt-4",
        "required": ["stream"],
        "strategy": "priority",
        "candidates": ["a"],
        "excluded": [{"provider": "b", "reason": "not working (working = False)"}],
    }


def test_hub_route_derives_capabilities_from_messages() -> None:
    hub = Hub(Config(), load_plugins=False)
    hub.register(provider("plain", supports_system_message=False))
    hub.register(provider("full"))
    plan = hub.route("gpt-4", [SYSTEM, USER])
    assert plan.required == Capability.SYSTEM_MESSAGE
    assert names(plan) == ["full"]
    assert names(hub.route("gpt-4")) == ["plain", "full"]
    with pytest.raises(InvalidRequestError, match=r"messages\[1\]"):
        hub.route("gpt-4", [USER, {"role": "robot", "content": "x"}])


# -- strategies -------------------------------------------------------------------------------


def test_priority_orders_by_config_priority_then_registration_order() -> None:
    router = make_router(
        provider("a"),
        provider("b"),
        provider("c"),
        provider("d"),
        provider("e"),
        tables={
            "b": {"priority": 10},
            "d": {"priority": 10},
            "c": {"priority": 5},
            "e": {"priority": -1},
        },
    )
    assert names(router.plan("gpt-4")) == ["b", "d", "c", "a", "e"]


def test_priority_without_config_keeps_registration_order() -> None:
    router = make_router(provider("z"), provider("a"), provider("m"))
    assert names(router.plan("gpt-4")) == ["z", "a", "m"]


def test_round_robin_rotates_the_start_on_every_plan() -> None:
    router = make_router(provider("a"), provider("b"), provider("c"), strategy="round_robin")
    orders = [names(router.plan("gpt-4")) for _ in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_random_order_is_a_permutation_reproducible_with_a_seeded_rng() -> None:
    pool = [provider(n) for n in "abcde"]
    first = make_router(*pool, strategy="random", rng=random.Random(7))
    second = make_router(*pool, strategy="random", rng=random.Random(7))
    orders = [names(first.plan("gpt-4")) for _ in range(30)]
    assert orders == [names(second.plan("gpt-4")) for _ in range(30)]
    assert all(sorted(order) == list("abcde") for order in orders)
    assert len({tuple(order) for order in orders}) > 5


def test_strategy_can_be_chosen_per_plan() -> None:
    router = make_router(provider("a"), provider("b"), rng=random.Random(1))
    assert router.plan("gpt-4").strategy is Strategy.PRIORITY
    plan = router.plan("gpt-4", strategy=Strategy.ROUND_ROBIN)
    assert plan.strategy is Strategy.ROUND_ROBIN


def test_latency_puts_unsampled_first_then_lowest_ttft() -> None:
    router = make_router(provider("slow"), provider("fast"), provider("new"), strategy="latency")
    router.health.success("slow", ttft=0.5)
    router.health.success("fast", ttft=0.1)
    assert names(router.plan("gpt-4")) == ["new", "fast", "slow"]


def test_latency_uses_a_moving_average_of_ttft() -> None:
    router = make_router(provider("a"), provider("b"), strategy="latency")
    router.health.success("a", ttft=0.1)
    router.health.success("b", ttft=0.2)
    assert names(router.plan("gpt-4")) == ["a", "b"]
    # One slow sample moves the average 30% of the way: 0.1 + 0.3 * (1.1 - 0.1) = 0.4.
    router.health.success("a", ttft=1.1)
    assert router.health.ttft("a") == pytest.approx(0.4)
    assert names(router.plan("gpt-4")) == ["b", "a"]


def test_least_busy_orders_by_requests_in_flight() -> None:
    router = make_router(provider("a"), provider("b"), provider("c"), strategy="least_busy")
    for name, busy in (("a", 2), ("b", 1)):
        for _ in range(busy):
            router.health.begin(name)
    assert names(router.plan("gpt-4")) == ["c", "b", "a"]
    router.health.end("a")
    router.health.end("a")
    assert names(router.plan("gpt-4")) == ["a", "c", "b"]


def test_strategies_never_reorder_excluded_providers_into_the_plan() -> None:
    for strategy in Strategy:
        router = make_router(
            provider("a"),
            provider("b", working=False),
            provider("c"),
            strategy=str(strategy),
            rng=random.Random(3),
        )
        plan = router.plan("gpt-4")
        assert sorted(names(plan)) == ["a", "c"], strategy
        assert [n for n, _ in plan.excluded] == ["b"], strategy


# -- retry policy -----------------------------------------------------------------------------


class _UpperBound(random.Random):
    """Always draws the top of the range, exposing the backoff ceiling exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_ceiling_grows_exponentially_up_to_backoff_max() -> None:
    settings = RouterConfig(retries=8, backoff_base=0.25, backoff_max=3.0)
    delays = [backoff_delay(settings, i, None, _UpperBound()) for i in range(8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


def test_backoff_uses_full_jitter_across_the_whole_range() -> None:
    settings = RouterConfig(retries=3, backoff_base=1.0, backoff_max=10.0)
    rng = random.Random(11)
    samples = [backoff_delay(settings, 2, None, rng) for _ in range(2000)]
    assert all(s is not None and 0.0 <= s <= 4.0 for s in samples)
    values = [s for s in samples if s is not None]
    # Full jitter: spread over [0, ceiling], not bunched near it.
    assert min(values) < 0.1
    assert max(values) > 3.9


@given(
    retries=st.integers(min_value=1, max_value=10),
    base=st.floats(min_value=0.0, max_value=5.0),
    cap=st.floats(min_value=0.001, max_value=60.0),
    index=st.integers(min_value=0, max_value=9),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_delay_stays_within_full_jitter_bounds(
    retries: int, base: float, cap: float, index: int, seed: int
) -> None:
    settings = RouterConfig(retries=retries, backoff_base=base, backoff_max=cap)
    delay = backoff_delay(settings, index, None, random.Random(seed))
    if index >= retries:
        assert delay is None
    else:
        assert delay is not None
        assert 0.0 <= delay <= min(cap, base * 2**index)


@given(
    retry_after=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.001, max_value=60.0),
    index=st.integers(min_value=0, max_value=4),
)
def test_retry_after_is_honoured_up_to_the_cap_and_beyond_it_moves_on(
    retry_after: float, cap: float, index: int
) -> None:
    settings = RouterConfig(retries=5, backoff_base=0.1, backoff_max=1.0, retry_after_cap=cap)
    delay = backoff_delay(settings, index, retry_after, random.Random(0))
    if retry_after <= cap:
        assert delay == retry_after
    else:
        assert delay is None


@pytest.mark.parametrize("retry_after", [None, 0.0, 0.5])
def test_no_delay_when_retries_are_exhausted(retry_after: float | None) -> None:
    settings = RouterConfig(retries=2, retry_after_cap=5.0)
    rng = random.Random(0)
    assert backoff_delay(settings, 0, retry_after, rng) is not None
    assert backoff_delay(settings, 1, retry_after, rng) is not None
    assert backoff_delay(settings, 2, retry_after, rng) is None
    assert backoff_delay(RouterConfig(retries=0), 0, retry_after, rng) is None


def test_round_robin_is_fair_over_many_plans() -> None:
    router = make_router(provider("a"), provider("b"), provider("c"), strategy="round_robin")
    firsts = [names(router.plan("gpt-4"))[0] for _ in range(300)]
    counts = {n: firsts.count(n) for n in "abc"}
    assert counts == {"a": 100, "b": 100, "c": 100}
    assert list(itertools.islice(firsts, 3)) == ["a", "b", "c"]
