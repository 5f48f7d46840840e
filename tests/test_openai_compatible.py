"""``openai-compatible`` providers (SPEC §8, §10): created from config, keys from the env.

The type is offered by the shipped plugin through its real entry point, so hubs here load
plugins (``PROVHUB_PLUGINS=""`` keeps it to the shipped one). All HTTP goes to a real
``FakeUpstream`` on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from provhub import (
    AbstractProvider,
    AllProvidersFailedError,
    ConfigError,
    CreateResult,
    Hub,
    Messages,
    NoProviderError,
    StreamInterruptedError,
    Usage,
)
from provhub.testing import Behaviour, FakeUpstream, Fault
from provhub_providers import OpenAICompatible

KEY_ENV = "PROVHUB_TEST_LOCAL_KEY"
SENTINEL = "sk-SENTINEL-9f8e7d6c5b4a"
HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Only the shipped plugin, no config file, the API key set to the sentinel."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PROVHUB_PLUGINS", "")
    monkeypatch.delenv("PROVHUB_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("PROVHUB_CONFIG", raising=False)
    monkeypatch.setenv(KEY_ENV, SENTINEL)
    return monkeypatch


def endpoint(upstream: FakeUpstream, **overrides: Any) -> dict[str, Any]:
    """A ``[providers.ollama]`` table for the fake upstream."""
    table: dict[str, Any] = {
        "type": "openai-compatible",
        "base_url": upstream.base_url,
        "api_key_env": KEY_ENV,
        "models": ["local-model", "local-large"],
    }
    table.update(overrides)
    return {key: value for key, value in table.items() if value is not None}


@pytest.fixture
def hub(env: pytest.MonkeyPatch, upstream: FakeUpstream, make_hub: Any) -> Hub:
    """A hub with one openai-compatible endpoint ``ollama`` on the fake upstream."""
    created: Hub = make_hub(
        {"ollama": endpoint(upstream, headers={"x-org": "provhub-tests"})}, load_plugins=True
    )
    return created


# -- creation from config ---------------------------------------------------------------------


def test_config_table_creates_an_instance_serving_its_models(hub: Hub) -> None:
    (info,) = hub.providers(model="local-model")

    assert info.name == "ollama"
    assert isinstance(info.provider, OpenAICompatible)
    assert info.provider.url == hub.config.provider("ollama").url  # type: ignore[union-attr]
    assert set(info.models) == {"local-model", "local-large"}
    assert info.needs_auth is True
    assert info.flags["supports_stream"] is True
    assert info.source.startswith("config")
    assert [i.name for i in hub.providers(model="local-large")] == ["ollama"]


def test_two_tables_create_two_independent_endpoints(
    env: pytest.MonkeyPatch,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    make_hub: Any,
) -> None:
    env.setenv("PROVHUB_TEST_OTHER_KEY", "other-key-0123")
    hub = make_hub(
        {
            "ollama": endpoint(upstream),
            "other": endpoint(
                second_upstream, api_key_env="PROVHUB_TEST_OTHER_KEY", models=["other-model"]
            ),
        },
        load_plugins=True,
    )

    hub.complete("local-model", HI)
    hub.complete("other-model", HI)

    assert [r.json["model"] for r in upstream.requests] == ["local-model"]
    assert [r.json["model"] for r in second_upstream.requests] == ["other-model"]
    assert second_upstream.requests[0].headers["authorization"] == "Bearer other-key-0123"


def test_config_aliases_route_to_the_real_model_id(
    env: pytest.MonkeyPatch, upstream: FakeUpstream, make_hub: Any
) -> None:
    hub = make_hub(
        {"ollama": endpoint(upstream, aliases={"fast": "local-model"})}, load_plugins=True
    )

    assert hub.complete("fast", HI).text == Behaviour().text()
    assert upstream.requests[0].json["model"] == "local-model"


# -- the wire request -------------------------------------------------------------------------


def test_stream_sends_bearer_key_config_headers_and_include_usage(
    hub: Hub, upstream: FakeUpstream
) -> None:
    upstream.script(Behaviour(tokens=("Hi", "!"), finish_reason="length"))

    with hub.stream("local-model", HI) as stream:
        tokens = list(stream)

    assert tokens == ["Hi", "!"]
    assert stream.provider == "ollama"
    assert stream.finish_reason == "length"
    assert stream.usage == Usage(prompt_tokens=2, completion_tokens=2, total_tokens=4)
    (sent,) = upstream.requests
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {SENTINEL}"
    assert sent.headers["x-org"] == "provhub-tests"
    assert sent.json == {
        "model": "local-model",
        "messages": HI,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_non_stream_request_uses_the_json_answer(hub: Hub, upstream: FakeUpstream) -> None:
    upstream.script(Behaviour(tokens=("Hello", " world"), finish_reason="length"))

    result = hub.complete("local-model", HI)

    assert result.text == "Hello world"
    assert result.provider == "ollama"
    assert result.finish_reason == "length"
    assert result.usage == Usage(prompt_tokens=2, completion_tokens=2, total_tokens=4)
    (sent,) = upstream.requests
    assert sent.json["stream"] is False
    assert "stream_options" not in sent.json
    assert sent.headers["authorization"] == f"Bearer {SENTINEL}"


PARAMS: list[Mapping[str, Any]] = [
    {"temperature": 0.2},
    {"max_tokens": 64},
    {"top_p": 0.9},
    {"stop": ["\n\n", "END"]},
    {"seed": 7, "response_format": {"type": "json_object"}, "user": "u-1"},
    {"temperature": 0.0, "max_tokens": 1, "top_p": 1.0, "stop": "."},
]


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "complete"])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(p))
def test_parameters_and_provider_extras_pass_through_to_the_json_body(
    hub: Hub, upstream: FakeUpstream, streamed: bool, params: Mapping[str, Any]
) -> None:
    if streamed:
        with hub.stream("local-model", HI, **params) as stream:
            list(stream)
    else:
        hub.complete("local-model", HI, **params)

    (sent,) = upstream.requests
    for key, value in params.items():
        assert sent.json[key] == value
    assert sent.json["model"] == "local-model"
    assert sent.json["messages"] == HI


def test_caller_stream_options_are_not_overwritten(hub: Hub, upstream: FakeUpstream) -> None:
    with hub.stream("local-model", HI, stream_options={"include_usage": False}) as stream:
        list(stream)

    assert upstream.requests[0].json["stream_options"] == {"include_usage": False}


def test_provider_timeouts_from_config_apply_to_its_calls(
    env: pytest.MonkeyPatch, upstream: FakeUpstream, make_hub: Any
) -> None:
    # The router allows 10 s of idle; the endpoint's own table allows 0.3 s.
    hub = make_hub(
        {"ollama": endpoint(upstream, timeouts={"idle": 0.3})},
        load_plugins=True,
        timeouts={"connect": 2.0, "first_token": 10.0, "idle": 10.0, "total": 20.0},
    )
    upstream.script(Behaviour(fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=1, hang_seconds=30))
    started = time.monotonic()

    with pytest.raises(StreamInterruptedError) as caught, hub.stream("local-model", HI) as stream:
        list(stream)

    assert time.monotonic() - started < 0.3 + 1.5
    assert caught.value.text == "w0 "


# -- the API key --------------------------------------------------------------------------------


def test_key_is_read_from_the_env_at_call_time(
    hub: Hub, upstream: FakeUpstream, env: pytest.MonkeyPatch
) -> None:
    hub.complete("local-model", HI)
    env.setenv(KEY_ENV, "rotated-key-4567")
    hub.complete("local-model", HI)

    assert [r.headers["authorization"] for r in upstream.requests] == [
        f"Bearer {SENTINEL}",
        "Bearer rotated-key-4567",
    ]


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_missing_key_excludes_the_provider_with_a_reason(
    hub: Hub, upstream: FakeUpstream, env: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        env.delenv(KEY_ENV)
    else:
        env.setenv(KEY_ENV, value)

    plan = hub.route("local-model", HI)

    assert plan.candidates == ()
    reason = f"needs credentials: environment variable {KEY_ENV} is not set"
    assert dict(plan.excluded) == {"ollama": reason}
    with pytest.raises(NoProviderError, match=KEY_ENV):
        hub.stream("local-model", HI)
    assert upstream.requests == []


def test_key_never_appears_in_events_reprs_or_errors(hub: Hub, upstream: FakeUpstream) -> None:
    events: list[Mapping[str, Any]] = []
    hub.subscribe(events.append)
    upstream.script(
        Behaviour(tokens=("ok",)),
        Behaviour(status=401),
        Behaviour(status=500),
        Behaviour(status=500),
        Behaviour(status=500),
    )

    hub.complete("local-model", HI)
    with pytest.raises(AllProvidersFailedError) as unauthorized:
        hub.complete("local-model", HI)
    with pytest.raises(AllProvidersFailedError) as failing:
        hub.complete("local-model", HI)

    (info,) = hub.providers(model="local-model")
    seen = [
        repr(events),
        str(unauthorized.value),
        repr(unauthorized.value.attempts),
        str(failing.value),
        repr(failing.value.attempts),
        repr(info),
        repr(info.provider),
        repr(vars(info.provider)),
        repr(hub.route("local-model")),
        repr(hub.health()),
        repr(hub),
    ]
    assert upstream.requests[0].headers["authorization"] == f"Bearer {SENTINEL}"
    assert {e["event"] for e in events} >= {"attempt.failed", "stream.completed"}
    for text in seen:
        assert SENTINEL not in text


def test_key_echoed_by_the_upstream_is_masked_in_the_error(
    env: pytest.MonkeyPatch, upstream: FakeUpstream
) -> None:
    # Called directly, the provider raises the transport's HTTP error, whose message
    # quotes the body; some servers quote the rejected key there.
    upstream.script(
        Behaviour(
            status=401,
            body=b'{"error": {"message": "Incorrect API key provided: '
            + SENTINEL.encode()
            + b'"}}',
        )
    )
    provider = OpenAICompatible("ollama", upstream.base_url, ["local-model"], api_key_env=KEY_ENV)

    with pytest.raises(requests.HTTPError) as caught:
        list(provider.create_completion("local-model", HI, True))

    assert "Incorrect API key provided" in str(caught.value)
    assert SENTINEL not in str(caught.value)


def test_instance_called_directly_outside_a_hub_streams_tokens(
    env: pytest.MonkeyPatch, upstream: FakeUpstream
) -> None:
    upstream.script(Behaviour(tokens=("a", "b")))
    provider = OpenAICompatible("ollama", upstream.base_url, ["local-model"], api_key_env=KEY_ENV)

    items = list(provider.create_completion("local-model", HI, True, temperature=0.5))

    assert [item for item in items if isinstance(item, str)] == ["a", "b"]
    (sent,) = upstream.requests
    assert sent.json["temperature"] == 0.5
    assert sent.headers["authorization"] == f"Bearer {SENTINEL}"


def test_malformed_json_answer_is_a_provider_failure_not_a_raw_key_error(
    hub: Hub, upstream: FakeUpstream
) -> None:
    upstream.default = Behaviour(body=b'{"choices": []}', content_type="application/json")

    with pytest.raises(AllProvidersFailedError) as caught:
        hub.complete("local-model", HI)

    assert {a.error_type for a in caught.value.attempts} == {"UpstreamProtocolError"}


# -- config errors --------------------------------------------------------------------------


def write_config(tmp_path: Path, table: Mapping[str, Any]) -> Path:
    """A provhub.toml holding ``[providers.ollama]`` = ``table`` (strings, lists, tables)."""

    def value(item: Any) -> str:
        if isinstance(item, str):
            return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        if isinstance(item, dict):
            return "{" + ", ".join(f'"{k}" = {value(v)}' for k, v in item.items()) + "}"
        return str(item)

    lines = ["[providers.ollama]", *(f"{key} = {value(v)}" for key, v in table.items())]
    path = tmp_path / "endpoint.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        ({"base_url": None}, "providers.ollama", "base_url is required"),
        ({"models": None}, "providers.ollama", "models must list at least one"),
        ({"colour": "red"}, "providers.ollama", "unknown key 'colour'"),
        ({"type": "openai-compatibel"}, "providers.ollama.type", "unknown provider type"),
        ({"api_key": SENTINEL}, "providers.ollama.api_key", "environment variable"),
        ({"base_url": "ftp://example.com"}, "providers.ollama.base_url", "http://"),
        ({"headers": {"x-n": 1}}, "providers.ollama.headers", "must be strings"),
        ({"models": "local-model"}, "providers.ollama.models", "list of model id"),
        ({"timeouts": {"idle": -1}}, "providers.ollama.timeouts.idle", "above 0"),
    ],
    ids=[
        "missing-base-url",
        "missing-models",
        "unknown-key",
        "unknown-type",
        "api-key-in-file",
        "url-scheme",
        "header-not-str",
        "models-not-list",
        "negative-timeout",
    ],
)
def test_bad_endpoint_table_is_a_config_error_naming_file_key_and_reason(
    env: pytest.MonkeyPatch,
    upstream: FakeUpstream,
    tmp_path: Path,
    overrides: dict[str, Any],
    key: str,
    reason: str,
) -> None:
    path = write_config(tmp_path, endpoint(upstream, **overrides))

    with pytest.raises(ConfigError) as caught:
        Hub(path, load_plugins=True)

    assert caught.value.path == str(path)
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(path) in str(caught.value)
    assert SENTINEL not in str(caught.value)


def test_type_is_unknown_without_the_shipped_plugin(
    env: pytest.MonkeyPatch, upstream: FakeUpstream, tmp_path: Path
) -> None:
    env.setenv("PROVHUB_DISABLE_PLUGINS", "provhub_providers")
    path = write_config(tmp_path, endpoint(upstream))

    with pytest.raises(ConfigError, match="unknown provider type") as caught:
        Hub(path, load_plugins=True)

    assert caught.value.key == "providers.ollama.type"


def test_shipped_type_works_when_plugins_are_not_loaded(
    env: pytest.MonkeyPatch, upstream: FakeUpstream, tmp_path: Path
) -> None:
    # openai-compatible ships with provhub: a hub that loads no plugins can still use it.
    path = write_config(tmp_path, endpoint(upstream))

    with Hub(path, load_plugins=False) as hub:
        assert [i.name for i in hub.providers()] == ["ollama"]  # no Lockchat, no plugin
        assert hub.plugins == ()
        assert hub.complete("local-model", HI).text == Behaviour().text()


class Echo(AbstractProvider):
    """Answers with the last message, without any network."""

    models = ("echo-1",)

    @staticmethod
    def create_completion(model: str, messages: Messages, stream: bool, **kw: Any) -> CreateResult:
        yield str(messages[-1]["content"])


def test_a_stray_provhub_toml_does_not_break_a_hub_without_plugins(
    env: pytest.MonkeyPatch, upstream: FakeUpstream, tmp_path: Path
) -> None:
    # A provhub.toml left in the working directory, with a type table and a table
    # for Lockchat, which this hub does not have.
    (tmp_path / "provhub.toml").write_text(
        "[providers.local]\n"
        'type = "openai-compatible"\n'
        f'base_url = "{upstream.base_url}"\n'
        'models = ["local-model"]\n'
        "[providers.Lockchat]\n"
        'url = "http://127.0.0.1:9"\n'
    )
    with Hub(load_plugins=False) as hub:
        hub.register(Echo)
        assert hub.complete("echo-1", HI).text == "hi there"
        assert hub.complete("local-model", HI).text == Behaviour().text()


def test_a_plugin_type_with_plugins_off_says_exactly_how_to_fix_it(
    env: pytest.MonkeyPatch, upstream: FakeUpstream, tmp_path: Path
) -> None:
    path = write_config(tmp_path, endpoint(upstream, type="acme-gateway"))

    with pytest.raises(ConfigError) as caught:
        Hub(path, load_plugins=False)

    assert caught.value.reason == (
        "unknown provider type 'acme-gateway' (known: local, openai-compatible); this hub was "
        "built "
        "with load_plugins=False, which offers only the types that ship with provhub; use "
        "Hub(load_plugins=True), or pass config= explicitly so no stray provhub.toml is read"
    )


def test_valid_file_creates_the_endpoint(
    env: pytest.MonkeyPatch, upstream: FakeUpstream, tmp_path: Path
) -> None:
    path = write_config(tmp_path, endpoint(upstream, headers={"x-org": "file"}))

    with Hub(path, load_plugins=True) as hub:
        assert hub.complete("local-model", HI).text == Behaviour().text()

    assert upstream.requests[0].headers["x-org"] == "file"
