"""One HTTP exchange whose every socket operation is bounded by its deadlines.

``requests`` and urllib3 bound each socket operation by a timeout, never a whole
exchange: an upstream that trickles one byte per second inside the header block,
sends ``100 Continue`` forever or declares a 1 GiB chunk holds a call as long as
it likes. This module closes those gaps where they open (hand-written because
no library bounds a whole exchange; it plugs into urllib3 and ``http.client``
instead of replacing them):

- :class:`Exchange` is one HTTP request/response of one call: its deadlines
  (``first_token`` and ``total``, absolute), the ``idle`` budget, the cancel
  token and the socket it owns. Every ``recv`` and ``send`` gets a timeout cut
  to what is left, so no sequence of bytes can outlast the deadline.
- The connection and response classes plug the exchange into urllib3 and
  ``http.client``: the header block (interim ``1xx`` responses included) is read
  through it and capped in size; framing headers are checked (conflicting
  ``Content-Length``, unknown ``Transfer-Encoding``); a header block cut short
  by the connection closing is an error, not an empty success.

The socket belongs to the exchange from the moment the request is sent until
the response is finished: :meth:`Exchange.release` runs before urllib3 may hand
the connection to another request, so cancelling a finished call can never shut
down a socket another call now owns (SPEC §10). The body is read by
:class:`provhub._body.Body`.
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
from typing import TYPE_CHECKING, Any, Protocol

import urllib3.connection
import urllib3.connectionpool

from provhub._errors import UpstreamProtocolError
from provhub._gate import pause, resume

if TYPE_CHECKING:
    from provhub._cancel import CancelToken
    from provhub._config import Timeouts

__all__ = [
    "BLOCK",
    "Cancelled",
    "Exchange",
    "Expired",
    "HTTPPool",
    "HTTPSPool",
    "Response",
    "exchanging",
    "framing_of",
    "printable_reason",
]

# Bytes per network read (and the most one read of the body hands on).
BLOCK = 65536
# The whole header block, interim 1xx responses included. Real servers send a few
# KiB; http.client alone would accept 100 lines of 64 KiB each.
MAX_HEADER_BYTES = 65536


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
        "suspended",
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
        # The socket is non-blocking, read on an event loop (provhub._loopwire).
        self.suspended = False
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


def printable_reason(raw: str) -> str:
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
        self.reason = printable_reason(self.reason)
        self._frame()

    def _frame(self) -> None:
        """Decide how the body is delimited (RFC 9112 §6.3), refusing ambiguity."""
        self.framing, self.content_length, self.reusable = framing_of(
            self.status, self.headers, self.will_close, head=self._head
        )


class _Headers(Protocol):
    def get_all(self, name: str) -> list[str] | None: ...


def framing_of(
    status: int, headers: _Headers, will_close: bool, *, head: bool = False
) -> tuple[str, int, bool]:
    """How a response body is delimited (RFC 9112 §6.3), refusing ambiguity.

    Returns the framing (``"empty"``, ``"chunked"``, ``"length"`` or
    ``"close"``), the ``Content-Length`` (-1 unless ``"length"``), and whether
    the connection may serve another request once the body is complete.
    """
    encodings = headers.get_all("transfer-encoding") or []
    lengths = headers.get_all("content-length") or []
    reusable = not will_close
    if status in (204, 304) or 100 <= status < 200 or head:
        # 101 Switching Protocols: what follows on the socket is not HTTP.
        return "empty", -1, reusable and status >= 200
    if encodings:
        codings = [c.strip().lower() for e in encodings for c in e.split(",") if c.strip()]
        if codings != ["chunked"]:
            raise UpstreamProtocolError(
                f"unsupported Transfer-Encoding {', '.join(codings)!r}", retryable=True
            )
        # Both headers: chunked wins, but the connection is suspect.
        return "chunked", -1, reusable and not lengths
    if lengths:
        values = {v.strip() for e in lengths for v in e.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise UpstreamProtocolError(
                "invalid or conflicting Content-Length headers", retryable=True
            )
        return "length", int(next(iter(values))), reusable
    return "close", -1, False


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
