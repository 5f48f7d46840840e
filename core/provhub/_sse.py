"""An incremental decoder for Server-Sent Events (text/event-stream) over bytes.

It follows the WHATWG HTML Standard, §9.2.5 "Parsing an event stream" and §9.2.6
"Interpreting an event stream" (https://html.spec.whatwg.org/multipage/server-sent-events.html),
and returns only what provhub's streams need: each event's ``data`` payload, as bytes.

Why hand-written: the core may depend only on pluggy, requests and structlog, and it
needs a push-style parser fed one network read at a time. The candidates compared:

- ``sseclient-py``: pulls from the source it wraps (no incremental feed), decodes every
  line to ``str`` and builds an ``Event`` object per event.
- ``httpx-sse``: bound to httpx (it reads lines from an ``httpx.Response``).
- ``requests-sse``: an extra dependency; an ``EventSource`` that owns the request and
  yields whole ``MessageEvent`` objects with ``str`` data.

Payloads stay ``bytes`` because callers hand them straight to ``json.loads``, which
decodes UTF-8 itself; invalid UTF-8 then surfaces there as a ``ValueError`` that the
caller maps to a typed error, and the hot path never builds a ``str``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["SSEDecodeError", "SSEDecoder", "iter_sse"]

_BOM = b"\xef\xbb\xbf"


class SSEDecodeError(ValueError):
    """The byte stream is not acceptable SSE (e.g. a line longer than max_line_bytes)."""


class SSEDecoder:
    """Push decoder: feed it network reads, get back the data of each completed event.

    Reads may be split anywhere: inside a line, between ``\\r`` and ``\\n``, inside a
    UTF-8 sequence. Lines end with ``\\r\\n``, ``\\n`` or a lone ``\\r``; a blank line
    dispatches the event. Only the ``data`` field affects the result: ``event``, ``id``
    and ``retry`` are valid fields with nothing to do here (provhub never reconnects and
    chat streams carry their type inside the JSON), unknown fields and comment lines
    (starting with ``:``) are ignored, as §9.2.6 prescribes.

    Args:
        max_line_bytes: longest line accepted, terminator excluded. A longer line raises
            `SSEDecodeError` as soon as it is seen, so a hostile upstream cannot make the
            decoder buffer without bound. After that error the decoder must not be reused.
        max_event_bytes: largest event payload accepted (its data values joined). One
            event of millions of short ``data:`` lines would otherwise grow without bound
            while each line stays short; the values are joined as they arrive, so the
            memory held is about the payload itself.
    """

    __slots__ = (
        "_careful",
        "_first",
        "_max",
        "_max_event",
        "_max_single",
        "_rest",
        "_start",
        "_swallow_lf",
        "_tail",
        "_tail_len",
    )

    def __init__(self, max_line_bytes: int = 1 << 20, max_event_bytes: int = 4 << 20) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be at least 1, not {max_line_bytes}")
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be at least 1, not {max_event_bytes}")
        self._max = max_line_bytes
        self._max_event = max_event_bytes
        # A one-line event this short is within both limits: the fast path takes it.
        self._max_single = min(max_line_bytes, max_event_bytes)
        self._reset()

    def _reset(self) -> None:
        # Pieces of the current unterminated line, kept apart until a terminator
        # arrives so a long line fed in small reads is joined once, not per read.
        self._tail: list[bytes] = []
        self._tail_len = 0
        # The previous read ended with "\r": a "\n" opening this read belongs to it.
        self._swallow_lf = False
        # Nothing seen yet, so a leading BOM may still arrive (§9.2.5: one leading
        # U+FEFF is ignored).
        self._start = True
        # Any of the three states above is set: take the careful path in feed().
        self._careful = True
        # Data-field values of the event being built: the first (None before it),
        # and the further ones joined as they come, each after its LF.
        self._first: bytes | None = None
        self._rest = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Decode the next network read (any size, possibly empty).

        Returns:
            The data payload of every event this read completed, in order: the event's
            data-field values joined with ``b"\\n"``. Events without a data field are
            not returned.

        Raises:
            SSEDecodeError: a line is longer than ``max_line_bytes``.
        """
        if self._careful:
            # Whatever _prepare() returns starts on a line boundary with no state
            # left to settle, so the fast path below applies to it as well.
            data = self._prepare(data)
        if self._first is None and 13 not in data:
            # The typical read is exactly one event of one line, b"data: X\n\n":
            # answer it with one partition and one slice, without the line loop.
            # ("13 in" finds a CR with memchr; "b'\r' in" costs ~8x more on 3.11.)
            head, lf, after = data.partition(b"\n")
            if after == b"\n" and len(head) <= self._max_single:
                if head[:6] == b"data: ":
                    return [head[6:]]
                if head[:5] == b"data:":
                    return [head[5:]]
            elif not lf:
                # No line ending at all: the start of a line the next reads finish.
                if data:
                    self._hold(data)
                return []
        if not data:
            return []
        # bytes.splitlines() splits on exactly the §9.2.5 line endings (CRLF, LF, CR),
        # unlike str.splitlines(), and drops the final line ending.
        lines = data.splitlines()
        end = data[-1]
        if end == 0x0D:
            # A final CR is a complete line ending; only a LF opening the next read
            # still belongs to it.
            self._swallow_lf = self._careful = True
        elif end != 0x0A:
            self._hold(lines.pop())
        if len(data) > self._max:
            self._check(lines)
        out: list[bytes] = []
        # The first data value stays a plain local; only a multi-line event uses the
        # list, so the common one-line event costs no list and no join.
        first = self._first
        for line in lines:
            if line:
                # Slice-compare is cheaper than startswith (no method call).
                if line[:6] == b"data: ":
                    value = line[6:]
                elif line[:5] == b"data:":
                    value = line[5:]
                elif line == b"data":
                    # §9.2.6: a line without a colon is a field name with an empty value.
                    value = b""
                else:
                    # Comments, "event", "id", "retry" and unknown fields.
                    continue
                if first is None:
                    first = value
                    if len(value) > self._max_event:
                        self._too_big(len(value))
                else:
                    rest = self._rest
                    rest += b"\n"
                    rest += value
                    if len(first) + len(rest) > self._max_event:
                        self._too_big(len(first) + len(rest))
            elif first is not None:
                # §9.2.6 "dispatch the event": values joined by LF, no trailing LF.
                rest = self._rest
                if rest:
                    out.append(first + rest)
                    rest.clear()
                else:
                    out.append(first)
                first = None
        self._first = first
        return out

    def close(self) -> list[bytes]:
        """End of stream: return the event left pending, if any, and reset the decoder.

        §9.2.6 discards an event not followed by a blank line. provhub is lenient
        instead: an upstream or proxy that ends the body right after its last
        ``data:`` line would otherwise lose its final chunk or its ``[DONE]`` marker,
        and a browser-style reconnect that would resend it does not exist here. An
        unterminated final line counts as a line.
        """
        # A "\r" ending the last read was already a complete line ending.
        self._swallow_lf = False
        # Terminate any partial line, then dispatch with a blank line.
        out = self.feed(b"\n\n")
        self._reset()
        return out

    def _prepare(self, data: bytes) -> bytes:
        """Settle the carried-over state against ``data``; return the bytes to split.

        Handles a LF completing a CRLF split across reads, a line continued from
        earlier reads, and a BOM at the stream start. Returns ``b""`` when ``data``
        completes no line yet.
        """
        if self._swallow_lf and data:
            self._swallow_lf = False
            if data[0] == 0x0A:
                # §9.2.5: CRLF is one line ending even when a read splits the pair.
                data = data[1:]
        if not data:
            pass
        elif self._tail and not self._start and 10 not in data and 13 not in data:
            self._hold(data)  # still inside one long line: keep the piece, join later
            data = b""
        else:
            if self._tail:
                self._tail.append(data)
                data = b"".join(self._tail)
                self._tail = []
                self._tail_len = 0
            if self._start:
                if len(data) < len(_BOM) and _BOM.startswith(data):
                    # Perhaps a BOM split across reads: wait for the rest. Not counted
                    # against max_line_bytes, since these bytes may yet be stripped.
                    self._tail = [data]
                    data = b""
                else:
                    self._start = False
                    if data.startswith(_BOM):
                        data = data[len(_BOM) :]
        self._careful = self._start or self._swallow_lf or bool(self._tail)
        return data

    def _hold(self, piece: bytes) -> None:
        """Keep ``piece`` as part of the unterminated current line."""
        self._tail.append(piece)
        self._tail_len += len(piece)
        self._careful = True
        if self._tail_len > self._max:
            raise SSEDecodeError(
                f"event-stream line exceeds max_line_bytes ({self._max}) before its end"
            )

    def _too_big(self, size: int) -> None:
        raise SSEDecodeError(
            f"event-stream event of {size}+ bytes exceeds max_event_bytes ({self._max_event})"
        )

    def _check(self, lines: list[bytes]) -> None:
        """Raise if a complete line is longer than ``max_line_bytes``."""
        longest = max(map(len, lines), default=0)
        if longest > self._max:
            raise SSEDecodeError(
                f"event-stream line of {longest} bytes exceeds max_line_bytes ({self._max})"
            )


def iter_sse(
    chunks: Iterable[bytes], max_line_bytes: int = 1 << 20, max_event_bytes: int = 4 << 20
) -> Iterator[bytes]:
    """Decode an iterable of network reads into event data payloads (feed + close).

    Raises:
        SSEDecodeError: a line is longer than ``max_line_bytes``, or an event larger
            than ``max_event_bytes``.
    """
    decoder = SSEDecoder(max_line_bytes, max_event_bytes)
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.close()
