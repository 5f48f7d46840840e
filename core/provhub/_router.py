"""Routing decisions (SPEC §5), free of I/O.

Candidate selection, strategy ordering and the retry/backoff policy are plain
functions over plain data, so every rule is testable without a socket. The
run (:mod:`provhub._run`) executes what these functions decide.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provhub._config import ProviderConfig, RouterConfig, Strategy
from provhub._errors import ModelNotFoundError
from provhub._health import Health
from provhub._registry import Registry
from provhub._spec import Capability, ProviderInfo

__all__ = ["RoutePlan", "Router", "backoff_delay", "credentials_missing"]


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Ordered candidates for a request, and every excluded provider with a reason."""

    model: str
    required: Capability
    strategy: Strategy
    candidates: tuple[ProviderInfo, ...]
    excluded: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by ``provhub route --json`` and events)."""
        return {
            "model": self.model,
            "required": self.required.names(),
            "strategy": str(self.strategy),
            "candidates": [c.name for c in self.candidates],
            "excluded": [{"provider": n, "reason": r} for n, r in self.excluded],
        }


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
    """Plans routes for one hub: candidates, exclusions, strategy order."""

    def __init__(
        self,
        registry: Registry,
        health: Health,
        settings: RouterConfig,
        provider_settings: Mapping[str, ProviderConfig],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.health = health
        self.settings = settings
        # Lower-cased name -> table, so each candidate costs one dict lookup.
        self.provider_settings = {k.lower(): v for k, v in provider_settings.items()}
        self.rng = rng or random.Random()
        self._rr = itertools.count()

    def plan(
        self,
        model: str,
        required: Capability = Capability.NONE,
        *,
        strategy: Strategy | None = None,
        only: str | None = None,
    ) -> RoutePlan:
        """Candidates for ``model`` holding ``required``, in strategy order.

        ``only`` restricts the plan to one provider (``-p NAME``). Raises
        :class:`ModelNotFoundError` when no registered provider serves the model.
        """
        serving = self.registry.serving(model)
        if not serving:
            raise self._not_found(model)
        strategy = strategy or self.settings.strategy
        candidates: list[ProviderInfo] = []
        excluded: list[tuple[str, str]] = []
        provider_settings = self.provider_settings
        health = self.health
        wanted = only.lower() if only else None
        for info in serving:
            key = info.name.lower()
            if wanted is not None and key != wanted:
                continue
            settings = provider_settings.get(key)
            reason: str | None = None
            if settings is not None and not settings.enabled:
                reason = "disabled in config"
            elif not info.flags["working"]:
                reason = "not working (working = False)"
            # "required and": ~flag builds an enum member on every call (~0.1 ms
            # under load); most requests require nothing.
            elif required and required & ~(capabilities := info.capabilities_for(model)):
                missing = ", ".join((required & ~capabilities).names())
                if capabilities != info.capabilities:
                    reason = f"lacks capabilities for model {model!r}: {missing}"
                else:
                    reason = f"lacks capabilities: {missing}"
            else:
                reason = credentials_missing(info, settings) or health.exclusion(info.name)
            if reason is None:
                candidates.append(info)
            else:
                excluded.append((info.name, reason))
        if wanted is not None and not candidates and not excluded:
            excluded.append((only or "", f"does not serve model {model!r} or is not registered"))
        ordered = self._order(candidates, strategy) if len(candidates) > 1 else candidates
        return RoutePlan(model, required, strategy, tuple(ordered), tuple(excluded))

    def _order(self, candidates: list[ProviderInfo], strategy: Strategy) -> list[ProviderInfo]:
        if strategy is Strategy.PRIORITY:
            settings = self.provider_settings
            priorities = [
                (s.priority if (s := settings.get(c.name.lower())) is not None else 0)
                for c in candidates
            ]
            if any(priorities):
                # Stable sort keeps registration order among equal priorities.
                order = sorted(range(len(candidates)), key=lambda i: -priorities[i])
                return [candidates[i] for i in order]
            return candidates
        if strategy is Strategy.ROUND_ROBIN:
            shift = next(self._rr) % len(candidates)
            return candidates[shift:] + candidates[:shift]
        if strategy is Strategy.RANDOM:
            shuffled = list(candidates)
            self.rng.shuffle(shuffled)
            return shuffled
        if strategy is Strategy.LATENCY:
            # Providers without a sample sort first, so each gets measured once.
            return sorted(candidates, key=lambda c: self.health.ttft(c.name) or 0.0)
        return sorted(candidates, key=lambda c: self.health.in_flight(c.name))

    def _not_found(self, model: str) -> ModelNotFoundError:
        from difflib import get_close_matches

        known = self.registry.model_ids()
        return ModelNotFoundError(model, get_close_matches(model, known, n=3, cutoff=0.6), known)
