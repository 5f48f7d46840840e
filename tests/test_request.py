"""The validated request (SPEC §4, §11): params, tools, tool messages, parts, capabilities.

Everything here is checked before any I/O: a bad call raises ``InvalidRequestError`` naming
the param or the message, and the fake upstream behind the hub never sees a request.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provhub import Capability, Hub, InvalidRequestError
from provhub._request import (
    Request,
    build_request,
    required_capabilities,
    validate_messages,
    validate_params,
)
from provhub.testing import FakeUpstream
from provhub_providers import OpenAICompatible

MakeHub = Callable[..., Hub]
USER = {"role": "user", "content": "hi"}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
}


def invalid(params: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        validate_params(params)
    return caught.value


# -- known params: type and range ---------------------------------------------------------------

VALID = [
    ("temperature", 0),
    ("temperature", 0.7),
    ("temperature", 2),
    ("top_p", 0.0),
    ("top_p", 1),
    ("max_tokens", 1),
    ("max_tokens", 128_000),
    ("max_completion_tokens", 50),
    ("stop", "\n\n"),
    ("stop", ["END", "STOP"]),
    ("seed", -5),
    ("seed", 2**40),
    ("n", 1),
    ("frequency_penalty", -2),
    ("presence_penalty", 1.5),
    ("parallel_tool_calls", False),
    ("reasoning_effort", "low"),
    ("reasoning_effort", "high"),
    ("reasoning_effort", "minimal"),
    ("logprobs", True),
    ("top_logprobs", 20),
    ("user", "user-42"),
    ("stream_options", {"include_usage": True}),
    ("response_format", {"type": "text"}),
    ("response_format", {"type": "json_object"}),
    ("response_format", SCHEMA),
]


@pytest.mark.parametrize(("name", "value"), VALID)
def test_valid_known_params_pass_unchanged(name: str, value: Any) -> None:
    params = {name: value}
    if name == "parallel_tool_calls":
        params["tools"] = [TOOL]
    assert validate_params(params) == params


INVALID = [
    ("temperature", "hot", "temperature must be a number, got str 'hot'"),
    ("temperature", True, "temperature must be a number, got bool"),
    ("temperature", -0.1, "temperature must be between 0 and 2, got -0.1"),
    ("temperature", 2.01, "temperature must be between 0 and 2"),
    ("temperature", math.nan, "temperature must be between 0 and 2, got nan"),
    ("temperature", math.inf, "temperature must be between 0 and 2, got inf"),
    ("top_p", 1.5, "top_p must be between 0 and 1"),
    ("top_p", [1], "top_p must be a number, got list"),
    ("max_tokens", -1, "max_tokens must be at least 1, got -1"),
    ("max_tokens", 0, "max_tokens must be at least 1, got 0"),
    ("max_tokens", 1.5, "max_tokens must be an integer, got float"),
    ("max_tokens", "10", "max_tokens must be an integer, got str"),
    ("max_tokens", True, "max_tokens must be an integer, got bool"),
    ("max_completion_tokens", 0, "max_completion_tokens must be at least 1"),
    ("stop", [], "stop must be a string or a non-empty list of strings"),
    ("stop", "", "stop must hold non-empty strings only"),
    ("stop", ["a", 1], "stop must hold non-empty strings only"),
    ("stop", 5, "stop must be a string or a non-empty list of strings"),
    ("stop", "\ud800", "stop is not valid Unicode (lone surrogate at index 0)"),
    ("seed", 1.5, "seed must be an integer, got float"),
    ("seed", False, "seed must be an integer, got bool"),
    ("n", 2, "only n=1 is supported"),
    ("n", True, "only n=1 is supported"),
    ("frequency_penalty", 2.5, "frequency_penalty must be between -2 and 2"),
    ("presence_penalty", "0", "presence_penalty must be a number"),
    ("reasoning_effort", "extreme", "reasoning_effort must be one of none, minimal, low"),
    ("reasoning_effort", 3, "reasoning_effort must be one of"),
    ("logprobs", 1, "logprobs must be true or false, got int"),
    ("top_logprobs", 21, "top_logprobs must be between 0 and 20, got 21"),
    ("user", 5, "user must be a string, got int"),
    ("stream_options", "usage", "stream_options must be a dict"),
    ("stream_options", {"include_usage": "yes"}, "include_usage must be true or false"),
]


@pytest.mark.parametrize(("name", "value", "reason"), INVALID)
def test_invalid_known_params_name_the_param_and_the_rule(
    name: str, value: Any, reason: str
) -> None:
    error = invalid({name: value})
    assert reason in str(error)
    assert error.param == name
    assert "\n" not in str(error)


def test_none_for_a_known_param_passes_through() -> None:
    assert validate_params({"temperature": None, "max_tokens": None}) == {
        "temperature": None,
        "max_tokens": None,
    }


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("tempreature", "temperature"),
        ("temperatur", "temperature"),
        ("max_token", "max_tokens"),
        ("maxTokens", "max_tokens"),
        ("top-p", "top_p"),
        ("Temperature", "temperature"),
        ("toolChoice", "tool_choice"),
        ("tool", "tools"),
        ("response-format", "response_format"),
        ("reasoning_efort", "reasoning_effort"),
        ("parallel_tool_call", "parallel_tool_calls"),
    ],
)
def test_near_misses_of_known_params_say_did_you_mean(name: str, meant: str) -> None:
    error = invalid({name: 1})
    assert f"{name} is not a known param; did you mean {meant!r}?" in str(error)
    assert error.param == name


PROVIDER_EXTRAS = [
    "top_k",
    "min_p",
    "top_a",
    "typical_p",
    "repetition_penalty",
    "logit_bias",
    "keep_alive",
    "options",
    "num_ctx",
    "num_predict",
    "max_new_tokens",
    "safe_prompt",
    "transforms",
    "metadata",
    "store",
    "modalities",
    "service_tier",
    "verbosity",
    "prompt_cache_key",
    "thinking",
    "chat_template_kwargs",
    "guided_json",
    "reasoning",
    "include_reasoning",
    "extra_body",
]


@pytest.mark.parametrize("name", PROVIDER_EXTRAS)
def test_provider_specific_params_pass_through(name: str) -> None:
    value = {"nested": [1, "two", None]}
    assert validate_params({name: value}) == {name: value}


def test_unknown_params_must_still_be_json() -> None:
    assert "param 'top_k' is a set, which cannot be sent as JSON" in str(invalid({"top_k": {1}}))
    assert "is nan, which JSON cannot carry" in str(invalid({"min_p": math.nan}))


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("model", "pass the model as the first argument"),
        ("messages", "pass the messages as the second argument"),
        ("stream", "call hub.stream() for a stream and hub.complete() for a whole answer"),
    ],
)
def test_reserved_names_are_refused_with_what_to_do(name: str, hint: str) -> None:
    error = invalid({name: True})
    assert f"{name} is not a param: {hint}" in str(error)


def test_validated_params_are_a_copy() -> None:
    params = {"temperature": 0.5}
    checked = validate_params(params)
    checked["temperature"] = 1.0
    assert params == {"temperature": 0.5}


@given(
    st.dictionaries(
        st.sampled_from(["temperature", "top_p", "max_tokens", "seed", "n", "stop"]),
        st.none() | st.booleans() | st.integers(-3, 5) | st.floats() | st.text(max_size=3),
    )
)
def test_known_params_either_validate_or_raise_naming_one_of_them(params: dict[str, Any]) -> None:
    try:
        checked = validate_params(params)
    except InvalidRequestError as exc:
        error = exc
    else:
        assert checked == params
        return
    assert error.param in params


# -- tools, tool_choice, response_format ------------------------------------------------------


def test_tools_with_choices_pass() -> None:
    second = {"type": "function", "function": {"name": "get.time-2", "strict": True}}
    for choice in ("auto", "none", "required", {"type": "function", "function": {"name": "f"}}):
        tools = [TOOL, second, {"function": {"name": "f"}}]
        assert validate_params({"tools": tools, "tool_choice": choice})["tool_choice"] == choice


@pytest.mark.parametrize(
    ("tools", "reason"),
    [
        ([], "tools must be a non-empty list of tools"),
        (TOOL, "tools must be a non-empty list of tools"),
        (["get_weather"], "tools[0] must be {'type': 'function', 'function': {...}}"),
        ([{"type": "retrieval"}], "tools[0] must be {'type': 'function'"),
        ([{"type": "function"}], "tools[0] needs a 'function' dict with a 'name'"),
        ([{"type": "function", "function": {}}], "tools[0] function.name must be 1-64 letters"),
        ([{"function": {"name": "has space"}}], "function.name must be 1-64 letters"),
        ([{"function": {"name": "x" * 65}}], "function.name must be 1-64 letters"),
        ([{"function": {"name": "ok\n"}}], "function.name must be 1-64 letters"),
        ([TOOL, TOOL], "tools[1] repeats the tool name 'get_weather'"),
        ([{"function": {"name": "f", "description": 3}}], "function.description must be a string"),
        ([{"function": {"name": "f", "parameters": "{}"}}], "function.parameters must be a JSON"),
        ([{"function": {"name": "f", "strict": "yes"}}], "function.strict must be true or false"),
        ([{"function": {"name": "f", "parameters": {"x": {1, 2}}}}], "cannot be sent as JSON"),
    ],
)
def test_invalid_tools_name_the_tool_and_the_rule(tools: Any, reason: str) -> None:
    error = invalid({"tools": tools})
    assert reason in str(error)
    assert error.param is not None
    assert error.param.startswith("tools")


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"tool_choice": "auto"}, "tool_choice needs tools"),
        ({"tool_choice": "always", "tools": [TOOL]}, "tool_choice must be 'none', 'auto'"),
        ({"tool_choice": {"name": "f"}, "tools": [TOOL]}, "tool_choice must name a function"),
        (
            {"tool_choice": {"type": "file_search", "function": {"name": "get_weather"}}},
            "tool_choice must name a function",
        ),
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [TOOL]},
            "tool_choice names 'nope', which is not one of the tools",
        ),
        ({"parallel_tool_calls": True}, "parallel_tool_calls needs tools"),
        ({"parallel_tool_calls": "yes", "tools": [TOOL]}, "must be true or false"),
    ],
)
def test_invalid_tool_choice_and_parallel_tool_calls(params: dict[str, Any], reason: str) -> None:
    assert reason in str(invalid(params))


def test_tool_choice_none_needs_no_tools() -> None:
    assert validate_params({"tool_choice": "none"}) == {"tool_choice": "none"}


@pytest.mark.parametrize(
    ("response_format", "reason"),
    [
        ("json", "response_format must have type 'text', 'json_object' or 'json_schema'"),
        ({"type": "xml"}, "must have type 'text', 'json_object' or 'json_schema'"),
        ({"type": "json_schema"}, "json_schema needs {'name': ..., 'schema': {...}}"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "json_schema needs {'name'"),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
            "json_schema.name must be 1-64 letters",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": []}},
            "json_schema.schema must be a JSON Schema object",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "strict": 1}},
            "json_schema.strict must be true or false",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {"x": math.inf}}},
            "which JSON cannot carry",
        ),
    ],
)
def test_invalid_response_format(response_format: Any, reason: str) -> None:
    error = invalid({"response_format": response_format})
    assert reason in str(error)
    assert error.param is not None
    assert error.param.startswith("response_format")


# -- tool calls and tool messages in the history ----------------------------------------------


def test_a_tool_round_trip_history_is_valid() -> None:
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "tool", "content": [{"type": "text", "text": "rainy"}], "tool_call_id": "call_2"},
        {"role": "assistant", "content": "Sunny, then rain."},
    ]
    assert validate_messages(messages) == messages


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (
            [USER, {"role": "tool", "content": "x"}],
            "messages[1] (tool) needs a 'tool_call_id' string",
        ),
        (
            [USER, {"role": "tool", "content": "x", "tool_call_id": ""}],
            "needs a 'tool_call_id' string",
        ),
        (
            [USER, {"role": "tool", "content": "x", "tool_call_id": "call_1"}],
            "messages[1] (tool) answers tool call 'call_1', which no earlier assistant message "
            "made",
        ),
        (
            [
                {"role": "tool", "content": "x", "tool_call_id": "call_1"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
            ],
            "messages[0] (tool) answers tool call 'call_1'",
        ),
        (
            [{"role": "user", "content": "x", "tool_calls": [CALL]}],
            "messages[0] (user) has tool_calls; only assistant messages carry them",
        ),
        ([{"role": "assistant", "tool_calls": CALL}], "messages[0].tool_calls must be a list"),
        ([{"role": "assistant", "tool_calls": []}], "messages[0] (assistant) has no 'content'"),
        (
            [{"role": "assistant", "tool_calls": [{**CALL, "id": None}]}],
            "messages[0].tool_calls[0] needs an 'id' string",
        ),
        (
            [{"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}],
            "has type 'code'; only 'function' is known",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "a", "function": "f"}]}],
            "needs a 'function' dict with 'name' and 'arguments'",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": ""}}]}],
            "needs function.name, a non-empty string",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": {}}}],
                }
            ],
            "function.arguments must be a string of JSON text",
        ),
    ],
)
def test_invalid_tool_histories_name_the_message(messages: list[Any], reason: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_messages(messages)
    assert reason in str(caught.value)


def test_tool_errors_never_quote_message_content() -> None:
    secret = "my-private-note"
    with pytest.raises(InvalidRequestError) as caught:
        validate_messages([{"role": "tool", "content": secret, "tool_call_id": "x"}])
    assert secret not in str(caught.value)


# -- content parts per role ---------------------------------------------------------------

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
FILE = {"type": "file", "file": {"file_id": "file-1"}}
TEXT = {"type": "text", "text": "look"}


@pytest.mark.parametrize(
    "parts",
    [
        [TEXT, IMAGE],
        [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}],
        [{"type": "image_url", "image_url": "https://example.com/shorthand.png"}],
        [TEXT, AUDIO],
        [FILE, {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}}],
    ],
)
def test_user_messages_take_text_image_audio_and_file_parts(parts: list[Any]) -> None:
    assert validate_messages([{"role": "user", "content": parts}])[0]["content"] == parts


@pytest.mark.parametrize(
    ("role", "part", "reason"),
    [
        ("system", IMAGE, "has type 'image_url', which a system message cannot carry (use text)"),
        ("assistant", IMAGE, "which a assistant message cannot carry (use refusal, text)"),
        ("tool", AUDIO, "which a tool message cannot carry (use text)"),
        ("user", {"type": "refusal", "refusal": "no"}, "which a user message cannot carry"),
        ("user", {"type": "video"}, "has type 'video'"),
    ],
)
def test_parts_a_role_cannot_carry_are_refused(role: str, part: Any, reason: str) -> None:
    message: dict[str, Any] = {"role": role, "content": [part]}
    history: list[dict[str, Any]] = []
    if role == "tool":
        message["tool_call_id"] = "call_1"
        history = [{"role": "assistant", "content": None, "tool_calls": [CALL]}]
    with pytest.raises(InvalidRequestError) as caught:
        validate_messages([*history, message])
    assert reason in str(caught.value)


def test_assistant_refusal_parts_are_valid() -> None:
    parts = [{"type": "refusal", "refusal": "I can't."}, {"type": "text", "text": "But..."}]
    assert validate_messages([USER, {"role": "assistant", "content": parts}])[1]["content"] == parts


@pytest.mark.parametrize(
    ("part", "reason"),
    [
        ({"type": "text"}, "content[0] (text) needs a 'text' string"),
        ({"type": "text", "text": 5}, "(text) needs a 'text' string"),
        ({"type": "image_url"}, "(image_url) needs an 'image_url' dict with a 'url'"),
        ({"type": "image_url", "image_url": {"url": "ftp://x"}}, "must be an http(s) URL or a"),
        ({"type": "image_url", "image_url": {"url": "/local.png"}}, "http(s) URL or a data: URL"),
        (
            {"type": "image_url", "image_url": {"url": "https://x", "detail": "max"}},
            "image_url.detail must be one of auto, low, high, got 'max'",
        ),
        ({"type": "input_audio"}, "(input_audio) needs an 'input_audio' dict"),
        ({"type": "input_audio", "input_audio": {"format": "wav"}}, "data must be a base64"),
        (
            {"type": "input_audio", "input_audio": {"data": "AA", "format": "aiff"}},
            "input_audio.format must be one of",
        ),
        ({"type": "file", "file": {}}, "(file) needs a 'file' dict with 'file_id' or 'file_data'"),
        ({"type": "file", "file": {"file_id": ""}}, "with 'file_id' or 'file_data'"),
        ({"type": 3}, "content[0] must be a dict with a 'type'"),
    ],
)
def test_malformed_parts_name_the_part_and_the_rule(part: Any, reason: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_messages([{"role": "user", "content": [part]}])
    assert reason in str(caught.value)
    assert caught.value.param == "messages[0].content[0]"


def test_an_empty_list_of_parts_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="empty list of parts"):
        validate_messages([{"role": "user", "content": []}])


# -- capabilities derived -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "params", "needed"),
    [
        ([USER], {}, Capability.NONE),
        ([USER], {"tools": [TOOL]}, Capability.TOOLS),
        ([USER], {"tools": [TOOL], "tool_choice": "required"}, Capability.TOOLS),
        ([{"role": "user", "content": [TEXT, IMAGE]}], {}, Capability.VISION),
        ([{"role": "user", "content": [TEXT, AUDIO, FILE]}], {}, Capability.NONE),
        ([USER], {"response_format": SCHEMA}, Capability.STRUCTURED_OUTPUT),
        ([USER], {"response_format": {"type": "json_object"}}, Capability.NONE),
        ([USER], {"reasoning_effort": "high"}, Capability.REASONING),
        ([USER], {"reasoning_effort": None}, Capability.NONE),
        (
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [IMAGE]},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "content": "r", "tool_call_id": "call_1"},
                USER,
            ],
            {"response_format": SCHEMA, "reasoning_effort": "low"},
            Capability.SYSTEM_MESSAGE
            | Capability.MESSAGE_HISTORY
            | Capability.VISION
            | Capability.TOOLS
            | Capability.STRUCTURED_OUTPUT
            | Capability.REASONING,
        ),
    ],
)
def test_required_capabilities_follow_the_messages_and_params(
    messages: list[Any], params: dict[str, Any], needed: Capability
) -> None:
    assert required_capabilities(validate_messages(messages), params=params) == needed
    request = build_request("m", messages, params, Capability.STREAM)
    assert request.required == needed | Capability.STREAM


def test_the_request_is_immutable_and_its_messages_are_copies() -> None:
    messages = [{"role": "user", "content": "hi"}]
    request = build_request("m", messages, {"temperature": 0.1})
    assert isinstance(request, Request)
    with pytest.raises(AttributeError):
        request.model = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        request.params["temperature"] = 2  # type: ignore[index]
    copies = request.provider_messages()
    copies[0]["content"] = "changed"
    assert request.provider_messages()[0]["content"] == "hi"
    assert messages[0]["content"] == "hi"


# -- through the hub: nothing is sent ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"max_tokens": -1}, "max_tokens must be at least 1"),
        ({"tempreature": 0.2}, "did you mean 'temperature'"),
        ({"stream": True}, "stream is not a param"),
        ({"tools": [{"function": {"name": "bad name"}}]}, "function.name"),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
    ],
)
def test_the_hub_refuses_bad_params_before_any_io(
    make_hub: MakeHub, upstream: FakeUpstream, kwargs: dict[str, Any], reason: str
) -> None:
    hub = make_hub()
    hub.register(OpenAICompatible("a", upstream.base_url, ["gpt-4"], capabilities=~Capability.NONE))
    for call in (hub.stream, hub.complete, hub.route):
        with pytest.raises(InvalidRequestError, match=reason):
            call("gpt-4", [USER], **kwargs)
    assert upstream.requests == []


def test_valid_params_reach_the_upstream_as_given(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(OpenAICompatible("a", upstream.base_url, ["gpt-4"], capabilities=~Capability.NONE))
    params = {
        "temperature": 0.2,
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": True,
        "response_format": SCHEMA,
        "reasoning_effort": "low",
        "top_k": 40,
    }
    hub.complete("gpt-4", [USER], **params)
    sent = upstream.requests[0].json
    assert {key: sent[key] for key in params} == params
