"""Property-based fuzzing of what an upstream or a caller can throw at provhub.

Two surfaces take untrusted input: the SSE decoder and chat-chunk parser (bytes from an
upstream) and message validation (values from a caller). Neither may crash with anything but
provhub's typed errors, nor hang. CI runs the short ``ci`` hypothesis profile; the deep run is
``HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py`` (profiles in tests/conftest.py). A
coverage-guided atheris harness for the same targets is tests/fuzz_atheris.py (not in CI).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_config
from provhub import (
    AllProvidersFailedError,
    Capability,
    FinishReason,
    Hub,
    InvalidRequestError,
    ProviderError,
    StreamInterruptedError,
    Usage,
    parse_chat_stream,
)
from provhub._request import validate_messages
from provhub._sse import SSEDecodeError, SSEDecoder
from provhub.testing import Behaviour, FakeUpstream
from provhub_providers.openai_compatible import OpenAICompatible

BOM = b"\xef\xbb\xbf"
TOTAL = 3.0
FAST = {"connect": 1.0, "first_token": 1.0, "idle": 1.0, "total": TOTAL}

# -- strategies --------------------------------------------------------------------------------

# JSON values shaped like chat-completion chunks, so the parser's deeper branches are reached:
# the keys it looks for, with values of every JSON type in every place.
KEYS = st.sampled_from(
    ["choices", "delta", "content", "finish_reason", "usage", "error", "message", "code",
     "type", "prompt_tokens", "completion_tokens", "total_tokens", "index", "role"]
) | st.text(max_size=4)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=16,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


# A data payload: usually JSON (sometimes corrupted), sometimes raw bytes, sometimes a
# pathological nesting that blows Python's recursion limit inside json.loads.
PAYLOADS = st.one_of(
    JSON_VALUES.map(_dumps),
    st.tuples(JSON_VALUES.map(_dumps), st.binary(min_size=1, max_size=4), st.integers(0, 64)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    ),
    st.binary(max_size=40),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 200_000).map(lambda n: b'{"choices":' * n),
    st.sampled_from([b"[DONE]", b"", b"{}", b'{"choices":[]}', b'{"error":{}}', b"null"]),
)

LINES = st.one_of(
    PAYLOADS.map(lambda p: b"data: " + p),
    PAYLOADS.map(lambda p: b"data:" + p),
    st.sampled_from(
        [b"", b"", b"data", b": keep-alive", b"event: ping", b"id: 7", b"retry: 10", BOM]
    ),
    st.binary(max_size=24),
)
EOLS = st.sampled_from([b"\n", b"\r\n", b"\r"])
EVENT_STREAMS = st.lists(st.tuples(LINES, EOLS), max_size=10).map(
    lambda pairs: b"".join(line + eol for line, eol in pairs)
)


def _split(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    previous = 0
    for cut in sorted(set(cuts)):
        yield data[previous:cut]
        previous = cut
    yield data[previous:]


def reference_events(data: bytes, max_line_bytes: int) -> list[bytes]:
    """The WHATWG event-stream algorithm (§9.2.5-9.2.6), written for clarity, not speed.

    With provhub's documented leniency: at end of stream an unterminated last line counts
    and a pending event is dispatched.
    """
    if data.startswith(BOM):
        data = data[len(BOM) :]
    lines = re.split(rb"\r\n|\r|\n", data)
    if not lines[-1]:
        lines.pop()  # the stream ended with a line terminator
    events: list[bytes] = []
    values: list[bytes] | None = None
    for line in lines:
        if len(line) > max_line_bytes:
            raise SSEDecodeError("line too long")
        if not line:
            if values is not None:
                events.append(b"\n".join(values))
            values = None
        elif not line.startswith(b":"):
            name, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                values = [*(values or []), value]
    if values is not None:
        events.append(b"\n".join(values))
    return events


def decode(chunks: Iterator[bytes], max_line_bytes: int) -> list[bytes]:
    decoder = SSEDecoder(max_line_bytes)
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


# -- the SSE decoder ---------------------------------------------------------------------------


@given(data=EVENT_STREAMS, cut_data=st.data(), max_line=st.sampled_from([8, 64, 1 << 20]))
def test_sse_decoder_matches_the_whatwg_algorithm_however_reads_are_split(
    data: bytes, cut_data: st.DataObject, max_line: int
) -> None:
    cuts = cut_data.draw(st.lists(st.integers(0, len(data)), max_size=12), label="cuts")
    try:
        expected: list[bytes] | None = reference_events(data, max_line)
    except SSEDecodeError:
        expected = None
    try:
        got: list[bytes] | None = decode(_split(data, cuts), max_line)
    except SSEDecodeError:  # the decoder's only error: a line over max_line_bytes
        got = None
    assert got == expected


@given(reads=st.lists(st.binary(max_size=64), max_size=16))
def test_sse_decoder_raises_nothing_but_its_typed_error_on_arbitrary_bytes(
    reads: list[bytes],
) -> None:
    decoder = SSEDecoder(32)
    try:
        for read in reads:
            assert all(isinstance(event, bytes) for event in decoder.feed(read))
        decoder.close()
    except SSEDecodeError:
        pass


# -- the chat-chunk parser ---------------------------------------------------------------------


@given(payloads=st.lists(PAYLOADS, max_size=6))
def test_chat_chunk_parser_yields_tokens_and_markers_or_raises_upstream_protocol_error(
    payloads: list[bytes],
) -> None:
    error: ProviderError | None = None
    try:
        for item in parse_chat_stream(iter(payloads), "fuzzed"):
            assert type(item) is str or isinstance(item, FinishReason | Usage)
    except ProviderError as exc:  # UpstreamProtocolError: a malformed chunk or an error object
        error = exc
    if error is not None:
        assert error.provider == "fuzzed"
        assert str(error)  # renders without raising


def test_deeply_nested_json_in_a_chunk_is_a_protocol_error_not_a_recursion_error() -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ProviderError) as caught:
        list(parse_chat_stream(iter([nested]), "fuzzed"))
    assert isinstance(caught.value.__cause__, RecursionError)


def test_any_event_stream_body_through_the_transport_gives_tokens_or_a_typed_error() -> None:
    """Arbitrary bytes as a real HTTP response body, read by the real transport and hub."""
    with FakeUpstream(record=False) as upstream:
        hub = Hub(
            make_config(retries=0, breaker_threshold=1_000_000, timeouts=FAST),
            load_plugins=False,
        )
        # Every capability: a message list that validates must never be refused for it.
        hub.register(
            OpenAICompatible("fuzzed", upstream.base_url, ["gpt-4"], capabilities=~Capability.NONE)
        )

        @settings(suppress_health_check=[HealthCheck.too_slow])
        @given(body=EVENT_STREAMS, status=st.sampled_from([200, 200, 200, 400, 500]))
        def check(body: bytes, status: int) -> None:
            upstream.script(Behaviour(status=status, body=body, content_type="text/event-stream"))
            started = time.monotonic()
            tokens: list[str] = []
            error: Exception | None = None
            try:
                with hub.stream("gpt-4", [{"role": "user", "content": "hi"}]) as stream:
                    for token in stream:
                        assert type(token) is str
                        tokens.append(token)
            except (StreamInterruptedError, AllProvidersFailedError) as exc:
                error = exc  # anything else fails the test
            assert time.monotonic() - started < TOTAL + 1.0
            if isinstance(error, StreamInterruptedError):
                assert error.provider == "fuzzed"
                assert error.text == "".join(tokens)
            elif isinstance(error, AllProvidersFailedError):
                assert tokens == []
                assert [a.provider for a in error.attempts] == ["fuzzed"]
                assert isinstance(error.__cause__, ProviderError)

        try:
            check()
        finally:
            hub.close()


# -- message validation ------------------------------------------------------------------------

ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
ODD_VALUES = st.one_of(
    JSON_VALUES,
    st.binary(max_size=4),
    st.sets(st.integers(), max_size=2),
    st.builds(object),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Ll"]), max_size=6),
    st.floats(allow_nan=True),
)
TEXTS = st.text(max_size=20) | st.text(
    alphabet=st.characters(categories=["Cs", "Co", "Cn", "Zs", "So"]), max_size=6
)
PARTS = st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"])}, optional={
        "text": TEXTS | ODD_VALUES,
        "image_url": st.dictionaries(TEXTS, ODD_VALUES, max_size=2),
    }) | ODD_VALUES,
    max_size=3,
)  # fmt: skip
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": ROLES, "content": TEXTS}, optional={"name": st.text(max_size=8) | ODD_VALUES}
    ),
    st.fixed_dictionaries({"role": ROLES | ODD_VALUES, "content": TEXTS | PARTS | ODD_VALUES}),
    st.fixed_dictionaries(
        {"role": ROLES, "content": TEXTS},
        optional={"name": TEXTS},
    ).flatmap(lambda m: st.dictionaries(TEXTS, ODD_VALUES, max_size=2).map(lambda x: {**x, **m})),
    st.dictionaries(TEXTS, ODD_VALUES, max_size=3),
    ODD_VALUES,
)
MESSAGES = st.lists(MESSAGE, max_size=4) | ODD_VALUES


@given(messages=MESSAGES)
def test_message_validation_accepts_or_raises_invalid_request_error(messages: Any) -> None:
    try:
        checked = validate_messages(messages)
    except InvalidRequestError:
        return
    assert checked
    assert all(isinstance(m, dict) for m in checked)
    # What passes must be sendable exactly as the transport encodes a request.
    json.dumps({"messages": checked}, separators=(",", ":"), ensure_ascii=False).encode()


def test_a_lone_surrogate_anywhere_in_a_message_is_an_invalid_request() -> None:
    for message in (
        {"role": "user", "content": "caf\udce9"},
        {"role": "user", "content": [{"type": "text", "text": "\ud800"}]},
        {"role": "user", "content": "ok", "name": "\udfff"},
        {"role": "user", "content": "ok", "\ud83d": "key"},
    ):
        with pytest.raises(InvalidRequestError, match="Unicode"):
            validate_messages([message])


def test_any_message_list_is_answered_or_refused_with_invalid_request_error() -> None:
    """What validation lets through must be sendable: the hub answers it, never a crash."""
    with FakeUpstream(record=False) as upstream:
        hub = Hub(
            make_config(retries=0, breaker_threshold=1_000_000, timeouts=FAST), load_plugins=False
        )
        # Every capability: a message list that validates must never be refused for it.
        hub.register(
            OpenAICompatible("fuzzed", upstream.base_url, ["gpt-4"], capabilities=~Capability.NONE)
        )
        expected = Behaviour().answer_tokens()

        @settings(suppress_health_check=[HealthCheck.too_slow])
        @given(messages=MESSAGES)
        def check(messages: Any) -> None:
            try:
                stream = hub.stream("gpt-4", messages)
            except InvalidRequestError:
                return
            with stream:
                assert tuple(stream) == expected

        try:
            check()
        finally:
            hub.close()
