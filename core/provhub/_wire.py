"""The wire beneath ``requests``: sockets whose every read and write is bounded.

``requests`` and urllib3 bound each socket operation by a timeout, never a whole
exchange: an upstream that trickles one byte per second inside the header block,
sends ``100 Continue`` forever or declares a 1 GiB chunk holds a call as long as
it likes, and an upstream that inflates one gzip chunk to a gigabyte fills memory
before any limit is checked. This module closes those gaps where they open:

- :class:`Exchange` is one HTTP request/response of one call: its deadlines
  (``first_token`` and ``total``, absolute), the ``idle`` budget, the cancel
  token and the socket it owns. Every ``recv`` and ``send`` gets a timeout cut
  to what is left, so no sequence of bytes can outlast the deadline.
- The connection and response classes plug the exchange into urllib3 and
  ``http.client``: the header block (interim ``1xx`` responses included) is read
  through it and capped in size; framing headers are checked (conflicting
  ``Content-Length``, unknown ``Transfer-Encoding``); a header block cut short
  by the connection closing is an error, not an empty success.
- :class:`Body` reads the body itself (chunked, length-delimited or read to the
  close), so that no single read returns more than one buffer, decompresses
  ``gzip``/``deflate`` incrementally with a bounded output per step, and counts
  the delivered bytes against ``limits.max_response_bytes``.

The socket belongs to the exchange from the moment the request is sent until
the response is finished: :meth:`Exchange.release` runs before urllib3 may hand
the connection to another request, so cancelling a finished call can never shut
down a socket another call now owns (SPEC §10).

Every blocking socket operation also calls :func:`pause` and :func:`resume`: on
an async-stream worker they give back and retake its :class:`Gate` slot and
deliver the consumer's pending wake-up (:mod:`provhub._aio`); elsewhere they do
nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import io
import queue
import socket
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

import urllib3.connection
import urllib3.connectionpool

from provhub._errors import UpstreamProtocolError

if TYPE_CHECKING:
    from provhub._cancel import CancelToken
    from provhub._config import Timeouts

__all__ = [
    "BLOCK",
    "Body",
    "Cancelled",
    "Ended",
    "Exchange",
    "Expired",
    "Gate",
    "HTTPPool",
    "HTTPSPool",
    "Response",
    "exchanging",
    "pause",
    "resume",
    "worker",
]

# Bytes per network read (and the most one read of the body hands on).
BLOCK = 65536
# The whole header block, interim 1xx responses included. Real servers send a few
# KiB; http.client alone would accept 100 lines of 64 KiB each.
MAX_HEADER_BYTES = 65536
# Compressed bytes fed to the decoder per step.
_FEED = 16384
# A chunk-size line (hex digits and extensions) and the trailer section.
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_BYTES = 16384


class Gate:
    """Admission control for the Python work of async-stream workers.

    Hundreds of worker threads that all want the GIL starve the event loop: the
    GIL goes round its waiters, and the loop waits behind all of them (500
    astreams started at once stalled it for seconds). A worker holds one of
    ``slots`` while it runs Python and gives it back while it blocks on the
    network or waits for its consumer, so only a few workers compete with the
    loop at any moment; the others wait their turn in order, and new streams
    are admitted (their thread woken at all) only when a slot is free.

    A slot held for longer than ``patience`` without being given back (its
    worker blocks somewhere the gate cannot see, such as a provider's own
    sleep, or computes for long) is revoked and handed on: the gate can slow a
    worker down, never stop one. ``on_release`` is called when a slot frees up
    with no worker waiting for it (the pool admits a new stream then).
    """

    __slots__ = ("_held", "_lock", "_ready", "_waiting", "on_release", "patience", "slots")

    def __init__(self, slots: int = 3, patience: float = 0.05) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self.slots = slots
        self.patience = patience
        self._held: dict[object, float] = {}  # slot -> since when
        self._waiting = 0
        self.on_release: Any = None

    def _revoke(self, now: float) -> float:
        """Revoke the oldest slot if it is stale; else the seconds until it will be."""
        held = self._held
        oldest = min(held, key=held.__getitem__)
        age = now - held[oldest]
        if age >= self.patience:
            del held[oldest]  # its holder goes on without it
            return 0.0
        return self.patience - age

    def try_acquire(self) -> object | None:
        """A slot if one is free now (workers waiting for one go first), else None."""
        with self._lock:
            now = time.monotonic()
            if self._waiting or (len(self._held) >= self.slots and self._revoke(now)):
                return None
            slot = object()
            self._held[slot] = now
            return slot

    def acquire(self) -> object:
        """Wait for a slot, in order; returns it, for :meth:`release`."""
        with self._lock:
            self._waiting += 1
            try:
                while len(self._held) >= self.slots:
                    wait = self._revoke(time.monotonic())
                    if wait:
                        self._ready.wait(wait)
            finally:
                self._waiting -= 1
            slot = object()
            self._held[slot] = time.monotonic()
            return slot

    def release(self, slot: object) -> None:
        """Give ``slot`` back (nothing happens if it was revoked)."""
        with self._lock:
            if self._held.pop(slot, None) is None:
                return
            if self._waiting:
                self._ready.notify()
                return
        hook = self.on_release
        if hook is not None:
            hook()


class _Worker(threading.local):
    """The async-stream worker running on this thread: its gate, slot and stream.

    ``flush`` (the stream's pending wake-up of its consumer) runs whenever the
    worker is about to block on the network.
    """

    gate: Gate | None = None
    slot: Any = None
    flush: Any = None


worker = _Worker()


def pause() -> Gate | None:
    """Before blocking: flush the consumer's wake-up, give the slot back.

    Returns the gate, for :func:`resume`.
    """
    local = worker
    gate = local.gate
    if gate is not None:
        flush = local.flush
        if flush is not None:
            flush()
        if local.slot is not None:
            gate.release(local.slot)
            local.slot = None
    return gate


def resume(gate: Gate | None) -> None:
    """Take a slot again after blocking (``gate`` from :func:`pause`)."""
    if gate is not None:
        worker.slot = gate.acquire()


class Expired(Exception):
    """A time budget of the exchange ran out (``budget``: first-token, idle or total).

    Not an ``OSError``, so urllib3 and requests let it through unwrapped.
    """

    def __init__(self, budget: str, seconds: float) -> None:
        self.budget = budget
        self.seconds = seconds
        super().__init__(f"{budget} budget of {seconds:g} s exhausted")


class Cancelled(Exception):
    """The exchange's cancel token fired while it was blocked on the network."""


class Exchange:
    """One HTTP request and its response: deadlines, the socket, and its owner.

    ``waiting`` is true until the answer has started (the first event of a
    stream, the whole body of a JSON answer): until then the ``first_token``
    deadline bounds every operation. ``body_started`` switches the per-read
    budget to ``idle``. Thread-safe where it must be: :meth:`abort` may run on
    any thread, :meth:`release` and the reads on the one using the connection.
    """

    __slots__ = (
        "_live",
        "_lock",
        "_set",
        "body_started",
        "deadline",
        "eof_in_headers",
        "first_deadline",
        "first_token",
        "header_bytes",
        "idle",
        "in_headers",
        "sock",
        "token",
        "total",
        "waiting",
    )

    def __init__(self, timeouts: Timeouts, started: float, token: CancelToken | None) -> None:
        self.total = timeouts.total
        self.first_token = min(timeouts.first_token, timeouts.total)
        self.deadline = started + timeouts.total
        self.first_deadline = started + self.first_token
        self.idle = timeouts.idle
        self.waiting = True
        self.body_started = False
        self.in_headers = True
        self.eof_in_headers = False
        self.header_bytes = 0
        self.token = token
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._live = True
        self._set = -1.0  # the timeout last set on the socket
        if token is not None:
            token.attach(self)

    # -- ownership -----------------------------------------------------------

    def bind(self, sock: socket.socket | None) -> None:
        """The exchange now uses ``sock`` (shut down at once if already cancelled)."""
        if sock is None:
            return
        with self._lock:
            if not self._live:
                return
            self.sock = sock
            self._set = -1.0
            cancelled = self.token is not None and self.token.cancelled
        if cancelled:
            self.abort()

    def abort(self) -> None:
        """Shut the socket down if this exchange still owns it (any thread)."""
        with self._lock:
            # Under the lock: release() cannot slip in between the check and the
            # shutdown and hand the socket to another request.
            sock = self.sock if self._live else None
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed by either side
                    sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """The exchange is over: it no longer owns its socket (idempotent)."""
        with self._lock:
            if not self._live:
                return
            self._live = False
            self.sock = None
        if self.token is not None:
            self.token.detach(self)

    @property
    def cancelled(self) -> bool:
        """Whether the call's cancel token fired."""
        return self.token is not None and self.token.cancelled

    # -- budgets ----------------------------------------------------------------

    def cap(self, seconds: float) -> None:
        """Allow at most ``seconds`` more for everything (an error body, a drain)."""
        limit = time.monotonic() + seconds
        self.deadline = min(self.deadline, limit)
        self.first_deadline = min(self.first_deadline, limit)

    def timeout(self) -> tuple[float, str]:
        """The timeout for the next blocking operation and the budget it stands for.

        Raises :class:`Expired` when nothing is left.
        """
        now = time.monotonic()
        if self.waiting:
            left, budget = self.first_deadline - now, "first-token"
            if self.deadline <= self.first_deadline:
                budget = "total"
        else:
            left, budget = self.deadline - now, "total"
        if left <= 0:
            raise Expired(budget, self.total if budget == "total" else self.first_token)
        if self.body_started and self.idle < left:
            return self.idle, "idle"
        return left, budget

    def settimeout(self, sock: socket.socket) -> str:
        """Set the socket's timeout for the next operation; return its budget."""
        seconds, budget = self.timeout()
        if seconds != self._set:
            sock.settimeout(seconds)
            self._set = seconds
        return budget

    def expired(self, budget: str) -> Expired:
        """The error for a socket timeout set by :meth:`settimeout` for ``budget``."""
        seconds = {"idle": self.idle, "total": self.total}.get(budget, self.first_token)
        return Expired(budget, seconds)


# The exchange being sent on this thread: set by the transport around
# ``session.post`` and read by the connection and response classes below, which
# requests creates and calls without a way to pass it.
exchanging: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar(
    "provhub_exchange", default=None
)


# -- http.client / urllib3 plumbing ------------------------------------------------


class _Wire(io.RawIOBase):
    """The socket as a raw stream whose every ``recv`` honours the exchange's budgets."""

    def __init__(self, sock: socket.socket, exchange: Exchange) -> None:
        # makefile() (unbuffered) counts a reference on the socket, so the socket
        # stays open when http.client closes its connection early (Connection:
        # close) and the body is still to be read.
        self._raw = sock.makefile("rb", buffering=0)
        self._sock = sock
        self._exchange = exchange

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        exchange = self._exchange
        budget = exchange.settimeout(self._sock)
        if exchange.in_headers:
            room = MAX_HEADER_BYTES - exchange.header_bytes
            if room <= 0:
                raise UpstreamProtocolError(
                    f"response header block exceeds {MAX_HEADER_BYTES} bytes", retryable=True
                )
            if room < len(buffer):
                buffer = memoryview(buffer)[:room]
        gate = pause()
        try:
            count = self._raw.readinto(buffer)
        except TimeoutError as exc:
            raise exchange.expired(budget) from exc
        except OSError as exc:
            if exchange.cancelled:
                raise Cancelled() from exc
            raise
        finally:
            if gate is not None:
                resume(gate)
        if count is None:  # non-blocking socket with nothing to read: never here
            return 0
        if not count:
            if exchange.cancelled:
                raise Cancelled()
            if exchange.in_headers:
                exchange.eof_in_headers = True
        elif exchange.in_headers:
            exchange.header_bytes += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _File:
    """What http.client's response asks of a socket: ``makefile``."""

    __slots__ = ("_file",)

    def __init__(self, file: io.BufferedReader) -> None:
        self._file = file

    def makefile(self, mode: str) -> io.BufferedReader:
        return self._file


def _reason(raw: str) -> str:
    """A reason phrase fit for a one-line message: printable ASCII, at most 60 characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in raw.strip())
    return text if len(text) <= 60 else text[:57] + "..."


class Response(http.client.HTTPResponse):
    """http.client's response, reading through the exchange and checking framing.

    After :meth:`begin`, ``framing`` is ``"empty"``, ``"chunked"``, ``"length"``
    (``content_length`` bytes) or ``"close"`` (read to the end of the
    connection); ``reusable`` says whether the connection may serve another
    request once the body is complete.
    """

    exchange: Exchange | None
    _head: bool
    framing: str
    content_length: int
    reusable: bool

    def __init__(
        self, sock: Any, debuglevel: int = 0, method: str | None = None, url: str | None = None
    ) -> None:
        exchange = exchanging.get()
        self.exchange = exchange
        self._head = method == "HEAD"
        self.framing = "close"
        self.content_length = -1
        self.reusable = False
        if exchange is not None and isinstance(sock, socket.socket):
            sock = _File(io.BufferedReader(_Wire(sock, exchange), BLOCK))
        super().__init__(sock, debuglevel, method, url)

    def _read_status(self) -> tuple[str, int, str]:
        # http.client skips 100 Continue itself; other interim responses (102
        # Processing, 103 Early Hints) would pass for the final one, and the real
        # answer would stay unread on the socket.
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if 102 <= status < 200 and status != 101:
                http.client.parse_headers(self.fp)
                continue
            return version, status, reason

    def begin(self) -> None:
        exchange = self.exchange
        try:
            super().begin()
        except http.client.RemoteDisconnected:
            if exchange is not None and exchange.cancelled:
                raise Cancelled() from None
            raise  # a connection error: the classic stale keep-alive race
        except http.client.HTTPException as exc:
            if exchange is not None and exchange.cancelled:
                raise Cancelled() from None
            raise UpstreamProtocolError(
                f"malformed response header block ({type(exc).__name__})", retryable=True
            ) from None
        if exchange is None:
            return
        exchange.in_headers = False
        if exchange.eof_in_headers:
            raise UpstreamProtocolError(
                "the connection closed inside the response header block", retryable=True
            )
        self.reason = _reason(self.reason)
        self._frame()

    def _frame(self) -> None:
        """Decide how the body is delimited (RFC 9112 §6.3), refusing ambiguity."""
        headers = self.headers
        encodings = headers.get_all("transfer-encoding") or []
        lengths = headers.get_all("content-length") or []
        self.reusable = not self.will_close
        if self.status in (204, 304) or 100 <= self.status < 200 or self._head:
            self.framing = "empty"
            if self.status < 200:
                # 101 Switching Protocols: what follows on the socket is not HTTP.
                self.reusable = False
            return
        if encodings:
            codings = [c.strip().lower() for e in encodings for c in e.split(",") if c.strip()]
            if codings != ["chunked"]:
                raise UpstreamProtocolError(
                    f"unsupported Transfer-Encoding {', '.join(codings)!r}", retryable=True
                )
            self.framing = "chunked"
            if lengths:
                # Both headers: chunked wins, but the connection is suspect.
                self.reusable = False
            return
        if lengths:
            values = {v.strip() for e in lengths for v in e.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise UpstreamProtocolError(
                    "invalid or conflicting Content-Length headers", retryable=True
                )
            self.framing = "length"
            self.content_length = int(next(iter(values)))
            return
        self.framing = "close"
        self.reusable = False


def _connection_class(base: type[Any]) -> type[Any]:
    class Connection(base):  # type: ignore[misc]
        """A urllib3 connection that sends through the current exchange."""

        response_class = Response
        _exchange: Exchange | None = None

        def request(self, *args: Any, **kwargs: Any) -> None:
            exchange = self._exchange = exchanging.get()
            if exchange is not None:
                exchange.bind(self.sock)  # a pooled connection already has one
            super().request(*args, **kwargs)

        def connect(self) -> None:
            gate = pause()
            try:
                super().connect()
            finally:
                resume(gate)
            if self._exchange is not None:
                self._exchange.bind(self.sock)

        def send(self, data: Any) -> None:
            exchange = self._exchange
            if exchange is None:
                super().send(data)
                return
            if self.sock is None:
                self.connect()
            # sendall's timeout covers the whole call: an upstream that accepts
            # but never reads the body cannot hold the send past the deadline.
            budget = exchange.settimeout(self.sock)
            gate = pause()
            try:
                super().send(data)
            except TimeoutError as exc:
                raise exchange.expired(budget) from exc
            except OSError as exc:
                if exchange.cancelled:
                    raise Cancelled() from exc
                raise
            finally:
                resume(gate)

    return Connection


_HTTPConnection = _connection_class(urllib3.connection.HTTPConnection)
_HTTPSConnection = _connection_class(urllib3.connection.HTTPSConnection)


class _PoolMixin:
    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            exchange = getattr(conn, "_exchange", None)
            if exchange is not None:
                # Before anyone else can take the connection: from here on the
                # exchange's cancel must not reach this socket.
                exchange.release()
                conn._exchange = None
        pool = self.pool  # type: ignore[attr-defined]
        if pool is not None and conn is not None:
            try:
                pool.put(conn, block=False)
                return
            except AttributeError:  # the pool was closed meanwhile
                pass
            except queue.Full:  # a burst opened more connections than the pool keeps
                pass
        if conn is not None:
            # Quietly, unlike urllib3's warning: discarding the extra connections
            # of a burst is what a bounded pool is for.
            conn.close()


class HTTPPool(_PoolMixin, urllib3.connectionpool.HTTPConnectionPool):
    """A urllib3 pool of connections that send through the current exchange."""

    ConnectionCls = _HTTPConnection


class HTTPSPool(_PoolMixin, urllib3.connectionpool.HTTPSConnectionPool):
    """The TLS variant of :class:`HTTPPool`."""

    ConnectionCls = _HTTPSConnection


# -- the body -----------------------------------------------------------------------


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

    def __init__(self, response: Response, limit: int) -> None:
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
                self._buf = buf[pos:]
                self._left = 0
                self._trailers()
                self.complete = True
                break
        if not self.complete:
            self._buf = buf[pos:] if pos < len(buf) else b""
            self._left = left
        return b"".join(pieces) if len(pieces) != 1 else pieces[0]

    def _trailers(self) -> None:
        """Skip the trailer section up to its blank line, within a size bound."""
        buf = self._buf
        seen = 0
        while True:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > _MAX_TRAILER_BYTES:
                    raise UpstreamProtocolError("chunked body: trailers too long", retryable=True)
                buf += self._fill()
                continue
            line, buf = buf[:end].strip(), buf[end + 1 :]
            seen += end + 1
            if seen > _MAX_TRAILER_BYTES:
                raise UpstreamProtocolError("chunked body: trailers too long", retryable=True)
            if not line:
                self._buf = b""
                # Bytes after the body would be read as the next response: the
                # connection is not reused then (see Transport._finish).
                if buf:
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
        if self.complete:
            return self.clean
        if self._framing == "close":
            return False  # the connection ends with the body: nothing to reuse
        self._exchange.cap(seconds)
        self._exchange.waiting = False
        start = self.received
        try:
            while not self.complete:
                if not self._framed() and not self.complete:
                    return False
                if self.received - start > max_bytes:
                    return False
        except (Expired, Cancelled, Ended, UpstreamProtocolError, OSError):
            return False
        return self.clean
