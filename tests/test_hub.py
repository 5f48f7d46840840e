"""The Hub against real loopback upstreams: retries, fallback, streams, timeouts (SPEC §4, §5).

Providers are ``OpenAICompatible`` instances (or the shipped ``Lockchat`` with a config ``url``)
pointing at ``FakeUpstream`` servers; what each upstream received is the ground truth for
"was it retried", "was the fallback called".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import provhub
from provhub import (
    AllProvidersFailedError,
    Capability,
    Hub,
    InvalidRequestError,
    ModelNotFoundError,
    NoProviderError,
    ProvhubError,
    StreamInterruptedError,
    Timeouts,
    Usage,
)
from provhub.testing import Behaviour, FakeUpstream, Fault, unused_port_url
from provhub_providers import OpenAICompatible

MESSAGES = [{"role": "user", "content": "Say hello"}]
HELLO = Behaviour(tokens=("Hel", "lo", " there"))
MakeHub = Callable[..., Hub]


def endpoint(name: str, where: FakeUpstream | str, models: tuple[str, ...] = ("gpt-4",)) -> Any:
    url = where if isinstance(where, str) else where.base_url
    return OpenAICompatible(name, url, list(models))


def two_provider_hub(make_hub: MakeHub, first: FakeUpstream | str, second: FakeUpstream) -> Hub:
    hub = make_hub()
    hub.register(endpoint("a", first))
    hub.register(endpoint("b", second))
    return hub


def events_of(hub: Hub) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    hub.subscribe(lambda e: events.append(dict(e)))
    return events


# -- retries ------------------------------------------------------------------------------


QUICK = Timeouts(connect=2.0, first_token=0.5, idle=0.5, total=5.0)


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(Behaviour(status=500), id="500"),
        pytest.param(Behaviour(status=503), id="503"),
        pytest.param(Behaviour(status=429), id="429"),
        pytest.param(Behaviour(status=408), id="408"),
        pytest.param(Behaviour(fault=Fault.DROP_AFTER_HEADERS), id="drop-after-headers"),
        pytest.param(
            Behaviour(fault=Fault.DROP_MID_STREAM, fault_after=0), id="drop-before-first-token"
        ),
        pytest.param(
            Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=5), id="first-token-timeout"
        ),
        pytest.param(
            Behaviour(fault=Fault.ERROR_OBJECT, fault_after=0), id="server-error-in-stream"
        ),
    ],
)
def test_retryable_failure_is_retried_on_the_same_provider_then_succeeds(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream, failure: Behaviour
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    upstream.script(failure, HELLO)
    stream = hub.stream("gpt-4", MESSAGES, timeouts=QUICK)
    tokens = list(stream)
    assert tokens == ["Hel", "lo", " there"]  # exactly once, nothing spliced
    assert stream.provider == "a"
    assert len(upstream.requests) == 2
    assert len(second_upstream.requests) == 0
    failed = stream.attempts[0]
    assert (failed.number, failed.provider, failed.ok, failed.retryable) == (1, "a", False, True)
    assert failed.backoff_ms is not None
    assert 0 <= failed.backoff_ms <= 10.0  # backoff_base 0.01 s at the first retry
    assert failed.duration_ms > 0
    succeeded = stream.attempts[1]
    assert (succeeded.number, succeeded.provider, succeeded.ok) == (2, "a", True)
    assert len(stream.attempts) == 2


def test_retries_are_bounded_then_the_next_provider_is_tried(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    upstream.default = Behaviour(status=502)
    second_upstream.script(HELLO)
    stream = hub.stream("gpt-4", MESSAGES)
    assert "".join(stream) == HELLO.text()
    assert stream.provider == "b"
    assert len(upstream.requests) == 3  # one try and retries=2
    assert [(a.provider, a.status) for a in stream.attempts[:3]] == [("a", 502)] * 3
    assert stream.attempts[2].backoff_ms is None  # no wait after the last try


def test_connection_refused_is_retried_with_backoff_then_falls_back(
    make_hub: MakeHub, second_upstream: FakeUpstream
) -> None:
    hub = two_provider_hub(make_hub, unused_port_url(), second_upstream)
    events = events_of(hub)
    stream = hub.stream("gpt-4", MESSAGES)
    assert list(stream) == ["w0 ", "w1 ", "w2 "]
    assert stream.provider == "b"
    refused = [a for a in stream.attempts if a.provider == "a"]
    assert len(refused) == 3
    assert all(a.retryable and a.error_type == "UpstreamConnectionError" for a in refused)
    assert [a.backoff_ms is not None for a in refused] == [True, True, False]
    fallback = [e for e in events if e["event"] == "route.fallback"]
    assert [(e["from_provider"], e["to_provider"]) for e in fallback] == [("a", "b")]


def test_retry_after_is_honoured_before_retrying(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.script(Behaviour(status=429, retry_after="0.3"), HELLO)
    started = time.monotonic()
    stream = hub.stream("gpt-4", MESSAGES)
    assert "".join(stream) == HELLO.text()
    assert time.monotonic() - started >= 0.3
    assert stream.attempts[0].backoff_ms == 300.0


def test_retry_after_beyond_the_cap_moves_on_without_waiting(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)  # retry_after_cap is 1 s
    upstream.script(Behaviour(status=429, retry_after="120"))
    started = time.monotonic()
    stream = hub.stream("gpt-4", MESSAGES)
    assert "".join(stream) == Behaviour().text()
    assert time.monotonic() - started < 1.0
    assert stream.provider == "b"
    assert len(upstream.requests) == 1
    assert stream.attempts[0].backoff_ms is None


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_non_retryable_failure_falls_back_without_retry(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream, status: int
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    upstream.script(Behaviour(status=status))
    second_upstream.script(HELLO)
    stream = hub.stream("gpt-4", MESSAGES)
    assert list(stream) == ["Hel", "lo", " there"]
    assert stream.provider == "b"
    assert len(upstream.requests) == 1
    assert len(second_upstream.requests) == 1
    first = stream.attempts[0]
    assert (first.provider, first.status, first.retryable, first.backoff_ms) == (
        "a",
        status,
        False,
        None,
    )


# -- fallback only before the first token ---------------------------------------------------


@pytest.mark.parametrize("delivered", [1, 3])
def test_fallback_happens_only_before_first_token(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream, delivered: int
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    upstream.script(Behaviour(chunks=5, fault=Fault.DROP_MID_STREAM, fault_after=delivered))
    received: list[str] = []
    stream = hub.stream("gpt-4", MESSAGES)
    with pytest.raises(StreamInterruptedError) as info:
        received.extend(stream)
    expected = "".join(f"w{i} " for i in range(delivered))
    assert "".join(received) == expected
    error = info.value
    assert error.provider == "a"
    assert error.text == expected
    assert isinstance(error.cause, provhub.ProviderError)
    assert error.__cause__ is not None
    # Never spliced with another provider's output, never retried.
    assert len(second_upstream.requests) == 0
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "fault",
    [Fault.ERROR_OBJECT, Fault.MALFORMED_JSON, Fault.INVALID_UTF8, Fault.HANG_BETWEEN_CHUNKS],
)
def test_any_failure_after_the_first_token_interrupts_the_stream(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream, fault: Fault
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    upstream.script(Behaviour(chunks=4, fault=fault, fault_after=2, hang_seconds=5))
    stream = hub.stream("gpt-4", MESSAGES, timeouts=QUICK)
    with pytest.raises(StreamInterruptedError) as info:
        list(stream)
    assert info.value.text == "w0 w1 "
    assert info.value.provider == "a"
    assert len(second_upstream.requests) == 0


# -- typed errors ---------------------------------------------------------------------------


def test_all_providers_failed_lists_every_attempt_in_order(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    upstream.default = Behaviour(status=500)
    second_upstream.default = Behaviour(status=401)
    with pytest.raises(AllProvidersFailedError) as info:
        list(hub.stream("gpt-4", MESSAGES))
    error = info.value
    assert error.model == "gpt-4"
    assert [(a.number, a.provider, a.status, a.retryable) for a in error.attempts] == [
        (1, "a", 500, True),
        (2, "a", 500, True),
        (3, "a", 500, True),
        (4, "b", 401, False),
    ]
    assert all(not a.ok for a in error.attempts)
    text = str(error)
    assert text.index("#1-#3 a") < text.index("#4 b")  # identical retries folded
    assert "HTTP 401" in text


def test_no_provider_error_lists_every_exclusion_reason(
    make_hub: MakeHub, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVHUB_TEST_HUB_KEY", raising=False)
    hub = make_hub({"off": {"enabled": False}})
    hub.register(endpoint("off", upstream))
    hub.register(
        OpenAICompatible("keyed", upstream.base_url, ["gpt-4"], api_key_env="PROVHUB_TEST_HUB_KEY")
    )
    with pytest.raises(NoProviderError) as info:
        hub.stream("gpt-4", MESSAGES)
    assert info.value.model == "gpt-4"
    assert info.value.excluded == {
        "off": "disabled in config",
        "keyed": "needs credentials: environment variable PROVHUB_TEST_HUB_KEY is not set",
    }
    assert "PROVHUB_TEST_HUB_KEY" in str(info.value)
    assert upstream.requests == []


def test_needs_auth_provider_sends_the_key_from_its_env_var(
    make_hub: MakeHub, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVHUB_TEST_HUB_KEY", "sk-secret")
    hub = make_hub()
    hub.register(
        OpenAICompatible("keyed", upstream.base_url, ["gpt-4"], api_key_env="PROVHUB_TEST_HUB_KEY")
    )
    assert hub.complete("gpt-4", MESSAGES).text == Behaviour().text()
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-secret"


def test_unknown_model_raises_model_not_found_before_any_request(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    with pytest.raises(ModelNotFoundError) as info:
        hub.stream("gpt4", MESSAGES)
    assert info.value.suggestions == ("gpt-4",)
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ("hello", "got str"),
        ([], "empty"),
        ([{"role": "user", "content": "hi"}, "oops"], "messages[1] must be a dict"),
        ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}], "messages[1]"),
        ([{"role": "user"}], "messages[0] (user) has no 'content'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 3}], "messages[1]"),
        ([{"role": "user", "content": [{"text": "no type"}]}], "messages[0].content[0]"),
    ],
)
def test_bad_messages_raise_invalid_request_naming_the_message(
    make_hub: MakeHub, upstream: FakeUpstream, messages: Any, where: str
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    with pytest.raises(InvalidRequestError) as info:
        hub.stream("gpt-4", messages)
    assert where in str(info.value)
    with pytest.raises(InvalidRequestError):
        hub.complete("gpt-4", messages)
    assert upstream.requests == []


def test_all_four_roles_are_accepted(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = make_hub()
    hub.register(OpenAICompatible("a", upstream.base_url, ["gpt-4"], capabilities=Capability.TOOLS))
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "t", "tool_call_id": "c1"},
    ]
    assert hub.complete("gpt-4", messages).text == Behaviour().text()
    assert upstream.requests[0].json["messages"] == messages


# -- the Stream object ------------------------------------------------------------------------


def test_stream_metadata_is_live_during_iteration_and_final_after(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    upstream.script(Behaviour(status=401))
    second_upstream.script(Behaviour(tokens=("one", "two"), finish_reason="length"))
    stream = hub.stream("gpt-4", MESSAGES)
    assert stream.provider is None
    assert len(stream.request_id) >= 8
    assert next(stream) == "one"
    assert stream.provider == "b"
    assert [a.provider for a in stream.attempts][:1] == ["a"]
    assert stream.finish_reason is None
    assert stream.text == "one"
    assert list(stream) == ["two"]
    assert stream.provider == "b"
    assert stream.finish_reason == "length"
    assert stream.usage == Usage(prompt_tokens=2, completion_tokens=2, total_tokens=4)
    assert stream.text == "onetwo"
    assert [(a.number, a.provider, a.ok, a.status) for a in stream.attempts] == [
        (1, "a", False, 401),
        (2, "b", True, None),
    ]
    assert stream.request_id in repr(stream)


def test_stream_close_on_early_exit_closes_the_upstream_connection(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.script(Behaviour(chunks=10, fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=2))
    with hub.stream("gpt-4", MESSAGES) as stream:
        for token in stream:
            assert token == "w0 "
            break
    assert upstream.wait_for_disconnects(1, timeout=2.0)
    assert upstream.wait_for_open_connections(0, timeout=2.0)
    stream.close()  # idempotent
    assert hub.health()["a"]["in_flight"] == 0


def test_stream_read_to_the_end_reuses_its_pooled_connection(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    for _ in range(5):
        assert "".join(hub.stream("gpt-4", MESSAGES)) == Behaviour().text()
    assert upstream.connections_accepted == 1


def test_params_are_passed_to_the_provider(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    "".join(
        hub.stream(
            "gpt-4",
            MESSAGES,
            temperature=0.2,
            max_tokens=7,
            top_p=0.5,
            stop=["\n"],
            seed=42,
        )
    )
    body = upstream.requests[0].json
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["stop"]) == (
        0.2,
        7,
        0.5,
        ["\n"],
    )
    assert body["seed"] == 42
    assert body["stream"] is True
    assert body["model"] == "gpt-4"


def test_alias_is_resolved_to_the_providers_model_id(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(
        OpenAICompatible("a", upstream.base_url, ["gpt-4o-mini"], aliases={"mini": "gpt-4o-mini"})
    )
    assert hub.complete("mini", MESSAGES).text == Behaviour().text()
    assert upstream.requests[0].json["model"] == "gpt-4o-mini"


def test_provider_argument_restricts_the_request_to_that_provider(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    assert hub.complete("gpt-4", MESSAGES, provider="b").provider == "b"
    assert len(upstream.requests) == 0
    with pytest.raises(NoProviderError):
        hub.stream("gpt-4", MESSAGES, provider="nope")


# -- complete / facade ----------------------------------------------------------------------


def test_complete_returns_the_whole_result(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    upstream.script(Behaviour(status=500))
    result = hub.complete("gpt-4", MESSAGES, temperature=0)
    assert isinstance(result, provhub.Completion)
    assert result.text == Behaviour().text()
    assert str(result) == result.text
    assert result.provider == "a"
    assert result.model == "gpt-4"
    assert result.finish_reason == "stop"
    assert result.usage == Usage(2, 3, 5)
    assert [(a.provider, a.ok, a.status) for a in result.attempts] == [
        ("a", False, 500),
        ("a", True, None),
    ]
    assert len(result.request_id) >= 8
    # complete() asks the upstream for a non-streamed answer.
    assert upstream.requests[-1].json["stream"] is False


def test_complete_raises_typed_errors(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.default = Behaviour(status=403)
    with pytest.raises(AllProvidersFailedError) as info:
        hub.complete("gpt-4", MESSAGES)
    assert [a.status for a in info.value.attempts] == [403]


@pytest.fixture
def facade_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream: FakeUpstream
) -> Iterator[FakeUpstream]:
    """The facade's default hub, configured (via $PROVHUB_CONFIG) to use the fake upstream."""
    from provhub import _facade

    config = tmp_path / "provhub.toml"
    config.write_text(
        "[router]\nretries = 1\nbackoff_base = 0.01\nbackoff_max = 0.02\n"
        f'[providers.Lockchat]\nurl = "{upstream.url}"\n'
    )
    monkeypatch.setenv("PROVHUB_CONFIG", str(config))
    monkeypatch.setenv("PROVHUB_PLUGINS", "")
    monkeypatch.delenv("PROVHUB_LOCKCHAT_URL", raising=False)
    _facade._default_hub.cache_clear()
    yield upstream
    _facade._default_hub().close()
    _facade._default_hub.cache_clear()


def test_chat_completion_create_returns_text_or_a_token_generator(
    facade_env: FakeUpstream,
) -> None:
    upstream = facade_env
    upstream.script(HELLO, HELLO, Behaviour(status=500), HELLO)
    text = provhub.ChatCompletion.create("gpt-4", MESSAGES)
    assert text == "Hello there"
    tokens = provhub.ChatCompletion.create("gpt-4", MESSAGES, stream=True)
    assert not isinstance(tokens, str)
    assert list(tokens) == ["Hel", "lo", " there"]
    assert provhub.ChatCompletion.create("gpt-4", MESSAGES, provider="Lockchat") == "Hello there"
    body = upstream.requests[0].json
    assert body["model"] == "gpt-4"
    assert body["temperature"] == 0.7
    assert upstream.requests[0].headers["user-agent"] == "ChatX/39 CFNetwork/1408.0.4 Darwin/22.5.0"


def test_chat_completion_create_accepts_an_unregistered_provider_object(
    facade_env: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    other = endpoint("elsewhere", second_upstream, ("my-model",))
    assert provhub.ChatCompletion.create("my-model", MESSAGES, provider=other) == "w0 w1 w2 "
    assert provhub.ChatCompletion.create("my-model", MESSAGES, provider=other) == "w0 w1 w2 "
    assert len(second_upstream.requests) == 2
    assert facade_env.requests == []


def test_lockchat_with_config_url_streams_and_retries_the_model_missing_quirk(
    make_hub: MakeHub, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVHUB_PLUGINS", "")
    hub = make_hub({"Lockchat": {"url": upstream.url}}, load_plugins=True)
    upstream.script(Behaviour(fault=Fault.MODEL_MISSING), HELLO)
    stream = hub.stream("gpt-4", MESSAGES, temperature=0.1)
    assert list(stream) == ["Hel", "lo", " there"]
    assert stream.provider == "Lockchat"
    # The quirk is handled inside the provider: one successful attempt.
    assert [(a.provider, a.ok) for a in stream.attempts] == [("Lockchat", True)]
    assert [r.json["temperature"] for r in upstream.requests] == [0.1, 0.1]
    assert upstream.requests[0].path == "/v1/chat/completions"


# -- isolation and threads ------------------------------------------------------------------


def test_two_hubs_do_not_share_registry_or_health(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    # A long cooldown: "open" must still read open when asserted, however loaded the machine.
    first, second = make_hub(breaker_cooldown=60), make_hub(breaker_cooldown=60)
    first.register(endpoint("a", upstream))
    with pytest.raises(ModelNotFoundError):
        second.route("gpt-4")
    second.register(endpoint("a", second_upstream))  # same name, no conflict across hubs
    upstream.default = Behaviour(status=500)
    with pytest.raises(AllProvidersFailedError):
        list(first.stream("gpt-4", MESSAGES))
    assert first.health()["a"]["state"] == "open"
    assert second.health() == {}
    assert [c.name for c in second.route("gpt-4").candidates] == ["a"]
    assert "".join(second.stream("gpt-4", MESSAGES)) == Behaviour().text()
    seen: list[Any] = []
    first.subscribe(seen.append)
    "".join(second.stream("gpt-4", MESSAGES))
    assert seen == []


@pytest.mark.parametrize("threshold", [3, 1000], ids=["breaker-trips", "breaker-stays-closed"])
def test_sixteen_threads_sharing_one_hub_get_correct_answers_or_typed_errors(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream, threshold: int
) -> None:
    hub = make_hub(breaker_threshold=threshold)
    hub.register(endpoint("a", upstream))
    hub.register(endpoint("b", second_upstream))
    answer_a = Behaviour(tokens=tuple(f"a{i} " for i in range(20)))
    answer_b = Behaviour(tokens=tuple(f"b{i} " for i in range(20)))
    upstream.default = answer_a
    second_upstream.default = answer_b
    faults = [
        Behaviour(status=500),
        Behaviour(status=429),
        Behaviour(status=401),
        Behaviour(fault=Fault.DROP_AFTER_HEADERS),
        Behaviour(tokens=answer_a.tokens, fault=Fault.DROP_MID_STREAM, fault_after=5),
    ]
    upstream.script(*(faults * 6))
    expected = {"a": answer_a.text(), "b": answer_b.text()}
    barrier = threading.Barrier(16)
    outcomes: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        barrier.wait()
        for round_ in range(6):
            try:
                if (index + round_) % 3 == 0:
                    result = hub.complete("gpt-4", MESSAGES)
                    outcome: tuple[str, Any] = ("ok", (result.provider, result.text))
                else:
                    stream = hub.stream("gpt-4", MESSAGES)
                    text = "".join(stream)
                    outcome = ("ok", (stream.provider, text))
            except ProvhubError as exc:
                outcome = ("error", exc)
            except Exception as exc:  # anything untyped is a failure of the test
                outcome = ("untyped", exc)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 96
    assert [o for o in outcomes if o[0] == "untyped"] == []
    for kind, value in outcomes:
        if kind == "ok":
            provider, text = value
            assert text == expected[provider]
        else:
            # Only a drop after tokens reached the caller may surface as an error.
            assert isinstance(value, StreamInterruptedError), value
            assert expected["a"].startswith(value.text)
    assert sum(kind == "ok" for kind, _ in outcomes) >= 90
    assert all(v["in_flight"] == 0 for v in hub.health().values())
    if threshold == 1000:
        assert len(upstream.requests) >= 30  # every scripted fault was really served


# -- timeouts -------------------------------------------------------------------------------


def test_first_token_timeout_is_settable_per_call(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = make_hub(retries=0)
    hub.register(endpoint("a", upstream))
    upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=10)
    started = time.monotonic()
    with pytest.raises(AllProvidersFailedError) as info:
        list(hub.stream("gpt-4", MESSAGES, timeouts=Timeouts(first_token=0.3)))
    assert 0.25 < time.monotonic() - started < 1.5
    attempt = info.value.attempts[0]
    assert attempt.error_type == "UpstreamTimeoutError"
    assert attempt.retryable


def test_idle_timeout_is_settable_per_call(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = make_hub(retries=0)
    hub.register(endpoint("a", upstream))
    upstream.default = Behaviour(fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=1, hang_seconds=10)
    started = time.monotonic()
    stream = hub.stream("gpt-4", MESSAGES, timeouts=Timeouts(first_token=5, idle=0.3))
    with pytest.raises(StreamInterruptedError) as info:
        list(stream)
    assert 0.25 < time.monotonic() - started < 1.5
    assert info.value.text == "w0 "
    assert isinstance(info.value.cause, provhub.UpstreamTimeoutError)
    assert "idle" in str(info.value.cause)


def test_total_deadline_is_settable_per_call(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    # Never idle for long, but too slow overall.
    upstream.default = Behaviour(chunks=50, chunk_delay=0.05)
    started = time.monotonic()
    stream = hub.stream("gpt-4", MESSAGES, timeouts=Timeouts(first_token=5, idle=5, total=0.5))
    with pytest.raises(StreamInterruptedError) as info:
        list(stream)
    assert 0.45 < time.monotonic() - started < 1.5
    assert isinstance(info.value.cause, provhub.UpstreamTimeoutError)
    assert len(upstream.requests) == 1


def test_total_deadline_bounds_retries_and_fallbacks(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = two_provider_hub(make_hub, upstream, second_upstream)
    upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=10)
    second_upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=10)
    started = time.monotonic()
    with pytest.raises(AllProvidersFailedError):
        list(hub.stream("gpt-4", MESSAGES, timeouts=Timeouts(first_token=5, total=0.6)))
    assert time.monotonic() - started < 1.5


def test_timeouts_come_from_the_router_config(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = make_hub(retries=0, timeouts={"first_token": 0.3, "idle": 0.3, "total": 5})
    hub.register(endpoint("a", upstream))
    upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=10)
    started = time.monotonic()
    with pytest.raises(AllProvidersFailedError):
        list(hub.stream("gpt-4", MESSAGES))
    assert time.monotonic() - started < 1.5


def test_provider_table_timeouts_tighten_the_call_timeouts(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = make_hub({"a": {"timeouts": {"first_token": 0.3}}}, retries=0)
    hub.register(endpoint("a", upstream))
    upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=10)
    started = time.monotonic()
    with pytest.raises(AllProvidersFailedError):
        list(hub.stream("gpt-4", MESSAGES, timeouts=Timeouts(first_token=5)))
    assert time.monotonic() - started < 1.5


# -- health gates the plan --------------------------------------------------------------------


def test_open_breaker_excludes_the_provider_from_the_next_plan(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = make_hub(breaker_cooldown=60)  # threshold 3, retries 2
    hub.register(endpoint("a", upstream))
    hub.register(endpoint("b", second_upstream))
    upstream.default = Behaviour(status=500)
    first = hub.stream("gpt-4", MESSAGES)
    assert "".join(first) == Behaviour().text()
    assert first.provider == "b"
    assert len(upstream.requests) == 3
    plan = hub.route("gpt-4")
    assert [c.name for c in plan.candidates] == ["b"]
    assert dict(plan.excluded)["a"].startswith("circuit open")
    second = hub.stream("gpt-4", MESSAGES)
    assert "".join(second) == Behaviour().text()
    assert [(a.provider, a.ok) for a in second.attempts] == [("b", True)]
    assert len(upstream.requests) == 3  # not asked again while open


def test_provider_that_breaks_the_spec_fails_its_attempt_and_falls_back(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    class Broken(provhub.AbstractProvider):
        supports_gpt_4 = True

        @staticmethod
        def create_completion(model: str, messages: Any, stream: bool, **kw: Any) -> Any:
            yield 42

    hub = make_hub()
    hub.register(Broken)
    hub.register(endpoint("b", upstream))
    stream = hub.stream("gpt-4", MESSAGES)
    assert "".join(stream) == Behaviour().text()
    assert stream.attempts[0].provider == "Broken"
    assert not stream.attempts[0].retryable
    assert "int" in (stream.attempts[0].error or "")


def test_hub_close_releases_connections_and_stays_usable(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(endpoint("a", upstream))
    assert hub.complete("gpt-4", MESSAGES).text == Behaviour().text()
    hub.close()
    assert upstream.wait_for_open_connections(0, timeout=2.0)
    assert hub.complete("gpt-4", MESSAGES).text == Behaviour().text()


def test_dropping_an_unfinished_stream_closes_the_upstream_connection_at_once(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    import gc

    hub = make_hub()
    hub.register(endpoint("a", upstream))
    upstream.default = Behaviour(chunks=5000)
    gc.disable()  # "at once" means by reference counting, not at a later collection
    try:
        stream = hub.stream("gpt-4", MESSAGES)
        assert next(iter(stream)) == "w0 "
        del stream
        assert upstream.wait_for_open_connections(0, timeout=2.0)
    finally:
        gc.enable()
