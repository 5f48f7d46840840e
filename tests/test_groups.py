"""Model groups, limits, failure kinds and cost (SPEC §14).

Configuration and routing decisions are checked without a socket; what a request
does with them (which model each member is asked for, where a fallback may go,
which limit turns a request away, what it cost) against real loopback upstreams.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provhub import (
    AbstractProvider,
    AllProvidersFailedError,
    Capability,
    Config,
    ConfigError,
    FailureKind,
    Hub,
    NoProviderError,
    RateLimitedError,
    StreamInterruptedError,
)
from provhub._config import Price
from provhub._limits import estimate_prompt_tokens, reserved_tokens
from provhub._prices import cost_of
from provhub._spec import Usage
from provhub.testing import Behaviour, FakeUpstream, Fault
from provhub_providers import OpenAICompatible

HI = [{"role": "user", "content": "hi"}]
MakeHub = Callable[..., Hub]
FAST = {
    "retries": 0,
    "backoff_base": 0.001,
    "backoff_max": 0.002,
    "retry_after_cap": 1.0,
    "breaker_threshold": 3,
    "timeouts": {"connect": 2, "first_token": 2, "idle": 1, "total": 5},
}


def hub_with(data: dict[str, Any], *endpoints: OpenAICompatible) -> Hub:
    hub = Hub(Config.from_mapping({"router": FAST, **data}), load_plugins=False)
    for endpoint in endpoints:
        hub.register(endpoint)
    return hub


def events_of(hub: Hub) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    hub.subscribe(lambda e: events.append(dict(e)))
    return events


def models_asked(upstream: FakeUpstream) -> list[str]:
    return [r.json["model"] for r in upstream.requests if r.json]


def context_length_error() -> Behaviour:
    body = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
    return Behaviour(status=400, body=json.dumps(body).encode())


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({"groups": {"g": {"members": "a/m"}}}, "groups.g.members", "must be a non-empty list"),
        ({"groups": {"g": {"members": ["a"]}}}, "groups.g.members[0]", 'must be "provider/model"'),
        ({"groups": {"g": {"members": ["a/m", "A/m"]}}}, "groups.g.members[1]", "listed twice"),
        (
            {"groups": {"g": {"members": [{"model": "a/m", "wieght": 2}]}}},
            "groups.g.members[0].wieght",
            "unknown key",
        ),
        (
            {"groups": {"g": {"members": [{"model": "a/m", "weight": 0}]}}},
            "groups.g.members[0].weight",
            "above 0",
        ),
        (
            {"groups": {"g": {"members": [{"model": "a/m", "rpm": 0}]}}},
            "groups.g.members[0].rpm",
            "integer >= 1",
        ),
        ({"groups": {"g": {"members": [{"weight": 2}]}}}, "groups.g.members[0].model", "required"),
        (
            {"groups": {"g": {"members": ["a/m"], "strategy": "fast"}}},
            "groups.g.strategy",
            "ordered",
        ),
        ({"prices": {"m": {"input": 1}}}, "prices.m.output", "is required"),
        ({"prices": {"m": {"input": -1, "output": 1}}}, "prices.m.input", "of 0 or more"),
        ({"prices": {"m": {"input": 1, "output": 1, "x": 1}}}, "prices.m.x", "unknown key"),
        ({"state": {"backend": "etcd"}}, "state.backend", "use memory or redis"),
        ({"state": {"url": "http://h"}}, "state.url", "redis://"),
        ({"state": {"url": "redis://:hunter2@h:6379"}}, "state.url", "password_env"),
        ({"state": {"timeout": 0}}, "state.timeout", "above 0"),
        ({"providers": {"a": {"rpm": 1.5}}}, "providers.a.rpm", "integer >= 1"),
        ({"providers": {"a": {"max_in_flight": 0}}}, "providers.a.max_in_flight", "integer >= 1"),
        ({"providers": {"a": {"weight": -1}}}, "providers.a.weight", "above 0"),
    ],
)
def test_bad_scale_out_config_names_the_key_and_the_reason(
    data: dict[str, Any], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(data)
    assert info.value.key == key
    assert reason in info.value.reason
    assert "hunter2" not in str(info.value)


def test_group_members_parse_from_strings_and_tables() -> None:
    config = Config.from_mapping(
        {
            "groups": {
                "smart": {
                    "strategy": "weighted",
                    "members": [
                        "openai/gpt-4o",
                        {"model": "openrouter/openai/gpt-4o", "weight": 3, "tpm": 1000},
                    ],
                }
            }
        }
    )
    first, second = config.groups["smart"].members
    assert (first.provider, first.model, first.weight) == ("openai", "gpt-4o", 1.0)
    assert (second.provider, second.model) == ("openrouter", "openai/gpt-4o")
    assert (second.weight, second.tpm) == (3.0, 1000)


def test_the_redis_backend_without_its_client_library_says_how_to_install(
    tmp_path: Path,
) -> None:
    # A child process where 'import redis' fails: the hub refuses with the install hint.
    (tmp_path / "redis.py").write_text("raise ImportError('no redis here')\n")
    code = (
        "from provhub import Config, Hub, ConfigError\n"
        "try:\n"
        "    Hub(Config.from_mapping({'state': {'backend': 'redis'}}), load_plugins=False)\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "pip install 'provhub[redis]'" in done.stdout
    assert "state.backend" in done.stdout


# -- estimates and prices -----------------------------------------------------------------------


def test_the_token_estimate_counts_bytes_messages_images_tools_and_max_tokens() -> None:
    text = [{"role": "user", "content": "x" * 400}]
    assert estimate_prompt_tokens(text, {}) == 4 + 100
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "y" * 40},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 9000}},
            ],
        }
    ]
    assert estimate_prompt_tokens(image, {}) == 4 + 10 + 85
    # Non-ASCII text counts its UTF-8 bytes (3 per CJK character).
    assert estimate_prompt_tokens([{"role": "user", "content": "字" * 40}], {}) == 4 + 30
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert estimate_prompt_tokens(text, {"tools": tools}) > 104
    assert reserved_tokens(104, {"max_tokens": 500}) == 604
    assert reserved_tokens(104, {"max_completion_tokens": 50, "max_tokens": 500}) == 154


def test_cost_prices_cached_prompt_tokens_apart() -> None:
    price = Price(input=2.0, output=8.0, cached_input=0.5)
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=400_000)
    assert cost_of(usage, price) == pytest.approx(0.6 * 2 + 0.4 * 0.5 + 0.5 * 8)
    assert cost_of(usage, Price(input=2.0, output=8.0)) == pytest.approx(2 + 4)
    assert cost_of(Usage(), price) is None


# -- groups, through the hub --------------------------------------------------------------------


def test_a_group_asks_each_member_for_its_own_model_and_falls_back_across_models(
    upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_with(
        {"groups": {"smart": {"members": ["one/big-model", "two/other-model"]}}},
        OpenAICompatible("one", upstream.base_url, ["big-model"]),
        OpenAICompatible("two", second_upstream.base_url, ["other-model", "third"]),
    )
    events = events_of(hub)
    upstream.script(Behaviour(status=503))
    result = hub.complete("smart", HI)
    assert result.provider == "two"
    assert result.model == "smart"
    assert models_asked(upstream) == ["big-model"]
    assert models_asked(second_upstream) == ["other-model"]
    assert [(a.provider, a.model, a.ok) for a in result.attempts] == [
        ("one", "big-model", False),
        ("two", "other-model", True),
    ]
    completed = next(e for e in events if e["event"] == "stream.completed")
    assert completed["served_model"] == "two/other-model"
    plan = hub.route("smart")
    assert plan.group == "smart"
    assert [c.label for c in plan.candidates] == ["one/big-model", "two/other-model"]
    hub.close()


def test_group_members_that_cannot_serve_are_excluded_with_the_reason(
    upstream: FakeUpstream,
) -> None:
    hub = hub_with(
        {
            "groups": {
                "g": {"members": ["ghost/m", "one/missing", "one/plain", "one/tooly", "off/m"]}
            },
            "providers": {"off": {"enabled": False}},
        },
        OpenAICompatible(
            "one",
            upstream.base_url,
            ["plain", "tooly"],
            model_capabilities={"tooly": Capability.TOOLS},
        ),
        OpenAICompatible("off", upstream.base_url, ["m"]),
    )
    plan = hub.route("g", HI, Capability.TOOLS)
    assert [c.label for c in plan.candidates] == ["one/tooly"]
    assert dict(plan.excluded) == {
        "ghost/m": "provider is not registered",
        "one/missing": "provider does not serve model 'missing'",
        "one/plain": "lacks capabilities: tools",
        "off/m": "disabled in config",
    }
    assert hub.route("g", HI, provider="off").candidates == ()
    hub.close()


def test_a_group_name_is_a_known_model_for_suggestions() -> None:
    hub = hub_with({"groups": {"smart": {"members": ["x/y"]}}})
    with pytest.raises(LookupError) as info:
        hub.route("smrat")
    assert "smart" in str(info.value)
    hub.close()


def test_weighted_members_come_first_in_proportion_to_their_weights() -> None:
    class Never(AbstractProvider):
        models = ("m",)

        @staticmethod
        def create_completion(model: str, messages: Any, stream: bool, **kw: Any) -> Any:
            raise AssertionError("not called")

    names = ("heavy", "light", "middle")
    hub = hub_with(
        {
            "groups": {
                "g": {
                    "strategy": "weighted",
                    "members": [
                        {"model": "heavy/m", "weight": 6},
                        {"model": "light/m", "weight": 1},
                        {"model": "middle/m", "weight": 3},
                    ],
                }
            }
        }
    )
    for name in names:
        hub.register(type(name, (Never,), {"name": name}))
    hub._router.rng = random.Random(7)
    firsts = Counter(hub.route("g").candidates[0].name for _ in range(4000))
    assert abs(firsts["heavy"] / 4000 - 0.6) < 0.04
    assert abs(firsts["middle"] / 4000 - 0.3) < 0.04
    assert abs(firsts["light"] / 4000 - 0.1) < 0.03
    # Plain models use the providers' own weights.
    plain = Hub(
        Config.from_mapping(
            {"router": {"strategy": "weighted"}, "providers": {"heavy": {"weight": 9}}}
        ),
        load_plugins=False,
    )
    for name in names:
        plain.register(type(name, (Never,), {"name": name}))
    plain._router.rng = random.Random(7)
    firsts = Counter(plain.route("m").candidates[0].name for _ in range(2000))
    assert firsts["heavy"] / 2000 > 0.75
    hub.close()
    plain.close()


# -- context windows ------------------------------------------------------------------------------


def test_a_candidate_whose_window_is_too_small_for_the_request_is_excluded(
    upstream: FakeUpstream,
) -> None:
    hub = hub_with(
        {
            "groups": {
                "g": {"members": ["small/m", "big/m", {"model": "plain/m", "context_window": 50}]}
            }
        },
        OpenAICompatible("small", upstream.base_url, ["m"], context_window=100),
        OpenAICompatible("big", upstream.base_url, ["m"], context_windows={"m": 100_000}),
        OpenAICompatible("plain", upstream.base_url, ["m"]),
    )
    long = [{"role": "user", "content": "w " * 300}]  # about 154 tokens
    plan = hub.route("g", long)
    assert [c.label for c in plan.candidates] == ["big/m"]
    assert dict(plan.excluded)["small/m"] == (
        "context window 100 tokens is too small (the request needs about 154)"
    )
    assert "context window 50 tokens" in dict(plan.excluded)["plain/m"]
    # max_tokens counts too: the window holds the prompt and the answer.
    assert [c.label for c in hub.route("g", HI, max_tokens=120).candidates] == ["big/m"]
    assert [c.label for c in hub.route("g", HI).candidates] == ["small/m", "big/m", "plain/m"]
    hub.close()


def test_context_length_falls_back_only_to_a_larger_known_window(
    upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_with(
        {"groups": {"g": {"members": ["a/m8k", "b/m4k", "c/unknown", "d/m8k", "e/m32k"]}}},
        OpenAICompatible("a", upstream.base_url, ["m8k"], context_window=8192),
        OpenAICompatible("b", upstream.base_url, ["m4k"], context_window=4096),
        OpenAICompatible("c", upstream.base_url, ["unknown"]),
        OpenAICompatible("d", upstream.base_url, ["m8k"], context_window=8192),
        OpenAICompatible("e", second_upstream.base_url, ["m32k"], context_window=32768),
    )
    upstream.script(context_length_error())
    result = hub.complete("g", HI)
    assert result.provider == "e"
    assert models_asked(upstream) == ["m8k"]
    failed, *skipped, ok = result.attempts
    assert failed.kind == "context_length"
    assert not failed.retryable
    assert [(a.provider, a.error_type, a.skipped) for a in skipped] == [
        ("b", "ContextWindow", True),
        ("c", "ContextWindow", True),
        ("d", "ContextWindow", True),
    ]
    assert "not larger than the 8192 of a/m8k" in skipped[0].error
    assert ok.ok
    # The request's fault: no breaker moved.
    assert hub.health()["a"]["consecutive_failures"] == 0
    hub.close()


# -- failure kinds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "kind", "retryable"),
    [
        (
            400,
            {"code": "context_length_exceeded", "type": "invalid_request_error"},
            "context_length",
            False,
        ),
        (429, {"code": "rate_limit_exceeded", "type": "requests"}, "rate_limited", True),
        (429, {"type": "insufficient_quota", "code": None}, "rate_limited", True),
        (400, {"code": "content_filter", "type": "invalid_request_error"}, "content_policy", False),
        (401, {"code": "invalid_api_key", "type": "invalid_request_error"}, "auth", False),
        (529, {"type": "overloaded_error"}, "overloaded", True),
        (500, {"type": "overloaded_error", "code": "server_overloaded"}, "overloaded", True),
        (403, {}, "auth", False),
        (503, {"type": "server_error"}, "overloaded", True),
        (500, {"type": "server_error"}, None, True),
    ],
)
def test_openai_compatible_sets_the_kind_from_status_and_error_code_not_message_text(
    upstream: FakeUpstream,
    status: int,
    error: dict[str, Any],
    kind: str | None,
    retryable: bool,
) -> None:
    # The message text says something else on purpose: it must not matter.
    body = {"error": {"message": "context length exceeded, rate limited, overloaded", **error}}
    hub = hub_with({}, OpenAICompatible("a", upstream.base_url, ["m"]))
    upstream.script(Behaviour(status=status, body=json.dumps(body).encode()))
    with pytest.raises(AllProvidersFailedError) as info:
        hub.complete("m", HI)
    (attempt,) = info.value.attempts
    assert attempt.kind == kind
    assert attempt.retryable is retryable
    hub.close()


def test_an_error_object_inside_a_stream_carries_its_code_and_kind() -> None:
    from provhub._openai import error_from_object

    error = error_from_object({"message": "x", "code": "rate_limit_exceeded"}, "p")
    assert (error.code, error.error_type, error.kind) == (
        "rate_limit_exceeded",
        None,
        FailureKind.RATE_LIMITED,
    )


def test_auth_failures_open_this_hubs_breaker(upstream: FakeUpstream) -> None:
    hub = hub_with({}, OpenAICompatible("a", upstream.base_url, ["m"]))
    upstream.default = Behaviour(status=401)
    for _ in range(3):
        with pytest.raises(AllProvidersFailedError):
            hub.complete("m", HI)
    assert hub.health()["a"]["state"] == "open"
    hub.close()


def test_retry_after_cools_the_provider_down_for_every_request(
    upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_with(
        {},
        OpenAICompatible("a", upstream.base_url, ["m"]),
        OpenAICompatible("b", second_upstream.base_url, ["m"]),
    )
    upstream.script(Behaviour(status=429, retry_after="30"))  # beyond retry_after_cap
    assert hub.complete("m", HI).provider == "b"
    # The next requests skip 'a' without calling it, and say why.
    plan = hub.route("m")
    assert [c.name for c in plan.candidates] == ["b"]
    assert re.match(
        r"the upstream asked to wait \(retry in (29|30)\.\d s\)$", dict(plan.excluded)["a"]
    )
    assert hub.complete("m", HI).provider == "b"
    assert len(upstream.requests) == 1
    # Not a fault of 'a': its breaker did not count it.
    assert hub.health()["a"]["consecutive_failures"] == 0
    hub.close()


# -- limits, through the hub --------------------------------------------------------------------


def test_rpm_turns_requests_away_with_rate_limited_error_and_retry_after(
    upstream: FakeUpstream,
) -> None:
    hub = hub_with(
        {"providers": {"a": {"rpm": 2}}}, OpenAICompatible("a", upstream.base_url, ["m"])
    )
    hub.complete("m", HI)
    hub.complete("m", HI)
    with pytest.raises(RateLimitedError) as info:
        hub.stream("m", HI)
    error = info.value
    assert isinstance(error, NoProviderError)
    assert 59.0 < error.retry_after <= 60.0
    assert error.excluded["a"].startswith("rpm limit 2 reached (2 requests in the last minute")
    assert "retry in" in str(error)
    assert len(upstream.requests) == 2
    plan = hub.route("m")
    assert plan.candidates == ()
    assert dict(plan.excluded)["a"].startswith("rpm limit 2 reached")
    hub.close()


def test_an_over_limit_provider_is_skipped_for_the_next_one(
    upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_with(
        {"providers": {"a": {"rpm": 1}}},
        OpenAICompatible("a", upstream.base_url, ["m"]),
        OpenAICompatible("b", second_upstream.base_url, ["m"]),
    )
    events = events_of(hub)
    assert hub.complete("m", HI).provider == "a"
    assert hub.complete("m", HI).provider == "b"
    planned = [e for e in events if e["event"] == "route.planned"][-1]
    assert planned["candidates"] == ["b"]
    assert planned["excluded"][0]["provider"] == "a"
    assert planned["excluded"][0]["reason"].startswith("rpm limit 1 reached")
    hub.close()


def test_a_member_limit_applies_to_the_group_only(
    upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_with(
        {"groups": {"g": {"members": [{"model": "a/m", "rpm": 1}, "b/m"]}}},
        OpenAICompatible("a", upstream.base_url, ["m"]),
        OpenAICompatible("b", second_upstream.base_url, ["m"]),
    )
    assert hub.complete("g", HI).provider == "a"
    assert hub.complete("g", HI).provider == "b"
    assert "group member rpm limit 1" in dict(hub.route("g").excluded)["a/m"]
    # The same provider and model outside the group is not limited.
    assert hub.complete("m", HI, provider="a").provider == "a"
    hub.close()


def test_max_in_flight_holds_until_the_stream_is_closed_or_dropped(
    upstream: FakeUpstream,
) -> None:
    hub = hub_with(
        {"providers": {"a": {"max_in_flight": 1}}}, OpenAICompatible("a", upstream.base_url, ["m"])
    )
    first = hub.stream("m", HI)
    with pytest.raises(RateLimitedError) as info:
        hub.stream("m", HI)
    assert info.value.retry_after is None
    assert info.value.excluded["a"] == "max_in_flight limit 1 reached (1 in flight)"
    first.close()  # never iterated: its admission is given back
    second = hub.stream("m", HI)
    del second
    gc.collect()  # a dropped stream gives it back too
    third = hub.stream("m", HI)
    assert "".join(third) == Behaviour().text()
    assert "".join(hub.stream("m", HI)) == Behaviour().text()
    assert len(upstream.requests) == 2
    hub.close()


def test_tpm_is_reconciled_with_the_usage_the_upstream_reports(upstream: FakeUpstream) -> None:
    hub = hub_with(
        {"providers": {"a": {"tpm": 100}}}, OpenAICompatible("a", upstream.base_url, ["m"])
    )
    # Each reserves 4 + 1 + 50 (max_tokens) = 55 tokens, and the answer reports 1 + 3 = 4:
    # without reconciling, the second request would be refused already.
    for _ in range(12):
        hub.complete("m", HI, max_tokens=50)
    with pytest.raises(RateLimitedError) as info:
        hub.complete("m", HI, max_tokens=50)
    assert (
        "tpm limit 100 reached (48 tokens in the last minute, about 55 needed"
        in (info.value.excluded["a"])
    )
    hub.close()


def test_provhub_route_shows_the_limit_reason(tmp_path: Path, upstream: FakeUpstream) -> None:
    config = tmp_path / "provhub.toml"
    config.write_text(
        "[providers.a]\n"
        'type = "openai-compatible"\n'
        f'base_url = "{upstream.base_url}"\n'
        'models = ["m"]\n'
        "context_window = 10\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "provhub",
            "--config",
            str(config),
            "route",
            "-m",
            "m",
            "-s",
            "x" * 200,
        ],
        env={**env, "PROVHUB_PLUGINS": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "x  a: context window 10 tokens is too small" in done.stdout, done.stderr


# -- cost ---------------------------------------------------------------------------------------

PRICES = {"prices": {"m": {"input": 1_000_000, "output": 2_000_000}}}  # $1 / $2 a token


def test_cost_is_on_the_usage_the_attempt_the_completion_and_the_event(
    upstream: FakeUpstream,
) -> None:
    hub = hub_with(PRICES, OpenAICompatible("a", upstream.base_url, ["m"]))
    events = events_of(hub)
    result = hub.complete("m", HI)
    # The fake reports 1 prompt token ("hi") and 3 completion tokens.
    assert result.usage.cost == 1 + 3 * 2
    assert result.cost == 7
    assert result.attempts[-1].cost == 7
    completed = next(e for e in events if e["event"] == "stream.completed")
    assert (completed["cost"], completed["cost_estimated"]) == (7, False)
    assert completed["usage"]["cost"] == 7
    stream = hub.stream("m", HI)
    "".join(stream)
    assert stream.cost == 7
    hub.close()


def test_a_stream_without_usage_gets_an_estimated_cost(upstream: FakeUpstream) -> None:
    hub = hub_with(PRICES, OpenAICompatible("a", upstream.base_url, ["m"]))
    events = events_of(hub)
    upstream.script(Behaviour(tokens=("abcd", "efgh"), usage=False))
    stream = hub.stream("m", HI)
    assert "".join(stream) == "abcdefgh"
    assert stream.usage is None
    # 5 prompt tokens estimated (4 framing + "hi"), 8 characters = 2 completion tokens.
    assert stream.cost == 5 + 2 * 2
    completed = next(e for e in events if e["event"] == "stream.completed")
    assert completed["cost_estimated"] is True
    hub.close()


def test_an_interrupted_stream_is_charged_for_what_it_delivered(upstream: FakeUpstream) -> None:
    hub = hub_with(PRICES, OpenAICompatible("a", upstream.base_url, ["m"]))
    events = events_of(hub)
    upstream.script(
        Behaviour(tokens=("abcd", "efgh", "ijkl"), fault=Fault.DROP_MID_STREAM, fault_after=2)
    )
    stream = hub.stream("m", HI)
    with pytest.raises(StreamInterruptedError):
        "".join(stream)
    assert stream.attempts[-1].cost == 5 + 2 * 2
    interrupted = next(e for e in events if e["event"] == "stream.interrupted")
    assert (interrupted["cost"], interrupted["cost_estimated"]) == (9, True)
    hub.close()


def test_without_prices_cost_is_none_everywhere(upstream: FakeUpstream) -> None:
    hub = hub_with({}, OpenAICompatible("a", upstream.base_url, ["m"]))
    events = events_of(hub)
    result = hub.complete("m", HI)
    assert result.cost is None
    assert result.usage.cost is None
    assert next(e for e in events if e["event"] == "stream.completed")["cost"] is None
    hub.close()


def test_a_provider_specific_price_wins_over_the_model_price(upstream: FakeUpstream) -> None:
    prices = {"m": {"input": 1_000_000, "output": 0}, "a/m": {"input": 0, "output": 1_000_000}}
    hub = hub_with({"prices": prices}, OpenAICompatible("a", upstream.base_url, ["m"]))
    assert hub.complete("m", HI).cost == 3
    hub.close()
