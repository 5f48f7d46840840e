"""Configuration (SPEC §8): file discovery, TOML parsing, and every validation rule.

Each invalid value must raise ``ConfigError`` naming the file, the dotted key and the reason.
Files live under ``tmp_path``; the environment and working directory are set with
``monkeypatch``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from provhub import (
    AbstractProvider,
    Config,
    ConfigError,
    Hub,
    Limits,
    ProviderConfig,
    RouterConfig,
    Strategy,
    Timeouts,
    load_config,
)


@pytest.fixture
def places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    """An isolated working directory and user config dir, with no $PROVHUB_CONFIG."""
    cwd = tmp_path / "cwd"
    xdg = tmp_path / "xdg"
    cwd.mkdir()
    xdg.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.delenv("PROVHUB_CONFIG", raising=False)
    return {
        "explicit": tmp_path / "explicit.toml",
        "env": tmp_path / "from-env.toml",
        "cwd": cwd / "provhub.toml",
        "user": xdg / "provhub" / "provhub.toml",
    }


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def marked(path: Path, retries: int) -> Path:
    """A config file recognisable by its ``router.retries``."""
    return write(path, f"[router]\nretries = {retries}\n")


# -- discovery --------------------------------------------------------------------------------


def test_explicit_path_wins_over_env_cwd_and_user_dir(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for retries, name in enumerate(["explicit", "env", "cwd", "user"], start=1):
        marked(places[name], retries)
    monkeypatch.setenv("PROVHUB_CONFIG", str(places["env"]))

    config = load_config(places["explicit"])

    assert config.router.retries == 1
    assert config.path == str(places["explicit"])


def test_env_var_wins_over_cwd_and_user_dir(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for retries, name in enumerate(["env", "cwd", "user"], start=2):
        marked(places[name], retries)
    monkeypatch.setenv("PROVHUB_CONFIG", str(places["env"]))

    config = load_config()

    assert config.router.retries == 2
    assert config.path == str(places["env"])


def test_provhub_toml_in_the_working_directory_wins_over_the_user_dir(
    places: dict[str, Path],
) -> None:
    marked(places["cwd"], 3)
    marked(places["user"], 4)

    config = load_config()

    assert config.router.retries == 3
    assert Path(config.path or "").resolve() == places["cwd"].resolve()


def test_user_config_dir_from_xdg_config_home_is_used_last(places: dict[str, Path]) -> None:
    marked(places["user"], 4)

    config = load_config()

    assert config.router.retries == 4
    assert config.path == str(places["user"])


def test_user_config_dir_defaults_to_dot_config_under_home(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(home))
    path = marked(home / ".config" / "provhub" / "provhub.toml", 5)

    config = load_config()

    assert config.router.retries == 5
    assert config.path == str(path)


def test_empty_env_var_counts_as_unset(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    marked(places["cwd"], 3)
    monkeypatch.setenv("PROVHUB_CONFIG", "")

    assert load_config().router.retries == 3


def test_no_file_anywhere_gives_the_defaults(places: dict[str, Path]) -> None:
    config = load_config()

    assert config == Config()
    assert config.path is None
    assert config.router.timeouts == Timeouts()


def test_hub_takes_a_config_path(places: dict[str, Path]) -> None:
    path = marked(places["explicit"], 1)

    with Hub(path, load_plugins=False) as hub:
        assert hub.config.path == str(path)
        assert hub.config.router.retries == 1


@pytest.mark.parametrize("via", ["argument", "env"])
def test_missing_explicit_file_is_a_config_error(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    marked(places["cwd"], 3)  # an implicit file must not be used instead
    missing = places["explicit"]

    argument: Path | None = missing
    if via == "env":
        monkeypatch.setenv("PROVHUB_CONFIG", str(missing))
        argument = None

    with pytest.raises(ConfigError) as caught:
        load_config(argument)

    assert caught.value.path == str(missing)
    assert caught.value.key is None
    named = " (named by $PROVHUB_CONFIG)" if via == "env" else ""
    assert caught.value.reason == "file not found" + named


def test_directory_given_as_config_file_says_it_is_a_directory(
    places: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.reason == (
        "is a directory, not a config file; pass the path of the TOML file"
    )
    assert caught.value.path == str(tmp_path)


def test_directory_holding_a_provhub_toml_suggests_the_file(places: dict[str, Path]) -> None:
    marked(places["cwd"], 2)
    with pytest.raises(ConfigError) as caught:
        load_config(places["cwd"].parent)
    assert caught.value.reason.endswith(f"did you mean {str(places['cwd'])!r}?")


@pytest.mark.parametrize("where", ["explicit", "env", "cwd", "user"])
def test_the_source_names_the_file_and_how_it_was_found(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = marked(places[where], 1)
    if where == "env":
        monkeypatch.setenv("PROVHUB_CONFIG", str(path))
    source = load_config(path if where == "explicit" else None).source
    assert source is not None
    assert source.path == str(path) or Path(source.path or "").absolute() == path
    assert (
        str(source.origin)
        == {
            "explicit": "argument",
            "env": "PROVHUB_CONFIG",
            "cwd": "working directory",
            "user": "user config dir",
        }[where]
    )


def test_no_file_found_names_the_places_searched(places: dict[str, Path]) -> None:
    source = load_config().source
    assert source is not None
    assert (source.path, str(source.origin)) == (None, "none found")
    assert source.searched == (str(places["cwd"]), str(places["user"]))
    assert source.describe() == (f"none found (searched {places['cwd']}, {places['user']})")


@pytest.mark.parametrize(
    "text",
    ["[router\nretries = 1\n", "retries = \n", "[router]\nretries = 1\nretries = 2\n", "a = 'b"],
    ids=["unclosed-table", "missing-value", "duplicate-key", "unclosed-string"],
)
def test_invalid_toml_is_a_config_error_naming_the_file(places: dict[str, Path], text: str) -> None:
    path = write(places["explicit"], text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.path == str(path)
    assert caught.value.key is None
    assert caught.value.reason.startswith("invalid TOML")
    assert str(path) in str(caught.value)


def test_file_that_is_not_utf8_is_a_config_error(places: dict[str, Path]) -> None:
    path = places["explicit"]
    path.write_bytes(b'[router]\nstrategy = "\xff"\n')

    with pytest.raises(ConfigError, match="UTF-8") as caught:
        load_config(path)

    assert caught.value.path == str(path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_a_config_error(places: dict[str, Path]) -> None:
    path = marked(places["explicit"], 1)
    path.chmod(0)

    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


# -- parsing valid files ----------------------------------------------------------------------

FULL = """
log_content = true

[router]
strategy = "least_busy"
retries = 0
backoff_base = 0
backoff_max = 2.5
retry_after_cap = 10
breaker_threshold = 1
breaker_cooldown = 0.5

[router.timeouts]
first_token = 3
idle = 1.5

[limits]
max_line_bytes = 4096

[providers.Lockchat]
enabled = false
priority = -2
url = "http://127.0.0.1:9/"
headers = { "x-team" = "blue" }
timeouts = { total = 9 }

[providers.local]
type = "openai-compatible"
base_url = "https://api.example.com/v1/"
api_key_env = "EXAMPLE_KEY"
models = ["m-1", "m-2"]
verify_tls = false
aliases = { fast = "m-1" }
"""


def test_full_file_parses_into_typed_settings(places: dict[str, Path]) -> None:
    path = write(places["explicit"], FULL)

    config = load_config(path)

    assert config.log_content is True
    assert config.router == RouterConfig(
        strategy=Strategy.LEAST_BUSY,
        retries=0,
        backoff_base=0.0,
        backoff_max=2.5,
        retry_after_cap=10.0,
        breaker_threshold=1,
        breaker_cooldown=0.5,
        timeouts=Timeouts(connect=10.0, first_token=3.0, idle=1.5, total=600.0),
    )
    assert config.limits == Limits(max_line_bytes=4096)
    assert config.providers["Lockchat"] == ProviderConfig(
        name="Lockchat",
        enabled=False,
        priority=-2,
        url="http://127.0.0.1:9",
        headers={"x-team": "blue"},
        timeouts={"total": 9.0},
    )
    local = config.providers["local"]
    assert local.type == "openai-compatible"
    assert local.url == "https://api.example.com/v1"  # base_url, trailing slash dropped
    assert local.api_key_env == "EXAMPLE_KEY"
    assert local.models == ("m-1", "m-2")
    assert local.verify_tls is False
    assert local.extra == {"aliases": {"fast": "m-1"}}


def test_provider_lookup_ignores_case() -> None:
    config = Config.from_mapping({"providers": {"Lockchat": {"priority": 3}}})

    assert config.provider("lockchat") is config.providers["Lockchat"]
    assert config.provider("LOCKCHAT") is config.providers["Lockchat"]
    assert config.provider("other") is None


def test_integer_numbers_become_floats_and_strategy_an_enum() -> None:
    config = Config.from_mapping({"router": {"strategy": "random", "timeouts": {"connect": 3}}})

    assert config.router.strategy is Strategy.RANDOM
    assert type(config.router.timeouts.connect) is float
    assert config.router.timeouts.total == Timeouts().total


@pytest.mark.parametrize("strategy", [s.value for s in Strategy])
def test_every_strategy_name_is_accepted(strategy: str) -> None:
    assert Config.from_mapping({"router": {"strategy": strategy}}).router.strategy == strategy


# -- validation rules -------------------------------------------------------------------------

NAN = math.nan
INF = math.inf

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, mapping, dotted key, part of the reason)
    ("root-unknown-key", {"routers": {}}, "routers", "unknown key"),
    ("log-content-not-bool", {"log_content": "yes"}, "log_content", "true or false"),
    ("router-not-table", {"router": "fast"}, "router", "must be a table"),
    ("router-unknown-key", {"router": {"retry": 1}}, "router.retry", "unknown key"),
    (
        "strategy-unknown",
        {"router": {"strategy": "fastest"}},
        "router.strategy",
        "unknown strategy",
    ),
    ("strategy-not-str", {"router": {"strategy": 1}}, "router.strategy", "unknown strategy"),
    ("retries-negative", {"router": {"retries": -1}}, "router.retries", "integer >= 0"),
    ("retries-bool", {"router": {"retries": True}}, "router.retries", "integer >= 0"),
    ("retries-float", {"router": {"retries": 1.5}}, "router.retries", "integer >= 0"),
    ("retries-str", {"router": {"retries": "2"}}, "router.retries", "integer >= 0"),
    (
        "breaker-threshold-zero",
        {"router": {"breaker_threshold": 0}},
        "router.breaker_threshold",
        "integer >= 1",
    ),
    (
        "breaker-threshold-bool",
        {"router": {"breaker_threshold": True}},
        "router.breaker_threshold",
        "integer >= 1",
    ),
    (
        "backoff-base-negative",
        {"router": {"backoff_base": -0.5}},
        "router.backoff_base",
        "0 or more",
    ),
    ("backoff-max-zero", {"router": {"backoff_max": 0}}, "router.backoff_max", "above 0"),
    ("backoff-max-negative", {"router": {"backoff_max": -1}}, "router.backoff_max", "above 0"),
    ("backoff-max-bool", {"router": {"backoff_max": True}}, "router.backoff_max", "a number"),
    ("backoff-max-str", {"router": {"backoff_max": "1"}}, "router.backoff_max", "a number"),
    ("backoff-max-nan", {"router": {"backoff_max": NAN}}, "router.backoff_max", "a number"),
    ("backoff-max-inf", {"router": {"backoff_max": INF}}, "router.backoff_max", "finite"),
    (
        "retry-after-cap-zero",
        {"router": {"retry_after_cap": 0}},
        "router.retry_after_cap",
        "above 0",
    ),
    (
        "breaker-cooldown-negative",
        {"router": {"breaker_cooldown": -5}},
        "router.breaker_cooldown",
        "above 0",
    ),
    ("timeouts-not-table", {"router": {"timeouts": 5}}, "router.timeouts", "must be a table"),
    (
        "timeouts-unknown-key",
        {"router": {"timeouts": {"read": 5}}},
        "router.timeouts.read",
        "unknown key",
    ),
    (
        "timeout-zero",
        {"router": {"timeouts": {"connect": 0}}},
        "router.timeouts.connect",
        "above 0",
    ),
    (
        "timeout-negative",
        {"router": {"timeouts": {"idle": -1}}},
        "router.timeouts.idle",
        "above 0",
    ),
    (
        "timeout-bool",
        {"router": {"timeouts": {"total": True}}},
        "router.timeouts.total",
        "a number",
    ),
    (
        "timeout-inf",
        {"router": {"timeouts": {"first_token": INF}}},
        "router.timeouts.first_token",
        "finite",
    ),
    ("limits-not-table", {"limits": 1}, "limits", "must be a table"),
    ("limits-unknown-key", {"limits": {"max_bytes": 1}}, "limits.max_bytes", "unknown key"),
    ("limit-zero", {"limits": {"max_line_bytes": 0}}, "limits.max_line_bytes", "integer >= 1"),
    (
        "limit-negative",
        {"limits": {"max_response_bytes": -1}},
        "limits.max_response_bytes",
        "integer >= 1",
    ),
    (
        "limit-bool",
        {"limits": {"max_request_bytes": True}},
        "limits.max_request_bytes",
        "integer >= 1",
    ),
    ("limit-float", {"limits": {"max_line_bytes": 1.5}}, "limits.max_line_bytes", "integer >= 1"),
    ("providers-not-table", {"providers": ["x"]}, "providers", "must be a table"),
    ("provider-not-table", {"providers": {"x": 1}}, "providers.x", "must be a table"),
    ("enabled-not-bool", {"providers": {"x": {"enabled": 1}}}, "providers.x.enabled", "true or"),
    (
        "verify-tls-not-bool",
        {"providers": {"x": {"verify_tls": "no"}}},
        "providers.x.verify_tls",
        "true or false",
    ),
    (
        "priority-bool",
        {"providers": {"x": {"priority": True}}},
        "providers.x.priority",
        "an integer",
    ),
    (
        "priority-float",
        {"providers": {"x": {"priority": 1.5}}},
        "providers.x.priority",
        "an integer",
    ),
    ("type-empty", {"providers": {"x": {"type": ""}}}, "providers.x.type", "non-empty string"),
    ("type-not-str", {"providers": {"x": {"type": 3}}}, "providers.x.type", "non-empty string"),
    (
        "api-key-env-empty",
        {"providers": {"x": {"api_key_env": ""}}},
        "providers.x.api_key_env",
        "non-empty string",
    ),
    (
        "url-without-host",
        {"providers": {"x": {"base_url": "http://"}}},
        "providers.x.base_url",
        "must be a URL like https://api.example.com/v1 (a scheme and a host), got 'http://'",
    ),
    (
        "url-with-a-space",
        {"providers": {"x": {"base_url": "http://api.example.com /v1"}}},
        "providers.x.base_url",
        "must not contain spaces or line breaks",
    ),
    (
        "url-with-a-newline",
        {"providers": {"x": {"url": "http://api.example.com\n"}}},
        "providers.x.url",
        "must not contain spaces or line breaks",
    ),
    (
        "url-with-credentials",
        {"providers": {"x": {"url": "https://me:pw@api.example.com"}}},
        "providers.x.url",
        "must not hold credentials",
    ),
    (
        "url-with-a-bad-port",
        {"providers": {"x": {"url": "http://api.example.com:99999/v1"}}},
        "providers.x.url",
        "is not valid",
    ),
    (
        "url-with-a-query",
        {"providers": {"x": {"url": "http://api.example.com/v1?key=1"}}},
        "providers.x.url",
        "must not have a query",
    ),
    (
        "url-scheme",
        {"providers": {"x": {"url": "ftp://example.com"}}},
        "providers.x.url",
        "http:// or https://",
    ),
    (
        "url-without-scheme",
        {"providers": {"x": {"url": "example.com/v1"}}},
        "providers.x.url",
        "http:// or https://",
    ),
    (
        "base-url-scheme",
        {"providers": {"x": {"base_url": "ws://example.com"}}},
        "providers.x.base_url",
        "http:// or https://",
    ),
    ("url-not-str", {"providers": {"x": {"url": 80}}}, "providers.x.url", "non-empty string"),
    (
        "models-str",
        {"providers": {"x": {"models": "gpt-4"}}},
        "providers.x.models",
        "list of model id strings",
    ),
    (
        "models-non-str",
        {"providers": {"x": {"models": ["gpt-4", 4]}}},
        "providers.x.models",
        "list of model id strings",
    ),
    (
        "models-empty-id",
        {"providers": {"x": {"models": [""]}}},
        "providers.x.models",
        "list of model id strings",
    ),
    (
        "headers-not-table",
        {"providers": {"x": {"headers": ["a: b"]}}},
        "providers.x.headers",
        "must be a table",
    ),
    (
        "headers-value-int",
        {"providers": {"x": {"headers": {"x-n": 1}}}},
        "providers.x.headers",
        "header values must be strings",
    ),
    (
        "headers-value-table",
        {"providers": {"x": {"headers": {"x-n": {"a": "b"}}}}},
        "providers.x.headers",
        "header values must be strings",
    ),
    (
        "provider-timeouts-unknown-key",
        {"providers": {"x": {"timeouts": {"read": 1}}}},
        "providers.x.timeouts.read",
        "unknown key",
    ),
    (
        "provider-timeout-zero",
        {"providers": {"x": {"timeouts": {"total": 0}}}},
        "providers.x.timeouts.total",
        "above 0",
    ),
]


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_value_is_a_config_error_naming_key_and_reason(
    data: dict[str, Any], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping(data, path="/etc/provhub.toml")

    assert caught.value.path == "/etc/provhub.toml"
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"/etc/provhub.toml, key {key!r}: ")


@pytest.mark.parametrize(
    "secret", ["api_key", "key", "token", "password", "secret", "authorization"]
)
def test_secret_in_a_provider_table_is_refused_without_echoing_it(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping({"providers": {"x": {secret: "s3cr3t-value"}}})

    assert caught.value.key == f"providers.x.{secret}"
    assert "api_key_env" in caught.value.reason
    assert "s3cr3t-value" not in str(caught.value)


def test_root_that_is_not_a_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping(["router"])  # type: ignore[arg-type]

    assert caught.value.key == "<root>"


def test_errors_from_a_file_name_the_file_and_the_key(places: dict[str, Path]) -> None:
    path = write(places["cwd"], '[router]\nstrategy = "fastest"\n')

    with pytest.raises(ConfigError) as caught:
        load_config()

    assert Path(caught.value.path or "").resolve() == path.resolve()
    assert caught.value.key == "router.strategy"
    assert "priority" in caught.value.reason  # the message lists the valid strategies


def test_toml_nan_and_inf_are_refused(places: dict[str, Path]) -> None:
    for text, key in [
        ("[router]\nbackoff_max = nan\n", "router.backoff_max"),
        ("[router.timeouts]\ntotal = inf\n", "router.timeouts.total"),
    ]:
        path = write(places["explicit"], text)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.key == key


def test_a_typo_in_a_plain_provider_table_is_a_config_error_naming_the_key() -> None:
    # Checked by the hub once the providers are registered: only Lockchat knows
    # which extra keys (config_keys) it accepts.
    config = Config.from_mapping({"providers": {"Lockchat": {"prority": 5}}})
    with pytest.raises(ConfigError) as caught:
        Hub(config)

    assert caught.value.key == "providers.Lockchat.prority"
    assert "unknown key" in caught.value.reason
    assert "did you mean 'priority'" in caught.value.reason


def test_a_provider_accepts_the_extra_keys_it_declares_in_config_keys() -> None:
    class Tunable(AbstractProvider):
        supports_gpt_4 = True
        config_keys = ("region",)

        @staticmethod
        def create_completion(model: str, messages: Any, stream: bool, **kwargs: Any) -> Any:
            yield "ok"

    config = Config.from_mapping({"providers": {"Tunable": {"region": "eu"}}})
    hub = Hub(config, load_plugins=False)
    hub.register(Tunable)
    assert hub.config.providers["Tunable"].extra == {"region": "eu"}

    class Strict(Tunable):
        config_keys = ()

    hub = Hub(Config.from_mapping({"providers": {"Strict": {"region": "eu"}}}), load_plugins=False)
    with pytest.raises(ConfigError, match="unknown key") as caught:
        hub.register(Strict)
    assert caught.value.key == "providers.Strict.region"
    assert hub.providers() == []


def test_unknown_keys_in_a_typed_provider_table_are_kept_for_the_type() -> None:
    config = Config.from_mapping({"providers": {"x": {"type": "custom", "region": "eu"}}})

    assert config.providers["x"].extra == {"region": "eu"}


def test_zero_backoff_base_is_allowed() -> None:
    assert Config.from_mapping({"router": {"backoff_base": 0}}).router.backoff_base == 0.0


@pytest.mark.parametrize("header", ["Authorization", "x-api-key", "Api-Key", "Cookie"])
def test_a_credential_header_in_the_file_is_refused(header: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping({"providers": {"p": {"headers": {header: "Bearer sk-secret"}}}})

    assert caught.value.key == f"providers.p.headers.{header}"
    assert "api_key_env" in caught.value.reason
    assert "sk-secret" not in str(caught.value)
