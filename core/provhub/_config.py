"""Configuration (SPEC §8): TOML file discovery, validation, typed settings.

Every problem raises :class:`ConfigError` naming the file, the dotted key and
the reason. Secrets are never read from the file: providers name the
environment variable that holds their key (``api_key_env``).
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from provhub._errors import ConfigError

__all__ = [
    "Config",
    "ConfigOrigin",
    "ConfigSource",
    "GroupConfig",
    "GroupMember",
    "Limits",
    "Price",
    "ProviderConfig",
    "RouterConfig",
    "ServerConfig",
    "StateBackend",
    "StateConfig",
    "Strategy",
    "TelemetryConfig",
    "Timeouts",
    "find_config_file",
    "load_config",
    "locate_config",
]


class Strategy(enum.StrEnum):
    """How candidates are ordered (SPEC §5)."""

    PRIORITY = "priority"
    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    LATENCY = "latency"
    LEAST_BUSY = "least_busy"
    WEIGHTED = "weighted"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for each phase of a call; none is infinite.

    ``connect``: TCP/TLS connect; ``first_token``: request sent to first token;
    ``idle``: gap between two chunks; ``total``: the whole attempt.
    """

    connect: float = 10.0
    first_token: float = 60.0
    idle: float = 60.0
    total: float = 600.0

    def merged(self, overrides: Mapping[str, float]) -> Timeouts:
        """A copy with some phases replaced."""
        return replace(self, **dict(overrides)) if overrides else self


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits protecting the process from a runaway upstream."""

    max_response_bytes: int = 64 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    max_request_bytes: int = 16 * 1024 * 1024
    max_event_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """The ``[router]`` table."""

    strategy: Strategy = Strategy.PRIORITY
    retries: int = 2
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    retry_after_cap: float = 30.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    timeouts: Timeouts = Timeouts()
    default_model: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One ``[providers.NAME]`` table.

    ``type`` set (e.g. ``"openai-compatible"``) creates a new provider instance;
    otherwise the table adjusts a registered provider of that name. Other keys
    are kept in ``extra``: for the provider type to interpret, or, in a table
    without ``type``, for the provider's declared ``config_keys`` (the hub checks
    them once the providers are registered: a key the provider does not declare is
    a :class:`ConfigError`). ``weight`` orders candidates under the ``weighted``
    strategy; ``rpm``, ``tpm`` and ``max_in_flight`` limit the provider (SPEC §14),
    shared by every hub on one ``[state]`` store.
    """

    name: str
    enabled: bool = True
    priority: int = 0
    type: str | None = None
    url: str | None = None
    api_key_env: str | None = None
    models: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    timeouts: Mapping[str, float] = field(default_factory=dict)
    verify_tls: bool = True
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class ConfigOrigin(enum.StrEnum):
    """How a config file was found (or that none was)."""

    ARGUMENT = "argument"
    ENV = "PROVHUB_CONFIG"
    WORKING_DIR = "working directory"
    USER_DIR = "user config dir"
    NONE = "none found"
    CODE = "Config object"


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a hub's config came from: the file read, how it was found, what was searched.

    ``path`` is None when no file was read (``origin`` ``none found``, or a
    :class:`Config` built in code); ``searched`` lists the places looked at, in
    order, as absolute paths.
    """

    path: str | None
    origin: ConfigOrigin
    searched: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for people: ``/x/provhub.toml (from $PROVHUB_CONFIG)``."""
        if self.origin is ConfigOrigin.NONE:
            return "none found (searched " + ", ".join(self.searched) + ")"
        if self.origin is ConfigOrigin.CODE:
            return "a Config object built in code" + (f" ({self.path})" if self.path else "")
        how = {
            ConfigOrigin.ARGUMENT: "given explicitly",
            ConfigOrigin.ENV: "from $PROVHUB_CONFIG",
            ConfigOrigin.WORKING_DIR: "found in the working directory",
            ConfigOrigin.USER_DIR: "found in the user config dir",
        }[self.origin]
        return f"{Path(self.path or '').absolute()} ({how})"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (event ``config.loaded``, ``provhub check --json``)."""
        return {"path": self.path, "origin": str(self.origin), "searched": list(self.searched)}


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One member of a ``[groups.NAME]`` model group: ``provider/model``.

    ``weight`` orders members under the ``weighted`` strategy; ``rpm``, ``tpm``
    and ``max_in_flight`` limit requests through this group to this member (on
    top of the provider's own limits); ``context_window`` (tokens) overrides
    what the provider declares for the model.
    """

    provider: str
    model: str
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    context_window: int | None = None

    @property
    def label(self) -> str:
        """``provider/model``, as written in the config."""
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """A ``[groups.NAME]`` table: a public model name served by several members.

    A request for ``name`` tries the members in ``strategy`` order (``priority``,
    spelt ``"ordered"`` in the file, keeps the listed order), falling back only
    to members with the request's capabilities and a large enough context window.
    """

    name: str
    members: tuple[GroupMember, ...]
    strategy: Strategy = Strategy.PRIORITY


@dataclass(frozen=True, slots=True)
class Price:
    """A ``[prices.MODEL]`` entry: US dollars (or any currency) per million tokens.

    ``cached_input`` prices prompt tokens served from the upstream's cache;
    None means they cost ``input``.
    """

    input: float
    output: float
    cached_input: float | None = None


class StateBackend(enum.StrEnum):
    """Where breakers, limit counters and statistics live (SPEC §15)."""

    MEMORY = "memory"
    REDIS = "redis"


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The ``[state]`` table: in-process state, or state shared through Redis.

    ``url`` (``redis://``, ``rediss://`` or ``unix://``) never holds a password:
    ``password_env`` names the environment variable that does. ``timeout`` and
    ``connect_timeout`` bound every Redis call (seconds, kept tight: a slow Redis
    degrades to local state instead of slowing requests); ``retry_interval`` is
    how long a degraded hub waits before trying Redis again; ``prefix`` starts
    every key, so deployments can share one Redis.
    """

    backend: StateBackend = StateBackend.MEMORY
    url: str = "redis://127.0.0.1:6379/0"
    password_env: str | None = None
    timeout: float = 0.1
    connect_timeout: float = 0.1
    retry_interval: float = 1.0
    prefix: str = "provhub"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``[server]`` table: settings of ``provhub serve`` (SPEC §13).

    ``api_keys_env`` names the environment variable holding the accepted
    bearer keys (comma- or whitespace-separated); without it the server binds
    to loopback only. ``max_body_bytes`` caps a request body (413 above it);
    ``deadline`` is the most seconds one request may take (504 before the
    first token, an in-band error after it). ``host``, ``port`` and ``workers``
    are the defaults of the command's options. ``metrics_auth`` makes
    ``/metrics`` require a key too (it is open by default, as Prometheus
    scrapers expect).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    api_keys_env: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    deadline: float = 600.0
    metrics_auth: bool = False


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """The ``[telemetry]`` table (SPEC §16).

    ``enabled``: the hub instruments itself with OpenTelemetry when it is created
    (``provhub.telemetry.instrument(hub)`` with the global providers); needs the
    ``otel`` extra.
    """

    enabled: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """All settings of a hub.

    ``source`` says where it came from (set by :func:`load_config`; None for a
    config built in code).
    """

    router: RouterConfig = RouterConfig()
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    limits: Limits = Limits()
    groups: Mapping[str, GroupConfig] = field(default_factory=dict)
    prices: Mapping[str, Price] = field(default_factory=dict)
    state: StateConfig = StateConfig()
    server: ServerConfig = ServerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    log_content: bool = False
    path: str | None = None
    source: ConfigSource | None = field(default=None, compare=False)

    def provider(self, name: str) -> ProviderConfig | None:
        """The table for provider ``name`` (case-insensitive), if any."""
        found = self.providers.get(name)
        if found is None:
            lowered = name.lower()
            found = next((p for k, p in self.providers.items() if k.lower() == lowered), None)
        return found

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, path: str | None = None) -> Config:
        """Build and validate a config from parsed TOML (or any mapping)."""
        return _Parser(path).config(data)


def user_config_path() -> Path:
    """``$XDG_CONFIG_HOME/provhub/provhub.toml`` (``~/.config`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "provhub" / "provhub.toml"


def locate_config(path: str | os.PathLike[str] | None = None) -> ConfigSource:
    """Find the config file: ``path``, ``$PROVHUB_CONFIG``, ``./provhub.toml``, user dir.

    An explicit path or ``$PROVHUB_CONFIG`` that does not exist (or is a
    directory) raises ConfigError; the implicit locations are simply skipped
    when absent. The result names what was searched.
    """
    if path is not None:
        return _explicit(Path(path), ConfigOrigin.ARGUMENT)
    env = os.environ.get("PROVHUB_CONFIG") or None
    if env is not None:
        return _explicit(Path(env), ConfigOrigin.ENV)
    searched: list[str] = []
    for candidate, origin in (
        (Path("provhub.toml"), ConfigOrigin.WORKING_DIR),
        (user_config_path(), ConfigOrigin.USER_DIR),
    ):
        searched.append(str(candidate.absolute()))
        if candidate.is_file():
            return ConfigSource(str(candidate), origin, tuple(searched))
    return ConfigSource(None, ConfigOrigin.NONE, tuple(searched))


def _explicit(path: Path, origin: ConfigOrigin) -> ConfigSource:
    named = " (named by $PROVHUB_CONFIG)" if origin is ConfigOrigin.ENV else ""
    if path.is_dir():
        inside = path / "provhub.toml"
        hint = f"; did you mean {str(inside)!r}?" if inside.is_file() else ""
        raise ConfigError(
            f"is a directory, not a config file{named}; pass the path of the TOML file{hint}",
            path=str(path),
        )
    if not path.is_file():
        raise ConfigError(f"file not found{named}", path=str(path))
    return ConfigSource(str(path), origin, (str(path.absolute()),))


def find_config_file(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file :func:`locate_config` finds, or None."""
    found = locate_config(path).path
    return Path(found) if found is not None else None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the config file found by :func:`locate_config`.

    Returns the defaults when there is no file; ``Config.source`` says which
    file was read, or where none was found.
    """
    source = locate_config(path)
    if source.path is None:
        return Config(source=source)
    import tomllib

    found = Path(source.path)
    try:
        with found.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=str(found)) from exc
    except UnicodeDecodeError as exc:  # tomllib decodes before parsing and lets this through
        raise ConfigError(
            f"invalid TOML: not UTF-8 (byte {exc.start}); save the file as UTF-8", path=str(found)
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(found)) from exc
    return replace(Config.from_mapping(data, path=str(found)), source=source)


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a provider's base URL, or None when it can.

    Checked when the file is loaded, so a typo fails at start-up (exit 2) rather
    than at the first request.
    """
    from urllib.parse import urlsplit

    example = "a URL like https://api.example.com/v1"
    if any(ch.isspace() for ch in url):
        return f"must not contain spaces or line breaks (got {url!r}); remove them"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return f"must not contain control characters (got {url!r})"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"must be {example}; {url!r} is not valid ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"must start with http:// or https://, got {url!r}"
    if not parts.hostname:
        return f"must be {example} (a scheme and a host), got {url!r}"
    if parts.username is not None or parts.password is not None:
        return (
            "must not hold credentials (user:password@); put the key in an environment "
            "variable and name it with api_key_env"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"must not have a query or fragment ('?', '#'), got {url!r}"
    return None


_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)
COMMON_PROVIDER_KEYS = (
    "enabled",
    "priority",
    "url",
    "base_url",
    "api_key_env",
    "models",
    "headers",
    "timeouts",
    "verify_tls",
    "weight",
    "rpm",
    "tpm",
    "max_in_flight",
)
"""Keys every ``[providers.NAME]`` table may hold, whatever the provider."""

_SCALE_OUT_TABLES = ("groups", "prices", "state")
_SECRET_KEYS = frozenset({"api_key", "key", "token", "password", "secret", "authorization"})


class _Parser:
    """Validates a parsed mapping, raising ConfigError with the dotted key."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(reason, path=self.path, key=key)

    def table(self, data: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise self.fail(key, f"must be a table, got {type(data).__name__}")
        return data

    def unknown(self, data: Mapping[str, Any], key: str, known: set[str]) -> None:
        extra = sorted(set(data) - known)
        if extra:
            raise self.fail(
                f"{key}.{extra[0]}" if key else extra[0],
                f"unknown key (known: {', '.join(sorted(known))})",
            )

    def number(self, value: Any, key: str, *, positive: bool = True) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.fail(key, f"must be a number, got {value!r}")
        if (positive and value <= 0) or value < 0 or math.isinf(value):
            bound = "above 0" if positive else "of 0 or more"
            raise self.fail(key, f"must be a finite number {bound}, got {value!r}")
        return float(value)

    def integer(self, value: Any, key: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def timeouts(self, data: Any, key: str) -> dict[str, float]:
        table = self.table(data, key)
        known = {f.name for f in fields(Timeouts)}
        self.unknown(table, key, known)
        return {k: self.number(v, f"{key}.{k}") for k, v in table.items()}

    def config(self, data: Mapping[str, Any]) -> Config:
        data = self.table(data, "<root>")
        self.unknown(
            data,
            "",
            {"router", "providers", "limits", "log_content", "server", "telemetry"}
            | set(_SCALE_OUT_TABLES),
        )
        router = self.router(data.get("router", {}))
        limits = self.limits(data.get("limits", {}))
        server = self.server(data.get("server", {}))
        telemetry = self.telemetry(data.get("telemetry", {}))
        providers: dict[str, ProviderConfig] = {}
        for name, table in self.table(data.get("providers", {}), "providers").items():
            providers[name] = self.provider(name, table)
        log_content = self.boolean(data.get("log_content", False), "log_content")
        return Config(
            router=router,
            providers=providers,
            limits=limits,
            server=server,
            telemetry=telemetry,
            log_content=log_content,
            path=self.path,
            **self.scale_out(data),
        )

    # -- [groups], [prices], [state] (SPEC §14, §15) ---------------------------

    def scale_out(self, data: Mapping[str, Any]) -> dict[str, Any]:
        groups = {
            name: self.group(name, table)
            for name, table in self.table(data.get("groups", {}), "groups").items()
        }
        prices = {
            model: self.price(model, table)
            for model, table in self.table(data.get("prices", {}), "prices").items()
        }
        return {"groups": groups, "prices": prices, "state": self.state(data.get("state", {}))}

    def limit(self, value: Any, key: str) -> int:
        return self.integer(value, key, minimum=1)

    def group(self, name: str, data: Any) -> GroupConfig:
        key = f"groups.{name}"
        table = self.table(data, key)
        self.unknown(table, key, {"members", "strategy"})
        strategy = Strategy.PRIORITY
        if "strategy" in table:
            value = table["strategy"]
            try:
                strategy = Strategy.PRIORITY if value == "ordered" else Strategy(value)
            except ValueError:
                options = ", ".join(["ordered", *(s.value for s in Strategy)])
                raise self.fail(
                    f"{key}.strategy", f"unknown strategy {value!r} (use {options})"
                ) from None
        members = table.get("members")
        if not isinstance(members, list) or not members:
            raise self.fail(
                f"{key}.members",
                'must be a non-empty list of "provider/model" strings or tables '
                '({ model = "provider/model", weight = 2 })',
            )
        parsed: list[GroupMember] = []
        seen: set[str] = set()
        for index, member in enumerate(members):
            where = f"{key}.members[{index}]"
            result = self.member(member, where)
            if result.label.lower() in seen:
                raise self.fail(where, f"{result.label!r} is listed twice")
            seen.add(result.label.lower())
            parsed.append(result)
        return GroupConfig(name=name, members=tuple(parsed), strategy=strategy)

    def member(self, data: Any, key: str) -> GroupMember:
        table = {"model": data} if isinstance(data, str) else self.table(data, key)
        known = {f.name for f in fields(GroupMember)} - {"provider"}
        self.unknown(table, key, known)
        if "model" not in table:
            raise self.fail(f"{key}.model", 'is required: "provider/model"')
        target = table["model"]
        provider, _, model = target.partition("/") if isinstance(target, str) else ("", "", "")
        if not provider or not model:
            raise self.fail(
                f"{key}.model" if not isinstance(data, str) else key,
                f'must be "provider/model" (a provider name, a slash, a model id), got {target!r}',
            )
        values: dict[str, Any] = {"provider": provider, "model": model}
        for name, value in table.items():
            if name == "weight":
                values[name] = self.number(value, f"{key}.weight")
            elif name != "model":
                values[name] = self.limit(value, f"{key}.{name}")
        return GroupMember(**values)

    def price(self, model: str, data: Any) -> Price:
        key = f"prices.{model}"
        table = self.table(data, key)
        self.unknown(table, key, {f.name for f in fields(Price)})
        for required in ("input", "output"):
            if required not in table:
                raise self.fail(
                    f"{key}.{required}", "is required (price per million tokens; 0 is free)"
                )
        return Price(**{k: self.number(v, f"{key}.{k}", positive=False) for k, v in table.items()})

    def state(self, data: Any) -> StateConfig:
        table = self.table(data, "state")
        self.unknown(table, "state", {f.name for f in fields(StateConfig)})
        values: dict[str, Any] = {}
        for key, value in table.items():
            dotted = f"state.{key}"
            if key == "backend":
                try:
                    values[key] = StateBackend(value)
                except ValueError:
                    raise self.fail(
                        dotted, f"unknown backend {value!r} (use memory or redis)"
                    ) from None
            elif key == "url":
                values[key] = self.redis_url(value, dotted)
            elif key in {"password_env", "prefix"}:
                values[key] = self.string(value, dotted)
            else:
                values[key] = self.number(value, dotted)
        return StateConfig(**values)

    def redis_url(self, value: Any, key: str) -> str:
        from urllib.parse import urlsplit

        url = self.string(value, key)
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise self.fail(key, f"is not a valid URL ({exc})") from None
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise self.fail(key, f"must start with redis://, rediss:// or unix://, got {url!r}")
        if parts.password:
            raise self.fail(
                key,
                "secrets are not read from the config file; put the Redis password in an "
                "environment variable and name it with password_env",
            )
        return url

    def router(self, data: Any) -> RouterConfig:
        table = self.table(data, "router")
        known = {f.name for f in fields(RouterConfig)}
        self.unknown(table, "router", known)
        values: dict[str, Any] = {}
        for key, value in table.items():
            dotted = f"router.{key}"
            if key == "strategy":
                try:
                    values[key] = Strategy(value)
                except ValueError:
                    options = ", ".join(s.value for s in Strategy)
                    raise self.fail(dotted, f"unknown strategy {value!r} (use {options})") from None
            elif key == "timeouts":
                values[key] = Timeouts().merged(self.timeouts(value, dotted))
            elif key == "default_model":
                values[key] = self.string(value, dotted)
            elif key in {"retries", "breaker_threshold"}:
                values[key] = self.integer(value, dotted, minimum=0 if key == "retries" else 1)
            else:
                values[key] = self.number(value, dotted, positive=key != "backoff_base")
        return RouterConfig(**values)

    def limits(self, data: Any) -> Limits:
        table = self.table(data, "limits")
        self.unknown(table, "limits", {f.name for f in fields(Limits)})
        return Limits(**{k: self.integer(v, f"limits.{k}", minimum=1) for k, v in table.items()})

    def server(self, data: Any) -> ServerConfig:
        table = self.table(data, "server")
        self.unknown(table, "server", {f.name for f in fields(ServerConfig)})
        values: dict[str, Any] = {}
        for key, value in table.items():
            dotted = f"server.{key}"
            if key in {"host", "api_keys_env"}:
                values[key] = self.string(value, dotted)
            elif key == "port":
                port = self.integer(value, dotted, minimum=0)
                if port > 65535:
                    raise self.fail(dotted, f"must be a TCP port 0-65535, got {port!r}")
                values[key] = port
            elif key in {"workers", "max_body_bytes"}:
                values[key] = self.integer(value, dotted, minimum=1)
            elif key == "deadline":
                values[key] = self.number(value, dotted)
            else:
                values[key] = self.boolean(value, dotted)
        keys_env = values.get("api_keys_env")
        if keys_env is not None and (not keys_env.isidentifier() or keys_env.startswith("sk-")):
            # The usual mistake: the key itself where its variable's name belongs.
            raise self.fail(
                "server.api_keys_env",
                "must name an environment variable (e.g. PROVHUB_API_KEYS), not hold a key; "
                "secrets are not read from the config file",
            )
        return ServerConfig(**values)

    def telemetry(self, data: Any) -> TelemetryConfig:
        table = self.table(data, "telemetry")
        self.unknown(table, "telemetry", {f.name for f in fields(TelemetryConfig)})
        return TelemetryConfig(**{k: self.boolean(v, f"telemetry.{k}") for k, v in table.items()})

    def provider(self, name: str, data: Any) -> ProviderConfig:
        key = f"providers.{name}"
        table = dict(self.table(data, key))
        for secret in _SECRET_KEYS & set(table):
            raise self.fail(
                f"{key}.{secret}",
                "secrets are not read from the config file; put the key in an environment "
                "variable and name it with api_key_env",
            )
        values: dict[str, Any] = {"name": name}
        if "enabled" in table:
            values["enabled"] = self.boolean(table.pop("enabled"), f"{key}.enabled")
        if "verify_tls" in table:
            values["verify_tls"] = self.boolean(table.pop("verify_tls"), f"{key}.verify_tls")
        if "priority" in table:
            priority = table.pop("priority")
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise self.fail(f"{key}.priority", f"must be an integer, got {priority!r}")
            values["priority"] = priority
        for text_key in ("type", "api_key_env"):
            if text_key in table:
                values[text_key] = self.string(table.pop(text_key), f"{key}.{text_key}")
        for url_key in ("url", "base_url"):
            if url_key in table:
                url = self.string(table.pop(url_key), f"{key}.{url_key}")
                problem = check_url(url)
                if problem is not None:
                    raise self.fail(f"{key}.{url_key}", problem)
                values["url"] = url.rstrip("/")
        if "models" in table:
            models = table.pop("models")
            if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
                raise self.fail(f"{key}.models", "must be a list of model id strings")
            values["models"] = tuple(models)
        if "headers" in table:
            headers = self.table(table.pop("headers"), f"{key}.headers")
            if not all(isinstance(v, str) for v in headers.values()):
                raise self.fail(f"{key}.headers", "header values must be strings")
            for name in headers:
                if name.lower() in _CREDENTIAL_HEADERS:
                    raise self.fail(
                        f"{key}.headers.{name}",
                        "credentials are not read from the config file; name the "
                        "environment variable that holds the key with api_key_env",
                    )
            values["headers"] = dict(headers)
        if "timeouts" in table:
            values["timeouts"] = self.timeouts(table.pop("timeouts"), f"{key}.timeouts")
        if "weight" in table:
            values["weight"] = self.number(table.pop("weight"), f"{key}.weight")
        for limit in ("rpm", "tpm", "max_in_flight"):
            if limit in table:
                values[limit] = self.limit(table.pop(limit), f"{key}.{limit}")
        values["extra"] = table
        return ProviderConfig(**values)
