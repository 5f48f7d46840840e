"""The fake upstream speaks OpenAI's wire format over real sockets (provhub.testing.upstream).

Checked with raw sockets, where the bytes on the wire matter, and with plain ``requests``, where
what a pooled HTTP client sees matters. No mocks.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from provhub import ToolCall
from provhub.testing import (
    Behaviour,
    FakeUpstream,
    Fault,
    RecordedRequest,
    ToolCallQuirk,
    unused_port_url,
)

CHAT = "/v1/chat/completions"
STREAM = {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": "Say hi"}]}
PLAIN = {"model": "gpt-4", "messages": [{"role": "user", "content": "Say hi"}]}


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("provhub-fake-upstream")]
    assert leaked == []


# -- a raw HTTP/1.1 client, so the tests see exactly what is on the wire ---------------------


@dataclass
class Exchange:
    status: int
    headers: dict[str, str]
    body: bytes  # as sent, chunk framing included

    def chunks(self) -> tuple[list[bytes], bool]:
        """HTTP chunks of a chunked body, and whether the terminating 0-chunk arrived."""
        chunks: list[bytes] = []
        body, pos = self.body, 0
        # Index arithmetic, not slicing: a 20,000-chunk body would make slicing quadratic.
        while (eol := body.find(b"\r\n", pos)) >= 0:
            size = int(body[pos:eol], 16)
            start = eol + 2
            if size == 0:
                assert body[start:] == b"\r\n"
                return chunks, True
            if len(body) < start + size + 2:
                break
            assert body[start + size : start + size + 2] == b"\r\n"
            chunks.append(body[start : start + size])
            pos = start + size + 2
        return chunks, False

    def sse(self) -> bytes:
        chunks, terminated = self.chunks()
        assert terminated
        return b"".join(chunks)


def address(server: FakeUpstream) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def request_bytes(
    payload: Any = None,
    *,
    method: str = "POST",
    path: str = CHAT,
    body: bytes | None = None,
    headers: tuple[str, ...] = ("Connection: close",),
    version: str = "HTTP/1.1",
) -> bytes:
    if body is None:
        body = json.dumps(payload).encode() if payload is not None else b""
    lines = [f"{method} {path} {version}", "Host: fake", *headers]
    if "Transfer-Encoding" not in " ".join(headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def connect(server: FakeUpstream, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(address(server), timeout=timeout)


def read_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
    return bytes(data)


def read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    buf = bytearray(data)
    while marker not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}"
        buf += chunk
    return bytes(buf)


def parse(raw: bytes) -> Exchange:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:200]
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return Exchange(int(status), headers, body)


def exchange(server: FakeUpstream, payload: Any = None, **kwargs: Any) -> Exchange:
    with connect(server) as sock:
        sock.sendall(request_bytes(payload, **kwargs))
        return parse(read_to_eof(sock))


def data_lines(sse: bytes, eol: bytes = b"\n") -> list[bytes]:
    assert sse.endswith(eol + eol)
    events = sse[: -2 * len(eol)].split(eol + eol)
    out = []
    for event in events:
        for line in event.split(eol):
            assert line.startswith((b"data: ", b":")), line
            if line.startswith(b"data: "):
                out.append(line[len(b"data: ") :])
    return out


def contents(lines: list[bytes]) -> list[str]:
    out = []
    for line in lines:
        if line == b"[DONE]":
            continue
        chunk = json.loads(line)
        for choice in chunk.get("choices", []):
            if "content" in choice["delta"]:
                out.append(choice["delta"]["content"])
    return out


# -- streams ----------------------------------------------------------------------------------


def test_stream_is_chunked_sse_with_role_content_finish_usage_done_and_last_chunk(
    upstream: FakeUpstream,
) -> None:
    response = exchange(upstream, STREAM)

    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    chunks, terminated = response.chunks()
    assert terminated
    # One SSE event per HTTP chunk, as a real server flushes per token.
    assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in chunks)
    lines = [chunk[len(b"data: ") : -2] for chunk in chunks]
    assert lines[-1] == b"[DONE]"
    role, *tokens, finish, usage = (json.loads(line) for line in lines[:-1])
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    assert [t["choices"][0]["delta"] for t in tokens] == [
        {"content": "w0 "},
        {"content": "w1 "},
        {"content": "w2 "},
    ]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    for chunk in (role, *tokens, finish, usage):
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "gpt-4"
        assert chunk["id"].startswith("chatcmpl-")
        assert chunk["id"] == role["id"]
        assert isinstance(chunk["created"], int)


def test_stream_uses_explicit_tokens_and_finish_reason(upstream: FakeUpstream) -> None:
    behaviour = Behaviour(tokens=("Hel", "lo ", "wörld"), finish_reason="length")
    upstream.default = behaviour

    lines = data_lines(exchange(upstream, STREAM).sse())

    assert "".join(contents(lines)) == behaviour.text() == "Hello wörld"
    assert json.loads(lines[-3])["choices"][0]["finish_reason"] == "length"


def test_stream_can_omit_role_chunk_usage_and_done(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(tokens=("a", "b"), role_chunk=False, usage=False, done=False)

    lines = data_lines(exchange(upstream, STREAM).sse())

    assert [json.loads(line)["choices"][0]["delta"] for line in lines] == [
        {"content": "a"},
        {"content": "b"},
        {},
    ]


def test_crlf_mode_ends_every_sse_line_with_crlf(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(crlf=True)

    sse = exchange(upstream, STREAM).sse()

    assert b"\n" not in sse.replace(b"\r\n", b"")
    lines = data_lines(sse, eol=b"\r\n")
    assert contents(lines) == ["w0 ", "w1 ", "w2 "]
    assert lines[-1] == b"[DONE]"


def test_comments_put_a_keep_alive_line_before_every_event(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(comments=True)

    sse = exchange(upstream, STREAM).sse()

    events = sse[:-2].split(b"\n\n")
    assert events[0::2] == [b": keep-alive"] * 7
    assert all(event.startswith(b"data: ") for event in events[1::2])
    assert contents(data_lines(sse)) == ["w0 ", "w1 ", "w2 "]


def test_events_per_http_chunk_groups_events_into_fewer_chunks(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(events_per_http_chunk=3)

    chunks, terminated = exchange(upstream, STREAM).chunks()

    assert terminated
    # role + 3 tokens + finish + usage + [DONE] = 7 events -> chunks of 3, 3, 1.
    assert [chunk.count(b"data: ") for chunk in chunks] == [3, 3, 1]


def test_chunk_delay_spaces_http_chunks_apart(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(tokens=("a", "b"), usage=False, chunk_delay=0.05)

    started = time.monotonic()
    response = exchange(upstream, STREAM)

    # role, a, b, finish, [DONE]: four gaps between five chunks.
    assert time.monotonic() - started >= 0.2
    assert contents(data_lines(response.sse())) == ["a", "b"]


def test_generated_tokens_are_distinct_so_clients_never_see_repeats() -> None:
    behaviour = Behaviour(chunks=250)

    tokens = behaviour.answer_tokens()

    assert len(tokens) == len(set(tokens)) == 250
    assert behaviour.text() == "".join(tokens)


def test_a_20000_chunk_stream_is_served_far_faster_than_a_client_reads_it(
    upstream: FakeUpstream,
) -> None:
    upstream.default = Behaviour(chunks=20_000)
    exchange(upstream, STREAM)  # builds and caches the response

    started = time.monotonic()
    response = exchange(upstream, STREAM)
    elapsed = time.monotonic() - started

    chunks, terminated = response.chunks()
    assert terminated
    assert len(chunks) == 20_000 + 4
    # About 4 MB; a raw reader takes milliseconds. The bound is loose for slow CI machines.
    assert elapsed < 1.0


def test_requests_iter_lines_sees_the_answer_text(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(chunks=50)
    tokens = []

    with requests.post(upstream.base_url + "/chat/completions", json=STREAM, stream=True) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                delta = json.loads(line[6:])["choices"]
                if delta and "content" in delta[0]["delta"]:
                    tokens.append(delta[0]["delta"]["content"])

    assert "".join(tokens) == Behaviour(chunks=50).text()


# -- non-stream answers, errors, overrides ------------------------------------------------------


def test_non_stream_answer_is_chat_completion_json_with_content_length(
    upstream: FakeUpstream,
) -> None:
    response = exchange(upstream, PLAIN)

    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.body)
    assert "transfer-encoding" not in response.headers
    answer = json.loads(response.body)
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "gpt-4"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "w0 w1 w2 "},
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_non_stream_usage_can_be_left_out(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(usage=False)

    assert "usage" not in json.loads(exchange(upstream, PLAIN).body)


@pytest.mark.parametrize(
    ("status", "kind", "retry_after"),
    [
        (400, "invalid_request_error", None),
        (401, "authentication_error", None),
        (404, "not_found_error", None),
        (429, "rate_limit_error", "2"),
        (500, "server_error", None),
        (503, "server_error", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ],
)
@pytest.mark.parametrize("payload", [STREAM, PLAIN], ids=["stream", "plain"])
def test_error_status_answers_openai_error_json_with_retry_after(
    upstream: FakeUpstream,
    status: int,
    kind: str,
    retry_after: str | None,
    payload: dict[str, Any],
) -> None:
    upstream.default = Behaviour(status=status, retry_after=retry_after)

    response = exchange(upstream, payload)

    assert response.status == status
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.body)
    assert response.headers.get("retry-after") == retry_after
    error = json.loads(response.body)["error"]
    assert error["type"] == kind
    assert error["code"] == status
    assert isinstance(error["message"], str)


def test_body_and_content_type_overrides_are_sent_as_is(upstream: FakeUpstream) -> None:
    upstream.script(
        Behaviour(status=502, body=b"<html>bad gateway</html>", content_type="text/html"),
        Behaviour(body=b"data: {garbage\n\n"),
    )

    first = exchange(upstream, PLAIN)
    second = exchange(upstream, STREAM)

    assert (first.status, first.headers["content-type"], first.body) == (
        502,
        "text/html",
        b"<html>bad gateway</html>",
    )
    assert second.headers["content-type"] == "text/event-stream"
    assert second.headers["content-length"] == str(len(b"data: {garbage\n\n"))
    assert second.body == b"data: {garbage\n\n"


def test_requests_sees_retry_after_and_error_body(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(status=429, retry_after="7")

    response = requests.post(upstream.base_url + "/chat/completions", json=PLAIN)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"


# -- routes and requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/chat/completions", "/api/v1/chat/completions"]
)
def test_chat_completions_is_served_with_or_without_v1_prefix(
    upstream: FakeUpstream, path: str
) -> None:
    response = exchange(upstream, PLAIN, path=path)

    assert response.status == 200
    assert json.loads(response.body)["choices"][0]["message"]["content"] == "w0 w1 w2 "


def test_models_route_lists_model_ids(upstream: FakeUpstream) -> None:
    response = requests.get(upstream.base_url + "/models")

    assert response.status_code == 200
    listing = response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["gpt-3.5-turbo", "gpt-4", "gpt-4o-mini"]


def test_unknown_path_is_a_404_json_error(upstream: FakeUpstream) -> None:
    response = requests.get(upstream.url + "/v1/embeddings-nope")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == 404


def test_get_on_chat_completions_is_405_and_consumes_no_script(upstream: FakeUpstream) -> None:
    upstream.script(Behaviour(tokens=("scripted",)))

    response = requests.get(upstream.base_url + "/chat/completions")
    answer = requests.post(upstream.base_url + "/chat/completions", json=PLAIN).json()

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert answer["choices"][0]["message"]["content"] == "scripted"


def test_invalid_json_body_is_a_400_and_consumes_no_script(upstream: FakeUpstream) -> None:
    upstream.script(Behaviour(tokens=("scripted",)))

    bad = exchange(upstream, body=b"{nope")
    good = exchange(upstream, PLAIN)

    assert bad.status == 400
    assert json.loads(bad.body)["error"]["type"] == "invalid_request_error"
    assert json.loads(good.body)["choices"][0]["message"]["content"] == "scripted"


def test_chunked_request_body_is_rejected_with_400_and_close(upstream: FakeUpstream) -> None:
    body = b'7\r\n{"a":1}\r\n0\r\n\r\n'
    with connect(upstream) as sock:
        sock.sendall(
            request_bytes(body=body, headers=("Transfer-Encoding: chunked",))
        )  # no Connection: close: the server must close on its own
        response = parse(read_to_eof(sock))

    assert response.status == 400
    assert response.headers["connection"] == "close"
    assert "Content-Length" in json.loads(response.body)["error"]["message"]


def test_answer_uses_the_request_model(upstream: FakeUpstream) -> None:
    answer = json.loads(exchange(upstream, {**PLAIN, "model": "llama-3-8b"}).body)
    first = json.loads(data_lines(exchange(upstream, {**STREAM, "model": "mistral"}).sse())[0])

    assert answer["model"] == "llama-3-8b"
    assert first["model"] == "mistral"


def test_requests_are_recorded_with_lower_case_headers_and_decoded_json(
    upstream: FakeUpstream,
) -> None:
    requests.post(
        upstream.base_url + "/chat/completions",
        json=PLAIN,
        headers={"User-Agent": "ChatX/39", "X-Custom": "1"},
    )
    requests.get(upstream.base_url + "/models")

    first, second = upstream.requests
    assert isinstance(first, RecordedRequest)
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.headers["user-agent"] == "ChatX/39"
    assert first.headers["x-custom"] == "1"
    assert first.headers["content-type"] == "application/json"
    assert json.loads(first.body) == PLAIN == first.json
    assert (second.method, second.path, second.body, second.json) == (
        "GET",
        "/v1/models",
        b"",
        None,
    )


def test_requests_snapshot_does_not_change_under_the_caller(upstream: FakeUpstream) -> None:
    snapshot = upstream.requests

    exchange(upstream, PLAIN)

    assert snapshot == []
    assert len(upstream.requests) == 1


def test_record_false_keeps_no_requests() -> None:
    with FakeUpstream(record=False) as server:
        exchange(server, PLAIN)

        assert server.requests == []


# -- script queue, default, reset ------------------------------------------------------------


def test_script_is_consumed_in_order_then_default_answers(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(tokens=("default",))
    upstream.script(Behaviour(status=503), Behaviour(tokens=("first",)))
    upstream.script(Behaviour(tokens=("second",)))
    url = upstream.base_url + "/chat/completions"

    answers = [requests.post(url, json=PLAIN) for _ in range(5)]

    assert [a.status_code for a in answers] == [503, 200, 200, 200, 200]
    texts = [a.json()["choices"][0]["message"]["content"] for a in answers[1:]]
    assert texts == ["first", "second", "default", "default"]


def test_models_requests_do_not_consume_the_script(upstream: FakeUpstream) -> None:
    upstream.script(Behaviour(status=500))

    requests.get(upstream.base_url + "/models")

    assert requests.post(upstream.base_url + "/chat/completions", json=PLAIN).status_code == 500


def test_reset_clears_script_requests_and_counters_but_keeps_default(
    upstream: FakeUpstream,
) -> None:
    upstream.default = Behaviour(tokens=("kept",))
    exchange(upstream, PLAIN)
    upstream.script(Behaviour(status=500))

    upstream.reset()

    assert upstream.requests == []
    assert upstream.disconnects == 0
    assert upstream.connections_accepted == 0
    assert json.loads(exchange(upstream, PLAIN).body)["choices"][0]["message"]["content"] == "kept"


def test_script_and_default_reject_non_behaviours(upstream: FakeUpstream) -> None:
    with pytest.raises(TypeError):
        upstream.script("not a behaviour")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        upstream.default = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": 99},
        {"status": 600},
        {"chunks": -1},
        {"fault_after": -1},
        {"events_per_http_chunk": 0},
        {"chunk_delay": -0.1},
        {"hang_seconds": -1.0},
        {"drip_interval": -1.0},
        {"fault": "no_such_fault"},
        {"retry_after": "1\r\nX-Injected: yes"},
    ],
)
def test_behaviour_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        Behaviour(**kwargs)


def test_behaviour_coerces_token_lists_and_fault_strings_so_it_stays_hashable() -> None:
    behaviour = Behaviour(tokens=["a", "b"], fault="huge_line")  # type: ignore[arg-type]

    assert behaviour.tokens == ("a", "b")
    assert behaviour.fault is Fault.HUGE_LINE
    assert hash(behaviour) == hash(Behaviour(tokens=("a", "b"), fault=Fault.HUGE_LINE))


# -- connections --------------------------------------------------------------------------------


def test_requests_session_reuses_one_keep_alive_connection(upstream: FakeUpstream) -> None:
    url = upstream.base_url + "/chat/completions"
    with requests.Session() as session:
        with session.post(url, json=STREAM, stream=True) as streamed:
            assert b"[DONE]" in streamed.content
        plain = session.post(url, json=PLAIN)

        assert plain.headers["Connection"] == "keep-alive"
        assert upstream.connections_accepted == 1
        assert upstream.open_connections == 1


def test_pipelined_requests_on_one_connection_are_answered_in_order(
    upstream: FakeUpstream,
) -> None:
    upstream.script(Behaviour(tokens=("one",)), Behaviour(tokens=("two",)))
    with connect(upstream) as sock:
        sock.sendall(request_bytes(PLAIN, headers=()) + request_bytes(PLAIN))
        raw = read_to_eof(sock)

    head, _, rest = raw.partition(b"\r\n\r\n")
    first = parse(head + b"\r\n\r\n" + rest[: int(parse(raw).headers["content-length"])])
    second = parse(rest[len(first.body) :])
    assert first.headers["connection"] == "keep-alive"
    assert second.headers["connection"] == "close"
    assert json.loads(first.body)["choices"][0]["message"]["content"] == "one"
    assert json.loads(second.body)["choices"][0]["message"]["content"] == "two"
    assert upstream.connections_accepted == 1


def test_connection_close_request_header_closes_after_the_response(
    upstream: FakeUpstream,
) -> None:
    with connect(upstream) as sock:
        sock.sendall(request_bytes(STREAM, headers=("Connection: close",)))
        response = parse(read_to_eof(sock))  # returns only because the server closed

    assert response.headers["connection"] == "close"
    assert response.chunks()[1]
    assert upstream.wait_for_open_connections(0, timeout=2)


def test_http_1_0_request_is_answered_then_closed(upstream: FakeUpstream) -> None:
    with connect(upstream) as sock:
        sock.sendall(request_bytes(PLAIN, headers=(), version="HTTP/1.0"))
        response = parse(read_to_eof(sock))

    assert response.status == 200
    assert response.headers["connection"] == "close"


def test_unused_port_url_refuses_connections() -> None:
    url = unused_port_url()
    parts = urlsplit(url)

    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    with pytest.raises(requests.ConnectionError):
        requests.post(url + "/v1/chat/completions", json=PLAIN, timeout=2)


def test_url_and_base_url_point_at_the_listening_port() -> None:
    server = FakeUpstream()
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        host, port = address(server)

        assert (host, server.base_url) == ("127.0.0.1", f"http://127.0.0.1:{port}/v1")
        assert port > 0
    with pytest.raises(RuntimeError):
        server.start()


# -- faults, seen from a raw client ------------------------------------------------------------


def test_drop_after_headers_sends_headers_then_closes(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(fault=Fault.DROP_AFTER_HEADERS)

    response = exchange(upstream, STREAM)

    assert response.status == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.body == b""


def test_drop_mid_stream_closes_after_fault_after_content_chunks_without_last_chunk(
    upstream: FakeUpstream,
) -> None:
    upstream.default = Behaviour(chunks=5, fault=Fault.DROP_MID_STREAM, fault_after=2)

    chunks, terminated = exchange(upstream, STREAM).chunks()

    assert not terminated
    assert contents([c[6:-2] for c in chunks]) == ["w0 ", "w1 "]
    assert len(chunks) == 3  # the role chunk, then two content chunks


def test_hang_before_headers_sends_nothing_then_answers(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=0.4)
    with connect(upstream) as sock:
        sock.sendall(request_bytes(STREAM))
        started = time.monotonic()
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(5)
        response = parse(read_to_eof(sock))

    assert time.monotonic() - started >= 0.35
    assert contents(data_lines(response.sse())) == ["w0 ", "w1 ", "w2 "]


def test_hang_between_chunks_pauses_after_fault_after_then_goes_on(
    upstream: FakeUpstream,
) -> None:
    upstream.default = Behaviour(fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=1, hang_seconds=0.4)
    with connect(upstream) as sock:
        sock.sendall(request_bytes(STREAM))
        early = read_until(sock, b'"w0 "')
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(5)
        response = parse(early + read_to_eof(sock))

    assert b"w1 " not in early
    assert contents(data_lines(response.sse())) == ["w0 ", "w1 ", "w2 "]
    assert upstream.disconnects == 0


def test_malformed_json_inserts_a_broken_data_line(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(fault=Fault.MALFORMED_JSON, fault_after=2)

    lines = data_lines(exchange(upstream, STREAM).sse())

    # role, w0, w1, then the broken event; the stream then goes on.
    assert lines[3] == b"{not json"
    assert contents(lines[:3] + lines[4:]) == ["w0 ", "w1 ", "w2 "]


def test_invalid_utf8_puts_ff_fe_bytes_inside_a_json_string(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(fault=Fault.INVALID_UTF8, fault_after=1)

    lines = data_lines(exchange(upstream, STREAM).sse())

    bad = lines[2]
    assert b'"content":"bad \xff\xfe bytes"' in bad
    with pytest.raises(UnicodeDecodeError):
        bad.decode("utf-8")
    assert contents(lines[:2] + lines[3:]) == ["w0 ", "w1 ", "w2 "]


def test_huge_line_sends_one_valid_data_line_over_one_mebibyte(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(fault=Fault.HUGE_LINE, fault_after=0)

    lines = data_lines(exchange(upstream, STREAM).sse())

    huge = lines[1]
    assert len(huge) > 1 << 20
    assert len(json.loads(huge)["choices"][0]["delta"]["content"]) >= 1 << 20
    assert contents(lines[:1] + lines[2:]) == ["w0 ", "w1 ", "w2 "]


def test_error_object_is_sent_mid_stream_then_the_stream_ends(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(fault=Fault.ERROR_OBJECT, fault_after=1)

    lines = data_lines(exchange(upstream, STREAM).sse())

    assert contents(lines[:-1]) == ["w0 "]
    error = json.loads(lines[-1])["error"]
    assert (error["type"], error["code"]) == ("server_error", 500)
    assert b"[DONE]" not in lines


def test_model_missing_is_a_200_stream_whose_first_line_says_gpt_4_does_not_exist(
    upstream: FakeUpstream,
) -> None:
    upstream.default = Behaviour(fault=Fault.MODEL_MISSING)

    response = exchange(upstream, STREAM)
    lines = data_lines(response.sse())

    assert response.status == 200
    assert len(lines) == 1
    assert b"The model: `gpt-4` does not exist" in lines[0]
    assert json.loads(lines[0])["error"]["message"] == "The model: `gpt-4` does not exist"


def test_slow_drip_sends_the_body_one_byte_per_http_chunk(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(
        tokens=("a",), role_chunk=False, usage=False, fault=Fault.SLOW_DRIP, drip_interval=0.001
    )

    started = time.monotonic()
    response = exchange(upstream, STREAM)
    elapsed = time.monotonic() - started

    chunks, terminated = response.chunks()
    assert terminated
    assert {len(chunk) for chunk in chunks} == {1}
    lines = data_lines(b"".join(chunks))
    assert contents(lines) == ["a"]
    assert lines[-1] == b"[DONE]"
    assert elapsed >= (len(chunks) - 1) * 0.001


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (Fault.MALFORMED_JSON, lambda body: body == b"{not json"),
        (Fault.ERROR_OBJECT, lambda body: json.loads(body)["error"]["code"] == 500),
        (Fault.MODEL_MISSING, lambda body: b"`gpt-4` does not exist" in body),
        (Fault.INVALID_UTF8, lambda body: b"w2 \xff\xfe" in body),
        (
            Fault.HUGE_LINE,
            lambda body: len(json.loads(body)["choices"][0]["message"]["content"]) > 1 << 20,
        ),
    ],
)
def test_content_faults_apply_to_non_stream_answers(
    upstream: FakeUpstream, fault: Fault, check: Any
) -> None:
    upstream.default = Behaviour(fault=fault)

    response = exchange(upstream, PLAIN)

    assert response.status == 200
    assert int(response.headers["content-length"]) == len(response.body)
    assert check(response.body)


@pytest.mark.parametrize("fault", [Fault.DROP_AFTER_HEADERS, Fault.DROP_MID_STREAM])
@pytest.mark.parametrize("status", [200, 503])
def test_drop_faults_cut_content_length_bodies_short(
    upstream: FakeUpstream, fault: Fault, status: int
) -> None:
    upstream.default = Behaviour(status=status, fault=fault)

    response = exchange(upstream, PLAIN)

    assert response.status == status
    assert len(response.body) < int(response.headers["content-length"])
    assert (response.body == b"") == (fault is Fault.DROP_AFTER_HEADERS)


def test_requests_reports_a_dropped_stream_as_a_chunked_encoding_error(
    upstream: FakeUpstream,
) -> None:
    upstream.default = Behaviour(fault=Fault.DROP_MID_STREAM)

    with (
        requests.post(upstream.base_url + "/chat/completions", json=STREAM, stream=True) as r,
        pytest.raises(requests.exceptions.ChunkedEncodingError),
    ):
        for _ in r.iter_lines():
            pass


# -- disconnects and stop ------------------------------------------------------------------------


def test_client_closing_during_a_hang_counts_one_disconnect(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(fault=Fault.HANG_BETWEEN_CHUNKS, hang_seconds=10)

    with connect(upstream) as sock:
        sock.sendall(request_bytes(STREAM))
        read_until(sock, b'"w0 "')
    started = time.monotonic()

    assert upstream.wait_for_disconnects(1, timeout=2)
    assert time.monotonic() - started < 1
    assert upstream.wait_for_open_connections(0, timeout=2)


def test_requests_closing_a_delayed_stream_counts_one_disconnect(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(chunks=100, chunk_delay=0.05)

    with requests.post(upstream.base_url + "/chat/completions", json=STREAM, stream=True) as r:
        next(r.iter_lines())

    assert upstream.wait_for_disconnects(1, timeout=2)
    assert upstream.disconnects == 1


def test_client_closing_during_a_large_write_counts_one_disconnect(upstream: FakeUpstream) -> None:
    # 16 MB cannot sit in socket buffers, so the server is still writing when the client goes.
    upstream.default = Behaviour(tokens=("x" * (1 << 20),) * 16)

    with connect(upstream) as sock:
        sock.sendall(request_bytes(STREAM))
        read_until(sock, b"data: ")

    assert upstream.wait_for_disconnects(1, timeout=2)


def test_a_completed_stream_is_not_a_disconnect(upstream: FakeUpstream) -> None:
    for _ in range(3):
        exchange(upstream, STREAM)

    assert not upstream.wait_for_disconnects(1, timeout=0.1)


def test_stop_is_prompt_while_a_handler_hangs_and_leaves_no_threads() -> None:
    server = FakeUpstream(default=Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=30))
    server.start()
    idle = connect(server)  # a second, idle keep-alive connection must be closed too
    with connect(server) as sock:
        sock.sendall(request_bytes(STREAM))
        deadline = time.monotonic() + 2
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.005)
        assert server.open_connections == 2

        started = time.monotonic()
        server.stop()
        elapsed = time.monotonic() - started

        assert elapsed < 1.0
        assert read_to_eof(sock) == b""
    assert read_to_eof(idle) == b""
    idle.close()
    assert server.disconnects == 0  # the server, not the client, ended it
    assert server.open_connections == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("provhub-fake-upstream")]
    server.stop()  # idempotent


def test_stop_is_prompt_during_a_slow_drip() -> None:
    server = FakeUpstream(default=Behaviour(fault=Fault.SLOW_DRIP, drip_interval=0.5)).start()
    with connect(server) as sock:
        sock.sendall(request_bytes(STREAM))
        read_until(sock, b"\r\n\r\n")

        started = time.monotonic()
        server.stop()

        assert time.monotonic() - started < 1.0


def test_threads_are_named_after_the_fake_upstream(upstream: FakeUpstream) -> None:
    with connect(upstream) as sock:
        sock.sendall(request_bytes(PLAIN, headers=()))
        read_until(sock, b"chat.completion")
        names = [t.name for t in threading.enumerate()]

    assert any(name.startswith("provhub-fake-upstream-accept-") for name in names)
    assert any(name.startswith("provhub-fake-upstream-conn-") for name in names)


# -- rich answers: tool calls, reasoning, refusal, usage details --------------------------------

CALL_A = ToolCall("call_a", "get_weather", '{"city":"Paris"}')
CALL_B = ToolCall("call_b", "get_time", '{"tz":"CET"}')


def stream_deltas(upstream: FakeUpstream, behaviour: Behaviour) -> list[dict[str, Any]]:
    """The deltas of every choice of a streamed answer, role chunk excluded."""
    upstream.default = behaviour
    lines = data_lines(exchange(upstream, STREAM).sse())
    chunks = [json.loads(line) for line in lines if line != b"[DONE]"]
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]][1:]


def test_tool_calls_stream_byte_for_byte_as_openai_frames_them(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(tokens=(), tool_calls=(CALL_A,), argument_chunk=8, usage=False)
    lines = data_lines(exchange(upstream, STREAM).sse())
    ident = json.loads(lines[0])["id"]
    created = json.loads(lines[0])["created"]
    prefix = (
        f'{{"id":"{ident}","object":"chat.completion.chunk","created":{created},'
        '"model":"gpt-4","choices":[{"index":0,"delta":'
    ).encode()
    assert lines[1:] == [
        prefix + b'{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":'
        b'{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}',
        prefix + b'{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":"}}]},'
        b'"finish_reason":null}]}',
        prefix + b'{"tool_calls":[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]},'
        b'"finish_reason":null}]}',
        prefix + b'{},"finish_reason":"tool_calls"}]}',
        b"[DONE]",
    ]


def test_parallel_calls_are_sent_one_after_the_other_or_interleaved(
    upstream: FakeUpstream,
) -> None:
    def order(interleave: bool) -> list[tuple[int, str | None]]:
        deltas = stream_deltas(
            upstream,
            Behaviour(
                tokens=(),
                tool_calls=(CALL_A, CALL_B),
                argument_chunk=6,
                interleave_tool_calls=interleave,
            ),
        )
        calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
        return [(c["index"], c.get("id")) for c in calls]

    assert order(False) == [
        (0, "call_a"),
        (0, None),
        (0, None),
        (0, None),
        (1, "call_b"),
        (1, None),
        (1, None),
    ]
    assert order(True) == [
        (0, "call_a"),
        (1, "call_b"),
        (0, None),
        (1, None),
        (0, None),
        (1, None),
        (0, None),
    ]


@pytest.mark.parametrize(
    ("quirks", "check"),
    [
        (ToolCallQuirk.NO_INDEX, lambda calls: all("index" not in c for c in calls)),
        (ToolCallQuirk.INDEX_ZERO, lambda calls: {c["index"] for c in calls} == {0}),
        (ToolCallQuirk.NO_ID, lambda calls: all("id" not in c for c in calls)),
        (
            ToolCallQuirk.REPEAT_ID_NAME,
            lambda calls: all(c["id"] and c["function"]["name"] and c["type"] for c in calls),
        ),
        (
            ToolCallQuirk.WHOLE,
            lambda calls: (
                [c["function"]["arguments"] for c in calls] == [CALL_A.arguments, CALL_B.arguments]
            ),
        ),
        (
            ToolCallQuirk.ARGUMENTS_OBJECT,
            lambda calls: (
                [c["function"]["arguments"] for c in calls] == [{"city": "Paris"}, {"tz": "CET"}]
            ),
        ),
    ],
)
def test_each_quirk_changes_the_fragments_as_documented(
    upstream: FakeUpstream, quirks: ToolCallQuirk, check: Any
) -> None:
    deltas = stream_deltas(
        upstream,
        Behaviour(
            tokens=(), tool_calls=(CALL_A, CALL_B), argument_chunk=4, tool_call_quirks=quirks
        ),
    )
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert calls
    assert check(calls)


def test_one_chunk_sends_every_call_whole_in_one_delta(upstream: FakeUpstream) -> None:
    deltas = stream_deltas(
        upstream,
        Behaviour(tokens=(), tool_calls=(CALL_A, CALL_B), tool_call_quirks=ToolCallQuirk.ONE_CHUNK),
    )
    (with_calls,) = [d for d in deltas if "tool_calls" in d]
    assert [c["function"]["arguments"] for c in with_calls["tool_calls"]] == [
        CALL_A.arguments,
        CALL_B.arguments,
    ]


def test_legacy_function_call_streams_a_function_call_delta(upstream: FakeUpstream) -> None:
    deltas = stream_deltas(
        upstream,
        Behaviour(
            tokens=(),
            tool_calls=(CALL_A,),
            argument_chunk=100,
            tool_call_quirks=ToolCallQuirk.LEGACY_FUNCTION_CALL,
        ),
    )
    assert deltas[:2] == [
        {"function_call": {"name": "get_weather", "arguments": ""}},
        {"function_call": {"arguments": CALL_A.arguments}},
    ]


@pytest.mark.parametrize(
    ("field", "keys"),
    [
        ("reasoning_content", {"reasoning_content"}),
        ("reasoning", {"reasoning"}),
        ("both", {"reasoning", "reasoning_content"}),
    ],
)
def test_reasoning_comes_first_in_the_chosen_field_with_null_content(
    upstream: FakeUpstream, field: str, keys: set[str]
) -> None:
    deltas = stream_deltas(
        upstream, Behaviour(tokens=("x",), reasoning=("a", "b"), reasoning_field=field)
    )
    assert [set(d) for d in deltas[:2]] == [{"content", *keys}] * 2
    assert all(d["content"] is None for d in deltas[:2])
    assert [d[k] for d in deltas[:2] for k in sorted(keys)] == [t for t in "ab" for _ in keys]
    assert deltas[2] == {"content": "x"}


def test_refusal_fragments_follow_the_text(upstream: FakeUpstream) -> None:
    deltas = stream_deltas(upstream, Behaviour(tokens=("a",), refusal=("no", "pe")))
    assert deltas[:3] == [{"content": "a"}, {"refusal": "no"}, {"refusal": "pe"}]


def test_usage_details_and_their_place(upstream: FakeUpstream) -> None:
    behaviour = Behaviour(tokens=("a", "b"), cached_tokens=7, reasoning_tokens=3)
    upstream.default = behaviour
    lines = data_lines(exchange(upstream, STREAM).sse())
    usage = json.loads(lines[-2])["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 7
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 3
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (2, 2)
    upstream.default = Behaviour(tokens=("a",), usage_in_final_chunk=True)
    lines = data_lines(exchange(upstream, STREAM).sse())
    final = json.loads(lines[-2])
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"]["completion_tokens"] == 1
    assert behaviour.usage_for(STREAM["messages"]).as_dict() == {
        "prompt_tokens": 2,
        "completion_tokens": 2,
        "total_tokens": 4,
        "cached_tokens": 7,
        "reasoning_tokens": 3,
    }


def test_fault_after_counts_tool_call_fragments(upstream: FakeUpstream) -> None:
    behaviour = Behaviour(
        tokens=("t",),
        tool_calls=(CALL_A,),
        argument_chunk=4,
        fault=Fault.ERROR_OBJECT,
        fault_after=3,
    )
    upstream.default = behaviour
    lines = data_lines(exchange(upstream, STREAM).sse())
    # role, text, call header, one argument piece, then the error object.
    assert len(lines) == 5
    assert json.loads(lines[3])["choices"][0]["delta"]["tool_calls"][0]["function"] == {
        "arguments": '{"ci'
    }
    assert "error" in json.loads(lines[4])
    assert behaviour.chunk_count() == 1 + 1 + 4


def test_non_stream_answer_carries_tool_calls_reasoning_and_refusal(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(
        tokens=(),
        tool_calls=(CALL_A, CALL_B),
        reasoning=("r1", "r2"),
        refusal=("x",),
        cached_tokens=1,
    )
    answer = json.loads(exchange(upstream, PLAIN).body)
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "reasoning_content": "r1r2",
        "refusal": "x",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": CALL_A.arguments},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_time", "arguments": CALL_B.arguments},
            },
        ],
    }
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 1


def test_non_stream_quirks_no_id_and_arguments_object(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(
        tokens=(),
        tool_calls=(CALL_A,),
        tool_call_quirks=ToolCallQuirk.NO_ID | ToolCallQuirk.ARGUMENTS_OBJECT,
    )
    (call,) = json.loads(exchange(upstream, PLAIN).body)["choices"][0]["message"]["tool_calls"]
    assert call == {
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }
    assert Behaviour(
        tool_calls=(CALL_A,), tool_call_quirks=ToolCallQuirk.ARGUMENTS_OBJECT
    ).expected_tool_calls() == [ToolCall("call_a", "get_weather", '{"city":"Paris"}')]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"tool_calls": ("call",)}, "Behaviour.tool_calls takes ToolCall values"),
        ({"tool_call_quirks": 3}, "tool_call_quirks must be ToolCallQuirk flags"),
        ({"reasoning": (1,)}, "Behaviour.reasoning must hold strings"),
        ({"reasoning_field": "thinking"}, "reasoning_field must be"),
        ({"cached_tokens": -1}, "cached_tokens must be >= 0"),
        ({"argument_chunk": -1}, "argument_chunk must be >= 0"),
        (
            {
                "tool_calls": (ToolCall("c", "f", "not json"),),
                "tool_call_quirks": ToolCallQuirk.ARGUMENTS_OBJECT,
            },
            "ARGUMENTS_OBJECT needs arguments that are a JSON object",
        ),
        (
            {
                "tool_calls": (CALL_A, CALL_B),
                "tool_call_quirks": ToolCallQuirk.LEGACY_FUNCTION_CALL,
            },
            "LEGACY_FUNCTION_CALL carries one call only",
        ),
        (
            {
                "tool_calls": (CALL_A, CALL_B),
                "tool_call_quirks": ToolCallQuirk.NO_INDEX,
                "interleave_tool_calls": True,
            },
            "interleaved tool calls without a distinct index need an id on every fragment",
        ),
    ],
)
def test_behaviour_rejects_rich_values_that_make_no_sense(
    kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        Behaviour(**kwargs)


def test_rich_behaviours_stay_hashable_and_lists_are_coerced() -> None:
    behaviour = Behaviour(tool_calls=[CALL_A], reasoning=["r"], refusal=["x"])  # type: ignore[arg-type]
    assert behaviour.tool_calls == (CALL_A,)
    assert hash(behaviour) == hash(
        Behaviour(tool_calls=(CALL_A,), reasoning=("r",), refusal=("x",))
    )
    assert behaviour.effective_finish_reason() == "tool_calls"
    assert (
        Behaviour(finish_reason="length", tool_calls=(CALL_A,)).effective_finish_reason()
        == "length"
    )
