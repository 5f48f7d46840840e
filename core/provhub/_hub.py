"""The ``Hub``: the facade that owns registry, health, config and subscribers (SPEC §4)."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from provhub._config import Config, ProviderConfig, Timeouts, load_config
from provhub._context import CallContext
from provhub._errors import ConfigError, InvalidRequestError, NoProviderError, ProviderSpecError
from provhub._events import DEBUG, INFO, WARNING, EventEmitter, Subscriber
from provhub._health import Health
from provhub._plugins import PluginRecord, PluginStatus, ProviderTypeFactory, load_plugins
from provhub._registry import PROGRAMMATIC, Registry, describe
from provhub._router import RoutePlan, Router, required_capabilities, validate_messages
from provhub._spec import Capability, ProviderInfo
from provhub._stream import Completion, Run, Stream
from provhub._transport import CancelToken, Transport

if TYPE_CHECKING:
    from provhub._aio import AsyncStream

__all__ = ["Hub"]


def _plain_http_to_remote(url: str) -> bool:
    """Whether ``url`` is plain ``http://`` to a host that is not loopback."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return False
    # Parsed, not prefix-matched: "localhost.example.com" and "127.0.0.1.evil.net"
    # are remote hosts.
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


class Hub:
    """Discovers providers, routes requests, retries, falls back and reports.

    ``Hub(config=None, *, load_plugins=True, strict=False, log_content=None,
    subscribers=())``:
    ``config`` is a :class:`Config`, a path to a TOML file, or None for the
    usual search (``$PROVHUB_CONFIG``, ``./provhub.toml``, the user config dir).
    ``strict=True`` raises :class:`PluginLoadError` on a broken plugin instead of
    skipping it. ``log_content=True`` lets message content appear in events.
    ``subscribers`` are subscribed before discovery, so they also receive the
    events of the hub's construction (``plugin.*``, ``provider.insecure``).
    A hub is safe to share between threads; close it (or use ``with``) to
    release pooled connections.
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        load_plugins: bool = True,
        strict: bool = False,
        log_content: bool | None = None,
        subscribers: Iterable[Subscriber] = (),
    ) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        self._emitter = EventEmitter(
            log_content=self.config.log_content if log_content is None else log_content
        )
        for callback in subscribers:
            self._emitter.subscribe(callback)
        self._registry = Registry()
        self._health = Health(
            threshold=self.config.router.breaker_threshold,
            cooldown=self.config.router.breaker_cooldown,
        )
        self._transport = Transport(limits=self.config.limits)
        self._rng = random.Random()
        self._router = Router(
            self._registry, self._health, self.config.router, self.config.providers, rng=self._rng
        )
        self._settings = {k.lower(): v for k, v in self.config.providers.items()}
        self._plugins: tuple[PluginRecord, ...] = ()
        self._provider_types: dict[str, tuple[ProviderTypeFactory, str]] = {}
        self._lock = threading.Lock()
        if load_plugins:
            result = load_plugins_into(self, strict)
            self._plugins = tuple(result[0])
            self._provider_types = result[1]
            for info in self._registry.all():
                self._warn_insecure(info)
        # register() checks each provider created from config.
        self._create_configured_providers()

    # -- registration -----------------------------------------------------

    def register(self, provider: Any, *, source: str = PROGRAMMATIC) -> ProviderInfo:
        """Validate and register a provider class or instance.

        Raises :class:`ProviderSpecError` (nothing is registered then).
        """
        info = describe(provider, source=source)
        self._registry.add(info)
        self._emit(DEBUG, "provider.registered", {"provider": info.name, "source": source})
        self._warn_insecure(info)
        return info

    def _create_configured_providers(self) -> None:
        for name, table in self.config.providers.items():
            if table.type is None:
                continue
            key = f"providers.{name}.type"
            found = self._provider_types.get(table.type)
            if found is None:
                known = ", ".join(sorted(self._provider_types)) or "none loaded"
                raise ConfigError(
                    f"unknown provider type {table.type!r} (known: {known}; is the plugin "
                    "that provides it installed and enabled?)",
                    path=self.config.path,
                    key=key,
                )
            factory, plugin = found
            try:
                provider = factory(name, _table_dict(table))
                self.register(provider, source=f"config ({plugin})")
            except ProviderSpecError as exc:
                raise ConfigError(
                    exc.reason, path=self.config.path, key=f"providers.{name}"
                ) from exc
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc), path=self.config.path, key=f"providers.{name}") from exc

    def _warn_insecure(self, info: ProviderInfo) -> None:
        """Emit ``provider.insecure`` for TLS verification off or keys sent in clear.

        Checked for every provider however it arrived (plugin, config, register()),
        with its ``[providers.NAME]`` table applied.
        """
        table = self._settings.get(info.name.lower())
        if table is not None and not table.verify_tls:
            self._emit(
                WARNING,
                "provider.insecure",
                {"provider": info.name, "reason": "TLS verification disabled"},
            )
        url = (table.url if table is not None else None) or info.url or ""
        credentials = (
            (table.api_key_env if table is not None else None)
            or getattr(info.provider, "api_key_env", None)
            or info.needs_auth
        )
        if credentials and _plain_http_to_remote(url):
            self._emit(
                WARNING,
                "provider.insecure",
                {
                    "provider": info.name,
                    "reason": "credentials sent over plain http to a remote host",
                },
            )

    # -- queries ----------------------------------------------------------

    @property
    def plugins(self) -> tuple[PluginRecord, ...]:
        """What happened to every discovered plugin, in load order."""
        return self._plugins

    def providers(
        self, model: str | None = None, require: Capability = Capability.NONE
    ) -> list[ProviderInfo]:
        """Registered providers, optionally only those serving ``model`` with ``require``."""
        found = self._registry.serving(model) if model is not None else self._registry.all()
        return [info for info in found if require in info.capabilities]

    def route(
        self,
        model: str,
        messages: Any = None,
        require: Capability = Capability.NONE,
        *,
        provider: Any = None,
    ) -> RoutePlan:
        """Plan a request: ordered candidates and every exclusion with its reason.

        Raises :class:`ModelNotFoundError` if no provider serves ``model`` and
        :class:`InvalidRequestError` for bad ``messages``.
        """
        if not isinstance(model, str) or not model:
            raise InvalidRequestError(f"model must be a non-empty string, got {model!r}")
        needed = require
        if messages is not None:
            needed = required_capabilities(validate_messages(messages), require)
        return self._router.plan(model, needed, only=self._provider_name(provider))

    def health(self) -> dict[str, dict[str, object]]:
        """A plain-data snapshot of every provider's breaker and statistics."""
        return self._health.snapshot()

    # -- requests ---------------------------------------------------------

    def stream(
        self,
        model: str,
        messages: Any,
        provider: Any = None,
        require: Capability = Capability.NONE,
        *,
        timeouts: Timeouts | None = None,
        **params: Any,
    ) -> Stream:
        """Start a streamed request; iterate the returned :class:`Stream` for tokens.

        Raises (before any network I/O) :class:`InvalidRequestError`,
        :class:`ModelNotFoundError` or :class:`NoProviderError`; while iterating,
        :class:`AllProvidersFailedError` or :class:`StreamInterruptedError`.
        """
        return self._start(model, messages, provider, require, timeouts, params, stream=True)

    def complete(
        self,
        model: str,
        messages: Any,
        provider: Any = None,
        require: Capability = Capability.NONE,
        *,
        timeouts: Timeouts | None = None,
        **params: Any,
    ) -> Completion:
        """Run a non-streamed request and return the whole :class:`Completion`."""
        stream = self._start(model, messages, provider, require, timeouts, params, stream=False)
        text = "".join(stream._gen)
        return Completion(
            text=text,
            provider=stream.provider or "",
            model=model,
            request_id=stream.request_id,
            finish_reason=stream.finish_reason,
            usage=stream.usage,
            attempts=tuple(stream.attempts),
        )

    def astream(
        self,
        model: str,
        messages: Any,
        provider: Any = None,
        require: Capability = Capability.NONE,
        *,
        timeouts: Timeouts | None = None,
        **params: Any,
    ) -> AsyncStream:
        """Like :meth:`stream`, as an async iterator that never blocks the event loop.

        Cancelling the consuming task closes the upstream connection promptly.
        """
        from provhub._aio import AsyncStream

        return AsyncStream(
            self._start(model, messages, provider, require, timeouts, params, stream=True)
        )

    async def acomplete(
        self,
        model: str,
        messages: Any,
        provider: Any = None,
        require: Capability = Capability.NONE,
        *,
        timeouts: Timeouts | None = None,
        **params: Any,
    ) -> Completion:
        """Like :meth:`complete`, without blocking the event loop."""
        from provhub._aio import acomplete

        stream = self._start(model, messages, provider, require, timeouts, params, stream=False)
        return await acomplete(stream)

    def _start(
        self,
        model: str,
        messages: Any,
        provider: Any,
        require: Capability,
        timeouts: Timeouts | None,
        params: dict[str, Any],
        *,
        stream: bool,
    ) -> Stream:
        checked = validate_messages(messages)
        if not isinstance(model, str) or not model:
            raise InvalidRequestError(f"model must be a non-empty string, got {model!r}")
        if not isinstance(require, Capability):
            raise InvalidRequestError(f"require must be a provhub.Capability, got {require!r}")
        plan = self._router.plan(
            model, required_capabilities(checked, require), only=self._provider_name(provider)
        )
        if not plan.candidates:
            raise NoProviderError(model, dict(plan.excluded))
        return Stream(
            Run(
                self,
                plan,
                checked,
                params,
                stream=stream,
                # 64 random bits, as hex: unique enough to join events, cheaper than uuid4.
                request_id=os.urandom(8).hex(),
                timeouts=timeouts or self.config.router.timeouts,
            )
        )

    def _provider_name(self, provider: Any) -> str | None:
        if provider is None or isinstance(provider, str):
            return provider
        for info in self._registry.all():
            if info.provider is provider:
                return info.name
        # An unregistered provider object (g4f-style ``provider=Lockchat``):
        # register it, validated like any other, and route to it alone.
        with self._lock:
            for info in self._registry.all():
                if info.provider is provider:
                    return info.name
            return self.register(provider).name

    def _call_context(
        self, info: ProviderInfo, timeouts: Timeouts, request_id: str, cancel: CancelToken
    ) -> CallContext:
        settings = self._settings.get(info.name.lower())
        if settings is not None and settings.timeouts:
            # The stricter of the call's and the provider's limit applies.
            merged = _timeouts_dict(timeouts)
            for phase, limit in settings.timeouts.items():
                merged[phase] = min(merged[phase], limit)
            timeouts = Timeouts(**merged)
        return CallContext(
            transport=self._transport,
            timeouts=timeouts,
            settings=settings,
            request_id=request_id,
            headers=settings.headers if settings is not None else {},
            cancel=cancel,
        )

    # -- events -----------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Receive every event as a dict in-process; returns an unsubscribe function."""
        return self._emitter.subscribe(callback)

    def _emit(self, level: int, event: str, fields: Mapping[str, Any]) -> None:
        self._emitter.emit(level, event, fields)

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Close pooled connections. The hub stays usable (it reconnects)."""
        self._transport.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        loaded = sum(1 for p in self._plugins if p.status is PluginStatus.LOADED)
        return f"<Hub providers={len(self._registry)} plugins={loaded}>"


def _timeouts_dict(timeouts: Timeouts) -> dict[str, float]:
    return {
        "connect": timeouts.connect,
        "first_token": timeouts.first_token,
        "idle": timeouts.idle,
        "total": timeouts.total,
    }


def _table_dict(table: ProviderConfig) -> dict[str, Any]:
    return {
        "url": table.url,
        "api_key_env": table.api_key_env,
        "models": list(table.models),
        "headers": dict(table.headers),
        **dict(table.extra),
    }


def load_plugins_into(
    hub: Hub, strict: bool
) -> tuple[list[PluginRecord], dict[str, tuple[ProviderTypeFactory, str]]]:
    """Run the isolated loader for ``hub`` and emit its plugin events."""

    def on_event(event: str, record: PluginRecord) -> None:
        level = WARNING if record.status is PluginStatus.FAILED else INFO
        fields: dict[str, Any] = {
            "plugin": record.name,
            "distribution": record.distribution,
            "version": record.version,
        }
        if record.status is PluginStatus.FAILED:
            fields.update(stage=record.stage, error=record.error)
        else:
            fields["providers"] = list(record.providers)
        hub._emit(level, event, fields)

    result = load_plugins(hub._registry, strict=strict, on_event=on_event)
    return result.records, result.provider_types
