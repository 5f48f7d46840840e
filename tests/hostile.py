"""A hostile upstream: a raw-socket server on 127.0.0.1 whose behaviour is data.

``provhub.testing.FakeUpstream`` speaks well-formed HTTP; this server speaks
whatever a test scripts, byte by byte. A *script* is a list of steps run on one
accepted connection; the server gives the n-th connection the n-th script (then
the ``default`` one)::

    bad = [Read(), Send(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/html\\r\\n\\r\\n"), Close()]
    with HostileServer([bad]) as server:
        ...  # server.base_url, server.requests, server.connections

Steps: :class:`Read` (one request: headers and Content-Length body), :class:`Send`,
:class:`Trickle` (a few bytes at a time, with a pause between), :class:`Pause`, :class:`ByMode`
(different steps for a stream request and a plain one),
:class:`Close` (FIN), :class:`Reset` (RST), :class:`HalfClose` (FIN, then keep
reading), :class:`Hold` (until the client goes away), :class:`Repeat` (steps, a
number of times or forever), :class:`Flood` (a block sent over and over until the
client stops reading). Helpers build common responses (:func:`head`,
:func:`chunked`, :func:`sse`).

Run as ``python -m tests.hostile keepalive CHUNKS DELAY`` it serves a keep-alive
event-stream upstream in a process of its own (for tests whose measurements the
server's own threads must not disturb) and prints its URL.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = [
    "ByMode",
    "Close",
    "Flood",
    "HalfClose",
    "Hold",
    "HostileServer",
    "Pause",
    "Read",
    "Repeat",
    "Reset",
    "Send",
    "Step",
    "Trickle",
    "chunk",
    "chunked",
    "completion_json",
    "delta",
    "event",
    "head",
    "sse",
    "sse_response",
]


@dataclass(frozen=True)
class Read:
    """Read one request: the header block and a Content-Length body (recorded)."""


@dataclass(frozen=True)
class Send:
    """Send bytes at once."""

    data: bytes


@dataclass(frozen=True)
class Trickle:
    """Send ``data`` ``size`` bytes at a time, ``every`` seconds apart."""

    data: bytes
    every: float
    size: int = 1


@dataclass(frozen=True)
class Pause:
    """Do nothing for ``seconds`` (the connection stays open)."""

    seconds: float


@dataclass(frozen=True)
class Close:
    """Close the connection normally (FIN)."""


@dataclass(frozen=True)
class Reset:
    """Abort the connection (RST)."""


@dataclass(frozen=True)
class HalfClose:
    """Shut down the sending side (FIN) and keep the connection open for reading."""


@dataclass(frozen=True)
class Hold:
    """Keep the connection open, reading and discarding, until the client closes it."""


@dataclass(frozen=True)
class Flood:
    """Send ``block`` over and over until the client stops reading or goes away."""

    block: bytes
    limit: int = 1 << 32  # bytes; far more than any test lets through


@dataclass(frozen=True)
class ByMode:
    """Run ``stream`` if the last request asked for a stream, else ``plain``."""

    stream: tuple[Any, ...]
    plain: tuple[Any, ...]


@dataclass(frozen=True)
class Repeat:
    """Run ``steps`` ``times`` times (None: until the client goes away)."""

    steps: tuple[Any, ...]
    times: int | None = None


Step = Read | Send | Trickle | Pause | Close | Reset | HalfClose | Hold | Flood | ByMode | Repeat


class _Gone(Exception):
    """The client went away (or the server is stopping)."""


@dataclass
class _Peer:
    sock: socket.socket
    pending: bytes = b""
    last: bytes = b""  # the last request read


class HostileServer:
    """The server; a context manager. ``scripts`` are per connection, in order."""

    def __init__(
        self,
        scripts: Sequence[Sequence[Step]] = (),
        default: Sequence[Step] = (),
        *,
        tls: ssl.SSLContext | None = None,
    ):
        self.scripts = [list(s) for s in scripts]
        self.tls = tls  # serve https: the handshake happens on the connection's thread
        self.default = list(default)
        self.requests: list[bytes] = []  # every request read, headers and body
        self.connections = 0
        self.disconnects = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._peers: set[socket.socket] = set()
        self._acceptor = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` with ``tls``)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``/v1``)."""
        return self.url + "/v1"

    def __enter__(self) -> HostileServer:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting, drop every connection, join the threads."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            peers = list(self._peers)
        for sock in peers:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

    def wait_for_disconnects(self, count: int, timeout: float = 5.0) -> bool:
        """Whether ``count`` connections ended (client gone or closed) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.disconnects >= count:
                return True
            time.sleep(0.01)
        return self.disconnects >= count

    # -- serving ------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.05)
                if not ready:
                    continue
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
                self._peers.add(sock)
            script = self.scripts[index] if index < len(self.scripts) else self.default
            thread = threading.Thread(
                target=self._serve, args=(sock, script), name="hostile-conn", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket, script: list[Step]) -> None:
        sock = raw
        try:
            if self.tls is not None:
                raw.settimeout(5)
                sock = self.tls.wrap_socket(raw, server_side=True)
                sock.settimeout(None)
            self._run(_Peer(sock), script)
        except (_Gone, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._peers.discard(raw)
                self.disconnects += 1

    def _run(self, peer: _Peer, steps: Iterable[Step]) -> None:
        for step in steps:
            if self._stopping.is_set():
                raise _Gone()
            if isinstance(step, Read):
                request = peer.last = self._read_request(peer)
                with self._lock:
                    self.requests.append(request)
            elif isinstance(step, Send):
                peer.sock.sendall(step.data)
            elif isinstance(step, Trickle):
                for start in range(0, len(step.data), step.size):
                    peer.sock.sendall(step.data[start : start + step.size])
                    self._sleep(peer, step.every)
            elif isinstance(step, Pause):
                self._sleep(peer, step.seconds)
            elif isinstance(step, Close):
                peer.sock.close()
                raise _Gone()
            elif isinstance(step, Reset):
                peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                peer.sock.close()
                raise _Gone()
            elif isinstance(step, HalfClose):
                peer.sock.shutdown(socket.SHUT_WR)
            elif isinstance(step, Hold):
                while True:
                    self._sleep(peer, 3600)
            elif isinstance(step, Flood):
                sent = 0
                while sent < step.limit:
                    peer.sock.sendall(step.block)
                    sent += len(step.block)
            elif isinstance(step, ByMode):
                body = peer.last.partition(b"\r\n\r\n")[2]
                streaming = b'"stream":true' in body.replace(b" ", b"")
                self._run(peer, step.stream if streaming else step.plain)
            elif isinstance(step, Repeat):
                count = 0
                while step.times is None or count < step.times:
                    self._run(peer, step.steps)
                    count += 1
            else:  # pragma: no cover - a test wrote a bad script
                raise TypeError(f"unknown step {step!r}")

    def _sleep(self, peer: _Peer, seconds: float) -> None:
        """Wait, noticing the client leaving (EOF/RST) and the server stopping."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._stopping.is_set():
                raise _Gone()
            ready, _, _ = select.select([peer.sock], [], [], min(left, 0.05))
            if ready:
                data = peer.sock.recv(65536)
                if not data:
                    raise _Gone()
                peer.pending += data  # a pipelined request, kept for the next Read

    def _read_request(self, peer: _Peer) -> bytes:
        while b"\r\n\r\n" not in peer.pending:
            peer.pending += self._recv(peer)
        end = peer.pending.index(b"\r\n\r\n") + 4
        head_block = peer.pending[:end]
        length = 0
        for line in head_block.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(peer.pending) < end + length:
            peer.pending += self._recv(peer)
        request, peer.pending = peer.pending[: end + length], peer.pending[end + length :]
        return request

    def _recv(self, peer: _Peer) -> bytes:
        while True:
            if self._stopping.is_set():
                raise _Gone()
            ready, _, _ = select.select([peer.sock], [], [], 0.05)
            if ready:
                data = peer.sock.recv(65536)
                if not data:
                    raise _Gone()
                return data


# -- building responses ------------------------------------------------------------------


def head(
    status: int = 200,
    reason: str | bytes = "OK",
    headers: Sequence[tuple[str, str | bytes]] = (),
    *,
    version: str = "HTTP/1.1",
    content_type: str | None = "text/event-stream",
    framing: str = "chunked",
    length: int | None = None,
) -> bytes:
    """A status line and header block. ``framing``: "chunked", "length" or "close"."""
    reason_bytes = reason if isinstance(reason, bytes) else reason.encode("latin-1")
    lines = [version.encode() + b" " + str(status).encode() + b" " + reason_bytes]
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type.encode())
    if framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
    elif framing == "length":
        lines.append(b"Content-Length: " + str(length or 0).encode())
    elif framing == "close":
        lines.append(b"Connection: close")
    for name, value in headers:
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunked(pieces: Iterable[bytes]) -> bytes:
    """A whole chunked body: each piece a chunk, then the last chunk."""
    return b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n"


def event(payload: Any) -> bytes:
    """One SSE event carrying ``payload`` (JSON-encoded unless bytes)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return b"data: " + data + b"\n\n"


def delta(text: str) -> dict[str, Any]:
    """A chat-completion chunk carrying ``text``."""
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def sse(tokens: Sequence[str], *, finish: str | None = "stop", done: bool = True) -> list[bytes]:
    """The events of an answer: one per token, a finish reason, ``[DONE]``."""
    events = [event(delta(t)) for t in tokens]
    if finish is not None:
        events.append(event({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    if done:
        events.append(event(b"[DONE]"))
    return events


def sse_response(tokens: Sequence[str] = ("Hel", "lo"), **kwargs: Any) -> bytes:
    """A whole well-formed chunked event-stream response."""
    return head() + chunked(sse(tokens, **kwargs))


def completion_json(text: str = "Hello", finish: str = "stop") -> bytes:
    """A whole ``chat.completion`` body."""
    return json.dumps(
        {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def _serve_keepalive(chunks: int, delay: float) -> None:
    """A keep-alive upstream answering every request with ``chunks`` tokens."""
    tokens = [f"t{i} " for i in range(chunks)]
    events = sse(tokens)
    steps: list[Step] = [Read(), Send(head())]
    if delay:
        for piece in events:
            steps += [Send(chunk(piece)), Pause(delay)]
        steps.append(Send(b"0\r\n\r\n"))
    else:
        steps.append(Send(chunked(events)))
    with HostileServer(default=[Repeat(tuple(steps))]) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    if sys.argv[1:2] == ["keepalive"]:
        _serve_keepalive(int(sys.argv[2]), float(sys.argv[3]))
    else:
        raise SystemExit("usage: python -m tests.hostile keepalive CHUNKS DELAY")
