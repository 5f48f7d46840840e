"""Limits (SPEC §14): what a limit says, what it is counted under, and token estimates.

Plain values and functions, no I/O. A :class:`Scope` is one set of counters a
request is charged to: the provider's own (``[providers.NAME] rpm = ...``) or a
group member's (``[groups.G] members = [{ model = "p/m", rpm = ... }]``). The
state store (:mod:`provhub._state`) keeps the counters; this module only says
what they limit and how much a request is estimated to use.

The estimate of a request's tokens is deliberately simple and cheap, one pass
over the text: UTF-8 bytes / 4 (about one token per four bytes of English; it
undercounts dense scripts, so it errs towards letting a request through, where
the upstream's own ``context_length`` error and the fallback to a larger window
still catch it), plus 4 tokens per message for the chat framing, 85 per image
(OpenAI's low-detail figure) and the JSON of tool definitions and tool calls
at the same rate. ``max_tokens`` (or ``max_completion_tokens``) is added for
what the answer may use.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LimitSpec", "Scope", "estimate_prompt_tokens", "reserved_tokens"]

_PER_MESSAGE = 4
_PER_IMAGE = 85
_BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Requests per minute, tokens per minute, requests at once; None is unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None

    def __bool__(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_in_flight is not None


@dataclass(frozen=True, slots=True)
class Scope:
    """One set of counters a request is charged to.

    ``key`` names it in the store (``provider:NAME`` or ``member:GROUP:PROVIDER/MODEL``);
    ``label`` is how a reason names it (``"rpm limit"`` or ``"group member rpm
    limit"``).
    """

    key: str
    limits: LimitSpec
    member: bool = False


def _text_tokens(text: str) -> int:
    size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
    return -(-size // _BYTES_PER_TOKEN)


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "text" or kind == "refusal":
            value = part.get(kind if kind == "refusal" else "text")
            total += _text_tokens(value) if isinstance(value, str) else 0
        elif kind == "image_url":
            total += _PER_IMAGE
    return total


def _json_tokens(value: Any) -> int:
    try:
        return _text_tokens(json.dumps(value, separators=(",", ":"), default=str))
    except (TypeError, ValueError, RecursionError):
        return 0


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]], params: Mapping[str, Any]) -> int:
    """Estimated prompt tokens of a request (see the module docstring for how)."""
    total = 0
    for message in messages:
        total += _PER_MESSAGE + _content_tokens(message.get("content"))
        calls = message.get("tool_calls")
        if calls:
            total += _json_tokens(calls)
    tools = params.get("tools")
    if tools:
        total += _json_tokens(tools)
    return total


def reserved_tokens(prompt_tokens: int, params: Mapping[str, Any]) -> int:
    """Tokens a request may use in all: the prompt estimate plus ``max_tokens``."""
    limit = params.get("max_completion_tokens", params.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return prompt_tokens + limit
    return prompt_tokens
