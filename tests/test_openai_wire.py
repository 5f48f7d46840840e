"""The OpenAI chat wire format (SPEC §11): every field of a chunk and of a completion.

``parse_chat_stream`` takes SSE data payloads (bytes), ``parse_chat_completion`` a decoded
``chat.completion`` body; both yield provhub's items. Whatever an upstream sends either
parses into items or raises ``UpstreamProtocolError``: never a bare ``KeyError``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provhub import (
    FailureKind,
    FinishReason,
    Reasoning,
    Refusal,
    StreamItem,
    ToolCallDelta,
    UpstreamProtocolError,
    Usage,
    parse_chat_completion,
    parse_chat_stream,
)
from provhub._openai import error_from_object, parse_usage
from provhub._spec import ITEM_TYPES

ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(delta: Any = None, finish: Any = None, **extra: Any) -> bytes:
    """One chunk's data payload, as OpenAI frames it."""
    body: dict[str, Any] = dict(ENVELOPE)
    if delta is not None or finish is not None:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    else:
        body["choices"] = []
    body.update(extra)
    return json.dumps(body).encode()


def stream(*payloads: bytes, markers: bool = True) -> list[StreamItem]:
    return list(parse_chat_stream(iter(payloads), "p", markers=markers))


def complete(message: dict[str, Any], markers: bool = True, **extra: Any) -> list[StreamItem]:
    body = {
        **ENVELOPE,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": extra.pop("finish", None)}],
        **extra,
    }
    return list(parse_chat_completion(body, "p", markers=markers))


def stream_error(*payloads: bytes) -> UpstreamProtocolError:
    with pytest.raises(UpstreamProtocolError) as caught:
        stream(*payloads)
    return caught.value


# -- streamed text and markers ----------------------------------------------------------------


def test_text_chunks_become_str_items_and_the_role_chunk_nothing() -> None:
    items = stream(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
    )
    assert items == ["Hel", "lo", FinishReason("stop")]


def test_text_with_role_on_the_same_chunk_is_kept() -> None:
    assert stream(chunk({"role": "assistant", "content": "Hi"})) == ["Hi"]


def test_markers_false_yields_text_only() -> None:
    payloads = (
        chunk({"content": None, "reasoning_content": "think"}),
        chunk({"content": "a"}),
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}),
        chunk({}, "tool_calls"),
        chunk(usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}),
    )
    assert stream(*payloads, markers=False) == ["a"]


def test_usage_chunk_with_empty_choices_and_details() -> None:
    usage = {
        "prompt_tokens": 20,
        "completion_tokens": 9,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 4, "audio_tokens": 0},
    }
    assert stream(chunk({"content": "x"}, usage=None), chunk(usage=usage)) == [
        "x",
        Usage(20, 9, 29, cached_tokens=16, reasoning_tokens=4),
    ]


def test_usage_on_the_finish_chunk_is_read_too() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert stream(chunk({}, "length", usage=usage)) == [FinishReason("length"), Usage(1, 2, 3)]


def test_groq_usage_under_x_groq_in_the_last_chunk() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    items = stream(chunk({"content": "a"}), chunk({}, "stop", x_groq={"id": "r", "usage": usage}))
    assert items == ["a", FinishReason("stop"), Usage(4, 5, 9)]


@pytest.mark.parametrize("bad", [-1, True, "12", 1.5, None])
def test_usage_counts_that_are_not_counts_are_unknown(bad: Any) -> None:
    parsed = parse_usage(
        {
            "prompt_tokens": bad,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": bad},
            "completion_tokens_details": None,
        }
    )
    assert parsed == Usage(None, 3, None)


def test_usage_that_is_not_an_object_is_a_protocol_error() -> None:
    assert "usage is not an object" in str(stream_error(chunk(usage=[1, 2])))


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter"])
def test_finish_reasons_pass_through(reason: str) -> None:
    assert stream(chunk({}, reason)) == [FinishReason(reason)]


@pytest.mark.parametrize("reason", [1, ["stop"], {"r": 1}, True])
def test_a_finish_reason_that_is_not_a_string_is_a_protocol_error(reason: Any) -> None:
    assert "finish_reason is not a string" in str(stream_error(chunk({}, reason)))


# -- reasoning and refusal --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_from_either_field(field: str) -> None:
    items = stream(chunk({"content": None, field: "Let me think"}), chunk({"content": "42"}))
    assert items == [Reasoning("Let me think"), "42"]


def test_reasoning_sent_in_both_fields_is_delivered_once() -> None:
    delta = {"content": None, "reasoning": "hmm", "reasoning_content": "hmm"}
    assert stream(chunk(delta)) == [Reasoning("hmm")]


def test_reasoning_and_text_in_one_delta_come_text_first() -> None:
    assert stream(chunk({"content": "a", "reasoning_content": "b"})) == ["a", Reasoning("b")]


def test_reasoning_that_is_not_a_string_is_a_protocol_error() -> None:
    error = stream_error(chunk({"reasoning_content": {"text": "x"}}))
    assert "reasoning_content is not a string" in str(error)


def test_refusal_fragments() -> None:
    items = stream(
        chunk({"role": "assistant", "content": None, "refusal": ""}),
        chunk({"refusal": "I can't "}),
        chunk({"refusal": "help with that."}),
        chunk({}, "stop"),
    )
    assert items == [Refusal("I can't "), Refusal("help with that."), FinishReason("stop")]


def test_refusal_that_is_not_a_string_is_a_protocol_error() -> None:
    assert "delta.refusal is not a string" in str(stream_error(chunk({"refusal": 3})))


# -- tool calls ---------------------------------------------------------------------------


def test_tool_call_fragments_as_openai_streams_them() -> None:
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    items = stream(
        chunk({"role": "assistant", "content": None, "tool_calls": [first]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"P"}'}}]}),
        chunk({}, "tool_calls"),
    )
    assert items == [
        ToolCallDelta(0, "call_1", "get_weather", ""),
        ToolCallDelta(0, None, None, '{"ci'),
        ToolCallDelta(0, None, None, 'ty":"P"}'),
        FinishReason("tool_calls"),
    ]


def test_several_calls_in_one_delta_and_a_missing_index() -> None:
    calls = [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "function": {"name": "g", "arguments": "[]"}},
    ]
    assert stream(chunk({"tool_calls": calls})) == [
        ToolCallDelta(None, "a", "f", "{}"),
        ToolCallDelta(None, "b", "g", "[]"),
    ]


def test_arguments_sent_as_a_json_object_become_compact_json_text() -> None:
    call = {"index": 0, "id": "a", "function": {"name": "f", "arguments": {"city": "Zürich"}}}
    assert stream(chunk({"tool_calls": [call]})) == [
        ToolCallDelta(0, "a", "f", '{"city":"Zürich"}')
    ]


def test_empty_or_null_tool_calls_are_nothing() -> None:
    assert stream(chunk({"content": "a", "tool_calls": []}), chunk({"tool_calls": None})) == ["a"]


def test_a_fragment_without_function_carries_no_name_or_arguments() -> None:
    assert stream(chunk({"tool_calls": [{"index": 1, "id": "x"}]})) == [ToolCallDelta(1, "x")]


def test_legacy_function_call_delta_is_one_call_at_index_zero() -> None:
    items = stream(
        chunk({"function_call": {"name": "f", "arguments": ""}}),
        chunk({"function_call": {"arguments": '{"a":1}'}}),
        chunk({}, "function_call"),
    )
    assert items == [
        ToolCallDelta(0, None, "f", ""),
        ToolCallDelta(0, None, None, '{"a":1}'),
        FinishReason("function_call"),
    ]


@pytest.mark.parametrize(
    ("tool_calls", "reason"),
    [
        ({"index": 0}, "delta.tool_calls is not a list"),
        (["call"], "a tool call is not an object"),
        ([{"index": -1}], "tool call index is not a non-negative integer"),
        ([{"index": True}], "tool call index is not a non-negative integer"),
        ([{"index": "0"}], "tool call index is not a non-negative integer"),
        ([{"index": 0, "function": "f"}], "tool call function is not an object"),
        ([{"index": 0, "function": {"name": 7}}], "tool call name is not a string"),
        ([{"index": 0, "id": 7}], "tool call id is not a string"),
        ([{"index": 0, "function": {"arguments": 7}}], "neither JSON text nor a JSON value"),
    ],
)
def test_malformed_tool_call_fragments_are_protocol_errors(tool_calls: Any, reason: str) -> None:
    assert reason in str(stream_error(chunk({"tool_calls": tool_calls})))


def test_malformed_legacy_function_call_is_a_protocol_error() -> None:
    assert "function_call is not an object" in str(stream_error(chunk({"function_call": "f"})))


# -- errors and malformed chunks ----------------------------------------------------------


def test_an_error_object_inside_a_200_stream_raises_after_the_text_before_it() -> None:
    error = {"message": "The server had an error", "type": "server_error", "code": 500}
    items: list[StreamItem] = []
    payloads = iter([chunk({"content": "a"}), json.dumps({"error": error}).encode()])

    def consume() -> None:
        items.extend(parse_chat_stream(payloads, "p"))  # keeps what came before the raise

    with pytest.raises(UpstreamProtocolError) as caught:
        consume()
    assert items == ["a"]
    assert caught.value.provider == "p"
    assert caught.value.status == 500
    assert caught.value.retryable
    assert "error in stream: The server had an error" in str(caught.value)


@pytest.mark.parametrize(
    ("error", "status", "retryable", "kind"),
    [
        ({"message": "m", "type": "server_error"}, None, True, None),
        ({"message": "m", "code": 503}, 503, True, FailureKind.OVERLOADED),
        ({"message": "m", "code": "503"}, 503, True, FailureKind.OVERLOADED),
        ({"message": "m", "code": "rate_limit_exceeded"}, None, False, FailureKind.RATE_LIMITED),
        ({"message": "m", "type": "rate_limit_exceeded"}, None, True, FailureKind.RATE_LIMITED),
        ({"message": "m", "code": "context_length_exceeded"}, None, False, "context_length"),
        ({"message": "m", "code": 400, "type": "invalid_request_error"}, 400, False, None),
        ({"message": "m", "type": ["weird"], "code": {"x": 1}}, None, False, None),
        ({"code": True}, None, False, None),
        ("plain text error", None, False, None),
        (["a", "list"], None, False, None),
    ],
)
def test_error_objects_map_status_retryable_and_kind(
    error: Any, status: int | None, retryable: bool, kind: Any
) -> None:
    mapped = error_from_object(error, "p")
    assert isinstance(mapped, UpstreamProtocolError)
    assert (mapped.status, mapped.retryable, mapped.kind) == (status, retryable, kind)


def test_an_error_message_is_one_short_line() -> None:
    mapped = error_from_object({"message": "line one\nline two\t" + "x" * 1000}, "p")
    assert "\n" not in mapped.detail
    assert len(mapped.detail) < 260
    assert mapped.detail.startswith("error in stream: line one line two x")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "a malformed chunk (JSONDecodeError)"),
        (b'{"choices": [{"delta": {"content": "\xff"}}]}', "invalid UTF-8"),
        (b"[1, 2]", "a malformed chunk (AttributeError)"),
        (b"null", "a malformed chunk (AttributeError)"),
        (b'"text"', "a malformed chunk (AttributeError)"),
        (b'{"choices": {"0": {}}}', "a malformed chunk (KeyError)"),
        (b'{"choices": [null]}', "a malformed chunk (AttributeError)"),
        (b'{"choices": [{"delta": "hi"}]}', "a malformed chunk (AttributeError)"),
        (b'{"choices": [{"delta": {"content": 5}}]}', "delta.content is not a string"),
        (b'{"choices": [{"delta": {"content": ["a"]}}]}', "delta.content is not a string"),
        (b"[" * 100_000, "a malformed chunk"),
        (b'{"a": 1} trailing', "a malformed chunk (JSONDecodeError)"),
    ],
)
def test_malformed_chunks_are_protocol_errors_naming_the_problem(
    payload: bytes, reason: str
) -> None:
    error = stream_error(payload)
    assert reason in str(error)
    assert error.provider == "p"


def test_json_with_surrounding_whitespace_still_parses() -> None:
    assert stream(b"  " + chunk({"content": "a"}) + b"\n ") == ["a"]


def test_a_protocol_error_never_quotes_the_chunk() -> None:
    error = stream_error(b'{"choices": [{"delta": {"content": 5, "secret": "sk-abc"}}]}')
    assert "sk-abc" not in str(error)


# -- whole completions --------------------------------------------------------------------


def test_a_completion_yields_every_item_in_order() -> None:
    message = {
        "role": "assistant",
        "content": "Answer",
        "reasoning_content": "Thinking",
        "refusal": None,
        "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": {"y": 2}}},
        ],
    }
    usage = {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    assert complete(message, finish="tool_calls", usage=usage) == [
        Reasoning("Thinking"),
        "Answer",
        ToolCallDelta(0, "a", "f", '{"x":1}'),
        ToolCallDelta(1, "b", "g", '{"y":2}'),
        FinishReason("tool_calls"),
        Usage(3, 4, 7, cached_tokens=2, reasoning_tokens=1),
    ]


def test_a_completion_with_a_refusal_and_null_content() -> None:
    message = {"role": "assistant", "content": None, "refusal": "No."}
    assert complete(message, finish="stop") == [Refusal("No."), FinishReason("stop")]


def test_a_completion_with_reasoning_field_reasoning() -> None:
    assert complete({"content": "a", "reasoning": "r"}) == [Reasoning("r"), "a"]


def test_a_completion_with_markers_false_is_text_only() -> None:
    message = {"content": "a", "reasoning_content": "r", "tool_calls": "not even checked"}
    assert complete(message, markers=False, finish="stop") == ["a"]


def test_a_legacy_function_call_message_is_one_call() -> None:
    message = {"content": None, "function_call": {"name": "f", "arguments": "{}"}}
    assert complete(message) == [ToolCallDelta(0, None, "f", "{}")]


def test_a_200_body_holding_an_error_object_raises() -> None:
    body = {"error": {"message": "overloaded", "type": "overloaded_error", "code": 529}}
    with pytest.raises(UpstreamProtocolError) as caught:
        list(parse_chat_completion(body, "p"))
    assert caught.value.retryable
    assert caught.value.kind is FailureKind.OVERLOADED


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "the completion is not a JSON object"),
        ({}, "a malformed completion (KeyError)"),
        ({"choices": []}, "the completion has no choices"),
        ({"choices": {"a": 1}}, "the completion has no choices"),
        ({"choices": [{}]}, "a malformed completion (KeyError)"),
        ({"choices": [{"message": "hi"}]}, "choices[0].message is not an object"),
        ({"choices": [{"message": {"content": 5}}]}, "message.content is not a string"),
        ({"choices": [{"message": {"refusal": 5}}]}, "message.refusal is not a string"),
        ({"choices": [{"message": {"tool_calls": {"a": 1}}}]}, "message.tool_calls is not a list"),
        (
            {"choices": [{"message": {"tool_calls": [{"id": "a", "function": {}}]}}]},
            "a tool call has no function name",
        ),
        ({"choices": [{"message": {"function_call": {"a": 1}}}]}, "function_call has no name"),
        ({"choices": [{"message": {}, "finish_reason": 3}]}, "finish_reason is not a string"),
        ({"choices": [{"message": {}}], "usage": "lots"}, "usage is not an object"),
    ],
)
def test_malformed_completions_are_protocol_errors(body: Any, reason: str) -> None:
    with pytest.raises(UpstreamProtocolError) as caught:
        list(parse_chat_completion(body, "p"))
    assert reason in str(caught.value)


# -- anything parses into items or raises UpstreamProtocolError ---------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=4)
FIELDS = (
    "choices",
    "delta",
    "content",
    "role",
    "reasoning_content",
    "reasoning",
    "refusal",
    "tool_calls",
    "index",
    "id",
    "type",
    "function",
    "name",
    "arguments",
    "function_call",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "completion_tokens_details",
    "reasoning_tokens",
    "error",
    "message",
    "code",
    "x_groq",
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def chunk_like(draw: st.DrawFn) -> Any:
    """Values shaped roughly like chunks, so the parser's deeper paths are reached."""
    call = st.fixed_dictionaries(
        {},
        optional={
            "index": json_values,
            "id": json_values,
            "function": st.fixed_dictionaries(
                {}, optional={"name": json_values, "arguments": json_values}
            )
            | json_values,
        },
    )
    delta = st.fixed_dictionaries(
        {},
        optional={
            "role": json_values,
            "content": json_values,
            "reasoning_content": json_values,
            "reasoning": json_values,
            "refusal": json_values,
            "tool_calls": st.lists(call | json_values, max_size=3) | json_values,
            "function_call": json_values,
        },
    )
    choice = st.fixed_dictionaries(
        {}, optional={"delta": delta | json_values, "finish_reason": json_values}
    )
    top = st.fixed_dictionaries(
        {},
        optional={
            "choices": st.lists(choice | json_values, max_size=2) | json_values,
            "usage": json_values,
            "error": json_values,
            "x_groq": json_values,
        },
    )
    return draw(top | json_values)


def _check_items(items: Iterable[Any]) -> None:
    for item in items:
        assert type(item) is str or isinstance(item, ITEM_TYPES)


@given(st.lists(chunk_like(), min_size=1, max_size=4), st.booleans())
@settings(max_examples=200, deadline=None)
def test_any_chunk_shape_parses_or_raises_a_protocol_error(
    chunks: list[Any], markers: bool
) -> None:
    payloads = [json.dumps(value).encode() for value in chunks]
    # The one error allowed; anything else fails the test.
    with contextlib.suppress(UpstreamProtocolError):
        _check_items(parse_chat_stream(iter(payloads), "p", markers=markers))


@given(st.binary(max_size=40))
@settings(max_examples=200, deadline=None)
def test_any_bytes_parse_or_raise_a_protocol_error(payload: bytes) -> None:
    # The one error allowed; anything else fails the test.
    with contextlib.suppress(UpstreamProtocolError):
        _check_items(parse_chat_stream(iter([payload]), "p"))


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "choices": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "message": st.dictionaries(
                            st.sampled_from(FIELDS), json_values | st.lists(json_values)
                        )
                        | json_values,
                        "finish_reason": json_values,
                    },
                ),
                max_size=2,
            )
            | json_values,
            "usage": json_values,
            "error": json_values,
        },
    )
    | json_values,
    st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_any_completion_shape_parses_or_raises_a_protocol_error(body: Any, markers: bool) -> None:
    # The one error allowed; anything else fails the test.
    with contextlib.suppress(UpstreamProtocolError):
        _check_items(parse_chat_completion(body, "p", markers=markers))
