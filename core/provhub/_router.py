"""Routing decisions (SPEC §5), free of I/O.

Candidate selection, strategy ordering and the retry/backoff policy are plain
functions over plain data, so every rule is testable without a socket. The
``Stream`` executes what these functions decide.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provhub._config import ProviderConfig, RouterConfig, Strategy
from provhub._errors import InvalidRequestError, ModelNotFoundError
from provhub._health import Health
from provhub._registry import Registry
from provhub._spec import Capability, Messages, ProviderInfo

__all__ = [
    "Attempt",
    "RoutePlan",
    "Router",
    "backoff_delay",
    "required_capabilities",
    "validate_messages",
]

ROLES = frozenset({"system", "user", "assistant", "tool"})


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


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one provider within a request."""

    number: int
    provider: str
    ok: bool
    error_type: str | None = None
    status: int | None = None
    retryable: bool = False
    error: str | None = None
    backoff_ms: float | None = None
    duration_ms: float = 0.0


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check a message list; return it as a list of plain dicts.

    Raises :class:`InvalidRequestError` naming the bad message and why.
    """
    if isinstance(messages, str | bytes | Mapping) or not hasattr(messages, "__iter__"):
        raise InvalidRequestError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
            f"got {type(messages).__name__}"
        )
    result: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"{where} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        # isinstance first: an unhashable role (a list) would make "in" raise TypeError.
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequestError(
                f"{where} has role {role!r:.40}; use one of {', '.join(sorted(ROLES))}"
            )
        if "content" not in message:
            raise InvalidRequestError(f"{where} ({role}) has no 'content'")
        content = message["content"]
        if content is None and role in {"assistant", "tool"}:
            pass  # OpenAI allows null content on assistant tool-call turns
        elif isinstance(content, str):
            _check_text(content, f"{where}.content")
        elif isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                    raise InvalidRequestError(
                        f"{where}.content[{part_index}] must be a dict with a 'type'"
                    )
                _check_json(part, f"{where}.content[{part_index}]", 0)
        else:
            raise InvalidRequestError(
                f"{where} ({role}) content must be a string or a list of parts, "
                f"got {type(content).__name__}"
            )
        if len(message) > 2:  # extra fields (name, tool_calls, ...) are sent as they are
            for key, value in message.items():
                if key != "role" and key != "content":
                    _check_key(key, where)
                    _check_json(value, f"{where}[{key!r:.40}]", 0)
        result.append(dict(message))
    if not result:
        raise InvalidRequestError("messages is empty; send at least one user message")
    return result


# Deeper than any real message part; json.dumps would hit the recursion limit long after.
_MAX_DEPTH = 32


def _check_text(text: str, where: str) -> None:
    # A lone surrogate (e.g. from a bad decode) cannot be encoded as UTF-8: refuse it
    # here instead of failing inside the transport, where it would count against the
    # provider. isascii() keeps the common case at C speed.
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        index = exc.start
    else:
        return
    # Raised outside the except block: the UnicodeEncodeError holds the whole text, and
    # must not ride along as __context__ into logs.
    raise InvalidRequestError(f"{where} is not valid Unicode (lone surrogate at index {index})")


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str):
        raise InvalidRequestError(f"{where} has a {type(key).__name__} key; keys must be strings")
    _check_text(key, f"a key of {where}")


def _check_json(value: Any, where: str, depth: int) -> None:
    """Refuse what the transport could not send as JSON.

    Errors name the place and the type, never the value: it may be message content.
    """
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidRequestError(f"{where} is {value}, which JSON cannot carry")
    elif depth >= _MAX_DEPTH:
        raise InvalidRequestError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_key(key, where)
            _check_json(item, f"{where}[{key!r:.40}]", depth + 1)
    else:
        raise InvalidRequestError(
            f"{where} is a {type(value).__name__}, which cannot be sent as JSON"
        )


def required_capabilities(messages: Messages, require: Capability = Capability.NONE) -> Capability:
    """What the caller asks for plus what the messages need (SPEC §2)."""
    needed = require
    users = 0
    for message in messages:
        role = message.get("role")
        if role == "system":
            needed |= Capability.SYSTEM_MESSAGE
        elif role == "user":
            users += 1
    if users > 1:
        needed |= Capability.MESSAGE_HISTORY
    return needed


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
            elif required & ~info.capabilities:
                missing = (required & ~info.capabilities).names()
                reason = f"lacks capabilities: {', '.join(missing)}"
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
