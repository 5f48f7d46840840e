"""The body of one HTTP response, read with bounded memory whatever its framing.

:class:`Body` reads the body itself (chunked, length-delimited or read to the
close), so that no single read returns more than one buffer, decompresses
``gzip``/``deflate`` incrementally with a bounded output per step (a 1 MB gzip
bomb never inflates to more than one block at a time), and counts the
delivered bytes against ``limits.max_response_bytes``. Hand-written for the
same reason as :mod:`provhub._exchange`: urllib3 decodes a whole chunk, and
decompresses it whole, before anyone may check a limit.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from provhub._errors import UpstreamProtocolError
from provhub._exchange import BLOCK, Cancelled, Expired, Response

if TYPE_CHECKING:
    from provhub._loopwire import Head

__all__ = ["Body", "Ended"]

# Compressed bytes fed to the decoder per step.
_FEED = 16384
# A chunk-size line (hex digits and extensions) and the trailer section.
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_BYTES = 16384


class Ended(Exception):
    """The connection closed before the body was complete."""


def _decoder(coding: str) -> Any:
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _Deflate()
    raise UpstreamProtocolError(
        f"unsupported Content-Encoding {coding!r} (provhub accepts gzip and deflate)",
        retryable=True,
    )


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped, or raw (a common mistake)."""

    def __init__(self) -> None:
        self._obj: Any = None
        self._first = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._obj is None:
            self._first += data
            if len(self._first) < 2:
                return b""
            wrapped = (self._first[0] & 0x0F) == 8 and int.from_bytes(self._first[:2]) % 31 == 0
            self._obj = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._first = self._first, b""
        return self._obj.decompress(data, max_length)  # type: ignore[no-any-return]

    @property
    def unconsumed_tail(self) -> bytes:
        return b"" if self._obj is None else self._obj.unconsumed_tail

    @property
    def eof(self) -> bool:
        return self._obj is not None and self._obj.eof

    @property
    def unused_data(self) -> bytes:
        return b"" if self._obj is None else self._obj.unused_data


class Body:
    """The body of one response, read in blocks of at most :data:`BLOCK` bytes.

    :meth:`read` returns the next decoded block, ``b""`` at the end; ``complete``
    says the framing reached its end (so the connection can be reused).
    Raises :class:`UpstreamProtocolError` (framing, encoding, size limit),
    :class:`Expired`, :class:`Cancelled`, ``Ended`` (connection closed early) or
    ``OSError`` (connection broke).
    """

    __slots__ = (
        "_buf",
        "_coding",
        "_decoder",
        "_drained",
        "_error",
        "_exchange",
        "_fed",
        "_fp",
        "_framing",
        "_input",
        "_left",
        "_limit",
        "_over",
        "_pending",
        "_tail",
        "complete",
        "delivered",
        "received",
    )

    def __init__(self, response: Response | Head, limit: int) -> None:
        exchange = response.exchange
        assert exchange is not None
        self._exchange = exchange
        self._fp: Any = response.fp
        self._framing = response.framing
        self._left = response.content_length if response.framing == "length" else 0
        self._limit = limit
        self._buf = b""  # raw bytes read past the current position (chunked)
        self._pending = False  # chunked: a CRLF after chunk data is still to come
        self.complete = response.framing == "empty" or (
            response.framing == "length" and self._left == 0
        )
        self.received = 0  # raw body bytes
        self.delivered = 0  # decoded bytes handed on
        encodings = response.headers.get_all("content-encoding") or []
        codings = [c.strip().lower() for e in encodings for c in e.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            raise UpstreamProtocolError(
                f"stacked Content-Encoding {', '.join(codings)!r} is not supported",
                retryable=True,
            )
        self._coding = codings[0] if codings else ""
        self._decoder: Any = _decoder(self._coding) if codings else None
        self._tail = b""  # compressed input the decoder has not consumed yet
        self._input: Any = b""  # compressed input not yet fed to the decoder
        self._fed = False
        self._over = False
        self._error: BaseException | None = None
        self._drained = 0

    def read(self) -> bytes:
        """The next block of the decoded body; ``b""`` once it is complete."""
        if self._over:
            raise self._too_big()
        data = self._framed() if self._decoder is None else self._decoded()
        if data:
            room = self._limit - self.delivered
            if len(data) > room:
                if not room:
                    raise self._too_big()
                # Hand on exactly the bytes within the limit; the next read fails.
                data = data[:room]
                self._over = True
            self.delivered += len(data)
        return data

    def _too_big(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"response exceeds limits.max_response_bytes ({self._limit})")

    def _decoded(self) -> bytes:
        while True:
            decoder = self._decoder
            if self._tail:
                raw, self._tail = self._tail, b""
            elif self._input:
                raw, self._input = bytes(self._input[:_FEED]), self._input[_FEED:]
            else:
                raw = self._framed()
                if len(raw) > _FEED:
                    # Fed in slices: unconsumed_tail copies what is left of the input
                    # on every bounded step, which would make a big block quadratic.
                    view = memoryview(raw)
                    raw, self._input = bytes(view[:_FEED]), view[_FEED:]
                if not raw:
                    if self._fed and not decoder.eof:
                        raise UpstreamProtocolError(
                            "compressed body ends before its end marker", retryable=True
                        )
                    return b""
            self._fed = True
            if decoder.eof:
                if self._coding == "deflate" or not bytes(raw).strip(b"\x00"):
                    continue  # bytes after the compressed stream: ignored
                # Another gzip member (RFC 1952 allows several): start over.
                decoder = self._decoder = _decoder(self._coding)
            try:
                data = decoder.decompress(raw, BLOCK)
            except zlib.error as exc:
                raise UpstreamProtocolError(
                    f"corrupt compressed body ({exc})", retryable=True
                ) from None
            # The rest of this input is decompressed later, BLOCK bytes at a time:
            # a 1 MiB chunk inflating to 1 GiB never exists in memory at once.
            tail = decoder.unconsumed_tail
            if not tail and decoder.eof:
                tail = decoder.unused_data
            self._tail = tail
            if data:
                return data  # type: ignore[no-any-return]

    def _fill(self) -> bytes:
        """One network read (after what is buffered); ``Ended`` at end of stream."""
        self._exchange.body_started = True
        data = self._fp.read1(BLOCK)
        if not data:
            raise Ended()
        self.received += len(data)
        return data  # type: ignore[no-any-return]

    def _framed(self) -> bytes:
        if self.complete:
            return b""
        framing = self._framing
        if framing == "chunked":
            error = self._error
            if error is not None:
                self._error = None
                raise error
            return self._chunked()
        if framing == "length":
            data = self._fill()
            if len(data) >= self._left:
                if len(data) > self._left:
                    # More than declared: the surplus would be read as the next
                    # response, so the connection is not reused.
                    self._framing = "overrun"
                data = data[: self._left]
                self._left = 0
                self.complete = True
            else:
                self._left -= len(data)
            return data
        try:
            return self._fill()
        except Ended:
            self.complete = True  # read to the close: the end of the connection ends it
            return b""

    def _chunked(self) -> bytes:
        """Chunked framing parsed from whole reads: many chunks per call, one join.

        A framing error found after some data in the same read is raised on the
        next call: the data before it is delivered first.
        """
        pieces: list[bytes] = []
        try:
            return self._chunks(pieces)
        except (UpstreamProtocolError, Ended, OSError, Expired, Cancelled) as exc:
            if not pieces:
                raise
            self._error = exc
            self._buf = b""
            return b"".join(pieces)

    def _chunks(self, pieces: list[bytes]) -> bytes:
        buf = self._buf
        pos = 0
        left = self._left
        while True:
            if left:
                avail = len(buf) - pos
                if not avail:
                    if pieces:
                        break
                    # Saved before every read: a read that would block (on an event
                    # loop) leaves the parse where the next call picks it up.
                    self._buf, self._left = b"", left
                    buf, pos = self._fill(), 0
                    continue
                if avail <= left:
                    pieces.append(buf[pos:] if pos else buf)
                    left -= avail
                    pos = len(buf)
                else:
                    pieces.append(buf[pos : pos + left])
                    pos += left
                    left = 0
                if not left:
                    self._pending = True
                continue
            if self._pending:
                if len(buf) - pos < 2:
                    if pieces:
                        break
                    self._buf, self._left = buf[pos:], left
                    buf, pos = buf[pos:] + self._fill(), 0
                    continue
                if buf[pos : pos + 2] == b"\r\n":
                    pos += 2
                elif buf[pos] == 0x0A:  # a bare LF: lenient, as most clients are
                    pos += 1
                else:
                    raise UpstreamProtocolError(
                        "chunked body: chunk data not followed by CRLF", retryable=True
                    )
                self._pending = False
                continue
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > _MAX_CHUNK_LINE:
                    raise UpstreamProtocolError(
                        "chunked body: chunk-size line too long", retryable=True
                    )
                if pieces:
                    break
                self._buf, self._left = buf[pos:], left
                buf, pos = buf[pos:] + self._fill(), 0
                continue
            line = buf[pos:end].split(b";", 1)[0].strip()
            pos = end + 1
            if not line or len(line) > 16 or line.strip(b"0123456789abcdefABCDEF"):
                raise UpstreamProtocolError("chunked body: invalid chunk size line", retryable=True)
            left = int(line, 16)
            if not left:
                if pieces:
                    # The last chunk: deliver the data first, read the trailers next call.
                    self._buf = b"0\r\n" + buf[pos:]
                    self._left = 0
                    return b"".join(pieces) if len(pieces) != 1 else pieces[0]
                self._left = 0
                self._trailers(buf[pos:])
                self.complete = True
                break
        if not self.complete:
            self._buf = buf[pos:] if pos < len(buf) else b""
            self._left = left
        return b"".join(pieces) if len(pieces) != 1 else pieces[0]

    def _trailers(self, buf: bytes) -> None:
        """Skip the trailer section up to its blank line, within a size bound."""
        pos = 0
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > _MAX_TRAILER_BYTES:
                    raise UpstreamProtocolError("chunked body: trailers too long", retryable=True)
                # A read that would block resumes from the last chunk's line.
                self._buf = b"0\r\n" + buf
                buf += self._fill()
                continue
            line = buf[pos:end].strip()
            pos = end + 1
            if pos > _MAX_TRAILER_BYTES:
                raise UpstreamProtocolError("chunked body: trailers too long", retryable=True)
            if not line:
                self._buf = b""
                # Bytes after the body would be read as the next response: the
                # connection is not reused then (see Transport._finish).
                if len(buf) > pos:
                    self._framing = "overrun"
                return

    @property
    def clean(self) -> bool:
        """The body is complete and nothing past it was read: the connection is reusable."""
        return self.complete and self._framing != "overrun"

    def drain(self, seconds: float, max_bytes: int) -> bool:
        """Read the rest within ``seconds`` and ``max_bytes``; whether it completed.

        Used after a stream's ``[DONE]``: the answer is whole, and only the final
        bytes of the framing stand between the connection and its reuse.
        """
        self.start_drain(seconds)
        return self.drain_rest(max_bytes)

    def start_drain(self, seconds: float) -> None:
        """Allow the rest of the body at most ``seconds`` (see :meth:`drain_rest`)."""
        if not self.complete:
            self._exchange.cap(seconds)
            self._exchange.waiting = False
        self._drained = self.received

    def drain_rest(self, max_bytes: int) -> bool:
        """Read on to the end, at most ``max_bytes`` since :meth:`start_drain`.

        On an event loop, a read that has to wait raises ``WouldBlock``; calling
        again after the wait goes on where it stopped.
        """
        if self.complete:
            return self.clean
        if self._framing == "close":
            return False  # the connection ends with the body: nothing to reuse
        try:
            while not self.complete:
                if not self._framed() and not self.complete:
                    return False
                if self.received - self._drained > max_bytes:
                    return False
        except (Expired, Cancelled, Ended, UpstreamProtocolError, OSError):
            return False
        return self.clean
