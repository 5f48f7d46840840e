"""The OpenAI wire format, server direction (``provhub._openai`` encoders used by the gateway).

Every encoded chunk must be what OpenAI sends: parsed back by provhub's own parser (the
client direction) it yields the same items.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from provhub import Completion, FinishReason, Reasoning, Refusal, ToolCallDelta, Usage
from provhub._openai import (
    DONE,
    ChunkEncoder,
    completion_body,
    error_body,
    error_event,
    parse_chat_completion,
    parse_chat_stream,
    usage_object,
)
from provhub._toolcalls import ToolCall


def _data(event: bytes) -> Any:
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert event.count(b"\n\n") == 1
    return json.loads(event[len(b"data: ") : -2])


@given(st.text())
def test_text_chunks_carry_any_text_exactly(text: str) -> None:
    encoder = ChunkEncoder("chatcmpl-1", 7, "m\u00e9", include_usage=False)
    chunk = _data(encoder.text(text))
    assert chunk["choices"][0]["delta"] == {"content": text}
    assert chunk["model"] == "m\u00e9"
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"][0]["finish_reason"] is None
    assert "usage" not in chunk


@given(st.lists(st.text(min_size=1), max_size=20))
def test_encoded_stream_parses_back_to_the_same_items(texts: list[str]) -> None:
    encoder = ChunkEncoder("chatcmpl-2", 1, "m", include_usage=True)
    items: list[Any] = [
        *texts,
        ToolCallDelta(0, "call_1", "f", '{"a":'),
        ToolCallDelta(0, None, None, " 1}"),
        Reasoning("thinking"),
        Refusal("no"),
    ]
    events = [encoder.role(), *(encoder.item(i) for i in items), encoder.finish("tool_calls")]
    events.append(encoder.usage(Usage(3, 4, 7, cached_tokens=1, reasoning_tokens=2)))
    payloads = [e[len(b"data: ") : -2] for e in events]
    parsed = list(parse_chat_stream(iter(payloads), "fake"))
    assert [p for p in parsed if isinstance(p, str)] == texts
    assert ToolCallDelta(0, "call_1", "f", '{"a":') in parsed
    assert Reasoning("thinking") in parsed
    assert Refusal("no") in parsed
    assert FinishReason("tool_calls") in parsed
    usage = next(p for p in parsed if isinstance(p, Usage))
    assert (usage.prompt_tokens, usage.cached_tokens, usage.reasoning_tokens) == (3, 1, 2)


def test_usage_null_on_every_chunk_when_usage_is_requested() -> None:
    encoder = ChunkEncoder("chatcmpl-3", 1, "m", include_usage=True)
    for event in (encoder.role(), encoder.text("x"), encoder.finish(None)):
        assert _data(event)["usage"] is None
    final = _data(encoder.usage(Usage(1, 2, 3)))
    assert final["choices"] == []
    assert final["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert ChunkEncoder("c", 1, "m", include_usage=False).usage(Usage(1, 2, 3)) == b""


def test_tool_call_fragments_name_id_and_type_only_on_the_first() -> None:
    encoder = ChunkEncoder("c", 1, "m", include_usage=False)
    first = _data(encoder.item(ToolCallDelta(2, "call_x", "lookup", "")))
    later = _data(encoder.item(ToolCallDelta(2, None, None, '{"q": 1}')))
    assert first["choices"][0]["delta"]["tool_calls"] == [
        {
            "index": 2,
            "id": "call_x",
            "type": "function",
            "function": {"arguments": "", "name": "lookup"},
        }
    ]
    assert later["choices"][0]["delta"]["tool_calls"] == [
        {"index": 2, "function": {"arguments": '{"q": 1}'}}
    ]


def test_markers_encode_to_nothing_and_the_stream_ends_with_done() -> None:
    encoder = ChunkEncoder("c", 1, "m", include_usage=False)
    assert encoder.item(FinishReason("stop")) == b""
    assert encoder.item(Usage(1, 1, 2)) == b""
    assert _data(encoder.finish(None))["choices"][0]["finish_reason"] == "stop"
    assert DONE == b"data: [DONE]\n\n"


def _completion(**fields: Any) -> Completion:
    base: dict[str, Any] = {
        "text": "hi",
        "provider": "p",
        "model": "m",
        "request_id": "r",
        "finish_reason": "stop",
        "usage": Usage(1, 2, 3),
        "attempts": (),
    }
    return Completion(**{**base, **fields})


def test_completion_body_parses_back_with_tool_calls_reasoning_and_refusal() -> None:
    calls = (ToolCall("call_1", "f", '{"x": 1}'),)
    body = completion_body(
        "chatcmpl-9",
        5,
        "m",
        _completion(text="", tool_calls=calls, reasoning="because", finish_reason=None),
    )
    data = json.loads(body)
    message = data["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    ]
    assert message["reasoning_content"] == "because"
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    items = list(parse_chat_completion(data, "fake"))
    assert any(isinstance(i, ToolCallDelta) and i.name == "f" for i in items)
    assert Reasoning("because") in items


def test_completion_body_of_a_plain_answer() -> None:
    data = json.loads(completion_body("chatcmpl-1", 5, "m", _completion(refusal=None)))
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "hi", "refusal": None}
    assert data["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_usage_object_leaves_out_unknown_counts_and_adds_details() -> None:
    assert usage_object(None) is None
    assert usage_object(Usage(prompt_tokens=4)) == {"prompt_tokens": 4}
    assert usage_object(Usage(2, 3)) == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
    }
    detailed = usage_object(Usage(2, 3, 5, cached_tokens=1, reasoning_tokens=2, cost=0.5))
    assert detailed is not None
    assert detailed["prompt_tokens_details"] == {"cached_tokens": 1}
    assert detailed["completion_tokens_details"] == {"reasoning_tokens": 2}
    assert detailed["cost"] == 0.5


@given(st.text(), st.sampled_from(["invalid_request_error", "rate_limit_error"]))
def test_error_objects_have_the_four_openai_fields(message: str, kind: str) -> None:
    error = json.loads(error_body(message, kind, "some_code", None))
    assert error == {
        "error": {"message": message, "type": kind, "param": None, "code": "some_code"}
    }
    assert _data(error_event(message, kind)) == {
        "error": {"message": message, "type": kind, "param": None, "code": None}
    }
