"""The shared HTTP transport (provhub._transport): pooling, SSE, timeouts, typed errors.

Every HTTP exchange goes to a real ``FakeUpstream`` on 127.0.0.1; ``parse_chat_stream`` is
also fed crafted payloads directly, since it is a pure function over bytes.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from provhub import (
    FinishReason,
    Limits,
    ProviderError,
    Timeouts,
    Transport,
    UpstreamConnectionError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    Usage,
    parse_chat_stream,
)
from provhub._cancel import CancelToken
from provhub.testing import Behaviour, FakeUpstream, Fault, unused_port_url

MESSAGES = [{"role": "user", "content": "Say hi"}]
FAST = Timeouts(connect=2.0, first_token=2.0, idle=1.0, total=5.0)
# Slack for timing assertions: two cores shared with other test runs.
MARGIN = 1.5

Item = str | FinishReason | Usage


def chat_url(upstream: FakeUpstream) -> str:
    return upstream.base_url + "/chat/completions"


def body(stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4", "messages": MESSAGES, "stream": stream, **extra}


def sse(
    transport: Transport,
    upstream: FakeUpstream,
    timeouts: Timeouts = FAST,
    payload: dict[str, Any] | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[bytes]:
    return transport.stream_sse(
        chat_url(upstream),
        payload if payload is not None else body(),
        headers={},
        timeouts=timeouts,
        provider="fake",
        cancel=cancel,
    )


def post(
    transport: Transport, upstream: FakeUpstream, timeouts: Timeouts = FAST, **extra: Any
) -> Any:
    payload = body(stream=False, **extra)
    return transport.post_json(
        chat_url(upstream), payload, headers={}, timeouts=timeouts, provider="fake"
    )


def request(mode: str, transport: Transport, url: str, timeouts: Timeouts = FAST) -> Any:
    """One call in ``mode`` "stream" (all SSE payloads) or "json" (the decoded answer)."""
    if mode == "stream":
        return list(
            transport.stream_sse(url, body(), headers={}, timeouts=timeouts, provider="fake")
        )
    return transport.post_json(url, body(False), headers={}, timeouts=timeouts, provider="fake")


def chat(transport: Transport, upstream: FakeUpstream, timeouts: Timeouts = FAST) -> list[Item]:
    return list(parse_chat_stream(sse(transport, upstream, timeouts), "fake"))


def text_of(items: list[Item]) -> str:
    return "".join(item for item in items if isinstance(item, str))


def consume(iterator: Iterator[Any], into: list[Any]) -> None:
    """Drain ``iterator`` into ``into``, so items before a failure stay observable."""
    for item in iterator:
        into.append(item)


@pytest.fixture
def transport() -> Iterator[Transport]:
    pooled = Transport()
    yield pooled
    pooled.close()


# -- streaming and connection reuse ---------------------------------------------------------


def test_stream_sse_yields_each_data_payload_and_stops_at_done(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(tokens=("Hel", "lo")))

    payloads = [json.loads(data) for data in sse(transport, upstream)]

    # role chunk, two content chunks, the finish chunk, the usage-only chunk; no [DONE].
    assert len(payloads) == 5
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert [p["choices"][0]["delta"]["content"] for p in payloads[1:3]] == ["Hel", "lo"]
    assert payloads[3]["choices"][0]["finish_reason"] == "stop"
    assert payloads[4]["choices"] == []


def test_events_after_done_are_not_yielded(upstream: FakeUpstream, transport: Transport) -> None:
    upstream.script(
        Behaviour(
            body=b'data: {"n": 1}\n\ndata: [DONE]\n\ndata: {"n": 2}\n\n',
            content_type="text/event-stream",
        )
    )

    assert list(sse(transport, upstream)) == [b'{"n": 1}']


def test_stream_without_done_marker_ends_at_end_of_body(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(tokens=("a", "b"), done=False))

    assert text_of(chat(transport, upstream)) == "ab"


def test_stream_sends_compact_json_with_default_and_caller_headers(
    upstream: FakeUpstream, transport: Transport
) -> None:
    payload = body(temperature=0.5, messages=[{"role": "user", "content": "héllo"}])

    list(
        transport.stream_sse(
            chat_url(upstream),
            payload,
            headers={"x-trace": "abc", "accept": "text/event-stream"},
            timeouts=FAST,
            provider="fake",
        )
    )

    (sent,) = upstream.requests
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.json == payload
    assert "héllo".encode() in sent.body  # UTF-8, not \u escapes
    assert b", " not in sent.body
    assert b": " not in sent.body
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-trace"] == "abc"
    assert sent.headers["accept"] == "text/event-stream"  # a caller's header wins


def test_streams_read_to_the_end_reuse_one_pooled_connection(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(
        Behaviour(),
        Behaviour(chunks=50, events_per_http_chunk=7),
        # Content-Length SSE body with an event after [DONE]: it must still be drained.
        Behaviour(
            body=b'data: {"n": 1}\n\ndata: [DONE]\n\ndata: {"n": 2}\n\n',
            content_type="text/event-stream",
        ),
        Behaviour(crlf=True, comments=True),
    )

    for _ in range(4):
        list(sse(transport, upstream))
    post(transport, upstream)
    post(transport, upstream)

    assert len(upstream.requests) == 6
    assert upstream.connections_accepted == 1


@pytest.mark.parametrize("mode", ["stream", "json"])
def test_cancelling_a_finished_call_leaves_its_pooled_connection_alone(
    upstream: FakeUpstream, transport: Transport, mode: str
) -> None:
    # A finished call's socket went back to the pool; a late cancel of that call (an
    # async stream closed after its end) must not shut down the connection that the
    # next request is about to reuse.
    token = CancelToken()
    if mode == "stream":
        list(sse(transport, upstream, cancel=token))
    else:
        transport.post_json(
            chat_url(upstream), body(False), headers={}, timeouts=FAST, provider="f", cancel=token
        )
    token.cancel()
    assert text_of(chat(transport, upstream)) == Behaviour().text()
    assert upstream.connections_accepted == 1


def test_more_threads_than_pooled_connections_never_fail(upstream: FakeUpstream) -> None:
    # 40 threads over a pool of 32: connections returned to a full pool are closed, and
    # a finished read must not touch its socket afterwards (it was EBADF, or another
    # thread's connection).
    pooled = Transport()
    errors: list[BaseException] = []

    def work() -> None:
        for _ in range(15):
            try:
                post(pooled, upstream)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(40)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        pooled.close()
    assert errors == []


def test_closing_the_iterator_early_closes_the_response_at_once(
    upstream: FakeUpstream, transport: Transport
) -> None:
    # A slow stream, so the server is still sending when the client leaves.
    upstream.script(Behaviour(chunks=200, chunk_delay=0.05))
    events = sse(transport, upstream)
    next(events)
    next(events)

    started = time.monotonic()
    events.close()  # type: ignore[attr-defined]

    assert upstream.wait_for_disconnects(1, timeout=5.0)
    assert time.monotonic() - started < MARGIN
    assert upstream.wait_for_open_connections(0)
    # The transport stays usable: the next call opens a fresh connection.
    assert text_of(chat(transport, upstream)) == Behaviour().text()
    assert upstream.connections_accepted == 2


def test_closed_transport_reconnects_on_next_use(
    upstream: FakeUpstream, transport: Transport
) -> None:
    chat(transport, upstream)
    transport.close()

    assert text_of(chat(transport, upstream)) == Behaviour().text()
    assert upstream.connections_accepted == 2


# -- HTTP errors ----------------------------------------------------------------------------

STATUSES = [
    (400, False),
    (401, False),
    (403, False),
    (404, False),
    (408, True),
    (429, True),
    (500, True),
    (502, True),
    (503, True),
]


@pytest.mark.parametrize("mode", ["stream", "json"])
@pytest.mark.parametrize(("status", "retryable"), STATUSES)
def test_http_error_status_maps_to_upstream_http_error(
    upstream: FakeUpstream, transport: Transport, mode: str, status: int, retryable: bool
) -> None:
    upstream.script(Behaviour(status=status))

    with pytest.raises(UpstreamHTTPError) as caught:
        request(mode, transport, chat_url(upstream))

    error = caught.value
    assert isinstance(error, ProviderError)
    assert isinstance(error, requests.HTTPError)
    assert error.status == status
    assert error.retryable is retryable
    assert error.provider == "fake"
    assert error.body == f"Fake upstream answered {status} as scripted."
    assert error.retry_after is None
    assert error.response is not None
    assert error.response.status_code == status
    assert f"HTTP {status}" in str(error)


def _http_date_in(seconds: float) -> Callable[[], str]:
    # Built when the test runs, not at collection: xdist may collect long before.
    return lambda: email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (lambda: "7", 7.0),
        (lambda: "0", 0.0),
        (lambda: "1.5", 1.5),
        (_http_date_in(30), 30.0),
        (lambda: "Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: retry now
        (lambda: "soon", None),
    ],
    ids=["seconds", "zero", "fractional", "http-date", "past-date", "garbage"],
)
def test_retry_after_in_seconds_or_http_date_is_reported_in_seconds(
    upstream: FakeUpstream,
    transport: Transport,
    status: int,
    header: Callable[[], str],
    expected: float | None,
) -> None:
    upstream.script(Behaviour(status=status, retry_after=header()))

    with pytest.raises(UpstreamHTTPError) as caught:
        list(sse(transport, upstream))

    assert caught.value.retryable is True
    if expected is None:
        assert caught.value.retry_after is None
    else:
        # HTTP-dates have whole-second resolution.
        assert caught.value.retry_after == pytest.approx(expected, abs=1.5)


def test_http_error_body_excerpt_is_short_and_single_line(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(
        Behaviour(
            status=500, body=b"Internal\n\n   error   " + b"x" * 2000, content_type="text/plain"
        )
    )

    with pytest.raises(UpstreamHTTPError) as caught:
        list(sse(transport, upstream))

    excerpt = caught.value.body
    assert excerpt.startswith("Internal error xxx")
    assert excerpt.endswith("...")
    assert len(excerpt) <= 200
    assert "\n" not in excerpt


# -- connection failures and timeouts -------------------------------------------------------


@pytest.mark.parametrize("mode", ["stream", "json"])
def test_refused_connection_is_a_retryable_upstream_connection_error(
    transport: Transport, mode: str
) -> None:
    url = unused_port_url() + "/v1/chat/completions"

    with pytest.raises(UpstreamConnectionError) as caught:
        request(mode, transport, url)

    error = caught.value
    assert isinstance(error, ProviderError)
    assert isinstance(error, requests.ConnectionError)
    assert error.retryable is True
    assert error.status is None
    assert error.provider == "fake"
    assert isinstance(error.__cause__, requests.ConnectionError)


@pytest.mark.parametrize("mode", ["stream", "json"])
@pytest.mark.parametrize(
    ("first_token", "total"), [(0.5, 5.0), (5.0, 0.5)], ids=["first-token", "total"]
)
def test_hang_before_headers_times_out_within_first_token_or_total_budget(
    upstream: FakeUpstream, transport: Transport, mode: str, first_token: float, total: float
) -> None:
    upstream.script(Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=30))
    timeouts = Timeouts(connect=2.0, first_token=first_token, idle=5.0, total=total)
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError) as caught:
        request(mode, transport, chat_url(upstream), timeouts)

    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 0.5 + MARGIN
    assert isinstance(caught.value, requests.Timeout)
    assert isinstance(caught.value, ProviderError)
    assert caught.value.retryable is True
    # The socket's own timeout is chained, whichever layer noticed it.
    assert isinstance(caught.value.__cause__, TimeoutError)
    # The client hung up; the server did not have to wait out its 30 s hang.
    assert upstream.wait_for_disconnects(1)


def test_silence_after_headers_is_bounded_by_first_token_not_idle(
    upstream: FakeUpstream, transport: Transport
) -> None:
    # Headers arrive at once, then nothing: the first-token budget still applies.
    upstream.script(
        Behaviour(fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=0, role_chunk=False, hang_seconds=30)
    )
    timeouts = Timeouts(connect=2.0, first_token=0.5, idle=10.0, total=20.0)
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError, match="first-token"):
        list(sse(transport, upstream, timeouts))

    assert time.monotonic() - started < 0.5 + MARGIN


def test_hang_between_chunks_times_out_within_idle_after_delivering_earlier_tokens(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=2, hang_seconds=30))
    timeouts = Timeouts(connect=2.0, first_token=10.0, idle=0.5, total=20.0)
    items: list[Item] = []
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError, match="idle") as caught:
        consume(parse_chat_stream(sse(transport, upstream, timeouts), "fake"), items)

    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 0.5 + MARGIN
    assert items == ["w0 ", "w1 "]
    assert caught.value.retryable is True
    assert upstream.wait_for_disconnects(1)


def test_slow_drip_stream_is_cut_off_by_the_total_timeout(
    upstream: FakeUpstream, transport: Transport
) -> None:
    # Every byte arrives well within the idle budget and the first events arrive early:
    # only the total deadline can stop this stream.
    upstream.script(Behaviour(fault=Fault.SLOW_DRIP, drip_interval=0.002, chunks=200))
    # The first event takes about 0.4 s of drip on a quiet machine: 2 s leaves room for
    # a loaded one (at 1 s, a busy CI machine saw no event before the deadline).
    timeouts = Timeouts(connect=2.0, first_token=30.0, idle=0.5, total=2.0)
    payloads: list[bytes] = []
    started = time.monotonic()

    with pytest.raises(UpstreamTimeoutError, match="total") as caught:
        consume(sse(transport, upstream, timeouts), payloads)

    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 2.0 + MARGIN
    assert payloads  # the stream was flowing, not silent
    assert caught.value.retryable is True


def test_slow_drip_json_answer_is_cut_off_by_the_total_timeout(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(fault=Fault.SLOW_DRIP, drip_interval=0.002, chunks=2000))
    timeouts = Timeouts(connect=2.0, first_token=30.0, idle=0.5, total=1.0)
    started = time.monotonic()

    # Without streaming the whole body is the first token, so either budget may be named.
    with pytest.raises(UpstreamTimeoutError, match=r"total|first-token") as caught:
        post(transport, upstream, timeouts)

    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.0 + MARGIN
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    ("fault", "delivered"),
    [(Fault.DROP_MID_STREAM, "w0 w1 "), (Fault.DROP_AFTER_HEADERS, "")],
)
def test_connection_dropped_mid_response_is_a_retryable_provider_error(
    upstream: FakeUpstream, transport: Transport, fault: Fault, delivered: str
) -> None:
    upstream.script(Behaviour(fault=fault, fault_after=2))
    items: list[Item] = []

    with pytest.raises(ProviderError) as caught:
        consume(parse_chat_stream(sse(transport, upstream), "fake"), items)

    assert isinstance(caught.value, UpstreamConnectionError)
    assert caught.value.retryable is True
    assert text_of(items) == delivered


def test_dropped_json_response_is_a_provider_error(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(fault=Fault.DROP_MID_STREAM))

    with pytest.raises(UpstreamConnectionError):
        post(transport, upstream)


def test_cancel_token_aborts_a_blocked_read_at_once(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(fault=Fault.HANG_BETWEEN_CHUNKS, hang_seconds=30))
    timeouts = Timeouts(connect=2.0, first_token=20.0, idle=20.0, total=30.0)
    cancel = CancelToken()
    events = sse(transport, upstream, timeouts, cancel=cancel)
    next(events)  # the role chunk: the response is live and attached to the token

    timer = threading.Timer(0.2, cancel.cancel)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamConnectionError, match="cancelled"):
            list(events)
    finally:
        timer.join()

    assert time.monotonic() - started < 0.2 + MARGIN
    assert upstream.wait_for_disconnects(1)


# -- wire-format faults through parse_chat_stream ----------------------------------------------


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        (Fault.MALFORMED_JSON, "malformed chunk"),
        (Fault.INVALID_UTF8, "invalid UTF-8"),
        (Fault.ERROR_OBJECT, "The server had an error"),
    ],
)
def test_bad_chunk_mid_stream_is_an_upstream_protocol_error(
    upstream: FakeUpstream, transport: Transport, fault: Fault, match: str
) -> None:
    upstream.script(Behaviour(fault=fault, fault_after=1))
    items: list[Item] = []

    with pytest.raises(UpstreamProtocolError, match=match) as caught:
        consume(parse_chat_stream(sse(transport, upstream), "fake"), items)

    assert not isinstance(caught.value, ValueError | KeyError | LookupError)
    assert caught.value.provider == "fake"
    assert items == ["w0 "]


def test_error_object_mid_stream_carries_its_status_and_is_retryable(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(fault=Fault.ERROR_OBJECT, fault_after=0))

    with pytest.raises(UpstreamProtocolError) as caught:
        chat(transport, upstream)

    assert caught.value.status == 500
    assert caught.value.retryable is True


def test_line_longer_than_max_line_bytes_is_a_protocol_error(upstream: FakeUpstream) -> None:
    small = Transport(limits=Limits(max_line_bytes=64))
    try:
        with pytest.raises(UpstreamProtocolError, match="max_line_bytes"):
            list(sse(small, upstream))
    finally:
        small.close()


def test_huge_line_over_the_default_limit_is_a_protocol_error_after_earlier_tokens(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(fault=Fault.HUGE_LINE, fault_after=1))
    items: list[Item] = []

    with pytest.raises(UpstreamProtocolError, match="max_line_bytes"):
        consume(parse_chat_stream(sse(transport, upstream), "fake"), items)

    assert items == ["w0 "]


@pytest.mark.parametrize("mode", ["stream", "json"])
def test_response_larger_than_max_response_bytes_is_refused(
    upstream: FakeUpstream, mode: str
) -> None:
    upstream.default = Behaviour(chunks=500)
    small = Transport(limits=Limits(max_response_bytes=1024))
    try:
        with pytest.raises(UpstreamProtocolError, match="max_response_bytes"):
            request(mode, small, chat_url(upstream))
    finally:
        small.close()


def test_request_larger_than_max_request_bytes_is_refused_before_sending(
    upstream: FakeUpstream,
) -> None:
    small = Transport(limits=Limits(max_request_bytes=200))
    payload = body(messages=[{"role": "user", "content": "x" * 500}])
    try:
        with pytest.raises(ProviderError, match="max_request_bytes"):
            list(sse(small, upstream, payload=payload))
    finally:
        small.close()
    assert upstream.requests == []


# -- stream framing and markers ----------------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("comments", [False, True], ids=["plain", "comments"])
@pytest.mark.parametrize("per_chunk", [1, 3, 1000], ids=["1-event", "3-events", "all-events"])
def test_crlf_and_comment_streams_parse_to_the_same_answer(
    upstream: FakeUpstream, transport: Transport, crlf: bool, comments: bool, per_chunk: int
) -> None:
    behaviour = Behaviour(chunks=12, crlf=crlf, comments=comments, events_per_http_chunk=per_chunk)
    upstream.script(behaviour)

    items = chat(transport, upstream)

    assert text_of(items) == behaviour.text()
    assert items[-2:] == [FinishReason("stop"), Usage(2, 12, 14)]


def test_usage_only_chunk_with_empty_choices_becomes_a_usage_marker(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(tokens=("a", "b", "c")))

    items = chat(transport, upstream)

    # "Say hi" is two prompt words; three completion tokens.
    assert items == ["a", "b", "c", FinishReason("stop"), Usage(2, 3, 5)]


def test_stream_without_usage_chunk_yields_no_usage_marker(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(tokens=("a",), usage=False))

    assert chat(transport, upstream) == ["a", FinishReason("stop")]


@pytest.mark.parametrize("reason", ["stop", "length", "content_filter", "tool_calls"])
def test_finish_reason_becomes_a_finish_reason_marker(
    upstream: FakeUpstream, transport: Transport, reason: str
) -> None:
    upstream.script(Behaviour(tokens=("a",), finish_reason=reason, usage=False))

    assert chat(transport, upstream) == ["a", FinishReason(reason)]


# -- post_json ----------------------------------------------------------------------------------


def test_post_json_returns_the_decoded_completion(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(tokens=("Hello", " there"), finish_reason="length"))

    answer = post(transport, upstream, temperature=0.1)

    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "Hello there"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    (sent,) = upstream.requests
    assert sent.json == body(stream=False, temperature=0.1)


def test_post_json_with_a_non_json_answer_is_a_protocol_error(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(fault=Fault.MALFORMED_JSON))

    with pytest.raises(UpstreamProtocolError, match="not JSON") as caught:
        post(transport, upstream)

    assert caught.value.body == "{not json"


def test_post_json_with_absurdly_nested_json_is_a_protocol_error(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.script(Behaviour(body=b"[" * 100_000, content_type="application/json"))

    with pytest.raises(UpstreamProtocolError):
        post(transport, upstream)


# -- parse_chat_stream on crafted payloads -----------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"",
        b"\xff\xfe",
        b'{"choices":[{"delta":{"content":"bad \xff"}}]}',
        b"[1, 2]",
        b'"a string"',
        b"null",
        b'{"choices": 5}',
        b'{"choices": {"first": 1}}',
        b'{"choices": ["x"]}',
        b'{"choices": [{"delta": 3}]}',
        b'{"choices": [{"delta": {"content": 5}}]}',
        b'{"choices": [{"delta": {"content": ["a"]}}]}',
        b'{"usage": 7}',
        b"[" * 100_000,
    ],
    ids=lambda payload: repr(payload[:30]),
)
def test_malformed_chunk_is_an_upstream_protocol_error_never_a_raw_parse_error(
    payload: bytes,
) -> None:
    with pytest.raises(UpstreamProtocolError) as caught:
        list(parse_chat_stream(iter([payload]), "fake"))

    assert caught.value.provider == "fake"
    assert caught.value.retryable is False
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    ("error", "status", "retryable"),
    [
        ({"message": "slow down", "type": "rate_limit_exceeded"}, None, True),
        ({"message": "overloaded", "code": 529, "type": "overloaded_error"}, 529, True),
        ({"message": "bad input", "code": 400, "type": "invalid_request_error"}, 400, False),
        ({"message": "no code", "code": "model_not_found"}, None, False),
        ("plain string error", None, False),
    ],
)
def test_error_object_maps_code_and_type_to_status_and_retryable(
    error: Any, status: int | None, retryable: bool
) -> None:
    chunk = json.dumps({"error": error}).encode()

    with pytest.raises(UpstreamProtocolError) as caught:
        list(parse_chat_stream(iter([chunk]), "fake"))

    assert caught.value.status == status
    assert caught.value.retryable is retryable


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["choices", "delta", "content", "usage", "error", "finish_reason", "message", "x"]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(st.lists(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode())))
def test_parse_chat_stream_yields_markers_or_raises_only_protocol_errors(
    payloads: list[bytes],
) -> None:
    try:
        for item in parse_chat_stream(iter(payloads), "fake"):
            assert type(item) in (str, FinishReason, Usage)
            if type(item) is str:
                assert item
    except UpstreamProtocolError:
        pass


# -- thread safety --------------------------------------------------------------------------


def test_sixteen_threads_sharing_one_transport_each_get_their_own_stream(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.default = Behaviour(chunks=20, chunk_delay=0.002)
    expected = Behaviour(chunks=20).text()
    barrier = threading.Barrier(16)
    results: dict[int, tuple[set[str], str]] = {}
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            model = f"model-{index}"
            barrier.wait(timeout=10)
            for _ in range(3):
                models: set[str] = set()
                parts: list[str] = []
                for data in sse(transport, upstream, payload=body(model=model)):
                    chunk = json.loads(data)
                    models.add(chunk["model"])
                    for choice in chunk["choices"]:
                        parts.append(choice["delta"].get("content") or "")
                results[index] = (models, "".join(parts))
        except BaseException as exc:  # reported below, with the thread's index
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert failures == []
    assert results == {i: ({f"model-{i}"}, expected) for i in range(16)}
    assert len(upstream.requests) == 48
    # Connections are pooled and reused, never more than one per thread.
    assert upstream.connections_accepted <= 16
