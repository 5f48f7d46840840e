"""The OpenAI chat wire format, server direction: the bytes the gateway writes.

Chunks (``chat.completion.chunk``) for ``text/event-stream`` answers, the
``data: [DONE]`` terminator, whole ``chat.completion`` bodies and error objects
``{"error": {"message", "type", "param", "code"}}``, exactly as OpenAI's API
sends them, so every OpenAI client parses them unchanged.

The per-token path matters (a 20,000-chunk stream): a text chunk is a prefix
and suffix computed once per stream around the JSON-escaped text (the C string
encoder), not a dict passed through ``json.dumps``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DONE",
    "ChunkEncoder",
    "completion_body",
    "error_body",
    "error_event",
    "usage_dict",
]

DONE = b"data: [DONE]\n\n"
_escape = json.encoder.encode_basestring_ascii
_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def usage_dict(usage: Any) -> dict[str, Any] | None:
    """An OpenAI ``usage`` object from a provhub ``Usage`` (None when absent).

    Counts the upstream did not report are left out rather than invented;
    ``cached_tokens``/``reasoning_tokens`` go into OpenAI's ``*_tokens_details``.
    """
    if usage is None:
        return None
    out: dict[str, Any] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(usage, key, None)
        if value is not None:
            out[key] = value
    if "total_tokens" not in out and "prompt_tokens" in out and "completion_tokens" in out:
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    cached = getattr(usage, "cached_tokens", None)
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = getattr(usage, "reasoning_tokens", None)
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    cost = getattr(usage, "cost", None)
    if cost is not None:
        out["cost"] = cost
    return out


class ChunkEncoder:
    """Encodes one answer's ``chat.completion.chunk`` events as SSE bytes.

    ``include_usage`` mirrors ``stream_options.include_usage``: OpenAI then
    sends ``"usage": null`` on every chunk and one final chunk with empty
    ``choices`` carrying the usage.
    """

    __slots__ = ("_head", "_prefix", "_suffix", "include_usage")

    def __init__(self, completion_id: str, created: int, model: str, *, include_usage: bool):
        self.include_usage = include_usage
        self._head = (
            f'data: {{"id":{_escape(completion_id)},"object":"chat.completion.chunk",'
            f'"created":{created},"model":{_escape(model)},"system_fingerprint":null,'
        )
        self._prefix = (self._head + '"choices":[{"index":0,"delta":{"content":').encode()
        tail = ',"usage":null' if include_usage else ""
        self._suffix = f'}},"logprobs":null,"finish_reason":null}}]{tail}}}\n\n'.encode()

    def text(self, text: str) -> bytes:
        """One content delta."""
        return self._prefix + _escape(text).encode() + self._suffix

    def texts(self, texts: Iterable[str]) -> bytes:
        """Several content deltas as one write."""
        prefix, suffix = self._prefix, self._suffix
        return b"".join(prefix + _escape(t).encode() + suffix for t in texts)

    def delta(self, delta: Mapping[str, Any], finish_reason: str | None = None) -> bytes:
        """A chunk with an arbitrary ``delta`` (role, tool calls, reasoning, refusal)."""
        reason = "null" if finish_reason is None else _escape(finish_reason)
        tail = ',"usage":null' if self.include_usage else ""
        return (
            f'{self._head}"choices":[{{"index":0,"delta":{_dumps(delta)},'
            f'"logprobs":null,"finish_reason":{reason}}}]{tail}}}\n\n'
        ).encode()

    def role(self) -> bytes:
        """The opening chunk, as OpenAI sends it: the role and empty content."""
        return self.delta({"role": "assistant", "content": ""})

    def finish(self, reason: str | None) -> bytes:
        """The closing choice chunk with ``finish_reason``."""
        return self.delta({}, reason or "stop")

    def usage(self, usage: Any) -> bytes:
        """The usage chunk (``choices: []``), or nothing when not requested."""
        if not self.include_usage:
            return b""
        return f'{self._head}"choices":[],"usage":{_dumps(usage_dict(usage))}}}\n\n'.encode()


def completion_body(
    completion_id: str,
    created: int,
    model: str,
    message: Mapping[str, Any],
    finish_reason: str | None,
    usage: Any,
) -> bytes:
    """A whole ``chat.completion`` JSON body."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": dict(message),
                "logprobs": None,
                "finish_reason": finish_reason or "stop",
            }
        ],
    }
    counted = usage_dict(usage)
    if counted is not None:
        body["usage"] = counted
    return _dumps(body).encode()


def _error(message: str, kind: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI error object as a JSON body."""
    return _dumps(_error(message, kind, code, param)).encode()


def error_event(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> bytes:
    """An OpenAI error object as one SSE event (a failure after the first token)."""
    return b"data: " + error_body(message, kind, code, param) + b"\n\n"
