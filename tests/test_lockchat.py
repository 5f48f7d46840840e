"""Lockchat, the reference provider (SPEC §10): the seed's usage, its wire format, its quirk.

Lockchat is pointed at a real ``FakeUpstream`` on 127.0.0.1 through ``PROVHUB_LOCKCHAT_URL``
or a ``[providers.Lockchat] url`` config table; the default URL is checked by sending the
request through the fake acting as an HTTP proxy, so nothing leaves the machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import provhub
import provhub._facade
from provhub import (
    AbstractProvider,
    AllProvidersFailedError,
    Config,
    Hub,
    ProviderError,
    Usage,
)
from provhub.testing import Behaviour, FakeUpstream, Fault, RecordedRequest, unused_port_url
from provhub_providers import Lockchat

USER_AGENT = "ChatX/39 CFNetwork/1408.0.4 Darwin/22.5.0"
HELLO = [{"role": "user", "content": "Hello world"}]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No config file, no proxy, only the shipped plugin, no Lockchat URL override."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PROVHUB_PLUGINS", "")
    for name in (
        "PROVHUB_CONFIG",
        "PROVHUB_DISABLE_PLUGINS",
        "PROVHUB_LOCKCHAT_URL",
        "http_proxy",
        "HTTP_PROXY",
        "no_proxy",
        "NO_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def lockchat_env(clean_env: pytest.MonkeyPatch, upstream: FakeUpstream) -> FakeUpstream:
    """``PROVHUB_LOCKCHAT_URL`` points at the fake upstream."""
    clean_env.setenv("PROVHUB_LOCKCHAT_URL", upstream.url)
    return upstream


@pytest.fixture
def facade(lockchat_env: FakeUpstream) -> Iterator[FakeUpstream]:
    """``provhub.ChatCompletion`` with a default hub built fresh in the clean environment.

    The facade keeps one hub per process; rebuilding it here keeps tests independent of
    whatever another test did with it.
    """
    provhub._facade._default_hub.cache_clear()
    yield lockchat_env
    if provhub._facade._default_hub.cache_info().currsize:
        provhub._facade._default_hub().close()
    provhub._facade._default_hub.cache_clear()


def assert_seed_wire_request(
    sent: RecordedRequest,
    *,
    model: str,
    messages: list[dict[str, str]],
    temperature: float = 0.7,
) -> None:
    """The request the seed's Lockchat sent, exactly."""
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["user-agent"] == USER_AGENT
    assert sent.headers["content-type"] == "application/json"
    assert list(sent.json) == ["temperature", "messages", "model", "stream"]
    assert sent.json["messages"] == messages
    assert sent.json["model"] == model
    assert sent.json["stream"] is True
    assert type(sent.json["temperature"]) is float
    assert sent.json["temperature"] == temperature


def text_of(items: list[Any]) -> str:
    return "".join(item for item in items if isinstance(item, str))


# -- the seed's two examples ------------------------------------------------------------------


def test_seed_streaming_example_yields_str_tokens(facade: FakeUpstream) -> None:
    facade.script(Behaviour(tokens=("Hello", ",", " world", "!")))

    tokens = list(
        provhub.ChatCompletion.create(
            model="gpt-3.5-turbo",
            provider=Lockchat,
            messages=[{"role": "user", "content": "Hello world"}],
            stream=True,
        )
    )

    assert tokens == ["Hello", ",", " world", "!"]
    assert all(type(token) is str for token in tokens)
    (sent,) = facade.requests
    assert_seed_wire_request(sent, model="gpt-3.5-turbo", messages=HELLO)


def test_seed_non_stream_example_returns_the_whole_answer_as_str(facade: FakeUpstream) -> None:
    facade.script(Behaviour(tokens=("Hi", " there")))

    answer = provhub.ChatCompletion.create(
        model=provhub.GPT_4, messages=[{"role": "user", "content": "hi"}]
    )

    assert answer == "Hi there"
    assert type(answer) is str
    (sent,) = facade.requests
    # The endpoint always streams, even for a non-streamed call.
    assert_seed_wire_request(sent, model="gpt-4", messages=HI)


def test_facade_sends_the_temperature_as_a_float_and_nothing_else(
    facade: FakeUpstream,
) -> None:
    answer = provhub.ChatCompletion.create(
        model="gpt-4", messages=HI, provider=Lockchat, temperature=0.3, max_tokens=5
    )

    assert answer == Behaviour().text()
    (sent,) = facade.requests
    assert_seed_wire_request(sent, model="gpt-4", messages=HI, temperature=0.3)
    assert b'"temperature":0.3' in sent.body


def test_facade_refuses_a_string_temperature_before_sending_anything(
    facade: FakeUpstream,
) -> None:
    # Through a hub, params are validated (SPEC §11); called directly, Lockchat still
    # converts with float() as the seed did (see below).
    with pytest.raises(provhub.InvalidRequestError, match=r"temperature must be a number"):
        provhub.ChatCompletion.create(
            model="gpt-4", messages=HI, provider=Lockchat, temperature="0.3"
        )
    assert facade.requests == []


# -- called directly -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "temperature"),
    [
        ({}, 0.7),
        ({"temperature": "0.3"}, 0.3),
        ({"temperature": 1}, 1.0),
        ({"temperature": 0}, 0.0),
    ],
    ids=["default", "string", "int", "zero"],
)
def test_direct_call_sends_the_seed_request_with_float_temperature(
    lockchat_env: FakeUpstream, kwargs: dict[str, Any], temperature: float
) -> None:
    items = list(Lockchat.create_completion("gpt-4", HI, True, **kwargs))

    assert text_of(items) == Behaviour().text()
    (sent,) = lockchat_env.requests
    assert_seed_wire_request(sent, model="gpt-4", messages=HI, temperature=temperature)


def test_direct_call_yields_only_str_tokens_so_join_works_as_in_the_seed(
    lockchat_env: FakeUpstream,
) -> None:
    lockchat_env.script(Behaviour(tokens=("a", "b")))

    items = list(Lockchat.create_completion("gpt-3.5-turbo", HELLO, stream=True))

    assert items == ["a", "b"]
    assert "".join(Lockchat.create_completion("gpt-3.5-turbo", HELLO, True)) == "w0 w1 w2 "


def test_through_a_hub_lockchat_reports_finish_reason_and_usage_markers(
    lockchat_env: FakeUpstream,
) -> None:
    lockchat_env.script(Behaviour(tokens=("a", "b")))
    hub = Hub(Config(), load_plugins=False)
    hub.register(Lockchat)
    stream = hub.stream("gpt-3.5-turbo", HELLO)

    assert list(stream) == ["a", "b"]
    assert stream.finish_reason == "stop"
    assert stream.usage == Usage(2, 2, 4)
    hub.close()


def test_direct_call_ignores_a_stream_false_argument_and_still_streams(
    lockchat_env: FakeUpstream,
) -> None:
    items = list(Lockchat.create_completion("gpt-4", HI, False))

    assert text_of(items) == Behaviour().text()
    assert lockchat_env.requests[0].json["stream"] is True


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_direct_call_raises_requests_http_error_on_an_error_status(
    lockchat_env: FakeUpstream, status: int
) -> None:
    lockchat_env.script(Behaviour(status=status))

    with pytest.raises(requests.HTTPError) as caught:
        list(Lockchat.create_completion("gpt-4", HI, True))

    assert caught.value.response is not None
    assert caught.value.response.status_code == status


def test_direct_call_raises_requests_connection_error_when_refused(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("PROVHUB_LOCKCHAT_URL", unused_port_url())

    with pytest.raises(requests.ConnectionError):
        list(Lockchat.create_completion("gpt-4", HI, True))


def test_closing_a_direct_stream_early_closes_the_connection(lockchat_env: FakeUpstream) -> None:
    lockchat_env.script(Behaviour(chunks=200, chunk_delay=0.05))
    tokens = Lockchat.create_completion("gpt-4", HI, True)

    assert next(tokens) == "w0 "
    tokens.close()  # type: ignore[attr-defined]

    assert lockchat_env.wait_for_disconnects(1)


# -- the "model does not exist" quirk ----------------------------------------------------------


def test_model_missing_once_is_retried_and_tokens_arrive_exactly_once(
    lockchat_env: FakeUpstream,
) -> None:
    lockchat_env.script(Behaviour(fault=Fault.MODEL_MISSING), Behaviour(tokens=("Hel", "lo")))

    items = list(Lockchat.create_completion("gpt-4", HI, True, temperature=0.2))

    assert [item for item in items if isinstance(item, str)] == ["Hel", "lo"]
    first, second = lockchat_env.requests
    assert_seed_wire_request(first, model="gpt-4", messages=HI, temperature=0.2)
    # The retry re-sends the very same request, temperature included.
    assert second.body == first.body
    assert second.headers["user-agent"] == USER_AGENT


def test_model_missing_once_through_the_facade_streams_the_answer_once(
    facade: FakeUpstream,
) -> None:
    facade.script(Behaviour(fault=Fault.MODEL_MISSING), Behaviour(tokens=("Hel", "lo")))

    tokens = list(
        provhub.ChatCompletion.create(
            model="gpt-4", provider=Lockchat, messages=HI, stream=True, temperature=0.9
        )
    )

    assert tokens == ["Hel", "lo"]
    assert [r.json["temperature"] for r in facade.requests] == [0.9, 0.9]


def test_endless_model_missing_ends_with_provider_error_after_bounded_retries(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with FakeUpstream(default=Behaviour(fault=Fault.MODEL_MISSING)) as missing:
        clean_env.setenv("PROVHUB_LOCKCHAT_URL", missing.url)
        started = time.monotonic()

        with pytest.raises(ProviderError, match="does not exist") as caught:
            list(Lockchat.create_completion("gpt-4", HI, True))

        assert len(missing.requests) == 1 + 3
        assert all(r.body == missing.requests[0].body for r in missing.requests)
    assert caught.value.retryable is False
    assert caught.value.provider == "Lockchat"
    assert time.monotonic() - started < 5.0


def test_endless_model_missing_through_a_hub_is_not_retried_by_the_router(
    clean_env: pytest.MonkeyPatch, make_hub: Any
) -> None:
    with FakeUpstream(default=Behaviour(fault=Fault.MODEL_MISSING)) as missing:
        hub = make_hub({"Lockchat": {"url": missing.url}})
        hub.register(Lockchat)

        with pytest.raises(AllProvidersFailedError) as caught:
            list(hub.stream("gpt-4", HI))

        # Lockchat's own bounded retries; the error is not retryable, so no router retry.
        assert len(missing.requests) == 1 + 3
    assert [a.provider for a in caught.value.attempts] == ["Lockchat"]


# -- class attributes and where requests go ----------------------------------------------------


def test_class_attributes_are_exactly_the_seeds() -> None:
    assert issubclass(Lockchat, AbstractProvider)
    assert Lockchat.url == "http://supertest.lockchat.app"
    assert Lockchat.name == "Lockchat"
    assert Lockchat.supports_stream is True
    assert Lockchat.supports_gpt_35_turbo is True
    assert Lockchat.supports_gpt_4 is True
    assert Lockchat.working is True
    assert Lockchat.needs_auth is False
    assert isinstance(Lockchat.__dict__["create_completion"], staticmethod)


def test_shipped_lockchat_serves_both_seed_models(clean_env: pytest.MonkeyPatch) -> None:
    with Hub(load_plugins=True) as hub:
        served = {info.name: set(info.models) for info in hub.providers()}

    assert {"gpt-3.5-turbo", "gpt-4"} <= served["Lockchat"]


def test_default_url_is_the_seeds_when_no_env_or_config(
    clean_env: pytest.MonkeyPatch, upstream: FakeUpstream
) -> None:
    # The fake acts as an HTTP proxy: the request line then carries the absolute URL the
    # provider chose, and nothing reaches the real host.
    clean_env.setenv("http_proxy", upstream.url)
    clean_env.setenv("HTTP_PROXY", upstream.url)

    items = list(Lockchat.create_completion("gpt-4", HI, True))

    assert text_of(items) == Behaviour().text()
    (sent,) = upstream.requests
    assert sent.path == "http://supertest.lockchat.app/v1/chat/completions"
    assert sent.headers["host"] == "supertest.lockchat.app"


@pytest.mark.parametrize("suffix", ["", "/"], ids=["bare", "trailing-slash"])
def test_env_url_overrides_the_default(
    clean_env: pytest.MonkeyPatch, upstream: FakeUpstream, suffix: str
) -> None:
    clean_env.setenv("PROVHUB_LOCKCHAT_URL", upstream.url + suffix)

    list(Lockchat.create_completion("gpt-4", HI, True))

    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"]


def test_config_url_points_the_shipped_lockchat_at_the_upstream(
    clean_env: pytest.MonkeyPatch, upstream: FakeUpstream, make_hub: Any
) -> None:
    upstream.script(Behaviour(tokens=("con", "fig"), finish_reason="length"))
    hub = make_hub({"Lockchat": {"url": upstream.url + "/"}}, load_plugins=True)

    with hub.stream("gpt-4", HI, provider="Lockchat", temperature=0.1) as stream:
        tokens = list(stream)

    assert tokens == ["con", "fig"]
    assert stream.provider == "Lockchat"
    assert stream.finish_reason == "length"
    (sent,) = upstream.requests
    assert_seed_wire_request(sent, model="gpt-4", messages=HI, temperature=0.1)


def test_config_url_wins_over_the_env_url(
    clean_env: pytest.MonkeyPatch,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    make_hub: Any,
) -> None:
    clean_env.setenv("PROVHUB_LOCKCHAT_URL", second_upstream.url)
    hub = make_hub({"Lockchat": {"url": upstream.url}}, load_plugins=True)

    assert hub.complete("gpt-3.5-turbo", HELLO, provider="Lockchat").text == Behaviour().text()
    assert len(upstream.requests) == 1
    assert second_upstream.requests == []


def test_config_headers_are_sent_alongside_the_seed_user_agent(
    clean_env: pytest.MonkeyPatch, upstream: FakeUpstream, make_hub: Any
) -> None:
    hub = make_hub({"Lockchat": {"url": upstream.url, "headers": {"x-team": "blue"}}})
    hub.register(Lockchat)

    hub.complete("gpt-4", HI)

    (sent,) = upstream.requests
    assert sent.headers["x-team"] == "blue"
    assert sent.headers["user-agent"] == USER_AGENT
