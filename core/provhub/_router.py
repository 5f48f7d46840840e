"""Routing decisions (SPEC §5, §14), free of I/O.

Candidate selection, group expansion, context-window filtering, strategy
ordering and the retry/backoff policy are plain functions over plain data, so
every rule is testable without a socket. What depends on live state (breakers,
limits, latency, in-flight counts) is asked of the hub's state store
(:mod:`provhub._state`) in one call; the run (:mod:`provhub._run`) executes
what these functions decide.

Planning costs O(candidates): the registry indexes providers by model, a
group lists its members, and every per-provider setting is one dict lookup.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from provhub._config import GroupConfig, GroupMember, ProviderConfig, RouterConfig, Strategy
from provhub._errors import FailureKind, ModelNotFoundError, ProviderError
from provhub._limits import LimitSpec, Scope
from provhub._registry import Registry
from provhub._spec import Capability, ProviderInfo
from provhub._state import Acquired, StateStore

__all__ = [
    "Candidate",
    "RoutePlan",
    "Router",
    "backoff_delay",
    "credentials_missing",
    "fits_after",
    "weighted_order",
]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to serve a request: a provider and the model id it is asked for.

    ``model`` is the request's model for a plain route and the member's model in
    a group; ``scopes`` are the limit counters an attempt is charged to;
    ``context_window`` is in tokens (None: unknown); ``member`` marks a group
    member, whose ``label`` is ``provider/model``.
    """

    info: ProviderInfo
    model: str
    scopes: tuple[Scope, ...] = ()
    weight: float = 1.0
    context_window: int | None = None
    member: bool = False

    @property
    def name(self) -> str:
        """The provider's name."""
        return self.info.name

    @property
    def label(self) -> str:
        """The provider's name, or ``provider/model`` for a group member."""
        return f"{self.info.name}/{self.model}" if self.member else self.info.name


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Ordered candidates for a request, and every excluded candidate with a reason.

    ``group`` names the model group the request's model is, if it is one;
    ``tokens`` is the request's estimated size (see :mod:`provhub._limits`),
    0 when nothing needed it.
    """

    model: str
    required: Capability
    strategy: Strategy
    candidates: tuple[Candidate, ...]
    excluded: tuple[tuple[str, str], ...]
    group: str | None = None
    tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by ``provhub route --json`` and events)."""
        data: dict[str, Any] = {
            "model": self.model,
            "required": self.required.names(),
            "strategy": str(self.strategy),
            "candidates": [c.label for c in self.candidates],
            "excluded": [{"provider": n, "reason": r} for n, r in self.excluded],
        }
        if self.group is not None:
            data["group"] = self.group
        return data


def weighted_order(weights: Sequence[float], rng: random.Random) -> list[int]:
    """Indexes in a random order where a weight-3 entry comes first 3 times as often
    as a weight-1 entry (sampling without replacement, Efraimidis-Spirakis).
    """
    keys = [rng.random() ** (1.0 / weight) for weight in weights]
    return sorted(range(len(weights)), key=keys.__getitem__, reverse=True)


def fits_after(failed: Candidate, error: ProviderError, candidate: Candidate) -> str | None:
    """Why ``candidate`` must not follow ``failed``'s failure, or None (SPEC §14).

    After a ``context_length`` failure only a larger known context window can
    help: a candidate with the same, a smaller or an unknown window is skipped.
    """
    if error.kind is not FailureKind.CONTEXT_LENGTH:
        return None
    window = candidate.context_window
    floor = failed.context_window
    if window is None:
        return "context window unknown, after a context_length failure"
    if floor is not None and window <= floor:
        return (
            f"context window {window} tokens is not larger than the {floor} of "
            f"{failed.label}, which was too small"
        )
    return None


def backoff_delay(
    settings: RouterConfig, retry_index: int, retry_after: float | None, rng: random.Random
) -> float | None:
    """Seconds to wait before retry number ``retry_index`` (0-based), or None.

    Exponential backoff with full jitter; a ``Retry-After`` is honoured exactly
    when it is within ``retry_after_cap``. None means "do not retry this provider"
    (no retries left, or the upstream asked for a longer wait than the cap).
    """
    if retry_index >= settings.retries:
        return None
    if retry_after is not None:
        return retry_after if retry_after <= settings.retry_after_cap else None
    ceiling = min(settings.backoff_max, settings.backoff_base * (2**retry_index))
    return rng.uniform(0.0, ceiling)


def credentials_missing(info: ProviderInfo, settings: ProviderConfig | None) -> str | None:
    """Why a ``needs_auth`` provider cannot be used for lack of a key, or None."""
    if not info.flags["needs_auth"]:
        return None
    env_name = (settings.api_key_env if settings else None) or getattr(
        info.provider, "api_key_env", None
    )
    if not env_name:
        return f"needs credentials: set api_key_env in [providers.{info.name}]"
    if not os.environ.get(env_name):
        return f"needs credentials: environment variable {env_name} is not set"
    return None


class Router:
    """Plans routes for one hub: groups, candidates, exclusions, strategy order."""

    def __init__(
        self,
        registry: Registry,
        state: StateStore,
        settings: RouterConfig,
        provider_settings: Mapping[str, ProviderConfig],
        *,
        groups: Mapping[str, GroupConfig] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.state = state
        self.settings = settings
        # Lower-cased name -> table, so each candidate costs one dict lookup.
        self.provider_settings = {k.lower(): v for k, v in provider_settings.items()}
        self.groups: Mapping[str, GroupConfig] = dict(groups or {})
        self.rng = rng or random.Random()
        self._rr = itertools.count()
        self._priorities = {k: v.priority for k, v in self.provider_settings.items() if v.priority}
        self._cache: dict[str, tuple[tuple[ProviderInfo, ...], tuple[_Entry, ...]]] = {}
        self._group_cache: dict[str, tuple[int, tuple[_Entry, ...]]] = {}
        # The limit scopes, built once: a plan reuses them.
        self._provider_scopes: dict[str, tuple[Scope, ...]] = {}
        for key, table in self.provider_settings.items():
            limits = LimitSpec(table.rpm, table.tpm, table.max_in_flight)
            if limits:
                self._provider_scopes[key] = (Scope(f"provider:{key}", limits),)
        self._member_scopes: dict[tuple[str, int], Scope] = {}
        for name, group in self.groups.items():
            for index, member in enumerate(group.members):
                limits = LimitSpec(member.rpm, member.tpm, member.max_in_flight)
                if limits:
                    key = f"member:{name}:{member.provider.lower()}/{member.model}"
                    self._member_scopes[name, index] = Scope(key, limits, member=True)

    @property
    def health(self) -> Any:
        """The store's in-process breakers (tests and status displays)."""
        return self.state.health

    def plan(
        self,
        model: str,
        required: Capability = Capability.NONE,
        *,
        strategy: Strategy | None = None,
        only: str | None = None,
        tokens: int = 0,
    ) -> RoutePlan:
        """Candidates for ``model`` holding ``required``, in strategy order.

        ``only`` restricts the plan to one provider (``-p NAME``); ``tokens`` is
        the request's estimated size, checked against context windows and
        ``tpm`` limits. Live state (breakers, limits) is read from the store
        without taking anything. Raises :class:`ModelNotFoundError` when no
        registered provider serves the model.
        """
        static = self.candidates(model, required, strategy=strategy, only=only, tokens=tokens)
        checked = self.state.check(static.candidates, tokens=tokens, order=static.order)
        return static.applied(checked)

    def candidates(
        self,
        model: str,
        required: Capability = Capability.NONE,
        *,
        strategy: Strategy | None = None,
        only: str | None = None,
        tokens: int = 0,
    ) -> StaticPlan:
        """The plan from configuration and the registry alone, before live state."""
        group = self.groups.get(model)
        if group is None:
            entries = self._entries(model)
            strategy = strategy or self.settings.strategy
        else:
            entries = self._group_entries(group)
            strategy = strategy or group.strategy
        candidates: list[Candidate] = []
        excluded: list[tuple[str, str]] = []
        wanted = only.lower() if only else None
        none = Capability.NONE
        for entry in entries:
            candidate = entry.candidate
            if wanted is not None and entry.key != wanted:
                continue
            reason = entry.reason
            if reason is None:
                if required is not none and required & ~entry.capabilities:
                    reason = _lacking(candidate, required, entry.capabilities)
                elif tokens and entry.window is not None and tokens > entry.window:
                    reason = (
                        f"context window {entry.window} tokens is too small "
                        f"(the request needs about {tokens})"
                    )
                elif entry.needs_auth:
                    reason = credentials_missing(candidate.info, entry.settings)
            if reason is None:
                candidates.append(candidate)
            else:
                excluded.append((entry.label, reason))
        if wanted is not None and not candidates and not excluded:
            excluded.append((only or "", f"does not serve model {model!r} or is not registered"))
        order: str | None = None
        if len(candidates) > 1:
            candidates, order = self._order(candidates, strategy, group is not None)
        return StaticPlan(
            model,
            required,
            strategy,
            tuple(candidates),
            tuple(excluded),
            None if group is None else group.name,
            tokens,
            order,
        )

    def _entries(self, model: str) -> tuple[_Entry, ...]:
        """The candidates of a plain model with what never changes, cached.

        The registry replaces a model's tuple when a provider is added, so the
        cache is valid while it holds the same tuple (checked by identity).
        """
        serving = self.registry.serving(model)
        cached = self._cache.get(model)
        if cached is not None and cached[0] is serving:
            return cached[1]
        if not serving:
            raise self._not_found(model)
        scopes = self._provider_scopes
        entries = tuple(
            self._entry(
                Candidate(
                    info,
                    model,
                    scopes.get(info.name.lower(), ()),
                    context_window=info.context_window_for(model),
                )
            )
            for info in serving
        )
        self._cache[model] = (serving, entries)
        return entries

    def _group_entries(self, group: GroupConfig) -> tuple[_Entry, ...]:
        """A group's members as candidates, cached until another provider registers."""
        version = len(self.registry)
        cached = self._group_cache.get(group.name)
        if cached is not None and cached[0] == version:
            return cached[1]
        scopes = self._provider_scopes
        entries: list[_Entry] = []
        for index, member in enumerate(group.members):
            key = member.provider.lower()
            info = self.registry.get(member.provider)
            if info is None or not info.serves(member.model):
                why = (
                    "provider is not registered"
                    if info is None
                    else f"provider does not serve model {member.model!r}"
                )
                entries.append(_Entry(None, key, member.label, why))  # type: ignore[arg-type]
                continue
            candidate = self._member(info, member, scopes.get(key, ()), group.name, index)
            entries.append(self._entry(candidate))
        result = tuple(entries)
        self._group_cache[group.name] = (version, result)
        return result

    def _entry(self, candidate: Candidate) -> _Entry:
        info = candidate.info
        key = info.name.lower()
        settings = self.provider_settings.get(key)
        reason: str | None = None
        if settings is not None and not settings.enabled:
            reason = "disabled in config"
        elif not info.flags["working"]:
            reason = "not working (working = False)"
        return _Entry(
            candidate,
            key,
            candidate.label,
            reason,
            info.capabilities_for(candidate.model),
            candidate.context_window,
            bool(info.flags["needs_auth"]),
            settings,
        )

    def _member(
        self,
        info: ProviderInfo,
        member: GroupMember,
        provider_scopes: tuple[Scope, ...],
        group: str,
        index: int,
    ) -> Candidate:
        scope = self._member_scopes.get((group, index))
        return Candidate(
            info,
            member.model,
            provider_scopes if scope is None else (*provider_scopes, scope),
            member.weight,
            member.context_window or info.context_window_for(member.model),
            member=True,
        )

    def _order(
        self, candidates: list[Candidate], strategy: Strategy, group: bool
    ) -> tuple[list[Candidate], str | None]:
        """The strategy's order; ``latency``/``least_busy`` name the statistic the
        store orders by (its figures are live, and shared with a shared store)."""
        if strategy is Strategy.PRIORITY:
            if group:
                return candidates, None  # the members' listed order
            known = self._priorities
            if not known:
                return candidates, None
            priorities = [known.get(c.info.name.lower(), 0) for c in candidates]
            if any(priorities):
                # Stable sort keeps registration order among equal priorities.
                order = sorted(range(len(candidates)), key=lambda i: -priorities[i])
                return [candidates[i] for i in order], None
            return candidates, None
        if strategy is Strategy.ROUND_ROBIN:
            shift = next(self._rr) % len(candidates)
            return candidates[shift:] + candidates[:shift], None
        if strategy is Strategy.RANDOM:
            shuffled = list(candidates)
            self.rng.shuffle(shuffled)
            return shuffled, None
        if strategy is Strategy.WEIGHTED:
            if group:
                weights = [c.weight for c in candidates]
            else:
                settings = self.provider_settings
                weights = [
                    s.weight if (s := settings.get(c.info.name.lower())) is not None else 1.0
                    for c in candidates
                ]
            return [candidates[i] for i in weighted_order(weights, self.rng)], None
        if strategy is Strategy.LATENCY:
            return candidates, "ttft"
        return candidates, "in_flight"

    def _not_found(self, model: str) -> ModelNotFoundError:
        from difflib import get_close_matches

        known = sorted({*self.registry.model_ids(), *self.groups})
        return ModelNotFoundError(model, get_close_matches(model, known, n=3, cutoff=0.6), known)


class _Entry(NamedTuple):
    """A candidate with what planning checks and what never changes about it."""

    candidate: Candidate
    key: str
    label: str
    reason: str | None  # static: disabled, not working, not registered, not served
    capabilities: Capability = Capability.NONE
    window: int | None = None
    needs_auth: bool = False
    settings: ProviderConfig | None = None


def _lacking(candidate: Candidate, required: Capability, capabilities: Capability) -> str:
    missing = ", ".join((required & ~capabilities).names())
    if capabilities != candidate.info.capabilities:
        return f"lacks capabilities for model {candidate.model!r}: {missing}"
    return f"lacks capabilities: {missing}"


class StaticPlan(NamedTuple):
    """A plan before live state: what config and the registry allow, in order.

    ``order`` names the statistic the store orders by (``ttft``, ``in_flight``),
    None for the order given.
    """

    model: str
    required: Capability
    strategy: Strategy
    candidates: tuple[Candidate, ...]
    excluded: tuple[tuple[str, str], ...]
    group: str | None
    tokens: int
    order: str | None

    def applied(self, decided: Acquired) -> RoutePlan:
        """The plan after the store's decision: refused candidates move to ``excluded``."""
        candidates = self.candidates
        excluded = self.excluded
        if decided.skipped:
            skipped = {skip.index for skip in decided.skipped}
            ordered = tuple(candidates[i] for i in decided.order if i not in skipped)
            excluded += tuple(
                (candidates[skip.index].label, skip.reason) for skip in decided.skipped
            )
        elif self.order is None:
            ordered = candidates  # the store kept the order given
        else:
            ordered = tuple(candidates[i] for i in decided.order)
        return RoutePlan(
            self.model, self.required, self.strategy, ordered, excluded, self.group, self.tokens
        )
