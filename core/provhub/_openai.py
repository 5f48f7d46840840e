"""The OpenAI chat-completions wire format, apart from the bytes that carry it.

Parsers turn what an OpenAI-compatible upstream sends into provhub's stream
items (SPEC §11): ``str`` text, :class:`ToolCallDelta`, :class:`Reasoning`,
:class:`Refusal`, :class:`FinishReason` and :class:`Usage`, for streamed chunks
(:func:`parse_chat_stream`) and whole ``chat.completion`` bodies
(:func:`parse_chat_completion`). Every malformed input raises
:class:`UpstreamProtocolError`, never a bare ``KeyError`` or ``TypeError``.

Quirks of real servers handled here (each has a test):

- tool-call ``arguments`` sent as a JSON object instead of a JSON string
  (some Ollama versions): re-encoded as text;
- reasoning as ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning``
  (OpenRouter, Groq);
- the legacy ``function_call`` delta or message: one call at index 0;
- Groq's usage under ``x_groq`` in the last chunk;
- an ``{"error": ...}`` object inside a 200 stream or body.

Encoders go the other way, for ``provhub serve``: chunks for ``text/event-stream``
answers (:class:`ChunkEncoder`), the ``data: [DONE]`` terminator, whole
``chat.completion`` bodies (:func:`completion_body`) and error objects
(:func:`error_body`, :func:`error_event`), exactly as OpenAI's API sends them.

Tool-call *indexes* are passed on as sent (``None`` when absent); the hub's
assembler (:mod:`provhub._toolcalls`) resolves servers that omit ``index`` or
repeat ``index=0`` for distinct calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from provhub._errors import (
    FailureKind,
    ProviderError,
    UpstreamProtocolError,
    kind_of_status,
    status_retryable,
)
from provhub._spec import (
    FinishReason,
    Reasoning,
    Refusal,
    StreamItem,
    ToolCallDelta,
    Usage,
)
from provhub._suspend import Suspend

__all__ = [
    "DONE",
    "ChunkEncoder",
    "completion_body",
    "error_body",
    "error_event",
    "error_from_object",
    "kind_of_error_code",
    "parse_chat_completion",
    "parse_chat_stream",
    "parse_usage",
    "usage_object",
]

_MESSAGE_EXCERPT = 200


class _Shape(TypeError):
    """A value of the wrong shape; its message names the field, never the value."""


# OpenAI's own error codes and types, and those of the servers that copy its
# format (Anthropic-style types included), mapped to failure kinds.
_ERROR_KINDS: Mapping[str, FailureKind] = {
    "rate_limit_exceeded": FailureKind.RATE_LIMITED,
    "rate_limit_error": FailureKind.RATE_LIMITED,
    "insufficient_quota": FailureKind.RATE_LIMITED,
    "tokens": FailureKind.RATE_LIMITED,
    "context_length_exceeded": FailureKind.CONTEXT_LENGTH,
    "string_above_max_length": FailureKind.CONTEXT_LENGTH,
    "content_filter": FailureKind.CONTENT_POLICY,
    "content_policy_violation": FailureKind.CONTENT_POLICY,
    "invalid_api_key": FailureKind.AUTH,
    "authentication_error": FailureKind.AUTH,
    "permission_error": FailureKind.AUTH,
    "permission_denied": FailureKind.AUTH,
    "overloaded_error": FailureKind.OVERLOADED,
    "server_overloaded": FailureKind.OVERLOADED,
    "engine_overloaded": FailureKind.OVERLOADED,
}
_RETRYABLE_TYPES = frozenset({"server_error", "rate_limit_exceeded", "overloaded_error"})


def kind_of_error_code(code: Any, kind: Any) -> FailureKind | None:
    """The failure kind named by an error object's ``code`` or ``type``, if any."""
    for value in (code, kind):
        if isinstance(value, str):
            found = _ERROR_KINDS.get(value)
            if found is not None:
                return found
    return None


def error_from_object(error: Any, provider: str) -> ProviderError:
    """Map an OpenAI-style ``{"error": {...}}`` object (in a stream or a 200 body)."""
    message, code, kind = "upstream reported an error", None, None
    if isinstance(error, Mapping):
        message = str(error.get("message") or message)
        code = error.get("code")
        kind = error.get("type")
    elif isinstance(error, str):
        message = error
    message = " ".join(message.split())[:_MESSAGE_EXCERPT]
    status = code if type(code) is int and 100 <= code <= 599 else None
    if status is None and type(code) is str and code.isdigit() and 100 <= int(code) <= 599:
        status = int(code)  # some servers send the status as a string: "code": "503"
    retryable = (status is not None and status_retryable(status)) or (
        isinstance(kind, str) and kind in _RETRYABLE_TYPES
    )
    return UpstreamProtocolError(
        f"error in stream: {message}",
        provider=provider,
        status=status,
        retryable=retryable,
        kind=kind_of_error_code(code, kind) or kind_of_status(status),
        code=code if isinstance(code, str) else None,
        error_type=kind if isinstance(kind, str) else None,
    )


def _count(usage: Mapping[str, Any], key: str) -> int | None:
    value = usage.get(key)
    return value if type(value) is int and value >= 0 else None


def parse_usage(usage: Any) -> Usage | None:
    """A :class:`Usage` from an OpenAI ``usage`` object (details included).

    None for an absent (``null``) usage; a usage that is not an object raises.
    """
    if usage is None:
        return None
    if not isinstance(usage, Mapping):
        raise _Shape("usage is not an object")
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    return Usage(
        _count(usage, "prompt_tokens"),
        _count(usage, "completion_tokens"),
        _count(usage, "total_tokens"),
        cached_tokens=_count(prompt_details, "cached_tokens")
        if isinstance(prompt_details, Mapping)
        else None,
        reasoning_tokens=_count(completion_details, "reasoning_tokens")
        if isinstance(completion_details, Mapping)
        else None,
    )


def _reason(value: Any) -> str:
    if type(value) is not str:
        raise _Shape("finish_reason is not a string")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _Shape(f"{what} is not a string")


def _arguments(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value
    if isinstance(value, Mapping | list):
        # Quirk: some servers send the arguments as a JSON value, not as JSON text.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    raise _Shape("tool call arguments are neither JSON text nor a JSON value")


def _tool_call_delta(call: Any, *, whole: bool) -> ToolCallDelta:
    # type() checks first: JSON gives exact dicts and strs, and an ABC isinstance
    # costs several times more on a path taken once per fragment.
    if type(call) is not dict and not isinstance(call, Mapping):
        raise _Shape("a tool call is not an object")
    index = call.get("index")
    if index is not None and (type(index) is not int or index < 0):
        raise _Shape("tool call index is not a non-negative integer")
    function = call.get("function")
    name: str | None = None
    arguments: Any = ""
    if function is not None:
        if type(function) is not dict and not isinstance(function, Mapping):
            raise _Shape("tool call function is not an object")
        name = function.get("name")
        if name is not None and type(name) is not str:
            raise _Shape("tool call name is not a string")
        arguments = function.get("arguments")
        if type(arguments) is not str:
            arguments = _arguments(arguments)
    call_id = call.get("id")
    if call_id is not None and type(call_id) is not str:
        raise _Shape("tool call id is not a string")
    if whole and not name:
        raise _Shape("a tool call has no function name")
    return ToolCallDelta(index, call_id, name, arguments)


def _reasoning_of(holder: Mapping[str, Any]) -> str | None:
    for key in ("reasoning_content", "reasoning"):
        value = holder.get(key)
        if value:
            if type(value) is not str:
                raise _Shape(f"{key} is not a string")
            return value
    return None


def _delta_items(delta: Mapping[str, Any]) -> Iterator[StreamItem]:
    """The non-text items of one streamed delta."""
    calls = delta.get("tool_calls")
    if calls and len(delta) == 1:
        # The common tool-call chunk, {"tool_calls": [...]} alone: nothing else to look for.
        if type(calls) is not list:
            raise _Shape("delta.tool_calls is not a list")
        for call in calls:
            yield _tool_call_delta(call, whole=False)
        return
    reasoning = _reasoning_of(delta)
    if reasoning:
        yield Reasoning(reasoning)
    refusal = delta.get("refusal")
    if refusal:
        if type(refusal) is not str:
            raise _Shape("delta.refusal is not a string")
        yield Refusal(refusal)
    if calls:
        if not isinstance(calls, list):
            raise _Shape("delta.tool_calls is not a list")
        for call in calls:
            yield _tool_call_delta(call, whole=False)
    legacy = delta.get("function_call")
    if legacy:
        if not isinstance(legacy, Mapping):
            raise _Shape("delta.function_call is not an object")
        yield ToolCallDelta(
            0,
            None,
            _optional_str(legacy.get("name"), "function_call name"),
            _arguments(legacy.get("arguments")),
        )


# The scanner behind json.loads (the C one when available); see parse_chat_stream.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def parse_chat_stream(
    events: Iterator[bytes], provider: str, *, markers: bool = True
) -> Iterator[StreamItem]:
    """Turn OpenAI chat-completion chunk payloads into stream items.

    Yields ``str`` text and, with ``markers=True`` (what a hub consumes), the
    other items: tool-call fragments, reasoning, refusals, the finish reason and
    usage. With ``markers=False`` only ``str`` tokens are yielded (what a caller
    of a provider outside a hub expects: ``"".join(...)`` must work).

    Handles empty ``choices`` (usage-only chunks), an ``error`` object inside a
    data line, and malformed chunks, which raise :class:`UpstreamProtocolError`
    instead of a bare ``KeyError``/``JSONDecodeError``.
    """
    loads = json.loads
    scan = _scan_json
    for data in events:
        if data.__class__ is not bytes and isinstance(data, Suspend):
            yield data  # type: ignore[misc]  # for the event loop driving the call
            continue
        try:
            # The per-chunk hot path (PERFORMANCE.md): event-stream data is UTF-8 by
            # definition, so decode it in C instead of json.loads' Python-level encoding
            # detection, then call the C scanner json.loads ends in directly. Whatever
            # the scanner does not take whole (surrounding whitespace, trailing bytes,
            # invalid JSON) goes through json.loads for its exact result or error.
            # Saves about 1.5 us of the ~5 us a chunk costs.
            text = data.decode()
            try:
                chunk, end = scan(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                chunk = loads(text)
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    content = delta.get("content")
                    if content:
                        if type(content) is not str:
                            raise _Shape("delta.content is not a string")
                        yield content
                    # A text delta is {"content": ...} alone (plus "role" on the first
                    # chunk): anything else may carry another item.
                    if markers and (content is None or len(delta) > 1):
                        yield from _delta_items(delta)
                reason = choice.get("finish_reason")
                if reason and markers:
                    yield FinishReason(_reason(reason))
            elif chunk.get("error"):
                raise error_from_object(chunk["error"], provider)
            else:
                reason = None
            usage = chunk.get("usage")
            if not usage and (reason or not choices):
                # Groq reports stream usage under "x_groq" in its last chunk. Looked
                # for only there, so text chunks pay nothing for it.
                extension = chunk.get("x_groq")
                if isinstance(extension, Mapping):
                    usage = extension.get("usage")
            if usage and markers:
                parsed = parse_usage(usage)
                if parsed is not None:
                    yield parsed
        except ProviderError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError) as exc:
            # RecursionError: json.loads on absurdly nested arrays/objects.
            raise _malformed(exc, provider, "chunk") from exc


def parse_chat_completion(
    answer: Any, provider: str, *, markers: bool = True
) -> Iterator[StreamItem]:
    """Turn a decoded ``chat.completion`` body into stream items.

    Yields, in this order: reasoning, text, refusal, the tool calls (one whole
    :class:`ToolCallDelta` each, indexed in order; a legacy ``function_call`` is
    one call), the finish reason and the usage. With ``markers=False`` only the
    text. An ``{"error": ...}`` body (some servers answer 200 with one) raises
    :class:`UpstreamProtocolError`.
    """
    try:
        if not isinstance(answer, Mapping):
            raise _Shape("the completion is not a JSON object")
        if answer.get("error"):
            raise error_from_object(answer["error"], provider)
        choices = answer["choices"]
        if not isinstance(choices, list) or not choices:
            raise _Shape("the completion has no choices")
        choice = choices[0]
        message = choice["message"]
        if not isinstance(message, Mapping):
            raise _Shape("choices[0].message is not an object")
        content = _optional_str(message.get("content"), "message.content")
        items: list[StreamItem] = []
        if markers:
            reasoning = _reasoning_of(message)
            if reasoning:
                items.append(Reasoning(reasoning))
        if content:
            items.append(content)
        if markers:
            refusal = _optional_str(message.get("refusal"), "message.refusal")
            if refusal:
                items.append(Refusal(refusal))
            calls = message.get("tool_calls")
            if calls:
                if not isinstance(calls, list):
                    raise _Shape("message.tool_calls is not a list")
                for index, call in enumerate(calls):
                    delta = _tool_call_delta(call, whole=True)
                    items.append(ToolCallDelta(index, delta.id, delta.name, delta.arguments))
            elif message.get("function_call"):
                legacy = message["function_call"]
                if not isinstance(legacy, Mapping):
                    raise _Shape("message.function_call is not an object")
                name = _optional_str(legacy.get("name"), "function_call name")
                if not name:
                    raise _Shape("message.function_call has no name")
                items.append(ToolCallDelta(0, None, name, _arguments(legacy.get("arguments"))))
            reason = choice.get("finish_reason")
            if reason:
                items.append(FinishReason(_reason(reason)))
            usage = parse_usage(answer.get("usage"))
            if usage is not None:
                items.append(usage)
    except ProviderError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        raise _malformed(exc, provider, "completion") from exc
    yield from items


def _malformed(exc: BaseException, provider: str, what: str) -> UpstreamProtocolError:
    if isinstance(exc, UnicodeDecodeError):
        reason = "invalid UTF-8"
    elif isinstance(exc, _Shape):
        reason = f"a malformed {what}: {exc}"
    else:
        reason = f"a malformed {what} ({type(exc).__name__})"
    return UpstreamProtocolError(f"upstream sent {reason}", provider=provider)


# -- encoders: the server direction (provhub serve) ---------------------------------------

DONE = b"data: [DONE]\n\n"
_escape = json.encoder.encode_basestring_ascii
_compact = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    """An OpenAI ``usage`` object from a :class:`Usage` (None when absent).

    Counts the upstream did not report are left out rather than invented;
    ``cached_tokens``/``reasoning_tokens`` go into OpenAI's ``*_tokens_details``;
    ``cost`` (provhub's, from ``[prices]``) is added as ``cost``.
    """
    if usage is None:
        return None
    out: dict[str, Any] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(usage, key)
        if value is not None:
            out[key] = value
    if "total_tokens" not in out and "prompt_tokens" in out and "completion_tokens" in out:
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    if usage.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    if usage.cost is not None:
        out["cost"] = usage.cost
    return out


def tool_call_delta_object(delta: ToolCallDelta) -> dict[str, Any]:
    """One entry of a chunk's ``delta.tool_calls``: id, type and name only on the first."""
    function: dict[str, Any] = {"arguments": delta.arguments}
    entry: dict[str, Any] = {"index": delta.index or 0}
    if delta.id is not None:
        entry["id"] = delta.id
        entry["type"] = "function"
    if delta.name is not None:
        function["name"] = delta.name
    entry["function"] = function
    return entry


class ChunkEncoder:
    """Encodes one answer's ``chat.completion.chunk`` events as SSE bytes.

    ``include_usage`` mirrors ``stream_options.include_usage``: OpenAI then
    sends ``"usage": null`` on every chunk and one final chunk with empty
    ``choices`` carrying the usage. Reasoning goes out as ``reasoning_content``
    (the DeepSeek/vLLM field most clients read), refusals as ``refusal``.

    The per-token path matters (a 20,000-chunk stream): a text chunk is a prefix
    and suffix computed once per stream around the JSON-escaped text (the C
    string encoder), not a dict passed through ``json.dumps``.
    """

    __slots__ = ("_head", "_prefix", "_suffix", "_tail", "include_usage")

    def __init__(self, completion_id: str, created: int, model: str, *, include_usage: bool):
        self.include_usage = include_usage
        self._head = (
            f'data: {{"id":{_escape(completion_id)},"object":"chat.completion.chunk",'
            f'"created":{created},"model":{_escape(model)},"system_fingerprint":null,'
        )
        self._tail = ',"usage":null' if include_usage else ""
        self._prefix = (self._head + '"choices":[{"index":0,"delta":{"content":').encode()
        self._suffix = f'}},"logprobs":null,"finish_reason":null}}]{self._tail}}}\n\n'.encode()

    def text(self, text: str) -> bytes:
        """One content delta."""
        return self._prefix + _escape(text).encode() + self._suffix

    def delta(self, delta: Mapping[str, Any], finish_reason: str | None = None) -> bytes:
        """A chunk with an arbitrary ``delta`` (role, tool calls, reasoning, refusal)."""
        reason = "null" if finish_reason is None else _escape(finish_reason)
        return (
            f'{self._head}"choices":[{{"index":0,"delta":{_compact(delta)},'
            f'"logprobs":null,"finish_reason":{reason}}}]{self._tail}}}\n\n'
        ).encode()

    def item(self, item: StreamItem) -> bytes:
        """The chunk of one stream item (empty for the markers sent at the end)."""
        if type(item) is str:
            return self.text(item)
        if isinstance(item, ToolCallDelta):
            return self.delta({"tool_calls": [tool_call_delta_object(item)]})
        if isinstance(item, Reasoning):
            return self.delta({"reasoning_content": item.text})
        if isinstance(item, Refusal):
            return self.delta({"refusal": item.text})
        return b""  # FinishReason and Usage: the closing chunks carry them

    def role(self) -> bytes:
        """The opening chunk, as OpenAI sends it: the role and empty content."""
        return self.delta({"role": "assistant", "content": ""})

    def finish(self, reason: str | None) -> bytes:
        """The closing choice chunk with ``finish_reason``."""
        return self.delta({}, reason or "stop")

    def usage(self, usage: Usage | None) -> bytes:
        """The usage chunk (``choices: []``), or nothing when not requested."""
        if not self.include_usage:
            return b""
        return f'{self._head}"choices":[],"usage":{_compact(usage_object(usage))}}}\n\n'.encode()


def completion_body(
    completion_id: str,
    created: int,
    model: str,
    completion: Any,
) -> bytes:
    """A whole ``chat.completion`` JSON body from a provhub ``Completion``."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": completion.text if completion.text or not completion.tool_calls else None,
        "refusal": completion.refusal,
    }
    if completion.tool_calls:
        message["tool_calls"] = [call.as_dict() for call in completion.tool_calls]
    if completion.reasoning is not None:
        message["reasoning_content"] = completion.reasoning
    reason = completion.finish_reason or ("tool_calls" if completion.tool_calls else "stop")
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
    }
    counted = usage_object(completion.usage)
    if counted is not None:
        body["usage"] = counted
    return _compact(body).encode()


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI error object ``{"error": {"message", "type", "param", "code"}}`` as JSON."""
    return _compact(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}
    ).encode()


def error_event(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> bytes:
    """The same error object as one SSE event (a failure after the first token)."""
    return b"data: " + error_body(message, kind, code, param) + b"\n\n"
