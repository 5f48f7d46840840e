"""Hook specifications and the isolated plugin loader (SPEC §3).

pluggy validates hook implementations; its stock ``load_setuptools_entrypoints``
stops at the first plugin that fails and calls hooks of all plugins together, so
one broken plugin would break every hub. Our loader imports each entry point and
calls its hook on its own, records the outcome per plugin, and skips failures.
"""

from __future__ import annotations

import enum
import functools
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from provhub._errors import PluginLoadError, ProviderSpecError
from provhub._registry import Registry, describe
from provhub._spec import ProviderInfo

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginRecord",
    "PluginStatus",
    "ProvhubHookspecs",
    "Registrar",
    "hookimpl",
    "hookspec",
    "load_plugins",
    "load_shipped_types",
]

ENTRY_POINT_GROUP = "provhub"
SHIPPED_DISTRIBUTION = "provhub"

hookspec = pluggy.HookspecMarker("provhub")
hookimpl = pluggy.HookimplMarker("provhub")
"""Marks a plugin function as an implementation of a provhub hook."""

ProviderTypeFactory = Callable[[str, dict[str, Any]], Any]


class ProvhubHookspecs:
    """The hooks a provhub plugin may implement."""

    @hookspec
    def provhub_register_providers(self, register: Registrar) -> None:
        """Call ``register(provider)`` once per provider (a class or an instance).

        A provider the plugin cannot offer here (an optional dependency is
        missing) is reported with ``register.unavailable(name, reason)``; the
        reason should say how to make it available.
        """

    @hookspec
    def provhub_register_provider_types(
        self, register_type: Callable[[str, ProviderTypeFactory], None]
    ) -> None:
        """Call ``register_type(type_name, factory)`` for configurable provider types.

        ``factory(name, table)`` builds a provider instance from a
        ``[providers.NAME]`` config table whose ``type`` is ``type_name``.
        """


_HOOK_NAMES = frozenset(name for name in dir(ProvhubHookspecs) if name.startswith("provhub_"))


class Registrar:
    """The ``register`` argument of ``provhub_register_providers``.

    ``register(provider)`` registers one provider (validated by the hub);
    ``register.unavailable(name, reason)`` records one the plugin cannot offer.
    """

    __slots__ = ("_source", "infos", "missing")

    def __init__(self, source: str) -> None:
        self._source = source
        self.infos: list[ProviderInfo] = []
        self.missing: list[tuple[str, str]] = []

    def __call__(self, provider: Any) -> None:
        """Register ``provider`` (a class or an instance); raises ProviderSpecError."""
        self.infos.append(describe(provider, source=self._source))

    def unavailable(self, name: str, reason: str) -> None:
        """Record that provider ``name`` cannot be offered, and why (how to fix it)."""
        if not isinstance(name, str) or not name or not isinstance(reason, str) or not reason:
            raise ProviderSpecError(
                repr(name), "register.unavailable needs a name and a reason", source=self._source
            )
        self.missing.append((name, reason))


class PluginStatus(enum.StrEnum):
    """Outcome of loading one plugin."""

    LOADED = "loaded"
    FAILED = "failed"
    DISABLED = "disabled"
    UNKNOWN = "unknown"
    """A name in ``PROVHUB_PLUGINS``/``PROVHUB_DISABLE_PLUGINS`` that matches no plugin."""


@dataclass(frozen=True, slots=True)
class PluginRecord:
    """What happened to one plugin entry point.

    ``stage`` says where a failure happened: ``import``, ``validate`` (hook
    implementations), ``hook`` (the hook raised) or ``register`` (an invalid or
    duplicate provider). A record with status ``unknown`` is a name written in
    ``PROVHUB_PLUGINS`` or ``PROVHUB_DISABLE_PLUGINS`` that matches no installed
    plugin (a typo, or a plugin that is not installed); ``error`` says which
    variable and the closest installed name. ``unavailable`` lists the providers the plugin could
    not offer, each with the reason (e.g. a missing optional dependency).
    """

    name: str
    distribution: str | None
    version: str | None
    status: PluginStatus
    providers: tuple[str, ...] = ()
    error: str | None = None
    stage: str | None = None
    value: str = ""
    unavailable: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by ``provhub plugins --json``)."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": str(self.status),
            "providers": list(self.providers),
            "error": self.error,
            "stage": self.stage,
            "entry_point": self.value,
            "unavailable": [{"provider": n, "reason": r} for n, r in self.unavailable],
        }


def _norm(name: str) -> str:
    # PEP 503 normalisation, so "my_plugin", "My-Plugin" and "my.plugin" match.
    return re.sub(r"[-_.]+", "-", name).lower()


def _name_set(value: str) -> set[str]:
    # "a, b" is how people write lists: surrounding blanks are not part of a name.
    return {_norm(part.strip()) for part in value.split(",") if part.strip()}


ALLOW_VARIABLE = "PROVHUB_PLUGINS"
DENY_VARIABLE = "PROVHUB_DISABLE_PLUGINS"


@dataclass(frozen=True, slots=True)
class PluginSelection:
    """Allow and deny lists from ``PROVHUB_PLUGINS`` / ``PROVHUB_DISABLE_PLUGINS``.

    ``written`` keeps every name as the user wrote it, with its variable, so a
    name that matches no plugin can be reported in the user's own spelling.
    """

    allow: frozenset[str] | None
    deny: frozenset[str]
    written: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] | None = None) -> PluginSelection:
        """Read the selection from the environment (unset allow list = all)."""
        env = os.environ if env is None else env
        raw_allow = env.get(ALLOW_VARIABLE)
        raw_deny = env.get(DENY_VARIABLE, "")
        allow = None if raw_allow is None else frozenset(_name_set(raw_allow))
        written = tuple(
            (variable, part.strip())
            for variable, raw in ((ALLOW_VARIABLE, raw_allow or ""), (DENY_VARIABLE, raw_deny))
            for part in raw.split(",")
            if part.strip()
        )
        return cls(allow=allow, deny=frozenset(_name_set(raw_deny)), written=written)

    def unknown(self, installed: Iterable[str]) -> list[tuple[str, str, str | None]]:
        """Names written that match no installed plugin: ``(variable, name, closest)``."""
        from difflib import get_close_matches

        names = sorted(set(installed))
        known = {_norm(n) for n in names}
        result: list[tuple[str, str, str | None]] = []
        for variable, name in self.written:
            if _norm(name) in known:
                continue
            close = get_close_matches(name, names, n=1, cutoff=0.6) or get_close_matches(
                _norm(name), [_norm(n) for n in names], n=1, cutoff=0.6
            )
            result.append((variable, name, close[0] if close else None))
        return result

    def permits(self, ep_name: str, dist: str | None) -> str | None:
        """None if the plugin may load, else why not."""
        names = {_norm(ep_name)} | ({_norm(dist)} if dist else set())
        if names & self.deny:
            return f"denied by {DENY_VARIABLE}"
        shipped = dist is not None and _norm(dist) == SHIPPED_DISTRIBUTION
        if self.allow is not None and not shipped and not names & self.allow:
            return f"not listed in {ALLOW_VARIABLE}"
        return None


@dataclass(frozen=True, slots=True)
class _Found:
    """An entry point with its distribution's name and version, read once.

    ``EntryPoint.dist.name``/``.version`` re-read and re-parse METADATA on every
    access; with 50 plugins that was a fifth of discovery time.
    """

    ep: metadata.EntryPoint
    dist: str | None
    version: str | None


def _found(ep: metadata.EntryPoint) -> _Found:
    if ep.dist is None:
        return _Found(ep, None, None)
    meta = ep.dist.metadata
    return _Found(ep, meta["Name"], meta["Version"])


def _entry_points() -> list[_Found]:
    seen: set[tuple[str | None, str, str]] = set()
    unique: list[_Found] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found = _found(ep)
        # The same distribution can be visible twice (an editable install plus a
        # copy on sys.path); load it once.
        key = (found.dist and _norm(found.dist), ep.name, ep.value)
        if key in seen:
            continue
        seen.add(key)
        unique.append(found)

    def order(found: _Found) -> tuple[int, str, str]:
        dist = _norm(found.dist) if found.dist else ""
        return (0 if dist == SHIPPED_DISTRIBUTION else 1, dist, found.ep.name)

    return sorted(unique, key=order)


_ERROR_LIMIT = 400


def _describe_error(exc: BaseException) -> str:
    # One line, but all of it: pluggy's PluginValidationError puts the actual
    # reason (e.g. the unknown hook argument) on its later lines.
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if len(text) > _ERROR_LIMIT:
        text = text[: _ERROR_LIMIT - 3] + "..."
    if isinstance(exc, PluginValidation):
        return text  # our own finding: the message says it all
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_hook_names(module: object) -> str | None:
    # Every marked function counts, not only "provhub_*" names: pluggy would
    # silently keep an implementation of an unknown hook (``register_providers``).
    for attr in dir(module):
        obj = getattr(module, attr, None)
        if not callable(obj) or isinstance(obj, ModuleType):
            continue
        # pluggy's own test: the marker attribute holds a dict of options (a
        # Mock or proxy answering every attribute is not an implementation).
        marked = isinstance(getattr(obj, "provhub_impl", None), dict)
        if attr not in _HOOK_NAMES and marked:
            from difflib import get_close_matches

            close = get_close_matches(attr, sorted(_HOOK_NAMES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"unknown hook {attr!r}{hint}"
        if attr in _HOOK_NAMES and not marked:
            return f"function {attr!r} is not decorated with @provhub.hookimpl"
    return None


@dataclass
class LoadResult:
    """Plugins loaded by :func:`load_plugins`."""

    records: list[PluginRecord]
    provider_types: dict[str, tuple[ProviderTypeFactory, str]]


def _call_plugin(
    pm: pluggy.PluginManager,
    module: object,
    ep_name: str,
    provider_types: dict[str, tuple[ProviderTypeFactory, str]],
) -> tuple[Registrar, dict[str, ProviderTypeFactory]]:
    """Register the module with pluggy and run its hooks; raise on any failure."""
    plugin_name = f"provhub-plugin:{ep_name}"
    pm.register(module, name=plugin_name)
    try:
        register = Registrar(ep_name)
        types: dict[str, ProviderTypeFactory] = {}

        def register_type(type_name: str, factory: ProviderTypeFactory) -> None:
            if not isinstance(type_name, str) or not type_name or not callable(factory):
                raise ProviderSpecError(
                    repr(type_name), "register_type needs a name and a factory", source=ep_name
                )
            if type_name in provider_types or type_name in types:
                owner = provider_types.get(type_name, (None, ep_name))[1]
                raise ProviderSpecError(
                    type_name, f"duplicate provider type, already from {owner}", source=ep_name
                )
            types[type_name] = factory

        for hook_name, kwargs in (
            ("provhub_register_provider_types", {"register_type": register_type}),
            ("provhub_register_providers", {"register": register}),
        ):
            caller = getattr(pm.hook, hook_name)
            # Call only this plugin's implementation: pluggy would call every
            # plugin's and stop at the first exception.
            for impl in caller.get_hookimpls():
                if impl.plugin is module:
                    impl.function(**kwargs)
        return register, types
    finally:
        pm.unregister(module)


def load_plugins(
    registry: Registry,
    *,
    strict: bool = False,
    selection: PluginSelection | None = None,
    on_event: Callable[[str, PluginRecord], None] | None = None,
    entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> LoadResult:
    """Discover plugins through the ``provhub`` entry-point group and register them.

    Every plugin is isolated: a failure is recorded (and reported through
    ``on_event("plugin.failed", record)``) and the others still load. A plugin
    registers all of its providers or none. With ``strict=True`` the first
    failure raises :class:`PluginLoadError` instead.
    """
    selection = selection or PluginSelection.from_env()
    pm = pluggy.PluginManager("provhub")
    pm.add_hookspecs(ProvhubHookspecs)
    records: list[PluginRecord] = []
    provider_types: dict[str, tuple[ProviderTypeFactory, str]] = {}
    found_eps = [_found(ep) for ep in entry_points] if entry_points is not None else _entry_points()
    installed = [f.ep.name for f in found_eps] + [f.dist for f in found_eps if f.dist]
    for variable, name, close in selection.unknown(installed):
        hint = f"; did you mean {close!r}?" if close else ""
        listed = ", ".join(sorted({f.ep.name for f in found_eps})) or "none"
        unknown = PluginRecord(
            name,
            None,
            None,
            PluginStatus.UNKNOWN,
            error=f"{variable} names {name!r}, which matches no installed plugin{hint} "
            f"(installed: {listed})",
        )
        records.append(unknown)
        if on_event is not None:
            on_event("plugin.unknown", unknown)
    for found in found_eps:
        ep, dist, version = found.ep, found.dist, found.version

        record = functools.partial(PluginRecord, ep.name, dist, version, value=ep.value)
        why_not = selection.permits(ep.name, dist)
        if why_not is not None:
            records.append(record(PluginStatus.DISABLED, error=why_not))
            continue
        stage = "import"
        try:
            module = ep.load()
            stage = "validate"
            problem = _check_hook_names(module)
            if problem is not None:
                raise PluginValidation(problem)
            stage = "hook"
            registrar, types = _call_plugin(pm, module, ep.name, provider_types)
            infos = registrar.infos
            stage = "register"
            registry.add_all(infos)
        # SystemExit too: a plugin calling sys.exit() while importing must not
        # take the host down (KeyboardInterrupt still propagates).
        except (Exception, SystemExit) as exc:
            if isinstance(exc, ProviderSpecError | pluggy.PluginValidationError):
                stage = "register" if isinstance(exc, ProviderSpecError) else "validate"
            failed = record(PluginStatus.FAILED, error=_describe_error(exc), stage=stage)
            records.append(failed)
            if on_event is not None:
                on_event("plugin.failed", failed)
            if strict:
                raise PluginLoadError(ep.name, stage, _describe_error(exc)) from exc
            continue
        for type_name, factory in types.items():
            provider_types[type_name] = (factory, ep.name)
        loaded = record(
            PluginStatus.LOADED,
            providers=tuple(i.name for i in infos),
            unavailable=tuple(registrar.missing),
        )
        records.append(loaded)
        if on_event is not None:
            on_event("plugin.loaded", loaded)
    return LoadResult(records=records, provider_types=provider_types)


def load_shipped_types(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> dict[str, tuple[ProviderTypeFactory, str]]:
    """The provider types provhub's own distribution offers (``openai-compatible``).

    For a hub built with ``load_plugins=False`` whose config asks for a ``type``:
    these types ship with provhub, so a script that wants no plugins can still
    use them. Only the types hook of the shipped entry point runs; no provider is
    registered. Raises :class:`PluginLoadError` when the shipped plugin fails.
    """
    found_eps = [_found(ep) for ep in entry_points] if entry_points is not None else _entry_points()
    types: dict[str, tuple[ProviderTypeFactory, str]] = {}
    for found in found_eps:
        if found.dist is None or _norm(found.dist) != SHIPPED_DISTRIBUTION:
            continue
        name = found.ep.name
        stage = "import"
        try:
            module = found.ep.load()
            stage = "hook"
            impl = getattr(module, "provhub_register_provider_types", None)
            if impl is None:
                continue
            offered: dict[str, ProviderTypeFactory] = {}
            impl(register_type=offered.__setitem__)
        except Exception as exc:
            raise PluginLoadError(name, stage, _describe_error(exc)) from exc
        types.update((type_name, (factory, name)) for type_name, factory in offered.items())
    return types


class PluginValidation(Exception):
    """A plugin module's hook implementations are wrong (internal; recorded)."""
