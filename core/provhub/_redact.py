"""Redaction: what may leave provhub in an event, a log line or an error message.

Two tools, one policy (SPEC §7: never content unless the host opts in, never a
secret):

- :func:`redact` works on event *fields* by name: fields that may hold secrets
  are masked, fields that may hold prompt or answer text are dropped.
- :class:`Secrets` works on *text* by value: the credentials a call sent are
  masked wherever an upstream echoes them back (error bodies, reason phrases,
  error objects inside a stream), before that text becomes part of an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

__all__ = ["REDACTED", "Secrets", "redact", "redact_into"]

REDACTED = "***"

# Fields that may hold secrets are masked; fields that may hold prompt or answer
# text are dropped unless the host opted in with ``log_content=True``.
_SECRET_MARKERS = ("key", "authorization", "token", "secret", "password", "cookie")
_CONTENT_FIELDS = frozenset({"messages", "content", "prompt", "text", "delta", "body"})
_COUNTER_FIELDS = frozenset(
    {
        "max_tokens",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "input_tokens",
        "output_tokens",
    }
)

_SECRET, _CONTENT, _PLAIN = "secret", "content", "plain"
# Exact types that cannot hold nested fields to redact (lists are kept as they are).
_LEAF_TYPES = frozenset({str, int, float, bool, type(None), list, tuple})


# Every event passes its field names through redaction and they are nearly always
# the same few dozen: their kind is looked up in this dict (bounded, so a caller
# inventing field names cannot grow it) instead of six substring scans per name.
_KINDS: dict[str, str] = {}
_PLAIN_KEYS: set[str] = set()
_KINDS_MAX = 1024


def _field_kind(key: str) -> str:
    kind = _KINDS.get(key)
    if kind is not None:
        return kind
    lowered = key.lower()
    if lowered not in _COUNTER_FIELDS and any(m in lowered for m in _SECRET_MARKERS):
        kind = _SECRET
    else:
        kind = _CONTENT if lowered in _CONTENT_FIELDS else _PLAIN
    if len(_KINDS) < _KINDS_MAX:
        _KINDS[key] = kind
        if kind is _PLAIN:
            _PLAIN_KEYS.add(key)
    return kind


def redact(fields: Mapping[str, Any], *, log_content: bool = False) -> dict[str, Any]:
    """Return a copy of ``fields`` with secrets masked and content dropped.

    Nested dicts (e.g. ``headers``, ``params``) are redacted too.
    """
    return redact_into({}, fields, log_content=log_content)


def redact_into(
    out: dict[str, Any], fields: Mapping[str, Any], *, log_content: bool = False
) -> dict[str, Any]:
    """Add ``fields``, redacted as :func:`redact` does, to ``out``; return ``out``.

    What the event emitter uses to build a subscriber's record in one pass.
    """
    if _PLAIN_KEYS.issuperset(fields) and _LEAF_TYPES.issuperset(map(type, fields.values())):
        # The usual event: every name known to be plain, every value a leaf. Both
        # checks and the copy run in C.
        out.update(fields)
        return out
    kinds = _KINDS
    for key, value in fields.items():
        kind = kinds.get(key) or _field_kind(key)
        if kind is _PLAIN and type(value) in _LEAF_TYPES:
            out[key] = value  # the usual field: no further check
        elif kind is _SECRET:
            out[key] = REDACTED
        elif kind is _CONTENT and not log_content:
            continue
        elif type(value) in _LEAF_TYPES:
            out[key] = value
        elif isinstance(value, Mapping):
            out[key] = redact_into({}, value, log_content=log_content)
        else:
            out[key] = value
    return out


# Request headers whose values are never secret; every other header's value is
# treated as a credential (X-Goog-Api-Key, Ocp-Apim-Subscription-Key, X-Auth-Token,
# whatever a plugin or a config table adds).
_PLAIN_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "connection",
        "content-length",
        "content-type",
        "host",
        "user-agent",
    }
)
# Shorter values are not masked: "1" or "yes" would mask half of every message.
_MIN_SECRET = 8


class Secrets:
    """The credentials one call sent, masked in any text derived from the answer.

    Each secret is masked as sent, JSON-escaped (``\\u`` forms included) and
    URL-encoded, since upstreams quote rejected keys in all of these forms; a
    text that quotes a key with only *some* characters escaped is decoded first
    (JSON escapes, then percent-encoding) and masked in its decoded form. A text
    cut short in the middle of a key (an excerpt limit) has the cut-off part
    masked too.
    """

    __slots__ = ("_forms", "_values")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._forms: tuple[str, ...] = ()
        self._values: tuple[str, ...] = ()
        self.add(*values)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def add(self, *values: str) -> None:
        """Remember more secret values (short ones are ignored)."""
        forms = set(self._forms)
        kept = set(self._values)
        for value in values:
            if not isinstance(value, str) or len(value) < _MIN_SECRET:
                continue
            kept.add(value)
            forms.update(_forms_of(value))
        # Longest first, so a secret that contains another is masked whole.
        self._forms = tuple(sorted(forms, key=len, reverse=True))
        self._values = tuple(sorted(kept, key=len, reverse=True))

    def add_headers(self, headers: Mapping[str, str]) -> None:
        """Remember the value of every header that may carry a credential."""
        for name, value in headers.items():
            if name.lower() in _PLAIN_HEADERS or not isinstance(value, str):
                continue
            # "Bearer KEY", "Basic XYZ": the token alone is echoed as often as the whole.
            self.add(value, value.rsplit(" ", 1)[-1])

    def _replace(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def _found(self, text: str) -> bool:
        return any(value in text for value in self._values)

    def mask(self, text: str) -> str:
        """``text`` with every known secret replaced by ``***``."""
        if not self._forms or not text:
            return text
        text = self._replace(text)
        if "\\" in text:
            decoded = _unescape(text)
            if self._found(decoded):
                text = self._replace(decoded)
        if "%" in text:
            decoded = unquote(text)
            if self._found(decoded):
                text = self._replace(decoded)
        return self._mask_cut(text)

    def _mask_cut(self, text: str) -> str:
        """Mask the start of a secret at the end of ``text`` (a cut excerpt)."""
        body = text.rstrip(".\u2026 ")
        for value in self._values:
            for size in range(len(value) - 1, _MIN_FRAGMENT - 1, -1):
                if body.endswith(value[:size]):
                    return body[:-size] + REDACTED + text[len(body) :]
        return text

    def mask_bytes(self, raw: bytes) -> bytes:
        """``raw`` with every known secret (UTF-8 encoded) replaced by ``***``."""
        for form in self._forms:
            encoded = form.encode("utf-8", "surrogatepass")
            if encoded in raw:
                raw = raw.replace(encoded, b"***")
        return raw


# The shortest end of a text still masked as the start of a cut-off secret.
_MIN_FRAGMENT = 4
_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(text: str) -> str:
    """JSON string escapes decoded wherever they appear (the rest left as is)."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return chr(int(match.group(1), 16))
        char = match.group(2)
        return _SIMPLE.get(char, char)

    return _ESCAPE.sub(one, text)


def _forms_of(value: str) -> set[str]:
    forms = {value, quote(value, safe=""), json.dumps(value)[1:-1]}
    # Every character \u-escaped: what an ASCII-only JSON encoder of another
    # language may produce for a key it quotes back.
    forms.add("".join(f"\\u{ord(c):04x}" for c in value))
    forms.add("".join(f"\\u{ord(c):04X}" for c in value))
    return {form for form in forms if len(form) >= _MIN_SECRET}
