"""HTTP/1.1 on a non-blocking socket, for a stream driven on the event loop.

``requests`` and urllib3 send and read in blocking calls. A stream that
``Hub.astream`` drives on its event loop (:mod:`provhub._suspend`) sends its
request and reads its response head here instead, and yields a
:class:`~provhub._suspend.Readable` wherever it would wait. Everything after the
head is the sync transport's own code: :class:`~provhub._body.Body` reads the
body from :class:`LoopFile`, and the transport's event-stream loop, limits and
error mapping are shared.

The bounds are those of :mod:`provhub._exchange`: the connect budget (capped by
what is left of ``total``) covers DNS, TCP and TLS; every later step is bounded
by the exchange's deadlines; the header block (interim ``1xx`` responses
included) is capped at :data:`~provhub._exchange.MAX_HEADER_BYTES`; framing
headers go through the same :func:`~provhub._exchange.framing_of`.

Hand-written because none of provhub's core dependencies speaks HTTP without
blocking (``h11`` or ``aiohttp`` would be one more for every install), and the
part written here is small: a request head out, a response head in. A URL
with a proxy or with credentials in it goes through ``requests`` on a worker
thread instead (see ``Transport.stream_sse``).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Generator, Mapping
from typing import Any
from urllib.parse import urlsplit

from provhub._errors import ProviderError, UpstreamProtocolError
from provhub._exchange import (
    BLOCK,
    MAX_HEADER_BYTES,
    Cancelled,
    Exchange,
    framing_of,
    printable_reason,
)
from provhub._gate import pause, resume
from provhub._suspend import Offload, Suspend, WouldBlock, waiting

__all__ = ["Conn", "ConnectTimeout", "Head", "LoopFile", "LoopPool", "Target", "exchange_head"]

_CONNECTING = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY)


class ConnectTimeout(TimeoutError):
    """No connection (TCP and TLS) within the connect budget."""


class Target:
    """Where a request goes, parsed once: scheme, host, port, path and Host header."""

    __slots__ = ("host", "host_header", "path", "port", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in the URL")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        self.host_header = shown if self.port == default else f"{shown}:{self.port}"

    @property
    def key(self) -> tuple[bool, str, int]:
        """What pooled connections are shared by."""
        return self.tls, self.host, self.port


class Conn:
    """One keep-alive connection of the loop pool (a non-blocking socket)."""

    __slots__ = ("key", "sock", "verify")

    def __init__(self, sock: socket.socket, key: tuple[bool, str, int], verify: bool) -> None:
        self.sock = sock
        self.key = key
        self.verify = verify

    def close(self) -> None:
        """Close the socket (idempotent)."""
        with contextlib.suppress(OSError):
            self.sock.close()


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle connection was closed (or spoke out of turn) meanwhile."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class LoopPool:
    """Idle keep-alive connections for loop-driven streams, per origin and TLS setting.

    Thread-safe: loops in several threads may share a transport. At most
    ``maxsize`` idle connections are kept per origin; a connection is reused only
    if it still looks idle (not readable), as urllib3 checks too.
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._idle: dict[tuple[tuple[bool, str, int], bool], list[Conn]] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple[bool, str, int], verify: bool) -> Conn | None:
        """An idle connection to ``key``, or None."""
        while True:
            with self._lock:
                idle = self._idle.get((key, verify))
                if not idle:
                    return None
                conn = idle.pop()
            if not _dropped(conn.sock):
                return conn
            conn.close()

    def put(self, conn: Conn) -> None:
        """Keep ``conn`` for the next request (or close it when the pool is full)."""
        with self._lock:
            idle = self._idle.setdefault((conn.key, conn.verify), [])
            if len(idle) < self._maxsize:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection; the pool can be used again afterwards."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


class Fields:
    """Response header fields as read: ``get`` joins repeated fields as urllib3 does."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def get(self, name: str, default: str | None = None) -> str | None:
        """The field's value, repeated fields joined with ``", "``; ``default`` if absent."""
        values = self.get_all(name)
        return default if values is None else ", ".join(values)

    def get_all(self, name: str) -> list[str] | None:
        """Every value of the field, in order, or None (as ``email.message`` says)."""
        wanted = name.lower()
        values = [value for key, value in self._items if key.lower() == wanted]
        return values or None

    def items(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs in order."""
        return list(self._items)


# As http.client: more header fields than this is a malformed head.
_MAX_FIELDS = 100


def _fields(block: bytes) -> Fields:
    """Parse the header fields of a head (the lines after its status line)."""
    items: list[tuple[str, str]] = []
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):  # obs-fold: a continuation of the previous value
            if not items:
                raise _malformed("a continuation line before any field")
            previous, value = items[-1]
            items[-1] = (previous, f"{value} {line.strip().decode('latin-1')}")
            continue
        field, colon, raw_value = line.partition(b":")
        if not colon or not field or field != field.strip():
            raise _malformed("a header line that is not name: value")
        items.append((field.decode("latin-1"), raw_value.strip().decode("latin-1")))
        if len(items) > _MAX_FIELDS:
            raise _malformed(f"more than {_MAX_FIELDS} header fields")
    return Fields(items)


def _malformed(why: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"malformed response header block ({why})", retryable=True)


class Head:
    """A response head as :class:`~provhub._body.Body` reads it, plus the connection."""

    __slots__ = (
        "content_length",
        "exchange",
        "fp",
        "framing",
        "headers",
        "reason",
        "reusable",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Fields,
        will_close: bool,
        exchange: Exchange,
        fp: LoopFile,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.exchange = exchange
        self.fp = fp
        self.framing, self.content_length, self.reusable = framing_of(status, headers, will_close)


class LoopFile:
    """The socket as :class:`~provhub._body.Body` reads it: ``read1`` of one network read.

    Non-blocking while the exchange is ``suspended`` (a read that has to wait
    raises :class:`~provhub._suspend.WouldBlock`); blocking with the exchange's
    timeouts otherwise (a worker reading the body of a refusal).
    """

    __slots__ = ("_buffer", "_exchange", "_sock")

    def __init__(self, sock: socket.socket, exchange: Exchange, buffered: bytes) -> None:
        self._sock = sock
        self._exchange = exchange
        self._buffer = buffered  # read past the head already

    def read1(self, size: int) -> bytes:
        """Up to ``size`` bytes: what is buffered, else one read; ``b""`` at the end."""
        if self._buffer:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
            return data
        exchange = self._exchange
        sock = self._sock
        if exchange.suspended:
            seconds, budget = exchange.timeout()  # Expired once the budget is gone
        else:
            seconds, budget = 0.0, exchange.settimeout(sock)
        try:
            data = sock.recv(size)
        except (BlockingIOError, ssl.SSLWantReadError):  # non-blocking: nothing there yet
            raise WouldBlock(sock.fileno(), seconds, budget) from None
        except ssl.SSLWantWriteError:  # TLS wants to send first (a key update)
            raise WouldBlock(sock.fileno(), seconds, budget, write=True) from None
        except TimeoutError as exc:  # blocking, on a worker: the budget ran out
            raise exchange.expired(budget) from exc
        except OSError as exc:
            if exchange.cancelled:
                raise Cancelled() from exc
            raise
        if not data and exchange.cancelled:
            raise Cancelled()
        return data

    def blocking(self) -> None:
        """Read with blocking calls from now on (on a worker thread)."""
        self._exchange.suspended = False
        self._sock.setblocking(True)


def _resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[Any, ...]]]:
    # On a worker: its admission slot is given back while the resolver blocks.
    gate = pause()
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    finally:
        resume(gate)
    return [(family, address) for family, _, _, _, address in found]


def _connect(
    target: Target, context: ssl.SSLContext | None, exchange: Exchange, seconds: float
) -> Generator[Suspend, None, socket.socket]:
    """A connected (and, for https, TLS-established) non-blocking socket to ``target``."""
    deadline = time.monotonic() + seconds
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
            target.host
        )
    except ValueError:
        address = None
    if address is None:
        # A name: resolved on a worker (getaddrinfo blocks), within the connect budget.
        lookup = Offload(lambda: _resolve(target.host, target.port), seconds=seconds)
        try:
            yield lookup
        except GeneratorExit:
            lookup.abandon()
            raise
        if lookup.timed_out:
            lookup.abandon()  # the resolver's thread ends on its own
            raise ConnectTimeout(f"{target.host} did not resolve within {seconds:g} s")
        addresses = lookup.result()
    else:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        addresses = [(family, (target.host, target.port))]
    error: BaseException | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            exchange.bind(sock)  # a cancel shuts it down from here on
            code = sock.connect_ex(sockaddr)
            if code in _CONNECTING:
                left = deadline - time.monotonic()
                if left <= 0 or (yield from waiting(sock.fileno(), left, "connect", write=True)):
                    raise ConnectTimeout(f"no connection within {seconds:g} s")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if exchange.cancelled:
                raise Cancelled()
            if code:
                raise OSError(
                    code, f"connect to {target.host_header}: {errno.errorcode.get(code, code)}"
                )
            if context is not None:
                sock = yield from _handshake(sock, target, context, exchange, deadline, seconds)
            return sock
        except OSError as exc:  # the next address, if any (ConnectTimeout ends it)
            sock.close()
            error = exc
            if isinstance(exc, ConnectTimeout):
                raise
        except BaseException:
            sock.close()
            raise
    assert error is not None
    raise error


def _handshake(
    sock: socket.socket,
    target: Target,
    context: ssl.SSLContext,
    exchange: Exchange,
    deadline: float,
    seconds: float,
) -> Generator[Suspend, None, socket.socket]:
    tls = context.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
    exchange.bind(tls)
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                write = False
            except ssl.SSLWantWriteError:
                write = True
            left = deadline - time.monotonic()
            if left <= 0 or (yield from waiting(tls.fileno(), left, "connect", write=write)):
                raise ConnectTimeout(f"no TLS handshake within {seconds:g} s")
            if exchange.cancelled:
                raise Cancelled()
    except BaseException:
        tls.close()  # wrap_socket took the socket over: closing it is this one's job
        raise


def _send(sock: socket.socket, data: bytes, exchange: Exchange) -> Generator[Suspend, None, None]:
    """Send all of ``data`` within the exchange's deadlines."""
    view = memoryview(data)
    while view:
        seconds, budget = exchange.timeout()
        try:
            sent = sock.send(view)
        except (BlockingIOError, ssl.SSLWantWriteError):
            write = True
        except ssl.SSLWantReadError:
            write = False
        except OSError as exc:
            if exchange.cancelled:
                raise Cancelled() from exc
            raise
        else:
            view = view[sent:]
            continue
        if (yield from waiting(sock.fileno(), seconds, budget, write=write)):
            raise exchange.expired(budget)


def _status_line(line: bytes) -> tuple[int, int, str]:
    """``(version, status, reason)`` of a status line, as http.client accepts them."""
    try:
        text = line.decode("iso-8859-1").rstrip("\r\n")
        version, _, rest = text.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
            raise ValueError(text)
        status = int(code)
        if status < 100:
            raise ValueError(text)
    except ValueError:
        raise _malformed("BadStatusLine") from None
    if version == "HTTP/1.0":
        return 10, status, reason
    if version.startswith("HTTP/1."):
        return 11, status, reason
    raise _malformed("UnknownProtocol")


def _will_close(version: int, headers: Fields) -> bool:
    """Whether the server closes the connection after this response (as http.client decides)."""
    connection = (headers.get("connection") or "").lower()
    if version == 11:
        return "close" in connection
    return not (headers.get("keep-alive") or "keep-alive" in connection)


def _read_head(sock: socket.socket, exchange: Exchange) -> Generator[Suspend, None, Head]:
    """Read the response head (skipping interim ``1xx`` answers) within the budgets.

    Lines end with LF (a CR before it is optional, as http.client reads them).
    The status line is checked as soon as it is complete: an upstream that
    speaks something else than HTTP is told at once, not at the deadline.
    """
    buffer = bytearray()
    pos = 0  # start of the first line not looked at yet
    fields = 0  # start of the header fields of the current answer
    status = 0  # of the current answer, once its status line arrived
    version = 11
    reason = ""
    while True:
        end = buffer.find(b"\n", pos)
        while end >= 0:
            if not status:
                version, status, reason = _status_line(bytes(buffer[pos : end + 1]))
                fields = end + 1
            elif not buffer[pos:end].rstrip(b"\r"):
                headers = _fields(bytes(buffer[fields:pos]))
                if 100 <= status < 200 and status != 101:
                    status = 0  # an interim answer (100 Continue, 103 Early Hints): the next
                else:
                    fp = LoopFile(sock, exchange, bytes(buffer[end + 1 :]))
                    will_close = _will_close(version, headers)
                    return Head(status, printable_reason(reason), headers, will_close, exchange, fp)
            pos = end + 1
            end = buffer.find(b"\n", pos)
        if len(buffer) >= MAX_HEADER_BYTES:
            raise UpstreamProtocolError(
                f"response header block exceeds {MAX_HEADER_BYTES} bytes", retryable=True
            )
        seconds, budget = exchange.timeout()
        try:
            data = sock.recv(min(BLOCK, MAX_HEADER_BYTES - len(buffer)))
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
            write = isinstance(exc, ssl.SSLWantWriteError)
            if (yield from waiting(sock.fileno(), seconds, budget, write=write)):
                raise exchange.expired(budget) from None
            continue
        except OSError as exc:
            if exchange.cancelled:
                raise Cancelled() from exc
            raise
        if not data:
            if exchange.cancelled:
                raise Cancelled()
            if not status and pos == len(buffer):
                # Closed before answering (on a reused connection, the classic
                # stale keep-alive race): a connection error, as http.client says.
                raise http.client.RemoteDisconnected(
                    "Remote end closed connection without response"
                )
            raise UpstreamProtocolError(
                "the connection closed inside the response header block", retryable=True
            )
        buffer += data


def _request_head(target: Target, headers: Mapping[str, str], length: int) -> bytes:
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {target.host_header}"]
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n") or "\r" in value or "\n" in value:
            raise ProviderError(
                f"request failed: InvalidHeader: header {name!r} has a CR, LF or colon "
                "where it may not",
            )
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict")


def exchange_head(
    pool: LoopPool,
    target: Target,
    context: ssl.SSLContext | None,
    verify: bool,
    headers: Mapping[str, str],
    body: bytes,
    exchange: Exchange,
    connect: float,
) -> Generator[Suspend, None, tuple[Conn, Head]]:
    """Send the request on a pooled or new connection and read the response head.

    Returns the connection (its socket non-blocking, owned by ``exchange``) and
    the head; the caller reads the body and gives the connection back.
    """
    try:
        head_bytes = _request_head(target, headers, len(body))
    except UnicodeEncodeError:
        raise ProviderError(
            "request failed: InvalidHeader: a header holds characters outside Latin-1"
        ) from None
    conn = pool.take(target.key, verify)
    if conn is None:
        sock = yield from _connect(target, context, exchange, connect)
        conn = Conn(sock, target.key, verify)
    else:
        exchange.bind(conn.sock)
    exchange.suspended = True
    try:
        yield from _send(conn.sock, head_bytes + body, exchange)
        head = yield from _read_head(conn.sock, exchange)
    except BaseException:
        exchange.release()
        conn.close()
        raise
    return conn, head
