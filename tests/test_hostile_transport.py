"""The transport against a hostile upstream (tests/hostile.py): every case is data.

Each case is a script of bytes and timings for one connection and the outcome the
transport must produce: the exact answer, or a typed error (class, retryability,
message) within a time bound. No case may end in an empty success, a bare
exception, or a call that outlives its deadline (docs/reliability.md, "Hostile
upstreams").
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.hostile import (
    Close,
    Flood,
    HalfClose,
    Hold,
    HostileServer,
    Pause,
    Read,
    Repeat,
    Reset,
    Send,
    Step,
    Trickle,
    chunk,
    chunked,
    completion_json,
    head,
    sse,
    sse_response,
)

from provhub import (
    JSONAnswerError,
    Limits,
    ProviderError,
    Timeouts,
    Transport,
    UpstreamConnectionError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    parse_chat_stream,
)

# Budgets short enough that a hang costs a second or two.
FAST = Timeouts(connect=1.0, first_token=1.0, idle=0.5, total=2.0)
# Slack on a shared 2-core machine; small next to the budgets it guards.
MARGIN = 1.0
ANSWER = ("Hel", "lo ", "wörld")
TEXT = "".join(ANSWER)
EVENTS = sse(ANSWER)
PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@dataclass(frozen=True)
class Case:
    """One connection's script and what the caller must see.

    ``text``: the answer (streams: the text of the parsed events; JSON: the
    completion's content). Otherwise ``error`` with ``retryable`` and ``match``.
    ``after`` is the text a stream must deliver before failing. ``within`` bounds
    the call's duration (``min_time`` from below, to show a budget was waited).
    """

    script: tuple[Step, ...]
    mode: str = "stream"
    text: str | None = None
    error: type[ProviderError] | None = None
    retryable: bool | None = True
    match: str = ""
    after: str = ""
    within: float = 1.0
    min_time: float = 0.0
    timeouts: Timeouts = FAST


def _json_body(body: bytes, **head_kw: Any) -> bytes:
    return (
        head(content_type="application/json", framing="length", length=len(body), **head_kw) + body
    )


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _unfinished_gzip(flushed: bytes, rest: bytes) -> bytes:
    """A gzip stream: ``flushed`` decodable at once, then ``rest`` without the end marker."""
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    return (
        compressor.compress(flushed)
        + compressor.flush(zlib.Z_SYNC_FLUSH)
        + compressor.compress(rest)
        + compressor.flush(zlib.Z_SYNC_FLUSH)
    )


SSE_BODY = b"".join(EVENTS)
SENT = (Read(),)  # every script starts by reading the request

CASES: dict[str, Case] = {
    # -- a 200 that is not an event stream (item 2) ------------------------------------
    "html_200": Case(
        (
            *SENT,
            Send(head(content_type="text/html", framing="close") + b"<html>hi</html>"),
            Close(),
        ),
        error=UpstreamProtocolError,
        match="expected an event stream, got text/html",
    ),
    "empty_200_event_stream": Case(
        (*SENT, Send(head(framing="length", length=0)), Hold()),
        error=UpstreamProtocolError,
        match="ended before its first event",
    ),
    "empty_200_no_content_type": Case(
        (*SENT, Send(head(content_type=None, framing="close")), Close()),
        error=UpstreamProtocolError,
        match="got no Content-Type",
    ),
    "only_comments_then_end": Case(
        (*SENT, Send(head() + chunked([b": ping\n\n", b": pong\n\n"])), Hold()),
        error=UpstreamProtocolError,
        match="ended before its first event",
    ),
    "no_content_204": Case(
        (*SENT, Send(head(204, "No Content", content_type=None, framing="none")), Hold()),
        error=UpstreamProtocolError,
        match="HTTP 204 carries no body",
    ),
    "no_content_204_json": Case(
        (*SENT, Send(head(204, "No Content", content_type=None, framing="none")), Hold()),
        mode="json",
        error=UpstreamProtocolError,
        match="HTTP 204 carries no body",
    ),
    "switching_protocols_101": Case(
        (
            *SENT,
            Send(
                head(
                    101,
                    "Switching Protocols",
                    [("Upgrade", "websocket"), ("Connection", "Upgrade")],
                    content_type=None,
                    framing="none",
                )
            ),
            Hold(),
        ),
        error=UpstreamProtocolError,
        match="HTTP 101",
    ),
    "truncated_header_block": Case(
        (*SENT, Send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"), Close()),
        error=UpstreamProtocolError,
        match="closed inside the response header block",
    ),
    "truncated_header_block_json": Case(
        (*SENT, Send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"), Close()),
        mode="json",
        error=UpstreamProtocolError,
        match="closed inside the response header block",
    ),
    "json_body_on_a_stream_request": Case(
        (*SENT, Send(_json_body(completion_json("Hello"))), Hold()),
        error=JSONAnswerError,
        retryable=False,
        match="answered with a JSON body",
    ),
    # -- deadlines (item 5) ------------------------------------------------------------------
    "trickle_in_header_block": Case(
        (*SENT, Send(b"HTTP/1.1 200 OK\r\n"), Trickle(b"X-Slow: " + b"a" * 4000, 0.02)),
        error=UpstreamTimeoutError,
        match="first-token",
        min_time=0.9,
        within=1.0 + MARGIN,
    ),
    "trickle_in_header_block_total_first": Case(
        (*SENT, Send(b"HTTP/1.1 200 OK\r\n"), Trickle(b"X-Slow: " + b"a" * 4000, 0.02)),
        error=UpstreamTimeoutError,
        match="total",
        min_time=0.7,
        within=0.8 + MARGIN,
        timeouts=Timeouts(connect=1.0, first_token=5.0, idle=0.5, total=0.8),
    ),
    "endless_100_continue": Case(
        (*SENT, Repeat((Send(b"HTTP/1.1 100 Continue\r\n\r\n"), Pause(0.02)))),
        error=UpstreamTimeoutError,
        match="first-token",
        min_time=0.9,
        within=1.0 + MARGIN,
    ),
    "trickle_inside_one_declared_chunk": Case(
        (
            *SENT,
            Send(head() + chunk(EVENTS[0])),
            Send(b"100000\r\n"),
            Trickle(b"data: " + b"x" * 5000, 0.02),
        ),
        error=UpstreamTimeoutError,
        match="total",
        after="Hel",
        min_time=1.9,
        within=2.0 + MARGIN,
    ),
    "trickle_json_body": Case(
        (
            *SENT,
            Send(head(content_type="application/json", framing="length", length=100000)),
            Trickle(b" " * 5000, 0.02),
        ),
        mode="json",
        error=UpstreamTimeoutError,
        match="first-token",
        min_time=0.9,
        within=1.0 + MARGIN,
    ),
    "silence_after_first_event_chunked": Case(
        (*SENT, Send(head() + chunk(EVENTS[0])), Hold()),
        error=UpstreamTimeoutError,
        match="idle",
        after="Hel",
        min_time=0.4,
        within=0.5 + MARGIN,
    ),
    # -- idle on Connection: close / HTTP/1.0 (item 7) -----------------------------------------
    "silence_on_connection_close": Case(
        (*SENT, Send(head(framing="close") + EVENTS[0]), Hold()),
        error=UpstreamTimeoutError,
        match="idle",
        after="Hel",
        min_time=0.4,
        within=0.5 + MARGIN,
    ),
    "silence_on_http_1_0": Case(
        (*SENT, Send(head(version="HTTP/1.0", framing="none") + EVENTS[0]), Hold()),
        error=UpstreamTimeoutError,
        match="idle",
        after="Hel",
        min_time=0.4,
        within=0.5 + MARGIN,
    ),
    # -- complete answers stay complete (item 6) -----------------------------------------------
    "stall_after_done": Case(
        (*SENT, Send(head() + chunk(SSE_BODY)), Hold()),
        text=TEXT,
        within=0.25 + MARGIN,
    ),
    "overstated_content_length_then_stall": Case(
        (*SENT, Send(head(framing="length", length=len(SSE_BODY) + 500) + SSE_BODY), Hold()),
        text=TEXT,
        within=0.25 + MARGIN,
    ),
    "overstated_content_length_then_close": Case(
        (*SENT, Send(head(framing="length", length=len(SSE_BODY) + 500) + SSE_BODY), Close()),
        text=TEXT,
    ),
    "overstated_content_length_json_then_close": Case(
        (
            *SENT,
            Send(
                head(content_type="application/json", framing="length", length=9999)
                + completion_json()
            ),
            Close(),
        ),
        mode="json",
        text="Hello",
    ),
    "overstated_content_length_json_then_stall": Case(
        (
            *SENT,
            Send(
                head(content_type="application/json", framing="length", length=9999)
                + completion_json()
            ),
            Hold(),
        ),
        mode="json",
        text="Hello",
        min_time=0.4,  # the idle budget is waited: a JSON body has no end marker
        within=0.5 + MARGIN,
    ),
    "endless_trailers_after_done": Case(
        (*SENT, Send(head() + chunk(SSE_BODY) + b"0\r\n"), Flood(b"X-Trailer: y\r\n" * 100)),
        text=TEXT,
    ),
    # -- neighbours nobody listed ---------------------------------------------------------------
    "early_hints_103_before_the_answer": Case(
        (
            *SENT,
            Send(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"),
            Send(sse_response(ANSWER)),
            Hold(),
        ),
        text=TEXT,
    ),
    "header_line_of_100_kib": Case(
        (*SENT, Send(head(headers=[("X-Big", "a" * 100_000)])), Hold()),
        error=UpstreamProtocolError,
        match="header block",
    ),
    "two_hundred_headers": Case(
        (*SENT, Send(head(headers=[(f"X-H{i}", "v") for i in range(200)])), Hold()),
        error=UpstreamProtocolError,
        match="header block",
    ),
    "header_block_over_64_kib_in_short_lines": Case(
        (*SENT, Send(head(headers=[(f"X-H{i}", "v" * 900) for i in range(90)])), Hold()),
        error=UpstreamProtocolError,
        match="header block",
    ),
    "status_line_http_2": Case(
        (*SENT, Send(b"HTTP/2 200\r\ncontent-type: text/event-stream\r\n\r\n"), Hold()),
        error=UpstreamProtocolError,
        match="malformed response header block",
    ),
    "status_line_garbage": Case(
        (*SENT, Send(b"HTTP/1.1 abc\r\n\r\n"), Hold()),
        error=UpstreamProtocolError,
        match="malformed response header block",
    ),
    "non_http_reply": Case(
        (*SENT, Send(b"SSH-2.0-OpenSSH_9.6\r\n"), Hold()),
        error=UpstreamProtocolError,
        match="malformed response header block",
    ),
    "closed_without_a_reply": Case(
        (*SENT, Close()), error=UpstreamConnectionError, match="closed the connection"
    ),
    "reset_without_a_reply": Case(
        (*SENT, Reset()), error=UpstreamConnectionError, match="reset the connection"
    ),
    "reset_mid_stream": Case(
        (*SENT, Send(head() + chunk(EVENTS[0])), Pause(0.05), Reset()),
        error=UpstreamConnectionError,
        after="Hel",
        match="connection",
    ),
    "half_closed_mid_chunk": Case(
        (*SENT, Send(head() + chunk(EVENTS[0]) + b"100\r\ndata: partial"), HalfClose(), Hold()),
        error=UpstreamConnectionError,
        after="Hel",
        match="before the end of the response body",
    ),
    "http_1_0_close_delimited_answer": Case(
        (*SENT, Send(head(version="HTTP/1.0", framing="none") + SSE_BODY), Close()),
        text=TEXT,
    ),
    "conflicting_content_lengths": Case(
        (
            *SENT,
            Send(head(framing="length", length=5, headers=[("Content-Length", "100")]) + b"data:"),
            Hold(),
        ),
        error=UpstreamProtocolError,
        match="conflicting Content-Length",
    ),
    "content_length_list_with_two_values": Case(
        (*SENT, Send(head(framing="none", headers=[("Content-Length", "5, 7")])), Hold()),
        error=UpstreamProtocolError,
        match="conflicting Content-Length",
    ),
    "negative_content_length": Case(
        (*SENT, Send(head(framing="none", headers=[("Content-Length", "-1")])), Hold()),
        error=UpstreamProtocolError,
        match="Content-Length",
    ),
    "identical_duplicate_content_lengths": Case(
        (
            *SENT,
            Send(
                head(
                    framing="length",
                    length=len(SSE_BODY),
                    headers=[("Content-Length", str(len(SSE_BODY)))],
                )
                + SSE_BODY
            ),
            Hold(),
        ),
        text=TEXT,
    ),
    "transfer_encoding_gzip_chunked": Case(
        (
            *SENT,
            Send(head(framing="none", headers=[("Transfer-Encoding", "gzip, chunked")])),
            Hold(),
        ),
        error=UpstreamProtocolError,
        match="unsupported Transfer-Encoding",
    ),
    "transfer_encoding_and_content_length": Case(
        (*SENT, Send(head(headers=[("Content-Length", "3")]) + chunked(EVENTS)), Hold()),
        text=TEXT,
    ),
    "chunk_size_garbage": Case(
        (*SENT, Send(head() + b"zz\r\n"), Hold()),
        error=UpstreamProtocolError,
        match="invalid chunk size",
    ),
    "chunk_size_of_a_hundred_hex_digits": Case(
        (*SENT, Send(head() + b"f" * 100 + b"\r\n"), Hold()),
        error=UpstreamProtocolError,
        match="invalid chunk size",
    ),
    "chunk_size_line_without_end": Case(
        (*SENT, Send(head()), Flood(b"0" * 4096)),
        error=UpstreamProtocolError,
        match="chunk-size line too long",
    ),
    "chunk_data_without_crlf": Case(
        (*SENT, Send(head() + b"%x\r\n" % len(EVENTS[0]) + EVENTS[0] + b"XX"), Hold()),
        error=UpstreamProtocolError,
        match="not followed by CRLF",
        after="Hel",
    ),
    "endless_trailers_json": Case(
        (
            *SENT,
            Send(head(content_type="application/json") + chunk(completion_json()) + b"0\r\n"),
            Flood(b"X-Trailer: y\r\n" * 100),
        ),
        mode="json",
        error=UpstreamProtocolError,
        match="trailers too long",
    ),
    "gzip_event_stream": Case(
        (
            *SENT,
            Send(head(headers=[("Content-Encoding", "gzip")]) + chunked([_gzip(SSE_BODY)])),
            Hold(),
        ),
        text=TEXT,
    ),
    "raw_deflate_event_stream": Case(
        (
            *SENT,
            Send(
                head(headers=[("Content-Encoding", "deflate")]) + chunked([_raw_deflate(SSE_BODY)])
            ),
            Hold(),
        ),
        text=TEXT,
    ),
    "two_gzip_members": Case(
        (
            *SENT,
            Send(
                head(headers=[("Content-Encoding", "gzip")])
                + chunked([_gzip(b"".join(EVENTS[:2])) + _gzip(b"".join(EVENTS[2:]))])
            ),
            Hold(),
        ),
        text=TEXT,
    ),
    "corrupt_gzip": Case(
        (
            *SENT,
            Send(
                head(headers=[("Content-Encoding", "gzip")]) + chunked([b"\x1f\x8b\x08\x00garbage"])
            ),
            Hold(),
        ),
        error=UpstreamProtocolError,
        match="compressed body",
    ),
    "invalid_deflate_data": Case(
        (
            *SENT,
            Send(
                head(headers=[("Content-Encoding", "gzip")])
                + chunked([_gzip(SSE_BODY)[:10] + b"\xff" * 64])
            ),
            Hold(),
        ),
        error=UpstreamProtocolError,
        match="corrupt compressed body",
    ),
    "truncated_gzip": Case(
        (
            *SENT,
            Send(
                head(headers=[("Content-Encoding", "gzip")])
                + chunked([_unfinished_gzip(b"".join(EVENTS[:2]), b"data: " + b"x" * 5000)])
            ),
            Hold(),
        ),
        error=UpstreamProtocolError,
        after="Hello ",
        match="compressed body ends before its end marker",
    ),
    "brotli_never_asked_for": Case(
        (*SENT, Send(head(headers=[("Content-Encoding", "br")]) + chunked([b"\x0b\x02"])), Hold()),
        error=UpstreamProtocolError,
        match="unsupported Content-Encoding 'br'",
    ),
    "bytes_after_the_body": Case(
        (*SENT, Send(_json_body(completion_json()) + b"HTTP/1.1 200 OK\r\n\r\nsmuggled"), Hold()),
        mode="json",
        text="Hello",
    ),
}


def _call(transport: Transport, url: str, case: Case, collected: list[str]) -> Any:
    chat = url + "/chat/completions"
    if case.mode == "json":
        payload = {**PAYLOAD, "stream": False}
        answer = transport.post_json(
            chat, payload, headers={}, timeouts=case.timeouts, provider="hostile"
        )
        return answer["choices"][0]["message"]["content"]
    events = transport.stream_sse(
        chat, PAYLOAD, headers={}, timeouts=case.timeouts, provider="hostile"
    )
    for item in parse_chat_stream(events, "hostile", markers=False):
        collected.append(item)  # type: ignore[arg-type]
    return "".join(collected)


@pytest.fixture
def transport() -> Iterator[Transport]:
    pooled = Transport()
    yield pooled
    pooled.close()


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case_ends_in_the_answer_or_a_typed_error_in_time(
    name: str, transport: Transport
) -> None:
    case = CASES[name]
    with HostileServer([case.script]) as server:
        collected: list[str] = []
        started = time.monotonic()
        if case.error is None:
            assert _call(transport, server.base_url, case, collected) == case.text
        else:
            with pytest.raises(case.error, match=case.match) as caught:
                _call(transport, server.base_url, case, collected)
            error = caught.value
            assert error.provider == "hostile"
            assert error.retryable is case.retryable
            assert error.host == f"127.0.0.1:{server.port}"
            assert "".join(collected) == case.after
        elapsed = time.monotonic() - started
        assert case.min_time <= elapsed < case.within, f"{elapsed=:.2f}"
        assert len(server.requests) == 1


def test_a_json_answer_to_a_stream_request_carries_the_decoded_body(
    transport: Transport,
) -> None:
    with (
        HostileServer([(Read(), Send(_json_body(completion_json("Hi"))), Hold())]) as server,
        pytest.raises(JSONAnswerError) as caught,
    ):
        list(
            transport.stream_sse(
                server.base_url + "/chat/completions",
                PAYLOAD,
                headers={},
                timeouts=FAST,
                provider="hostile",
            )
        )
    assert caught.value.answer["choices"][0]["message"]["content"] == "Hi"


def _stream_twice(transport: Transport, server: HostileServer) -> list[str]:
    texts = []
    for _ in range(2):
        events = transport.stream_sse(
            server.base_url + "/chat/completions",
            PAYLOAD,
            headers={},
            timeouts=FAST,
            provider="hostile",
        )
        texts.append("".join(parse_chat_stream(events, "hostile", markers=False)))  # type: ignore[arg-type]
    return texts


def test_a_clean_stream_returns_its_connection_to_the_pool(transport: Transport) -> None:
    # The positive control of the cases below: two streams, one connection.
    with HostileServer(default=[Repeat((Read(), Send(sse_response(ANSWER))))]) as server:
        assert _stream_twice(transport, server) == [TEXT, TEXT]
        assert server.connections == 1


@pytest.mark.parametrize(
    "first",
    [
        pytest.param((Read(), Send(head() + chunk(SSE_BODY)), Hold()), id="stall-after-done"),
        pytest.param(
            (Read(), Send(head(headers=[("Content-Length", "3")]) + chunked(EVENTS)), Hold()),
            id="transfer-encoding-and-content-length",
        ),
        pytest.param(
            (Read(), Send(sse_response(ANSWER) + b"HTTP/1.1 200 OK\r\n\r\n"), Hold()),
            id="bytes-after-the-body",
        ),
        pytest.param(
            (Read(), Send(head(framing="close") + SSE_BODY), Close()), id="connection-close"
        ),
    ],
)
def test_a_suspect_connection_is_closed_not_reused(
    transport: Transport, first: tuple[Step, ...]
) -> None:
    later = [Repeat((Read(), Send(sse_response(ANSWER))))]
    with HostileServer([first], default=later) as server:
        assert _stream_twice(transport, server) == [TEXT, TEXT]
        assert server.connections == 2


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("mode", ["stream", "json"])
def test_redirects_are_reported_naming_the_target_and_never_followed(
    transport: Transport, status: int, mode: str
) -> None:
    with HostileServer(default=[Read(), Send(sse_response(ANSWER)), Hold()]) as elsewhere:
        location = elsewhere.url + "/v1/chat/completions?token=abc"
        reply = (
            head(
                status,
                "Moved",
                [("Location", location)],
                content_type="text/html",
                framing="length",
                length=5,
            )
            + b"moved"
        )
        with HostileServer(default=[Read(), Send(reply), Hold()]) as server:
            started = time.monotonic()
            with pytest.raises(UpstreamHTTPError) as caught:
                _call(transport, server.base_url, Case((), mode=mode), [])
            assert time.monotonic() - started < MARGIN
        error = caught.value
        assert error.status == status
        assert error.retryable is False
        assert f"redirected to {elsewhere.url} (HTTP {status})" in str(error)
        assert "token" not in str(error)  # the origin only, never the path or query
        assert elsewhere.requests == []  # the prompt went nowhere else
        assert len(server.requests) == 1


def test_a_redirect_loop_ends_at_the_first_redirect(transport: Transport) -> None:
    with HostileServer(default=[Read()]) as server:
        loop = head(
            307,
            "Again",
            [("Location", server.base_url + "/chat/completions")],
            framing="length",
            length=0,
        )
        server.default = [Repeat((Read(), Send(loop)))]
        with pytest.raises(UpstreamHTTPError, match="redirected to"):
            _call(transport, server.base_url, Case(()), [])
        assert len(server.requests) == 1


def test_a_redirect_without_location_is_reported(transport: Transport) -> None:
    reply = head(302, "Found", framing="length", length=0)
    with (
        HostileServer(default=[Read(), Send(reply), Hold()]) as server,
        pytest.raises(UpstreamHTTPError, match="redirected without a Location header"),
    ):
        _call(transport, server.base_url, Case((), mode="json"), [])


def test_a_non_utf8_reason_phrase_becomes_printable_text(transport: Transport) -> None:
    reply = b"HTTP/1.1 500 \xff\xfe\x1b[31mboom\x00\r\nContent-Length: 0\r\n\r\n"
    with (
        HostileServer(default=[Read(), Send(reply), Hold()]) as server,
        pytest.raises(UpstreamHTTPError) as caught,
    ):
        _call(transport, server.base_url, Case((), mode="json"), [])
    message = str(caught.value)
    assert caught.value.status == 500
    assert "boom" in message
    assert all(" " <= c <= "~" for c in message), message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1e308", 1e308),
        ("inf", float("inf")),
        ("nan", None),
        ("-5", 0.0),
        ("9" * 400, float("inf")),
        ("1; X-Injected: yes", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_a_hostile_retry_after_is_parsed_safely(
    transport: Transport, value: str, expected: float | None
) -> None:
    reply = head(503, "Busy", [("Retry-After", value)], framing="length", length=0)
    with (
        HostileServer(default=[Read(), Send(reply), Hold()]) as server,
        pytest.raises(UpstreamHTTPError) as caught,
    ):
        _call(transport, server.base_url, Case((), mode="json"), [])
    assert caught.value.retry_after == expected


def test_an_upstream_that_never_reads_the_request_body_is_cut_off_by_the_deadline() -> None:
    # 48 MiB cannot fit in the loopback socket buffers: the send itself blocks.
    transport = Transport(limits=Limits(max_request_bytes=64 << 20))
    payload = {**PAYLOAD, "messages": [{"role": "user", "content": "x" * (48 << 20)}]}
    timeouts = Timeouts(connect=1.0, first_token=1.0, idle=0.5, total=5.0)
    try:
        with HostileServer(default=[Hold()]) as server:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeoutError, match="first-token"):
                list(
                    transport.stream_sse(
                        server.base_url + "/chat/completions",
                        payload,
                        headers={},
                        timeouts=timeouts,
                        provider="hostile",
                    )
                )
            assert 0.9 <= time.monotonic() - started < 1.0 + MARGIN
    finally:
        transport.close()


def test_connect_is_capped_by_what_is_left_of_total() -> None:
    # A listener that never accepts, its queue full: a further connect hangs in SYN
    # retries, as towards a host that drops packets.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        time.sleep(0.1)
        host, port = listener.getsockname()
        transport = Transport()
        timeouts = Timeouts(connect=30.0, first_token=30.0, idle=30.0, total=0.8)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError, match=r"no answer within 0\.8 s"):
            transport.post_json(
                f"http://{host}:{port}/v1/chat/completions",
                PAYLOAD,
                headers={},
                timeouts=timeouts,
                provider="hostile",
            )
        assert 0.7 <= time.monotonic() - started < 0.8 + MARGIN
        transport.close()
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_an_event_of_many_short_lines_is_refused_at_max_event_bytes() -> None:
    transport = Transport(limits=Limits(max_event_bytes=65536))
    body = b"data: x\n" * 100_000 + b"\n"
    script = (
        Read(),
        Send(head() + chunked([body[i : i + 8192] for i in range(0, len(body), 8192)])),
        Hold(),
    )
    try:
        with (
            HostileServer([script]) as server,
            pytest.raises(UpstreamProtocolError, match="max_event_bytes"),
        ):
            list(
                transport.stream_sse(
                    server.base_url + "/chat/completions",
                    PAYLOAD,
                    headers={},
                    timeouts=FAST,
                    provider="hostile",
                )
            )
    finally:
        transport.close()


def test_the_response_limit_counts_decompressed_bytes() -> None:
    transport = Transport(limits=Limits(max_response_bytes=100_000))
    bomb = _gzip(b" " * 10_000_000)  # about 10 KiB inflating to 10 MB
    script = (
        Read(),
        Send(
            head(content_type="application/json", headers=[("Content-Encoding", "gzip")])
            + chunked([bomb])
        ),
        Hold(),
    )
    try:
        with (
            HostileServer([script]) as server,
            pytest.raises(UpstreamProtocolError, match="max_response_bytes"),
        ):
            transport.post_json(
                server.base_url + "/chat/completions",
                PAYLOAD,
                headers={},
                timeouts=FAST,
                provider="hostile",
            )
    finally:
        transport.close()


def test_cases_cover_every_item_of_the_issue() -> None:
    # A guard against the table shrinking: the named behaviours stay covered.
    for name in (
        "html_200",
        "empty_200_event_stream",
        "no_content_204",
        "switching_protocols_101",
        "truncated_header_block",
        "json_body_on_a_stream_request",
        "trickle_in_header_block",
        "endless_100_continue",
        "trickle_inside_one_declared_chunk",
        "stall_after_done",
        "overstated_content_length_then_stall",
        "silence_on_connection_close",
    ):
        assert name in CASES
    assert json.loads(completion_json())["choices"]


def test_cookies_an_upstream_sets_are_neither_kept_nor_sent_back(transport: Transport) -> None:
    # One new cookie per answer: a shared jar would grow with every request, and send
    # each provider's cookies back on every later call.
    cookies = [("Set-Cookie", f"c{i}=v{i}; Path=/") for i in range(50)]
    reply = head(headers=cookies) + chunked(EVENTS)
    with HostileServer(default=[Repeat((Read(), Send(reply)))]) as server:
        assert _stream_twice(transport, server) == [TEXT, TEXT]
        second = server.requests[1].decode("latin-1").lower()
    assert "cookie:" not in second
    assert len(transport.session.cookies) == 0
