"""``provhub serve`` end to end (SPEC §13): a real subprocess in front of loopback upstreams.

Driven by the official ``openai`` SDK (sync and async, streamed and not) and by raw HTTP
(``requests`` and a raw socket for what no well-behaved client sends).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from tests.gateway_support import FAST_ROUTER, Gateway, metric_value, provider_tables

from provhub.testing import Behaviour, FakeUpstream, Fault

openai = pytest.importorskip("openai")

HI = [{"role": "user", "content": "Say hello"}]
HELLO = Behaviour(tokens=("Hel", "lo", " there"))


class Upstreams:
    """The fakes behind the shared gateway, one per scenario so breakers do not leak."""

    def __init__(self) -> None:
        self.a = FakeUpstream(default=HELLO)
        self.b = FakeUpstream(default=Behaviour(tokens=("from", " b")))
        self.limited = FakeUpstream()
        self.broken = FakeUpstream(default=Behaviour(status=500))
        self.slow = FakeUpstream(default=Behaviour(chunks=200, chunk_delay=0.05))
        self.tools = FakeUpstream()

    def all(self) -> list[FakeUpstream]:
        return [self.a, self.b, self.limited, self.broken, self.slow, self.tools]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    fakes = Upstreams()
    for fake in fakes.all():
        fake.start()
    try:
        yield fakes
    finally:
        for fake in fakes.all():
            fake.stop()


@pytest.fixture(scope="module")
def gateway(upstreams: Upstreams) -> Iterator[Gateway]:
    config = "\n".join(
        [
            FAST_ROUTER,
            provider_tables({"a": upstreams.a, "b": upstreams.b}),
            provider_tables({"limited": upstreams.limited}, models=["rl-model"]),
            provider_tables({"broken": upstreams.broken}, models=["broken-model"]),
            provider_tables({"slow": upstreams.slow}, models=["slow-model"]),
            provider_tables(
                {"tooly": upstreams.tools},
                models=["tool-model"],
                capabilities=["tools", "reasoning"],
            ),
        ]
    )
    with Gateway(config) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(upstreams: Upstreams) -> None:
    for fake in upstreams.all():
        fake.reset()


@pytest.fixture
def client(gateway: Gateway) -> Iterator[Any]:
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as sdk:
        yield sdk


def post(gateway: Gateway, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(gateway.base_url + "/chat/completions", json=body, timeout=10, **kwargs)


def sse_events(response: requests.Response) -> list[Any]:
    """The data of every SSE event, JSON-decoded ("[DONE]" kept as the string)."""
    events = []
    for line in response.text.split("\n\n"):
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# -- the openai SDK, unchanged ------------------------------------------------------------


def test_sdk_sync_completion_returns_the_upstream_answer_with_usage(client: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4", messages=HI)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4"
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert raw.headers["x-provhub-provider"] == "a"
    assert raw.headers["x-request-id"] == completion.id.removeprefix("chatcmpl-")


def test_sdk_sync_stream_delivers_every_token_then_usage(client: Any, upstreams: Upstreams) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there"
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1
    # The upstream was asked to stream.
    assert upstreams.a.requests[0].json["stream"] is True


def test_sdk_stream_without_include_usage_has_no_usage_chunk(client: Any) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4", messages=HI, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_sdk_async_stream_and_completion(gateway: Gateway) -> None:
    async def main() -> tuple[str, str]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key="unused", max_retries=0
        ) as sdk:
            stream = await sdk.chat.completions.create(model="gpt-4", messages=HI, stream=True)
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            whole = await sdk.chat.completions.create(model="gpt-4", messages=HI)
            return "".join(parts), whole.choices[0].message.content or ""

    streamed, whole = asyncio.run(main())
    assert streamed == whole == "Hello there"


def test_sdk_lists_the_served_models(client: Any) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4", "rl-model", "slow-model"} <= ids


def test_params_pass_through_to_the_upstream(client: Any, upstreams: Upstreams) -> None:
    client.chat.completions.create(
        model="gpt-4", messages=HI, temperature=0.25, max_tokens=7, extra_body={"seed": 3}
    )
    sent = upstreams.a.requests[0].json
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.25, 7, 3)


# -- tool calls, reasoning and refusals pass through ----------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    payload = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "tool-model"}
    return b"data: " + json.dumps({**payload, "choices": [choice]}).encode() + b"\n\n"


TOOL_STREAM = b"".join(
    [
        _chunk({"role": "assistant", "content": None}),
        _chunk({"reasoning_content": "The user wants weather."}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    }
                ]
            }
        ),
        _chunk({}, "tool_calls"),
        b'data: {"id":"up-1","object":"chat.completion.chunk","created":1,"model":"tool-model",'
        b'"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,'
        b'"completion_tokens_details":{"reasoning_tokens":5}}}\n\n',
        b"data: [DONE]\n\n",
    ]
)
TOOL_BODY = json.dumps(
    {
        "id": "up-2",
        "object": "chat.completion",
        "created": 1,
        "model": "tool-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }
).encode()


def test_sdk_stream_receives_tool_calls_reasoning_and_usage(
    client: Any, upstreams: Upstreams
) -> None:
    upstreams.tools.script(Behaviour(body=TOOL_STREAM, content_type="text/event-stream"))
    chunks = list(
        client.chat.completions.create(
            model="tool-model",
            messages=[{"role": "user", "content": "Weather in Paris and Rome?"}],
            tools=[WEATHER_TOOL],
            tool_choice="auto",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    calls: dict[int, dict[str, str]] = {}
    reasoning = ""
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += (call.function.name if call.function else None) or ""
            entry["arguments"] += (call.function.arguments if call.function else None) or ""
    assert calls == {
        0: {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "call_2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
    }
    assert reasoning == "The user wants weather."
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["tool_calls"]
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.total_tokens == 21
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 5
    # The tools went to the upstream as the client sent them.
    sent = upstreams.tools.requests[0].json
    assert sent["tools"] == [WEATHER_TOOL]
    assert sent["tool_choice"] == "auto"


def test_sdk_completion_receives_tool_calls_and_can_answer_them(
    client: Any, upstreams: Upstreams
) -> None:
    upstreams.tools.script(Behaviour(body=TOOL_BODY))
    question = [{"role": "user", "content": "Weather in Oslo?"}]
    completion = client.chat.completions.create(
        model="tool-model", messages=question, tools=[WEATHER_TOOL]
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    (call,) = message.tool_calls
    assert (call.id, call.function.name) == ("call_9", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    # The next turn answers the call: assistant tool_calls + a tool message pass through.
    upstreams.tools.script(Behaviour(tokens=("It is ", "sunny.")))
    answer = client.chat.completions.create(
        model="tool-model",
        messages=[
            *question,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": "call_9", "content": '{"sky": "clear"}'},
        ],
        tools=[WEATHER_TOOL],
    )
    assert answer.choices[0].message.content == "It is sunny."
    sent = upstreams.tools.requests[-1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_9"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_9", "content": '{"sky": "clear"}'}


def test_tools_for_a_model_without_tool_support_are_400(gateway: Gateway) -> None:
    response = post(gateway, {"model": "gpt-4", "messages": HI, "tools": [WEATHER_TOOL]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_capability"
    assert "tools" in error["message"]


def test_invalid_tool_definition_is_400_naming_the_param(gateway: Gateway) -> None:
    response = post(gateway, {"model": "tool-model", "messages": HI, "tools": [{"type": "x"}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("tools")


def test_misspelt_param_is_400_with_a_suggestion(gateway: Gateway) -> None:
    response = post(gateway, {"model": "gpt-4", "messages": HI, "tempreature": 0.5})
    assert response.status_code == 400
    assert "temperature" in response.json()["error"]["message"]


# -- routing: fallback, rate limits, breakers -----------------------------------------------


def test_fallback_before_the_first_token_gives_200_and_one_clean_stream(
    gateway: Gateway, upstreams: Upstreams
) -> None:
    upstreams.a.script(Behaviour(status=500), Behaviour(status=500))
    response = post(gateway, {"model": "gpt-4", "messages": HI, "stream": True})
    assert response.status_code == 200
    assert response.headers["x-provhub-provider"] == "b"
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "from b"
    assert not any("error" in e for e in events[:-1])


def test_rate_limited_everywhere_is_429_with_retry_after(
    gateway: Gateway, client: Any, upstreams: Upstreams
) -> None:
    upstreams.limited.default = Behaviour(status=429, retry_after="7")
    try:
        response = post(gateway, {"model": "rl-model", "messages": HI})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "rate_limit_exceeded"
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="rl-model", messages=HI, stream=True)
    finally:
        upstreams.limited.default = Behaviour()


def test_every_provider_failing_is_502_naming_the_attempts(gateway: Gateway) -> None:
    response = post(gateway, {"model": "broken-model", "messages": HI})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "all_providers_failed"
    assert "HTTP 500" in error["message"]
    assert response.headers["x-provhub-provider"] == "broken"


def test_open_breaker_gives_503_and_shows_in_providers_and_metrics(gateway: Gateway) -> None:
    for _ in range(3):  # threshold 3 (FAST_ROUTER); each request is one attempt + one retry
        post(gateway, {"model": "broken-model", "messages": HI})
    response = post(gateway, {"model": "broken-model", "messages": HI, "stream": True})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_provider_available"
    assert "circuit open" in response.json()["error"]["message"]
    assert int(response.headers["retry-after"]) >= 1
    providers = requests.get(gateway.base_url + "/providers", timeout=5).json()["data"]
    broken = next(p for p in providers if p["name"] == "broken")
    assert broken["health"]["state"] == "open"
    text = gateway.metrics()
    assert metric_value(text, "provhub_breaker_state", provider="broken") == 2.0
    assert metric_value(text, "provhub_breaker_state", provider="a") == 0.0
    opened = metric_value(
        text, "provhub_breaker_transitions_total", provider="broken", state="open"
    )
    assert opened == 1.0


# -- errors in the OpenAI shape --------------------------------------------------------------


def test_unknown_model_is_404_with_suggestions(gateway: Gateway, client: Any) -> None:
    response = post(gateway, {"model": "gpt-44", "messages": HI})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error == {
        "message": error["message"],
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert "did you mean 'gpt-4'" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"messages": []}', "model", "'model' is required"),
        (b'{"model": "gpt-4"}', "messages", "'messages' is required"),
        (
            b'{"model": "gpt-4", "messages": [{"role": "bot", "content": "x"}]}',
            "messages[0]",
            "role",
        ),
        (b'{"model": "gpt-4", "messages": [], "stream": "yes"}', "stream", "true or false"),
        (b'{"model": "gpt-4", "messages": [], "n": 3}', "n", "'n': 1"),
        (b'{"model": "gpt-4", "messages": [], "provider": "a"}', "provider", "not accepted"),
        (b"\xff\xfe", None, "UTF-8"),
    ],
)
def test_bad_request_bodies_are_400_saying_what_is_wrong(
    gateway: Gateway, body: bytes, param: str | None, needle: str
) -> None:
    response = requests.post(
        gateway.base_url + "/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert response.headers["x-request-id"]


def test_unknown_route_and_wrong_method_are_json_errors(gateway: Gateway) -> None:
    missing = requests.get(gateway.url + "/v2/nothing", timeout=5)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = requests.get(gateway.base_url + "/chat/completions", timeout=5)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"


# -- after the first token: in-band errors ---------------------------------------------------


def test_failure_after_the_first_token_is_an_sse_error_event_then_the_end(
    gateway: Gateway, client: Any, upstreams: Upstreams
) -> None:
    # A success first: earlier failures of "a" must not add up to an open breaker here.
    assert post(gateway, {"model": "gpt-4", "messages": HI}).headers["x-provhub-provider"] == "a"
    upstreams.a.script(Behaviour(chunks=5, fault=Fault.DROP_MID_STREAM, fault_after=2))
    response = post(gateway, {"model": "gpt-4", "messages": HI, "stream": True})
    assert response.status_code == 200
    events = sse_events(response)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "stream_interrupted"
    delivered = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert delivered == "w0 w1 "
    # The SDK raises on it, after yielding what came before.
    post(gateway, {"model": "gpt-4", "messages": HI})
    upstreams.a.script(Behaviour(chunks=5, fault=Fault.DROP_MID_STREAM, fault_after=2))
    seen: list[Any] = []

    def consume() -> None:
        seen.extend(client.chat.completions.create(model="gpt-4", messages=HI, stream=True))

    with pytest.raises(openai.APIError, match="broke after"):
        consume()
    assert seen


# -- headers ---------------------------------------------------------------------------------


def test_client_request_id_is_echoed_and_unsafe_ones_replaced(gateway: Gateway) -> None:
    echoed = post(gateway, {"model": "gpt-4", "messages": HI}, headers={"x-request-id": "abc-1.2"})
    assert echoed.headers["x-request-id"] == "abc-1.2"
    streamed = post(
        gateway,
        {"model": "gpt-4", "messages": HI, "stream": True},
        headers={"x-request-id": "trace:42"},
    )
    assert streamed.headers["x-request-id"] == "trace:42"
    unsafe = post(gateway, {"model": "gpt-4", "messages": HI}, headers={"x-request-id": "a b<c>"})
    assert unsafe.headers["x-request-id"] != "a b<c>"
    assert len(unsafe.headers["x-request-id"]) == 16


# -- the client going away -------------------------------------------------------------------


def _raw_request(port: int, body: bytes, *, extra: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_closes_the_upstream_call(
    gateway: Gateway, upstreams: Upstreams, stream: bool
) -> None:
    if not stream:
        upstreams.slow.script(Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=10))
    body = json.dumps({"model": "slow-model", "messages": HI, "stream": stream}).encode()
    sock = _raw_request(gateway.port, body)
    try:
        if stream:
            assert b"200 OK" in sock.recv(4096)  # headers and the first chunks
        else:
            time.sleep(0.3)  # the upstream is holding the answer back
        assert upstreams.slow.open_connections >= 1
    finally:
        sock.close()
    started = time.monotonic()
    assert upstreams.slow.wait_for_disconnects(1, timeout=3.0)
    assert time.monotonic() - started < 1.5
    # The gateway recorded it as a cancelled request, not as a failure. The request's
    # record and the HTTP response's are written a few awaits apart: wait for both.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        text = gateway.metrics()
        cancelled = metric_value(
            text, "provhub_requests_total", model="slow-model", outcome="cancelled"
        )
        closed = metric_value(text, "provhub_http_responses_total", route="chat", status="499")
        if cancelled and closed:
            break
        time.sleep(0.05)
    assert cancelled is not None
    assert cancelled >= 1
    assert closed


def test_paced_tokens_are_forwarded_as_they_arrive(gateway: Gateway, upstreams: Upstreams) -> None:
    upstreams.slow.script(Behaviour(chunks=4, chunk_delay=0.3))
    started = time.monotonic()
    arrivals = []
    with post(gateway, {"model": "slow-model", "messages": HI, "stream": True}, stream=True) as r:
        for line in r.iter_lines():
            if line.startswith(b"data: {") and b'"content":"w' in line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    # Each token goes out when it arrives, not when the next one does.
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.15 < gap < 0.6 for gap in gaps), gaps


# -- raw HTTP: what no well-behaved client sends ---------------------------------------------


def test_malformed_http_gets_400_and_the_server_keeps_serving(gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x00\xa5garbage that is not http\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    assert post(gateway, {"model": "gpt-4", "messages": HI}).status_code == 200


def test_half_sent_body_then_disconnect_leaves_the_server_healthy(gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"mo'
        )
    assert post(gateway, {"model": "gpt-4", "messages": HI}).status_code == 200


def test_keep_alive_connection_serves_many_requests(gateway: Gateway) -> None:
    body = json.dumps({"model": "gpt-4", "messages": HI}).encode()
    with requests.Session() as session:
        for _ in range(20):
            reply = session.post(gateway.base_url + "/chat/completions", data=body, timeout=5)
            assert reply.json()["choices"][0]["message"]["content"] == "Hello there"


# -- the other endpoints ---------------------------------------------------------------------


def test_health_and_readiness(gateway: Gateway) -> None:
    assert requests.get(gateway.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(gateway.url + "/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_providers_lists_capabilities_and_health(gateway: Gateway) -> None:
    post(gateway, {"model": "gpt-4", "messages": HI})
    document = requests.get(gateway.base_url + "/providers", timeout=5).json()
    by_name = {p["name"]: p for p in document["data"]}
    assert {"a", "b", "limited", "broken", "slow", "Lockchat"} <= set(by_name)
    a = by_name["a"]
    assert "stream" in a["capabilities"]
    assert a["models"] == ["gpt-4"]
    assert a["health"]["state"] == "closed"
    assert a["recent"]["samples"] >= 1
    assert a["recent"]["p50_ms"] > 0


def test_metrics_count_requests_latency_and_tokens(gateway: Gateway) -> None:
    before = gateway.metrics()
    ok_before = metric_value(
        before, "provhub_requests_total", model="gpt-4", provider="a", outcome="ok"
    )
    post(gateway, {"model": "gpt-4", "messages": HI, "stream": True})
    post(gateway, {"model": "gpt-4", "messages": HI})
    text = gateway.metrics()
    ok = metric_value(text, "provhub_requests_total", model="gpt-4", provider="a", outcome="ok")
    assert ok == (ok_before or 0) + 2
    assert metric_value(text, "provhub_request_duration_seconds_count", model="gpt-4", provider="a")
    assert metric_value(
        text, "provhub_time_to_first_token_seconds_count", model="gpt-4", provider="a"
    )
    assert metric_value(
        text, "provhub_tokens_total", model="gpt-4", provider="a", kind="completion"
    )
    assert metric_value(text, "provhub_requests_in_flight") == 0.0
    assert metric_value(text, "provhub_http_responses_total", route="chat", status="200")


def test_metric_labels_stay_bounded_whatever_clients_send(gateway: Gateway) -> None:
    for index in range(30):
        post(gateway, {"model": f"random-{index}", "messages": HI})
        requests.get(gateway.url + f"/random/{index}", timeout=5)
    text = gateway.metrics()
    assert "random-" not in text
    assert "/random" not in text
    assert metric_value(text, "provhub_http_responses_total", route="chat", status="404")
    assert metric_value(text, "provhub_http_responses_total", route="other", status="404")


# -- keys, limits and the deadline: a stricter server ----------------------------------------

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def strict(upstreams: Upstreams) -> Iterator[Gateway]:
    config = "\n".join(
        [
            FAST_ROUTER,
            "[server]\napi_keys_env = 'GW_TEST_KEYS'\nmax_body_bytes = 2048\ndeadline = 0.8\n",
            provider_tables({"a": upstreams.a}),
            provider_tables({"slow": upstreams.slow}, models=["slow-model"]),
        ]
    )
    with Gateway(config, env={"GW_TEST_KEYS": f"other-key, {KEY}"}, args=["-v"]) as server:
        yield server


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"authorization": "Basic x"}],
)
def test_missing_or_wrong_key_is_401(strict: Gateway, headers: dict[str, str]) -> None:
    response = post(strict, {"model": "gpt-4", "messages": HI}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert requests.get(strict.base_url + "/models", headers=headers, timeout=5).status_code == 401


def test_accepted_keys_work_with_the_sdk_and_never_reach_the_log(strict: Gateway) -> None:
    for key in (KEY, "other-key"):
        with openai.OpenAI(base_url=strict.base_url, api_key=key, max_retries=0) as sdk:
            answer = sdk.chat.completions.create(model="gpt-4", messages=HI)
            assert answer.choices[0].message.content == "Hello there"
    with (
        openai.OpenAI(base_url=strict.base_url, api_key="sk-wrong", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError),
    ):
        sdk.chat.completions.create(model="gpt-4", messages=HI)
    log = strict.stderr()
    assert "1 API key" not in log  # two keys were configured
    assert "2 API key(s) from $GW_TEST_KEYS" in log
    assert KEY not in log
    assert "other-key" not in log
    assert "sk-wrong" not in log


def test_open_endpoints_need_no_key(strict: Gateway) -> None:
    assert requests.get(strict.url + "/healthz", timeout=5).status_code == 200
    assert requests.get(strict.url + "/metrics", timeout=5).status_code == 200
    assert requests.get(strict.url + "/", timeout=5).status_code == 200


def test_body_over_the_limit_is_413_before_it_is_read(strict: Gateway) -> None:
    big = {"model": "gpt-4", "messages": [{"role": "user", "content": "x" * 4000}]}
    response = post(strict, big, headers=auth())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert response.headers["connection"] == "close"
    # Declared larger than the limit: refused without sending the body at all.
    with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\nContent-Length: 100000000\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")


def test_chunked_body_over_the_limit_is_413(strict: Gateway) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"model": "gpt-4", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    response = requests.post(
        strict.base_url + "/chat/completions", data=body(), headers=auth(), timeout=5
    )
    assert response.status_code == 413


def test_deadline_before_the_first_token_is_504(strict: Gateway, upstreams: Upstreams) -> None:
    upstreams.slow.script(Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=5))
    started = time.monotonic()
    response = post(strict, {"model": "slow-model", "messages": HI, "stream": True}, headers=auth())
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert 0.7 < elapsed < 2.0
    assert upstreams.slow.wait_for_disconnects(1, timeout=3.0)


def test_deadline_after_the_first_token_ends_the_stream_in_band(
    strict: Gateway, upstreams: Upstreams
) -> None:
    # 200 chunks 50 ms apart: far longer than the 0.8 s deadline.
    started = time.monotonic()
    response = post(strict, {"model": "slow-model", "messages": HI, "stream": True}, headers=auth())
    assert time.monotonic() - started < 2.0
    assert response.status_code == 200
    events = sse_events(response)
    assert events[-1]["error"]["code"] in {"deadline_exceeded", "stream_interrupted"}
    assert "[DONE]" not in events


# -- refusing to start -----------------------------------------------------------------------


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "provhub", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PROVHUB_PLUGINS": "", **(env or {})},
    )


def test_without_keys_it_refuses_a_non_loopback_address(tmp_path: Any) -> None:
    config = tmp_path / "provhub.toml"
    config.write_text("", encoding="utf-8")
    result = _serve("--host", "0.0.0.0", "--config", str(config))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr
    assert "--allow-unauthenticated" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_keys_variable_is_refused(tmp_path: Any) -> None:
    config = tmp_path / "provhub.toml"
    config.write_text("[server]\napi_keys_env = 'GW_EMPTY_KEYS'\n", encoding="utf-8")
    result = _serve("--config", str(config), env={"GW_EMPTY_KEYS": " "})
    assert result.returncode == 2
    assert "GW_EMPTY_KEYS (named by api_keys_env) is unset or empty" in result.stderr


def test_missing_server_extra_says_how_to_install() -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; from provhub.cli import main; "
        "sys.exit(main(['serve']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "pip install 'provhub[server]'" in result.stderr
    assert "uvicorn" in result.stderr


def test_several_workers_serve_the_same_configuration(upstreams: Upstreams) -> None:
    config = "\n".join([FAST_ROUTER, provider_tables({"a": upstreams.a})])
    with Gateway(config, args=["--workers", "2"]) as server:
        answers = {
            post(server, {"model": "gpt-4", "messages": HI}).json()["choices"][0]["message"][
                "content"
            ]
            for _ in range(6)
        }
        assert answers == {"Hello there"}
        assert "2 worker(s)" in server.stderr()
