"""Provider validation and the model index (SPEC §2).

``describe`` turns a provider (class or instance) into a validated
:class:`ProviderInfo` or raises :class:`ProviderSpecError`; ``Registry`` keeps
providers by name and an index from model id and alias to providers, so routing
never scans every provider.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from provhub._errors import ProviderSpecError
from provhub._spec import (
    FLAG_CAPABILITIES,
    FLAG_NAMES,
    GPT_4,
    GPT_35_TURBO,
    Capability,
    ProviderInfo,
)

__all__ = ["PROGRAMMATIC", "Registry", "describe"]

PROGRAMMATIC = "programmatic"
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Spec defaults for providers that do not subclass AbstractProvider (duck-typed
# g4f-style classes are accepted too).
_FLAG_DEFAULTS = {
    "working": True,
    "needs_auth": False,
    "supports_stream": False,
    "supports_message_history": True,
    "supports_system_message": True,
    "supports_gpt_35_turbo": False,
    "supports_gpt_4": False,
    "supports_tools": False,
    "supports_vision": False,
    "supports_structured_output": False,
    "supports_reasoning": False,
}


def _fallback_name(provider: Any) -> str:
    return getattr(provider, "__name__", None) or type(provider).__name__


def _label(provider: Any) -> Any:
    # SPEC §2: ``name`` defaults to the class name. A ``name`` that is set but is
    # not a slug (``""``, ``123``) is an error, never silently replaced.
    name = getattr(provider, "name", None)
    return _fallback_name(provider) if name is None else name


def _check_callable(provider: Any, label: str, source: str) -> None:
    if inspect.isclass(provider):
        if inspect.isabstract(provider):
            missing = ", ".join(sorted(getattr(provider, "__abstractmethods__", ())))
            raise ProviderSpecError(label, f"it is abstract (implement {missing})", source=source)
        raw = inspect.getattr_static(provider, "create_completion", None)
        if raw is None:
            raise ProviderSpecError(label, "it has no create_completion", source=source)
        if not isinstance(raw, staticmethod | classmethod):
            raise ProviderSpecError(
                label,
                "create_completion is a plain method on a class; make it a "
                "@staticmethod/@classmethod, or register an instance",
                source=source,
            )
    elif not callable(getattr(provider, "create_completion", None)):
        raise ProviderSpecError(
            label, "create_completion is missing or not callable", source=source
        )


def _check_models(
    label: str, source: str, models: Any, aliases: Any, default_model: Any
) -> tuple[tuple[str, ...], dict[str, str]]:
    if isinstance(models, str | bytes) or not isinstance(models, Iterable):
        raise ProviderSpecError(label, "models must be a list of model id strings", source=source)
    model_list = list(models)
    for model in model_list:
        if not isinstance(model, str) or not model.strip():
            raise ProviderSpecError(
                label, f"model ids must be non-empty strings, got {model!r}", source=source
            )
    if not isinstance(aliases, Mapping):
        raise ProviderSpecError(label, "model_aliases must be a mapping", source=source)
    alias_map: dict[str, str] = {}
    for alias, target in aliases.items():
        if not isinstance(alias, str) or not alias or not isinstance(target, str) or not target:
            raise ProviderSpecError(
                label, f"model_aliases entries must map str to str, got {alias!r}", source=source
            )
        alias_map[alias] = target
    if default_model is not None and (not isinstance(default_model, str) or not default_model):
        raise ProviderSpecError(label, "default_model must be a model id or None", source=source)
    return tuple(model_list), alias_map


def _check_model_capabilities(
    label: str, source: str, declared: Any, models: tuple[str, ...], aliases: Mapping[str, str]
) -> dict[str, Capability]:
    if not isinstance(declared, Mapping):
        raise ProviderSpecError(
            label, "model_capabilities must map model ids to Capability flags", source=source
        )
    result: dict[str, Capability] = {}
    for model, capability in declared.items():
        if not isinstance(capability, Capability):
            raise ProviderSpecError(
                label,
                f"model_capabilities[{model!r}] must be a provhub.Capability, got {capability!r}",
                source=source,
            )
        target = aliases.get(model, model) if isinstance(model, str) else model
        if target not in models:
            raise ProviderSpecError(
                label,
                f"model_capabilities names {model!r}, which the provider does not serve",
                source=source,
            )
        result[target] = capability
    return result


def _check_config_keys(label: str, source: str, keys: Any) -> tuple[str, ...]:
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise ProviderSpecError(label, "config_keys must be a list of key names", source=source)
    result = tuple(keys)
    for key in result:
        if not isinstance(key, str) or not key.isidentifier():
            raise ProviderSpecError(
                label, f"config_keys entries must be identifiers, got {key!r}", source=source
            )
    return result


def describe(provider: Any, *, source: str = PROGRAMMATIC) -> ProviderInfo:
    """Validate ``provider`` against the spec and describe it.

    Raises :class:`ProviderSpecError` naming the provider, its source and the
    violated rule.
    """
    label = _label(provider)
    if not isinstance(label, str) or not _SLUG.match(label):
        raise ProviderSpecError(
            _fallback_name(provider),
            "name must be a slug: letters, digits, '_', '.', '-', at most 64 characters, "
            f"got {label!r}",
            source=source,
        )
    _check_callable(provider, label, source)

    flags: dict[str, bool] = {}
    for flag in FLAG_NAMES:
        value = getattr(provider, flag, _FLAG_DEFAULTS[flag])
        if type(value) is not bool:
            raise ProviderSpecError(
                label, f"flag {flag} must be True or False, got {value!r}", source=source
            )
        flags[flag] = value

    url = getattr(provider, "url", None)
    if url is not None and not isinstance(url, str):
        raise ProviderSpecError(label, f"url must be a string, got {url!r}", source=source)

    extra, aliases = _check_models(
        label,
        source,
        getattr(provider, "models", ()),
        getattr(provider, "model_aliases", {}),
        getattr(provider, "default_model", None),
    )
    served = [
        m
        for m, on in (
            (GPT_35_TURBO, flags["supports_gpt_35_turbo"]),
            (GPT_4, flags["supports_gpt_4"]),
        )
        if on
    ]
    models = tuple(dict.fromkeys([*served, *extra]))
    for alias, target in aliases.items():
        if target not in models:
            raise ProviderSpecError(
                label,
                f"alias {alias!r} points to {target!r}, which the provider does not serve",
                source=source,
            )

    caps = Capability.NONE
    for flag, capability in FLAG_CAPABILITIES.items():
        if flags[flag]:
            caps |= capability
    model_caps = _check_model_capabilities(
        label, source, getattr(provider, "model_capabilities", {}), models, aliases
    )
    config_keys = _check_config_keys(label, source, getattr(provider, "config_keys", ()))
    url_env = getattr(provider, "url_env", None)
    if url_env is not None and (not isinstance(url_env, str) or not _ENV_NAME.match(url_env)):
        raise ProviderSpecError(
            label, f"url_env must name an environment variable, got {url_env!r}", source=source
        )
    models_path = getattr(provider, "models_path", None)
    if models_path is not None and (
        not isinstance(models_path, str) or not models_path.startswith("/")
    ):
        raise ProviderSpecError(
            label,
            f"models_path must be a path starting with '/', got {models_path!r}",
            source=source,
        )

    return ProviderInfo(
        name=label,
        url=url,
        # Read-only views: infos are shared by the registry, the router and
        # every caller of hub.providers(); nobody may flip a flag in place.
        flags=MappingProxyType(flags),
        capabilities=caps,
        models=models,
        aliases=MappingProxyType(aliases),
        default_model=getattr(provider, "default_model", None),
        source=source,
        provider=provider,
        model_capabilities=MappingProxyType(model_caps),
        config_keys=config_keys,
        url_env=url_env,
        models_path=models_path,
    )


class Registry:
    """Registered providers by name, in registration order, with a model index.

    Writes take a lock and replace index entries with new immutable tuples (a
    single dict store each), so readers (routing on many threads) never lock and
    never see a half-registered provider.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, ProviderInfo] = {}
        self._by_model: dict[str, tuple[ProviderInfo, ...]] = {}
        self._order: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def add(self, info: ProviderInfo) -> None:
        """Add a described provider; a duplicate name (case-insensitive) raises."""
        self.add_all([info])

    def add_all(self, infos: Sequence[ProviderInfo]) -> None:
        """Add several providers atomically: all of them, or none on a conflict."""
        with self._lock:
            seen: dict[str, ProviderInfo] = {}
            for info in infos:
                key = info.name.lower()
                other = self._by_name.get(key) or seen.get(key)
                if other is not None:
                    raise ProviderSpecError(
                        info.name,
                        f"duplicate name: already registered by {other.source} "
                        f"(as {other.name!r}); rename one of them or disable a plugin",
                        source=info.source,
                    )
                seen[key] = info
            index = self._by_model
            for key, info in seen.items():
                self._order[key] = len(self._order)
                self._by_name[key] = info
                # dict.fromkeys: an alias may equal one of its own model ids
                # ({"gpt-4o": "gpt-4o-2024-08-06"}); index the provider once.
                for model in dict.fromkeys((*info.models, *info.aliases)):
                    index[model] = (*index.get(model, ()), info)

    def get(self, name: str) -> ProviderInfo | None:
        """The provider registered under ``name`` (case-insensitive), or None."""
        return self._by_name.get(name.lower())

    def all(self) -> list[ProviderInfo]:
        """Every provider, in registration order."""
        return list(self._by_name.values())

    def serving(self, model: str) -> tuple[ProviderInfo, ...]:
        """Providers serving ``model`` as id or alias, in registration order (O(1))."""
        return self._by_model.get(model, ())

    def order(self, name: str) -> int:
        """Registration index of a provider (for stable priority ordering)."""
        return self._order[name.lower()]

    def model_ids(self) -> list[str]:
        """Every model id and alias any provider serves, sorted."""
        return sorted(self._by_model)
