"""Rich completions end to end (SPEC §11): a real loopback upstream, the hub, every front end.

Two parallel tool calls with arguments split over many chunks, in every framing real servers
use, come out of ``hub.stream(...)``, ``hub.complete(...)``, ``hub.astream(...)`` and
``hub.acomplete(...)`` as the calls the upstream sent. Reasoning, refusals and usage details
arrive too; requests needing a capability only reach providers declaring it (and the plan
says why the others were left out); retry and fallback stop at the first item of any kind;
a broken stream keeps what it delivered, partial tool calls included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from provhub import (
    AbstractProvider,
    AllProvidersFailedError,
    Capability,
    Completion,
    FinishReason,
    Hub,
    NoProviderError,
    Reasoning,
    Refusal,
    StreamInterruptedError,
    ToolCall,
    ToolCallDelta,
    UpstreamProtocolError,
    Usage,
)
from provhub.testing import Behaviour, FakeUpstream, Fault, ToolCallQuirk
from provhub_providers import OpenAICompatible

MakeHub = Callable[..., Hub]
T = TypeVar("T")
Q = ToolCallQuirk

MESSAGES = [{"role": "user", "content": "Weather and time in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]
CALLS = (
    ToolCall("call_weather", "get_weather", '{"city": "Paris", "unit": "celsius", "days": [1, 2]}'),
    ToolCall("call_time", "get_time", '{"tz": "Europe/Paris", "note": "quote \\" and {brace}"}'),
)
TOOL_ANSWER = Behaviour(tokens=(), tool_calls=CALLS, argument_chunk=2)

# (framing, interleaved): OpenAI's own, and each quirk of the issue.
FRAMINGS = {
    "openai": (Q.NONE, False),
    "openai-interleaved": (Q.NONE, True),
    "no-index": (Q.NO_INDEX, False),
    "no-index-interleaved-ids-repeated": (Q.NO_INDEX | Q.REPEAT_ID_NAME, True),
    "index-zero-distinct-ids": (Q.INDEX_ZERO, False),
    "index-zero-no-ids": (Q.INDEX_ZERO | Q.NO_ID, False),
    "whole-call-per-chunk": (Q.WHOLE, False),
    "all-calls-in-one-chunk": (Q.ONE_CHUNK, False),
    "id-and-name-on-every-fragment": (Q.REPEAT_ID_NAME, False),
    "no-id": (Q.NO_ID, False),
    "no-id-no-index": (Q.NO_ID | Q.NO_INDEX, False),
    "no-id-no-index-whole": (Q.NO_ID | Q.NO_INDEX | Q.WHOLE, False),
    "arguments-as-object": (Q.ARGUMENTS_OBJECT, False),
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


class OnWorkers(OpenAICompatible):
    """The same provider, not asyncio-native: astream/acomplete run it on worker threads."""

    asyncio_native = False


def tools_hub(
    make_hub: MakeHub,
    *upstreams: FakeUpstream,
    provider: type[OpenAICompatible] = OpenAICompatible,
    **router: Any,
) -> Hub:
    hub = make_hub(**router)
    for name, upstream in zip("ab", upstreams, strict=False):
        hub.register(provider(name, upstream.base_url, ["gpt-4"], capabilities=~Capability.NONE))
    return hub


def same_calls(got: list[ToolCall], behaviour: Behaviour) -> None:
    """``got`` are the calls the upstream sent (ids compared when the upstream sent them)."""
    expected = behaviour.expected_tool_calls()
    assert [(c.name, c.arguments) for c in got] == [(c.name, c.arguments) for c in expected]
    if Q.NO_ID in behaviour.tool_call_quirks:
        assert len({c.id for c in got}) == len(got)
        assert all(c.id.startswith("call_") for c in got)
    else:
        assert got == expected
    assert [c.parsed() for c in got] == [c.parsed() for c in expected]


async def astream_items(hub: Hub, **params: Any) -> tuple[list[Any], Any]:
    astream = hub.astream("gpt-4", MESSAGES, **params)
    items = [item async for item in astream.items()]
    return items, astream


# -- tool calls: every framing, every front end ------------------------------------------------


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize(
    "mode",
    ["stream", "items", "complete", "astream", "acomplete", "astream-workers", "acomplete-workers"],
)
def test_parallel_tool_calls_come_out_as_sent(
    make_hub: MakeHub, upstream: FakeUpstream, framing: str, mode: str
) -> None:
    quirks, interleaved = FRAMINGS[framing]
    behaviour = Behaviour(
        tokens=(),
        tool_calls=CALLS,
        argument_chunk=2,
        tool_call_quirks=quirks,
        interleave_tool_calls=interleaved,
    )
    upstream.script(behaviour)
    workers = mode.endswith("-workers")
    mode = mode.removesuffix("-workers")
    hub = tools_hub(make_hub, upstream, provider=OnWorkers if workers else OpenAICompatible)
    if mode == "stream":
        with hub.stream("gpt-4", MESSAGES, tools=TOOLS) as stream:
            assert list(stream) == []  # no text: `for token in stream` stays text only
        calls, reason = stream.tool_calls, stream.finish_reason
    elif mode == "items":
        with hub.stream("gpt-4", MESSAGES, tools=TOOLS) as stream:
            items = list(stream.items())
        assert items[-2:] == [FinishReason("tool_calls"), behaviour.usage_for(MESSAGES)]
        calls, reason = stream.tool_calls, stream.finish_reason
    elif mode == "complete":
        result = hub.complete("gpt-4", MESSAGES, tools=TOOLS)
        calls, reason = list(result.tool_calls), result.finish_reason
        assert result.text == ""
    elif mode == "astream":
        _, astream = run(astream_items(hub, tools=TOOLS))
        calls, reason = astream.tool_calls, astream.finish_reason
    else:
        result = run(hub.acomplete("gpt-4", MESSAGES, tools=TOOLS))
        calls, reason = list(result.tool_calls), result.finish_reason
    same_calls(calls, behaviour)
    assert reason == "tool_calls"
    assert upstream.requests[0].json["tools"] == TOOLS
    assert upstream.requests[0].json["stream"] is (mode in ("stream", "items", "astream"))


@pytest.mark.parametrize("mode", ["stream", "complete"])
def test_the_legacy_function_call_comes_out_as_one_tool_call(
    make_hub: MakeHub, upstream: FakeUpstream, mode: str
) -> None:
    behaviour = Behaviour(
        tokens=(),
        tool_calls=CALLS[:1],
        tool_call_quirks=Q.LEGACY_FUNCTION_CALL,
        finish_reason="function_call",
    )
    upstream.script(behaviour)
    hub = tools_hub(make_hub, upstream)
    if mode == "stream":
        stream = hub.stream("gpt-4", MESSAGES, tools=TOOLS)
        list(stream)
        calls = stream.tool_calls
    else:
        calls = list(hub.complete("gpt-4", MESSAGES, tools=TOOLS).tool_calls)
    assert [(c.name, c.arguments) for c in calls] == [(CALLS[0].name, CALLS[0].arguments)]


def test_items_come_normalized_in_arrival_order(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    behaviour = Behaviour(
        tokens=("Let me check.",),
        tool_calls=CALLS,
        argument_chunk=5,
        tool_call_quirks=Q.NO_INDEX | Q.REPEAT_ID_NAME,
    )
    upstream.script(behaviour)
    with tools_hub(make_hub, upstream).stream("gpt-4", MESSAGES, tools=TOOLS) as stream:
        items = list(stream.items())
    assert items[0] == "Let me check."
    deltas = [item for item in items if isinstance(item, ToolCallDelta)]
    # Every fragment has its index; id and name come once per call, on its first fragment.
    assert all(d.index in (0, 1) for d in deltas)
    firsts = [d for d in deltas if d.id is not None]
    assert [(d.index, d.id, d.name) for d in firsts] == [
        (0, "call_weather", "get_weather"),
        (1, "call_time", "get_time"),
    ]
    assert [d.name for d in deltas if d.name is not None] == ["get_weather", "get_time"]
    for index, call in enumerate(CALLS):
        assert "".join(d.arguments for d in deltas if d.index == index) == call.arguments
    assert stream.text == "Let me check."


def test_a_completion_carries_the_same_items_as_the_stream(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = tools_hub(make_hub, upstream)
    behaviour = Behaviour(tokens=("a", "b"), tool_calls=CALLS, reasoning=("r",), usage=False)
    upstream.script(behaviour, behaviour)
    with hub.stream("gpt-4", MESSAGES, tools=TOOLS) as stream:
        streamed = list(stream.items())
    result = hub.complete("gpt-4", MESSAGES, tools=TOOLS)
    assert isinstance(result, Completion)
    assert result.tool_calls == tuple(stream.tool_calls)
    assert result.reasoning == stream.reasoning == "r"
    assert result.text == stream.text == "ab"
    assert [type(i) for i in result.items] == [
        Reasoning,
        str,
        ToolCallDelta,
        ToolCallDelta,
        FinishReason,
    ]
    assert streamed[0] == Reasoning("r")


def test_the_answer_to_a_tool_call_goes_back_upstream(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = tools_hub(make_hub, upstream)
    upstream.script(TOOL_ANSWER, Behaviour(tokens=("Sunny, 14:00.",)))
    first = hub.complete("gpt-4", MESSAGES, tools=TOOLS)
    history = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [c.as_dict() for c in first.tool_calls],
        },
        *(
            {"role": "tool", "tool_call_id": call.id, "content": f"result of {call.name}"}
            for call in first.tool_calls
        ),
    ]
    second = hub.complete("gpt-4", history, tools=TOOLS)
    assert second.text == "Sunny, 14:00."
    sent = upstream.requests[1].json["messages"]
    assert sent == history
    assert [m["tool_call_id"] for m in sent[2:]] == ["call_weather", "call_time"]


def test_stream_completed_counts_the_tool_calls(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = tools_hub(make_hub, upstream)
    events: list[dict[str, Any]] = []
    hub.subscribe(events.append)
    upstream.script(TOOL_ANSWER)
    list(hub.stream("gpt-4", MESSAGES, tools=TOOLS))
    completed = next(e for e in events if e["event"] == "stream.completed")
    assert completed["tool_calls"] == 2
    assert completed["finish_reason"] == "tool_calls"
    # Arguments are content: they never appear in events.
    assert "Paris" not in repr(events)


# -- reasoning, refusal, usage -----------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "both"])
@pytest.mark.parametrize("mode", ["stream", "complete", "astream"])
def test_reasoning_text_and_usage_details(
    make_hub: MakeHub, upstream: FakeUpstream, field: str, mode: str
) -> None:
    behaviour = Behaviour(
        tokens=("The answer", " is 42."),
        reasoning=("First, ", "think."),
        reasoning_field=field,
        cached_tokens=3,
        reasoning_tokens=2,
    )
    upstream.script(behaviour)
    hub = tools_hub(make_hub, upstream)
    if mode == "stream":
        with hub.stream("gpt-4", MESSAGES, reasoning_effort="high") as stream:
            tokens = list(stream)
        assert tokens == ["The answer", " is 42."]
        result: Any = stream
    elif mode == "complete":
        result = hub.complete("gpt-4", MESSAGES, reasoning_effort="high")
    else:
        _, result = run(astream_items(hub, reasoning_effort="high"))
    assert result.reasoning == "First, think."
    assert result.text == "The answer is 42."
    assert result.usage == behaviour.usage_for(MESSAGES)
    assert (result.usage.cached_tokens, result.usage.reasoning_tokens) == (3, 2)
    assert result.refusal is None


def test_reasoning_arrives_before_the_text_in_items(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    upstream.script(Behaviour(tokens=("x",), reasoning=("a", "b")))
    items = list(tools_hub(make_hub, upstream).stream("gpt-4", MESSAGES).items())
    assert items[:3] == [Reasoning("a"), Reasoning("b"), "x"]


@pytest.mark.parametrize("mode", ["stream", "complete"])
def test_a_refusal_is_delivered_apart_from_the_text(
    make_hub: MakeHub, upstream: FakeUpstream, mode: str
) -> None:
    upstream.script(Behaviour(tokens=(), refusal=("I can't ", "help with that.")))
    hub = tools_hub(make_hub, upstream)
    if mode == "stream":
        result: Any = hub.stream("gpt-4", MESSAGES)
        items = list(result.items())
        assert Refusal("I can't ") in items
    else:
        result = hub.complete("gpt-4", MESSAGES)
    assert result.refusal == "I can't help with that."
    assert result.text == ""
    assert result.finish_reason == "stop"


def test_usage_on_the_finish_chunk_is_delivered(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    behaviour = Behaviour(tokens=("a",), usage_in_final_chunk=True, cached_tokens=0)
    upstream.script(behaviour)
    stream = tools_hub(make_hub, upstream).stream("gpt-4", MESSAGES)
    list(stream)
    assert stream.usage == behaviour.usage_for(MESSAGES)


# -- capabilities and routing ------------------------------------------------------------------

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}


@pytest.mark.parametrize(
    ("capability", "request_kwargs", "messages"),
    [
        (Capability.TOOLS, {"tools": TOOLS}, MESSAGES),
        (Capability.VISION, {}, [{"role": "user", "content": [IMAGE]}]),
        (Capability.STRUCTURED_OUTPUT, {"response_format": SCHEMA}, MESSAGES),
        (Capability.REASONING, {"reasoning_effort": "low"}, MESSAGES),
    ],
)
def test_a_request_never_routes_to_a_provider_lacking_what_it_needs(
    make_hub: MakeHub,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    capability: Capability,
    request_kwargs: dict[str, Any],
    messages: list[Any],
) -> None:
    hub = make_hub({"plain": {"priority": 10}})
    hub.register(OpenAICompatible("plain", upstream.base_url, ["gpt-4"]))
    hub.register(
        OpenAICompatible("able", second_upstream.base_url, ["gpt-4"], capabilities=capability)
    )
    name = capability.names()[0]
    plan = hub.route("gpt-4", messages, **request_kwargs)
    assert [c.name for c in plan.candidates] == ["able"]
    assert plan.excluded == (("plain", f"lacks capabilities: {name}"),)
    assert capability in plan.required
    assert plan.as_dict()["excluded"] == [
        {"provider": "plain", "reason": f"lacks capabilities: {name}"}
    ]
    second_upstream.script(TOOL_ANSWER if capability is Capability.TOOLS else Behaviour())
    result = hub.complete("gpt-4", messages, **request_kwargs)
    assert result.provider == "able"
    assert upstream.requests == []
    # Without the capable one, the request fails before any I/O and says why.
    only_plain = make_hub()
    only_plain.register(OpenAICompatible("plain", upstream.base_url, ["gpt-4"]))
    with pytest.raises(NoProviderError) as caught:
        only_plain.stream("gpt-4", messages, **request_kwargs)
    assert caught.value.excluded == {"plain": f"lacks capabilities: {name}"}
    assert f"plain: lacks capabilities: {name}" in str(caught.value)
    assert upstream.requests == []


def test_the_same_request_without_tools_may_use_either(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = make_hub()
    hub.register(OpenAICompatible("plain", upstream.base_url, ["gpt-4"]))
    hub.register(
        OpenAICompatible("able", second_upstream.base_url, ["gpt-4"], capabilities=Capability.TOOLS)
    )
    assert [c.name for c in hub.route("gpt-4", MESSAGES).candidates] == ["plain", "able"]
    assert [p.name for p in hub.providers("gpt-4", Capability.TOOLS)] == ["able"]


def test_per_model_capabilities_from_config_tables(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = make_hub(
        {
            "ollama": {
                "type": "openai-compatible",
                "url": upstream.base_url,
                "models": ["llama-3", "llava", "qwen-coder"],
                "capabilities": ["tools"],
                "model_capabilities": {"llava": ["vision"], "qwen-coder": ["tools", "reasoning"]},
            }
        },
        load_plugins=True,
    )
    info = next(p for p in hub.providers() if p.name == "ollama")
    assert Capability.TOOLS in info.capabilities_for("llama-3")
    assert (
        info.capabilities_for("llava") & (Capability.TOOLS | Capability.VISION) == Capability.VISION
    )
    assert Capability.REASONING in info.capabilities_for("qwen-coder")
    # llava is declared without tools: a tools request for it says so, naming the model.
    plan = hub.route("llava", MESSAGES, tools=TOOLS)
    assert plan.candidates == ()
    assert plan.excluded == (("ollama", "lacks capabilities for model 'llava': tools"),)
    with pytest.raises(NoProviderError, match="lacks capabilities for model 'llava': tools"):
        hub.complete("llava", MESSAGES, tools=TOOLS)
    assert [p.name for p in hub.providers("llava", Capability.TOOLS)] == []
    assert [p.name for p in hub.providers("llama-3", Capability.TOOLS)] == ["ollama"]
    upstream.script(TOOL_ANSWER)
    assert hub.complete("llama-3", MESSAGES, tools=TOOLS).tool_calls == CALLS
    upstream.script(Behaviour(tokens=("a cat",)))
    vision = hub.complete("llava", [{"role": "user", "content": [IMAGE]}])
    assert vision.text == "a cat"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ({"capabilities": ["stream"]}, "capabilities may only name tools, vision"),
        (
            {"capabilities": "tools"},
            'capabilities must be a list of capability names, e.g. ["tools"]',
        ),
        ({"capabilities": ["telepathy"]}, "unknown capability 'telepathy'"),
        ({"model_capabilities": {"nope": ["tools"]}}, "model_capabilities names 'nope'"),
        ({"model_capabilities": ["tools"]}, "model_capabilities must be a table"),
        ({"model_capabilities": {"m": "tools"}}, "model_capabilities.m must be a list"),
    ],
)
def test_bad_capability_tables_are_config_errors(
    make_hub: MakeHub, upstream: FakeUpstream, table: dict[str, Any], reason: str
) -> None:
    from provhub import ConfigError

    providers = {
        "x": {"type": "openai-compatible", "url": upstream.base_url, "models": ["m"], **table}
    }
    with pytest.raises(ConfigError, match=reason.replace("[", r"\[").replace("(", r"\(")):
        make_hub(providers, load_plugins=True)


def test_the_config_file_declares_capabilities(tmp_path: Any, upstream: FakeUpstream) -> None:
    path = tmp_path / "provhub.toml"
    path.write_text(
        f"""
[providers.gw]
type = "openai-compatible"
url = "{upstream.base_url}"
models = ["small", "big"]
capabilities = ["tools", "structured_output"]

[providers.gw.model_capabilities]
small = []
""",
        encoding="utf-8",
    )
    with Hub(path) as hub:
        assert hub.route("big", MESSAGES, tools=TOOLS, response_format=SCHEMA).candidates
        assert hub.route("small", MESSAGES, tools=TOOLS).excluded == (
            ("gw", "lacks capabilities for model 'small': tools"),
        )


# -- retry and fallback end at the first item of any kind --------------------------------------


def test_a_failure_before_any_item_falls_back_and_delivers_the_calls(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = tools_hub(make_hub, upstream, second_upstream, retries=0)
    upstream.script(
        Behaviour(tokens=(), tool_calls=CALLS, fault=Fault.DROP_MID_STREAM, fault_after=0)
    )
    second_upstream.script(TOOL_ANSWER)
    with hub.stream("gpt-4", MESSAGES, tools=TOOLS) as stream:
        list(stream.items())
    assert stream.provider == "b"
    assert stream.tool_calls == list(CALLS)
    assert [a.ok for a in stream.attempts] == [False, True]


@pytest.mark.parametrize(
    ("behaviour", "after"),
    [
        (Behaviour(tokens=(), tool_calls=CALLS, argument_chunk=2), "tool-call fragments"),
        (Behaviour(tokens=("x",), reasoning=("r", "s", "t")), "reasoning"),
        (Behaviour(tokens=(), refusal=("no", "pe", "!")), "refusal"),
    ],
    ids=["tool_calls", "reasoning", "refusal"],
)
@pytest.mark.parametrize("fault", [Fault.DROP_MID_STREAM, Fault.ERROR_OBJECT])
def test_after_the_first_non_text_item_there_is_no_retry_or_fallback(
    make_hub: MakeHub,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    behaviour: Behaviour,
    after: str,
    fault: Fault,
) -> None:
    hub = tools_hub(make_hub, upstream, second_upstream, retries=2)
    broken = Behaviour(
        tokens=behaviour.tokens,
        tool_calls=behaviour.tool_calls,
        argument_chunk=behaviour.argument_chunk,
        reasoning=behaviour.reasoning,
        refusal=behaviour.refusal,
        fault=fault,
        fault_after=2,
    )
    upstream.script(broken)
    items: list[Any] = []
    stream = hub.stream("gpt-4", MESSAGES, tools=TOOLS)

    def consume() -> None:
        items.extend(stream.items())

    with pytest.raises(StreamInterruptedError) as caught:
        consume()
    error = caught.value
    assert len(upstream.requests) == 1, f"retried after {after}"
    assert second_upstream.requests == [], f"fell back after {after}"
    assert list(error.items) == items
    assert len(items) == 2
    if fault is Fault.ERROR_OBJECT:
        assert isinstance(error.cause, UpstreamProtocolError)
        assert error.cause.status == 500


def test_an_interrupted_stream_keeps_partial_tool_calls(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    # Fragments: header of call 0, then its arguments two characters at a time.
    upstream.script(
        Behaviour(
            tokens=("Checking",),
            tool_calls=CALLS,
            argument_chunk=2,
            fault=Fault.DROP_MID_STREAM,
            fault_after=6,
        )
    )
    hub = tools_hub(make_hub, upstream)
    stream = hub.stream("gpt-4", MESSAGES, tools=TOOLS)
    with pytest.raises(StreamInterruptedError) as caught:
        list(stream)
    error = caught.value
    assert error.text == "Checking"
    assert error.items[0] == "Checking"
    partial = ToolCall("call_weather", "get_weather", CALLS[0].arguments[:8])
    assert error.tool_calls == [partial]
    assert stream.tool_calls == [partial]
    assert "1 tool call(s)" in str(error)
    with pytest.raises(UpstreamProtocolError, match="call_weather"):
        error.tool_calls[0].parsed()


def test_an_interrupted_async_stream_keeps_partial_tool_calls(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    upstream.script(
        Behaviour(
            tokens=(),
            tool_calls=CALLS,
            argument_chunk=3,
            fault=Fault.DROP_MID_STREAM,
            fault_after=3,
        )
    )
    hub = tools_hub(make_hub, upstream)

    async def consume() -> tuple[list[Any], StreamInterruptedError]:
        astream = hub.astream("gpt-4", MESSAGES, tools=TOOLS)
        got: list[Any] = []
        try:
            async for item in astream.items():
                got.append(item)
        except StreamInterruptedError as exc:
            return got, exc
        raise AssertionError("the stream did not break")

    items, error = run(consume())
    assert list(error.items) == items
    assert error.tool_calls == [ToolCall("call_weather", "get_weather", CALLS[0].arguments[:6])]


def test_an_error_object_in_a_200_stream_before_any_item_is_retried(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = tools_hub(make_hub, upstream, retries=1)
    upstream.script(
        Behaviour(tool_calls=CALLS, fault=Fault.ERROR_OBJECT, fault_after=0), TOOL_ANSWER
    )
    stream = hub.stream("gpt-4", MESSAGES, tools=TOOLS)
    list(stream)
    assert stream.tool_calls == list(CALLS)
    first = stream.attempts[0]
    assert (first.ok, first.error_type, first.status, first.retryable) == (
        False,
        "UpstreamProtocolError",
        500,
        True,
    )


def test_an_error_object_in_a_200_body_is_retried(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = tools_hub(make_hub, upstream, retries=1)
    upstream.script(Behaviour(fault=Fault.ERROR_OBJECT), TOOL_ANSWER)
    result = hub.complete("gpt-4", MESSAGES, tools=TOOLS)
    assert result.tool_calls == CALLS
    assert result.attempts[0].error_type == "UpstreamProtocolError"


def test_text_only_reading_commits_on_a_tool_fragment_too(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    # `for token in stream` never sees the fragment, but stream.tool_calls does: the
    # answer has begun, so a retry would mix two answers.
    hub = tools_hub(make_hub, upstream, second_upstream)
    upstream.script(
        Behaviour(tokens=(), tool_calls=CALLS, fault=Fault.DROP_MID_STREAM, fault_after=1)
    )
    stream = hub.stream("gpt-4", MESSAGES, tools=TOOLS)
    with pytest.raises(StreamInterruptedError):
        list(stream)
    assert second_upstream.requests == []
    assert stream.tool_calls == [ToolCall("call_weather", "get_weather", "")]


# -- a plugin provider yielding items ----------------------------------------------------------


class Scripted(AbstractProvider):
    """A provider without HTTP that yields the items it is given (quirky framings too)."""

    supports_stream = True
    supports_tools = True
    models = ("m",)

    def __init__(self, name: str, items: list[Any]) -> None:
        self.name = name
        self.items = items

    def create_completion(  # type: ignore[override]
        self, model: str, messages: Any, stream: bool, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self.items


def test_a_plugin_provider_yields_items_and_the_hub_assembles_them(make_hub: MakeHub) -> None:
    hub = make_hub()
    hub.register(
        Scripted(
            "scripted",
            [
                Reasoning("plan"),
                "Calling.",
                ToolCallDelta(None, None, "f", '{"a":'),
                ToolCallDelta(None, None, None, "1}"),
                ToolCallDelta(None, None, "f", '{"a":2}'),
                FinishReason("tool_calls"),
                Usage(1, 2, 3, reasoning_tokens=1),
            ],
        )
    )
    tools = [{"type": "function", "function": {"name": "f"}}]
    result = hub.complete("m", MESSAGES, tools=tools)
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("f", '{"a":1}'),
        ("f", '{"a":2}'),
    ]
    assert result.reasoning == "plan"
    assert result.text == "Calling."
    assert result.usage == Usage(1, 2, 3, reasoning_tokens=1)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (ToolCallDelta("0", None, "f", ""), "ToolCallDelta.index must be None or an int >= 0"),  # type: ignore[arg-type]
        (ToolCallDelta(-1, None, "f", ""), "ToolCallDelta.index must be None or an int >= 0"),
        (ToolCallDelta(0, 5, "f", ""), "ToolCallDelta.id and .name must be None or a str"),  # type: ignore[arg-type]
        (ToolCallDelta(0, None, "f", None), "ToolCallDelta.arguments must be a str"),  # type: ignore[arg-type]
        (Reasoning(b"x"), "Reasoning.text must be a str"),  # type: ignore[arg-type]
        (Refusal(None), "Refusal.text must be a str"),  # type: ignore[arg-type]
        (FinishReason(1), "FinishReason.reason must be a str"),  # type: ignore[arg-type]
        ({"tool_calls": []}, "create_completion yielded dict"),
    ],
)
def test_malformed_items_from_a_provider_fail_that_attempt_clearly(
    make_hub: MakeHub, item: Any, reason: str
) -> None:
    hub = make_hub(retries=0)
    hub.register(Scripted("bad", [item]))
    with pytest.raises(AllProvidersFailedError) as caught:
        hub.complete("m", MESSAGES)
    assert reason in caught.value.attempts[0].error
