"""Tests of the incremental SSE decoder (provhub._sse).

Example tests pin each rule of WHATWG HTML §9.2.5/§9.2.6 that provhub relies on;
hypothesis properties check that no split of the byte stream into reads changes the
result, against an independent reference interpreter.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provhub._sse import SSEDecodeError, SSEDecoder, iter_sse

BOM = b"\xef\xbb\xbf"


def decode(chunks: Iterable[bytes], max_line_bytes: int = 1 << 20) -> list[bytes]:
    """Feed every read, then close, collecting all payloads."""
    decoder = SSEDecoder(max_line_bytes)
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.close())
    return out


def bytewise(stream: bytes) -> list[bytes]:
    """One-byte reads."""
    return [stream[i : i + 1] for i in range(len(stream))]


# --- single events and fields -------------------------------------------------------


def test_data_line_event_returns_its_payload() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\n') == [b'{"a":1}']


def test_payload_is_returned_only_once_the_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"\n") == [b"x"]


def test_several_events_in_one_read_are_returned_in_order() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n") == [b"1", b"2", b"3"]


def test_multi_line_data_is_joined_with_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: b\ndata: c\n\n") == [b"a\nb\nc"]


def test_multi_line_data_across_reads_is_joined_with_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"data: b\n") == []
    assert decoder.feed(b"\n") == [b"a\nb"]
    assert decoder.feed(b"data: c\n\n") == [b"c"]


def test_event_pending_from_an_earlier_read_gets_the_next_data_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"data: b\n\n") == [b"a\nb"]


def test_comment_lines_are_ignored() -> None:
    decoder = SSEDecoder()
    stream = b": keep-alive\ndata: a\n:\n: data: not data\ndata: b\n\n"
    assert decoder.feed(stream) == [b"a\nb"]


def test_comment_only_block_is_not_an_event() -> None:
    assert decode([b": ping\n\n: ping\n\n"]) == []


def test_field_without_space_after_colon() -> None:
    assert decode([b"data:x\n\n"]) == [b"x"]


def test_only_one_leading_space_is_stripped() -> None:
    assert decode([b"data:  x \n\n"]) == [b" x "]
    assert decode([b"data:\tx\n\n"]) == [b"\tx"]
    assert decode([b"data:  x \ndata:\ty\ndata:   \n\n"]) == [b" x \n\ty\n  "]


def test_colons_after_the_first_belong_to_the_value() -> None:
    assert decode([b"data: a:b: c\n\n"]) == [b"a:b: c"]


def test_line_without_colon_is_field_with_empty_value() -> None:
    assert decode([b"data\n\n"]) == [b""]
    assert decode([b"data\ndata\n\n"]) == [b"\n"]


def test_data_field_with_empty_value_is_an_event() -> None:
    assert decode([b"data:\n\n", b"data: \n\n"]) == [b"", b""]


def test_unknown_fields_are_ignored() -> None:
    stream = b"foo: bar\ndata: x\ndatum: y\nData: z\ndata : w\n data: v\nx\n\n"
    assert decode([stream]) == [b"x"]


def test_event_with_only_event_field_is_not_returned() -> None:
    assert decode([b"event: ping\n\n", b"event: message\ndata: x\n\n"]) == [b"x"]


def test_id_and_retry_fields_do_not_change_the_payload() -> None:
    stream = b"id: 42\nretry: 1000\nevent: delta\ndata: x\nid\nretry: soon\n\n"
    assert decode([stream]) == [b"x"]


def test_done_marker_passes_through() -> None:
    assert decode([b"data: {}\n\n", b"data: [DONE]\n\n"]) == [b"{}", b"[DONE]"]


def test_payload_bytes_are_returned_undecoded() -> None:
    # Invalid UTF-8 is the JSON step's business, not the decoder's.
    assert decode([b"data: \xff\xfe\n\n"]) == [b"\xff\xfe"]


def test_extra_blank_lines_do_not_make_events() -> None:
    assert decode([b"\n\n\ndata: x\n\n\n\n"]) == [b"x"]


# --- line endings ---------------------------------------------------------------------


def test_lf_line_endings() -> None:
    assert decode([b"data: a\ndata: b\n\ndata: c\n\n"]) == [b"a\nb", b"c"]


def test_crlf_line_endings() -> None:
    assert decode([b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n"]) == [b"a\nb", b"c"]


def test_lone_cr_ends_a_line() -> None:
    assert decode([b"data: a\rdata: b\r\rdata: c\r\r"]) == [b"a\nb", b"c"]


def test_mixed_line_endings_in_one_stream() -> None:
    assert decode([b"data: a\r\ndata: b\rdata: c\n\r\n"]) == [b"a\nb\nc"]


def test_cr_and_lf_split_across_reads_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [b"a\nb"]
    assert decoder.feed(b"\n") == []
    assert decoder.close() == []


def test_cr_at_end_of_read_completes_the_line_at_once() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [b"a"]


def test_cr_then_empty_read_then_lf_is_still_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [b"a"]


def test_cr_cr_lf_is_two_line_endings() -> None:
    assert decode([b"data: a\r\r\n"]) == [b"a"]
    assert decode([b"data: a\r", b"\r\n"]) == [b"a"]


# --- splits inside lines ------------------------------------------------------------------


def test_line_split_across_reads_is_reassembled() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"da") == []
    assert decoder.feed(b"ta: hel") == []
    assert decoder.feed(b"lo") == []
    assert decoder.feed(b"\n\n") == [b"hello"]


def test_utf8_sequence_split_across_reads_is_reassembled() -> None:
    payload = "héllo ✓".encode()
    stream = b"data: " + payload + b"\n\n"
    cut = stream.index(b"\xe2") + 1  # inside the three bytes of the check mark
    assert decode([stream[:cut], stream[cut:]]) == [payload]


def test_one_byte_reads_decode_like_one_read() -> None:
    stream = b": hi\r\nevent: e\r\ndata: a\r\ndata:b\r\n\r\ndata\r\rdata: [DONE]\n\n"
    assert decode(bytewise(stream)) == decode([stream]) == [b"a\nb", b"", b"[DONE]"]


def test_empty_reads_return_nothing_and_keep_state() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: a") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == [b"a"]
    assert decoder.feed(b"") == []


# --- byte order mark ------------------------------------------------------------------------


def test_bom_at_stream_start_is_skipped() -> None:
    assert decode([BOM + b"data: x\n\n"]) == [b"x"]


def test_bom_split_across_reads_is_skipped() -> None:
    assert decode([BOM[:1], BOM[1:2], BOM[2:] + b"data: x\n\n"]) == [b"x"]
    assert decode(bytewise(BOM + b"data: x\n\n")) == [b"x"]


def test_only_one_leading_bom_is_skipped() -> None:
    # The second BOM becomes part of the first field name, which is then unknown.
    assert decode([BOM + BOM + b"data: x\n\ndata: y\n\n"]) == [b"y"]


def test_bom_after_stream_start_is_not_skipped() -> None:
    assert decode([b"data: x\n\n" + BOM + b"data: y\n\n"]) == [b"x"]


def test_partial_bom_at_end_of_stream_is_an_ordinary_line() -> None:
    assert decode([BOM[:2]]) == []


# --- line length limit --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_stream",
    [
        pytest.param(lambda line: [line + b"\n\n"], id="one-read-lf"),
        pytest.param(lambda line: [line + b"\r\n\r\n"], id="one-read-crlf"),
        pytest.param(lambda line: [b"data: a\n\n" + line + b"\n\n"], id="second-event"),
        pytest.param(lambda line: [b"data: a\n\n", line + b"\n\n"], id="own-read"),
        pytest.param(lambda line: [line[:5], line[5:], b"\n\n"], id="split-unterminated"),
        pytest.param(lambda line: bytewise(line + b"\n\n"), id="one-byte-reads"),
        pytest.param(lambda line: [BOM + line + b"\n\n"], id="after-bom"),
        pytest.param(lambda line: [line], id="unterminated-at-close"),
    ],
)
@pytest.mark.parametrize("field", [b"data: ", b": comment "])
def test_line_longer_than_max_line_bytes_raises_and_just_under_passes(
    make_stream: Callable[[bytes], list[bytes]], field: bytes
) -> None:
    limit = 64
    fits = field + b"x" * (limit - len(field))
    assert len(fits) == limit
    decode(make_stream(fits), max_line_bytes=limit)
    with pytest.raises(SSEDecodeError, match="max_line_bytes"):
        decode(make_stream(fits + b"x"), max_line_bytes=limit)


def test_bom_does_not_count_towards_the_line_limit() -> None:
    assert decode(bytewise(BOM + b"x\n"), max_line_bytes=1) == []
    assert decode([BOM + b"data: x\n\n"], max_line_bytes=7) == [b"x"]


def test_overlong_unterminated_line_raises_before_its_end() -> None:
    decoder = SSEDecoder(max_line_bytes=100)
    decoder.feed(b"data: ")
    for _ in range(9):
        decoder.feed(b"x" * 10)
    with pytest.raises(SSEDecodeError):
        decoder.feed(b"x" * 10)


def test_decode_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        decode([b"data: " + b"x" * 10 + b"\n\n"], max_line_bytes=8)


def test_max_line_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        SSEDecoder(max_line_bytes=0)


# --- end of stream ----------------------------------------------------------------------------


def test_close_returns_event_missing_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\ndata: c\n") == [b"a"]
    assert decoder.close() == [b"b\nc"]


def test_close_treats_unterminated_final_line_as_a_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: [DO") == []
    assert decoder.feed(b"NE]") == []
    assert decoder.close() == [b"a\n[DONE]"]


def test_close_after_final_cr_returns_the_pending_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.close() == [b"a"]


def test_close_returns_nothing_when_nothing_is_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.close() == []
    assert decoder.feed(b"data: a\n\n: bye") == [b"a"]
    assert decoder.close() == []


def test_close_does_not_return_an_event_without_data() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"event: done\nid: 3")
    assert decoder.close() == []


def test_close_resets_the_decoder_for_a_new_stream() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\ndata: part")
    assert decoder.close() == [b"a\npart"]
    assert decoder.feed(BOM + b"data: b\n\n") == [b"b"]


def test_iter_sse_feeds_every_read_and_closes() -> None:
    reads = iter([b"data: a\n", b"\ndata: b\r", b"\ndata: c"])
    assert list(iter_sse(reads)) == [b"a", b"b\nc"]


def test_iter_sse_applies_the_line_limit() -> None:
    with pytest.raises(SSEDecodeError):
        list(iter_sse([b"data: " + b"x" * 100], max_line_bytes=50))


# --- properties -----------------------------------------------------------------------------

# Payload lines: any text without CR/LF, biased towards the characters that matter to
# the syntax (leading spaces, colons) plus NUL, a BOM character and multi-byte UTF-8
# (reads then split inside sequences).
_VALUES = st.text(
    st.one_of(
        st.sampled_from(" \t:\x00\ufeff"),
        st.characters(codec="utf-8", exclude_characters="\r\n"),
    ),
    max_size=12,
)
_NOISE = st.sampled_from(
    [
        b": comment",
        b":",
        b": data: not a field",
        b"event: delta",
        b"event",
        b"id: 7",
        b"id",
        b"retry: 3000",
        b"foo: bar",
        b"datum: x",
        b"Data: x",
        b" data: x",
        b"data : x",
    ]
)
_ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def _event(draw: st.DrawFn) -> tuple[list[bytes], bytes | None]:
    """The lines of one event (without its blank line) and its expected payload."""
    values = [v.encode() for v in draw(st.lists(_VALUES, max_size=3))]
    lines: list[bytes] = []
    for value in values:
        forms = [b"data: " + value]
        if not value.startswith(b" "):
            forms.append(b"data:" + value)
        if not value:
            forms.append(b"data")
        lines.append(draw(st.sampled_from(forms)))
    for noise in draw(st.lists(_NOISE, max_size=3)):
        lines.insert(draw(st.integers(0, len(lines))), noise)
    return lines, (b"\n".join(values) if values else None)


@st.composite
def _stream(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """An encoded event stream and the payloads it must decode to."""
    events = draw(st.lists(_event(), max_size=5))
    lines: list[bytes] = []
    for event_lines, _ in events:
        lines += event_lines
        lines += [b""] * draw(st.integers(1, 2))
    if draw(st.booleans()):
        # End without the final blank line(s): close() must still deliver the event.
        while lines and not lines[-1]:
            lines.pop()
    out = bytearray(BOM if draw(st.booleans()) else b"")
    # One ending for the whole stream, as real servers do, or a mix of all three.
    endings = draw(st.sampled_from([b"\n", b"\r\n", b"\r", None]))
    previous = b""
    for line in lines:
        ending = endings or draw(_ENDINGS)
        if not line and previous == b"\r" and ending == b"\n":
            ending = b"\r\n"  # a CR then LF would be one ending; keep the blank line
        out += line + ending
        previous = ending
    if lines and lines[-1] and draw(st.booleans()):
        del out[-len(previous) :]  # leave the final line unterminated
    expected = [payload for _, payload in events if payload is not None]
    return bytes(out), expected


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets; repeated offsets make empty reads."""
    bounds = [0, *sorted(cut % (len(data) + 1) for cut in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def _reads(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Any split of ``data`` into reads, biased towards the awkward ones."""
    how = draw(st.sampled_from(["random", "bytewise", "after-each-cr", "at-line-ends"]))
    if how == "bytewise":
        return bytewise(data)
    if how == "after-each-cr":
        cuts = [m.end() for m in re.finditer(b"\r", data)]
        cuts += draw(st.lists(st.integers(0, len(data)), max_size=4))
        return _split(data, cuts)
    if how == "at-line-ends":
        # Reads of whole lines and events, as upstreams flush them.
        ends = [m.end() for m in re.finditer(b"\r\n|\r|\n", data)]
        return _split(data, [end for end in ends if draw(st.booleans())])
    return _split(data, draw(st.lists(st.integers(0, len(data)), max_size=20)))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_split_of_any_stream_decodes_to_the_expected_payloads(data: st.DataObject) -> None:
    stream, expected = data.draw(_stream())
    reads = data.draw(_reads(stream))
    assert b"".join(reads) == stream
    assert decode([stream]) == expected
    assert decode(reads) == expected
    assert list(iter_sse(reads)) == expected


def _reference(stream: bytes, max_line_bytes: int) -> list[bytes] | None:
    """A plain, whole-stream reading of §9.2.5/§9.2.6 (lenient at the end), or None on error."""
    if stream.startswith(BOM):
        stream = stream[len(BOM) :]
    lines = re.split(rb"\r\n|\r|\n", stream)
    if not lines[-1]:
        lines.pop()  # the stream ended with a line ending
    if any(len(line) > max_line_bytes for line in lines):
        return None
    payloads: list[bytes] = []
    values: list[bytes] = []
    for line in [*lines, b""]:
        if not line:
            if values:
                payloads.append(b"\n".join(values))
            values = []
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            values.append(value[1:] if value.startswith(b" ") else value)
    return payloads


def _outcome(chunks: list[bytes], max_line_bytes: int) -> list[bytes] | None:
    try:
        return decode(chunks, max_line_bytes)
    except SSEDecodeError:
        return None


_FUZZ_PIECES = st.sampled_from(
    [
        *(b"data", b"data:", b"data: ", b":", b" ", b"\r", b"\n", b"\r\n", b"x", b"\x00"),
        *(b"\xff", BOM, BOM[:1], BOM[:2], b"event: e", b"[DONE]", b"\xe2\x9c\x93"),
    ]
)
_FUZZ_BYTES = st.one_of(st.binary(max_size=200), st.lists(_FUZZ_PIECES, max_size=50).map(b"".join))


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    stream=_FUZZ_BYTES,
    max_line_bytes=st.one_of(st.integers(1, 24), st.just(1 << 20)),
)
def test_arbitrary_bytes_in_any_split_decode_like_the_reference_or_raise_sse_decode_error(
    data: st.DataObject, stream: bytes, max_line_bytes: int
) -> None:
    reads = data.draw(_reads(stream))
    expected = _reference(stream, max_line_bytes)
    # Anything but SSEDecodeError propagates and fails the test.
    assert _outcome([stream], max_line_bytes) == expected
    assert _outcome(reads, max_line_bytes) == expected
