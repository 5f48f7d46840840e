"""The validated request: messages, params and what they require (SPEC §4, §11).

A call to the hub is checked once, before any I/O, and becomes one immutable
:class:`Request` value that flows hub -> router -> run -> provider. Every problem
raises :class:`InvalidRequestError` naming the message or the param and the
reason; errors never quote message content, which may be private.

Known params are checked for type and range; an unknown param close to a known
one (``tempreature``) is an error with "did you mean"; any other unknown param
passes through to the provider untouched (provider-specific extras).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from provhub._errors import InvalidRequestError
from provhub._spec import Capability

if TYPE_CHECKING:
    from provhub._config import Timeouts

__all__ = [
    "ROLES",
    "Request",
    "build_request",
    "required_capabilities",
    "validate_messages",
    "validate_params",
]

ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True, slots=True)
class Request:
    """One validated chat request.

    ``messages`` are the caller's messages as plain dict copies (the hub never
    mutates them; each provider attempt gets fresh copies from
    :meth:`provider_messages`); ``params`` are the validated params, read-only;
    ``required`` is what the caller asked for plus what the messages and params
    need; ``provider`` restricts routing to one provider name.
    """

    model: str
    messages: tuple[dict[str, Any], ...]
    params: Mapping[str, Any]
    required: Capability
    stream: bool = True
    provider: str | None = None
    timeouts: Timeouts | None = None

    def provider_messages(self) -> list[dict[str, Any]]:
        """Fresh shallow copies of the messages, for one provider attempt."""
        return [dict(message) for message in self.messages]


def build_request(
    model: Any,
    messages: Any,
    params: Mapping[str, Any],
    require: Any = Capability.NONE,
    *,
    stream: bool = True,
    provider: str | None = None,
    timeouts: Timeouts | None = None,
) -> Request:
    """Validate a call's arguments into a :class:`Request`.

    Raises :class:`InvalidRequestError` naming what is wrong and how to fix it.
    """
    checked = validate_messages(messages)
    if not isinstance(model, str) or not model:
        raise InvalidRequestError(
            f"model must be a non-empty string, got {model!r:.60}", param="model"
        )
    if not isinstance(require, Capability):
        raise InvalidRequestError(
            f"require must be a provhub.Capability, got {require!r:.60}", param="require"
        )
    valid = validate_params(params)
    return Request(
        model=model,
        messages=tuple(checked),
        params=MappingProxyType(valid),
        required=required_capabilities(checked, require, valid),
        stream=stream,
        provider=provider,
        timeouts=timeouts,
    )


# -- messages -----------------------------------------------------------------------------


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check a message list; return it as a list of plain dicts.

    Checks roles, content (a string or a list of typed parts: ``text``,
    ``image_url``, ``input_audio``, ``file``; ``refusal`` for the assistant),
    assistant ``tool_calls`` and ``tool`` messages, which must answer a tool call
    of an earlier assistant message. Raises :class:`InvalidRequestError` naming
    the bad message and why.
    """
    if isinstance(messages, str | bytes | Mapping) or not hasattr(messages, "__iter__"):
        raise InvalidRequestError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
            f"got {type(messages).__name__}",
            param="messages",
        )
    result: list[dict[str, Any]] = []
    # Tool-call ids of earlier assistant messages, which tool messages answer.
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise _bad(where, f"must be a dict, got {type(message).__name__}")
        role = message.get("role")
        # isinstance first: an unhashable role (a list) would make "in" raise TypeError.
        if not isinstance(role, str) or role not in ROLES:
            raise _bad(where, f"has role {role!r:.40}; use one of {', '.join(sorted(ROLES))}")
        if len(message) == 2 and type(message.get("content")) is str and role != "tool":
            # The common message, {"role": ..., "content": "text"}: one check. (A
            # tool message needs its tool_call_id, so it never takes this path.)
            _check_text(message["content"], f"{where}.content")
        else:
            _check_message(message, role, where, call_ids)
        result.append(dict(message))
    if not result:
        raise InvalidRequestError(
            "messages is empty; send at least one user message", param="messages"
        )
    return result


def _bad(where: str, reason: str) -> InvalidRequestError:
    return InvalidRequestError(f"{where} {reason}", param=where)


def _check_message(message: Mapping[str, Any], role: str, where: str, call_ids: set[str]) -> None:
    tool_calls = message.get("tool_calls")
    if "tool_calls" in message and tool_calls is not None:
        if role != "assistant":
            raise _bad(where, f"({role}) has tool_calls; only assistant messages carry them")
        _check_tool_calls(tool_calls, f"{where}.tool_calls", call_ids)
    if "content" not in message:
        if not (role == "assistant" and tool_calls):
            raise _bad(where, f"({role}) has no 'content'")
    else:
        content = message["content"]
        if content is None:
            if role not in {"assistant", "tool"}:
                raise _bad(where, f"({role}) content must be a string or a list of parts, got None")
        elif isinstance(content, str):
            _check_text(content, f"{where}.content")
        elif isinstance(content, list):
            _check_parts(content, role, f"{where}.content")
        else:
            raise _bad(
                where,
                f"({role}) content must be a string or a list of parts, "
                f"got {type(content).__name__}",
            )
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _bad(where, "(tool) needs a 'tool_call_id' string naming the call it answers")
        if call_id not in call_ids:
            raise _bad(
                where,
                f"(tool) answers tool call {call_id!r:.80}, which no earlier assistant "
                "message made; put the assistant message with that tool call before it",
            )
    name = message.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise _bad(where, f"has a {type(name).__name__} 'name'; it must be a string")
        _check_text(name, f"{where}.name")
    for key, value in message.items():
        if key not in _CHECKED_KEYS:
            # Extra fields are sent as they are; they must be JSON.
            _check_key(key, where)
            _check_json(value, f"{where}[{key!r:.40}]", 0)


_CHECKED_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name"})
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def _check_tool_calls(calls: Any, where: str, call_ids: set[str]) -> None:
    if not isinstance(calls, list):
        raise _bad(where, f"must be a list of tool calls, got {type(calls).__name__}")
    for index, call in enumerate(calls):
        here = f"{where}[{index}]"
        if not isinstance(call, Mapping):
            raise _bad(here, f"must be a dict, got {type(call).__name__}")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise _bad(here, "needs an 'id' string")
        if call.get("type", "function") != "function":
            raise _bad(here, f"has type {call.get('type')!r:.40}; only 'function' is known")
        function = call.get("function")
        if not isinstance(function, Mapping):
            raise _bad(here, "needs a 'function' dict with 'name' and 'arguments'")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(here, "needs function.name, a non-empty string")
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            raise _bad(here, "function.arguments must be a string of JSON text")
        _check_text(arguments, f"{here}.function.arguments")
        _check_json(dict(call), here, 0)
        call_ids.add(call_id)


_PART_TYPES: Mapping[str, frozenset[str]] = {
    "system": frozenset({"text"}),
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
    "tool": frozenset({"text"}),
}
_IMAGE_DETAIL = frozenset({"auto", "low", "high"})
_AUDIO_FORMATS = frozenset({"wav", "mp3", "flac", "ogg", "webm", "m4a", "pcm16"})


def _check_parts(parts: list[Any], role: str, where: str) -> None:
    if not parts:
        raise _bad(where, "is an empty list of parts; send at least one part")
    allowed = _PART_TYPES[role]
    for index, part in enumerate(parts):
        here = f"{where}[{index}]"
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise _bad(here, "must be a dict with a 'type'")
        kind = part["type"]
        if kind not in allowed:
            raise _bad(
                here,
                f"has type {kind!r:.40}, which a {role} message cannot carry "
                f"(use {', '.join(sorted(allowed))})",
            )
        _PART_CHECKS[kind](part, here)
        _check_json(part, here, 0)


def _check_text_part(part: Mapping[str, Any], where: str) -> None:
    _field_str(part, "text", where)


def _check_refusal_part(part: Mapping[str, Any], where: str) -> None:
    _field_str(part, "refusal", where)


def _check_image_part(part: Mapping[str, Any], where: str) -> None:
    image = part.get("image_url")
    url: Any
    if isinstance(image, str):  # a common shorthand some servers accept
        url = image
    elif isinstance(image, Mapping):
        url = image.get("url")
        detail = image.get("detail")
        if detail is not None and detail not in _IMAGE_DETAIL:
            raise _bad(
                where, f"image_url.detail must be one of auto, low, high, got {detail!r:.20}"
            )
    else:
        raise _bad(where, "(image_url) needs an 'image_url' dict with a 'url'")
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:")):
        raise _bad(where, "image_url.url must be an http(s) URL or a data: URL")


def _check_audio_part(part: Mapping[str, Any], where: str) -> None:
    audio = part.get("input_audio")
    if not isinstance(audio, Mapping):
        raise _bad(where, "(input_audio) needs an 'input_audio' dict with 'data' and 'format'")
    if not isinstance(audio.get("data"), str) or not audio["data"]:
        raise _bad(where, "input_audio.data must be a base64 string")
    if audio.get("format") not in _AUDIO_FORMATS:
        raise _bad(
            where,
            f"input_audio.format must be one of {', '.join(sorted(_AUDIO_FORMATS))}, "
            f"got {audio.get('format')!r:.20}",
        )


def _check_file_part(part: Mapping[str, Any], where: str) -> None:
    file = part.get("file")
    if not isinstance(file, Mapping) or not any(
        isinstance(file.get(key), str) and file.get(key) for key in ("file_id", "file_data")
    ):
        raise _bad(where, "(file) needs a 'file' dict with 'file_id' or 'file_data'")


_PART_CHECKS: Mapping[str, Callable[[Mapping[str, Any], str], None]] = {
    "text": _check_text_part,
    "refusal": _check_refusal_part,
    "image_url": _check_image_part,
    "input_audio": _check_audio_part,
    "file": _check_file_part,
}


def _field_str(part: Mapping[str, Any], key: str, where: str) -> None:
    value = part.get(key)
    if not isinstance(value, str):
        raise _bad(where, f"({part['type']}) needs a {key!r} string")
    _check_text(value, f"{where}.{key}")


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
    raise InvalidRequestError(
        f"{where} is not valid Unicode (lone surrogate at index {index})", param=where
    )


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str):
        raise _bad(where, f"has a {type(key).__name__} key; keys must be strings")
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
        if not math.isfinite(value):
            raise _bad(where, f"is {value}, which JSON cannot carry")
    elif depth >= _MAX_DEPTH:
        raise _bad(where, f"is nested more than {_MAX_DEPTH} levels deep")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_key(key, where)
            _check_json(item, f"{where}[{key!r:.40}]", depth + 1)
    else:
        raise _bad(where, f"is a {type(value).__name__}, which cannot be sent as JSON")


# -- params -------------------------------------------------------------------------------


def _number(low: float, high: float) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            shown = f" {value!r:.20}" if isinstance(value, str) else ""
            raise _param(name, f"must be a number, got {type(value).__name__}{shown}")
        if not (math.isfinite(value) and low <= value <= high):
            raise _param(name, f"must be between {low:g} and {high:g}, got {value!r}")

    return check


def _integer(low: int, high: int | None = None) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _param(name, f"must be an integer, got {type(value).__name__}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise _param(name, f"must be {bound}, got {value}")

    return check


def _one_of(*choices: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise _param(name, f"must be one of {', '.join(choices)}, got {value!r:.40}")

    return check


def _typed(kind: type, label: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _param(name, f"must be {label}, got {type(value).__name__}")

    return check


def _check_stop(name: str, value: Any) -> None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _param(name, "must be a string or a non-empty list of strings")
    for item in value:
        if not isinstance(item, str) or not item:
            raise _param(name, "must hold non-empty strings only")
        _check_text(item, name)


def _check_n(name: str, value: Any) -> None:
    if value != 1 or isinstance(value, bool):
        raise _param(name, f"only n=1 is supported (one answer per request), got {value!r:.20}")


def _check_tools(name: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise _param(name, "must be a non-empty list of tools")
    seen: set[str] = set()
    for index, tool in enumerate(value):
        here = f"{name}[{index}]"
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise _param(here, "must be {'type': 'function', 'function': {...}}")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise _param(here, "needs a 'function' dict with a 'name'")
        tool_name = function.get("name")
        if not isinstance(tool_name, str) or not _TOOL_NAME.fullmatch(tool_name):
            raise _param(
                here,
                "function.name must be 1-64 letters, digits, '_', '.' or '-', "
                f"got {tool_name!r:.70}",
            )
        if tool_name in seen:
            raise _param(here, f"repeats the tool name {tool_name!r}; tool names must be unique")
        seen.add(tool_name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise _param(here, "function.description must be a string")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise _param(here, "function.parameters must be a JSON Schema object (a dict)")
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _param(here, "function.strict must be true or false")
        _check_json(tool, here, 0)


def _check_tool_choice(name: str, value: Any) -> None:
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise _param(
                name,
                "must be 'none', 'auto', 'required' or "
                f"{{'type': 'function', 'function': {{'name': ...}}}}, got {value!r:.40}",
            )
        return
    function = value.get("function") if isinstance(value, Mapping) else None
    if (
        not isinstance(function, Mapping)
        or not isinstance(function.get("name"), str)
        or value.get("type", "function") != "function"
    ):
        raise _param(name, "must name a function: {'type': 'function', 'function': {'name': ...}}")


def _check_response_format(name: str, value: Any) -> None:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind in ("text", "json_object"):
        return
    if kind != "json_schema":
        raise _param(name, "must have type 'text', 'json_object' or 'json_schema'")
    schema = value.get("json_schema")
    if not isinstance(schema, Mapping) or not isinstance(schema.get("name"), str):
        raise _param(
            name,
            "json_schema needs {'name': ..., 'schema': {...}} (the name of the schema and "
            "the JSON Schema itself)",
        )
    if not _SCHEMA_NAME.fullmatch(schema["name"]):
        raise _param(
            name,
            "json_schema.name must be 1-64 letters, digits, '_' or '-', "
            f"got {schema['name']!r:.70}",
        )
    if not isinstance(schema.get("schema", {}), Mapping):
        raise _param(name, "json_schema.schema must be a JSON Schema object (a dict)")
    strict = schema.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _param(name, "json_schema.strict must be true or false")
    _check_json(value, name, 0)


def _check_stream_options(name: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise _param(name, "must be a dict such as {'include_usage': true}")
    include = value.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise _param(name, "include_usage must be true or false")


_PARAMS: Mapping[str, Callable[[str, Any], None]] = {
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0),
    "max_tokens": _integer(1),
    "max_completion_tokens": _integer(1),
    "stop": _check_stop,
    "seed": _typed(int, "an integer"),
    "n": _check_n,
    "frequency_penalty": _number(-2.0, 2.0),
    "presence_penalty": _number(-2.0, 2.0),
    "tools": _check_tools,
    "tool_choice": _check_tool_choice,
    "parallel_tool_calls": _typed(bool, "true or false"),
    "response_format": _check_response_format,
    "reasoning_effort": _one_of("none", "minimal", "low", "medium", "high"),
    "logprobs": _typed(bool, "true or false"),
    "top_logprobs": _integer(0, 20),
    "user": _typed(str, "a string"),
    "stream_options": _check_stream_options,
}
# Params a method decides: passing them would collide with create_completion's own.
_RESERVED = {
    "model": "pass the model as the first argument",
    "messages": "pass the messages as the second argument",
    "stream": "call hub.stream() for a stream and hub.complete() for a whole answer",
}
# Common provider-specific params that look like a known one but are not a typo.
_NOT_TYPOS = frozenset({"top_k", "min_p", "top_a", "typical_p", "max_new_tokens", "num_predict"})


def _folded(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


# Known params by their spelling without case, "_" and "-": "maxTokens", "top-p" and
# "Temperature" are near misses however far difflib finds them.
_FOLDED = {_folded(name): name for name in _PARAMS}


def _near_miss(name: Any) -> str | None:
    """The known param ``name`` probably meant, or None."""
    if not isinstance(name, str):
        return None
    found = _FOLDED.get(_folded(name))
    if found is not None:
        return found
    close = difflib.get_close_matches(name, _PARAMS, n=1, cutoff=0.85)
    return close[0] if close else None


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check the request params; return a copy.

    Raises :class:`InvalidRequestError` naming the param: a known param with a bad
    type or value, a reserved name, or an unknown name close to a known one.
    """
    checked = _PARAMS
    for name, value in params.items():
        check = checked.get(name)
        if check is not None:
            if value is not None:
                check(name, value)
            continue
        if name in _RESERVED:
            raise _param(name, f"is not a param: {_RESERVED[name]}")
        if name not in _NOT_TYPOS:
            close = _near_miss(name)
            if close:
                raise _param(
                    name,
                    f"is not a known param; did you mean {close!r}? (unknown params that "
                    "are not near-misses pass through to the provider)",
                )
        _check_json(value, f"param {name!r:.40}", 0)
    if params.get("tool_choice") not in (None, "none") and not params.get("tools"):
        raise _param("tool_choice", "needs tools: send the tools the model may call")
    if params.get("parallel_tool_calls") is not None and not params.get("tools"):
        raise _param("parallel_tool_calls", "needs tools: send the tools the model may call")
    choice = params.get("tool_choice")
    if isinstance(choice, Mapping) and params.get("tools"):
        names = {t["function"]["name"] for t in params["tools"]}
        if choice["function"]["name"] not in names:
            raise _param(
                "tool_choice",
                f"names {choice['function']['name']!r:.70}, which is not one of the tools",
            )
    return dict(params)


def _param(name: str, reason: str) -> InvalidRequestError:
    return InvalidRequestError(f"{name} {reason}", param=name)


# -- capabilities ---------------------------------------------------------------------


def required_capabilities(
    messages: Sequence[Mapping[str, Any]],
    require: Capability = Capability.NONE,
    params: Mapping[str, Any] | None = None,
) -> Capability:
    """What the caller asks for plus what the messages and params need (SPEC §2, §11).

    A system message needs ``SYSTEM_MESSAGE``; more than one user turn
    ``MESSAGE_HISTORY``; an image part ``VISION``; tool calls or tool messages in
    the history, or ``tools`` in the params, ``TOOLS``; a ``json_schema``
    response format ``STRUCTURED_OUTPUT``; ``reasoning_effort`` ``REASONING``.
    """
    needed = require
    users = 0
    for message in messages:
        role = message.get("role")
        if role == "user":
            users += 1
            content = message.get("content")
            if type(content) is list and any(
                isinstance(p, Mapping) and p.get("type") == "image_url" for p in content
            ):
                needed |= Capability.VISION
        elif role == "system":
            needed |= Capability.SYSTEM_MESSAGE
        elif role == "tool" or (role == "assistant" and message.get("tool_calls")):
            needed |= Capability.TOOLS
    if users > 1:
        needed |= Capability.MESSAGE_HISTORY
    if params:
        if params.get("tools"):
            needed |= Capability.TOOLS
        response_format = params.get("response_format")
        if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
            needed |= Capability.STRUCTURED_OUTPUT
        if params.get("reasoning_effort") is not None:
            needed |= Capability.REASONING
    return needed
