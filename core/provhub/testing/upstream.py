"""A fake OpenAI-compatible upstream: a real HTTP/1.1 server on loopback, standard library only.

``FakeUpstream`` listens on a real socket so clients are tested through their whole network
stack (connection pool, chunked decoding, SSE parsing, timeouts), the way requests' own suite
runs against a real httpbin rather than mocks. Each answer is described by a ``Behaviour``: the
status, the tokens, how they are framed, and which ``Fault`` to inject::

    from provhub.testing import Behaviour, FakeUpstream, Fault

    with FakeUpstream() as upstream:
        upstream.script(
            Behaviour(status=429, retry_after="1"),
            Behaviour(tokens=("Hello", " world"), fault=Fault.DROP_MID_STREAM, fault_after=1),
        )
        ...  # point the client at upstream.base_url
        assert upstream.requests[0].json["model"] == "gpt-4"

Besides text, a ``Behaviour`` scripts what richer answers carry (SPEC §11): ``tool_calls``
(parallel, arguments split into ``argument_chunk``-character fragments, interleaved or not,
framed the OpenAI way or with the quirks of real servers chosen by ``ToolCallQuirk`` flags),
``reasoning`` (as ``reasoning_content`` or ``reasoning``), ``refusal``, and usage with
``cached_tokens``/``reasoning_tokens`` details::

    from provhub import ToolCall
    from provhub.testing import ToolCallQuirk

    upstream.script(
        Behaviour(
            tokens=(),
            tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),),
            argument_chunk=3,
            tool_call_quirks=ToolCallQuirk.NO_INDEX,
        )
    )

Routes: ``POST …/chat/completions`` (any prefix, so base URLs with or without ``/v1`` work),
``GET …/models``; anything else is a 404 with an OpenAI-style JSON error. The request's JSON
``stream`` field picks streaming (SSE over chunked transfer encoding, byte for byte the framing
OpenAI uses) or a plain ``chat.completion`` JSON body.

Responses are built once per distinct (behaviour, model, mode) and cached as ready-to-send bytes,
so a 20,000-chunk stream goes out in one ``sendall``: benchmarks measure the client, not the fake.
"""

from __future__ import annotations

import contextlib
import enum
import http
import itertools
import json
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from provhub._spec import Usage
from provhub._toolcalls import ToolCall

__all__ = [
    "Behaviour",
    "FakeUpstream",
    "Fault",
    "RecordedRequest",
    "ToolCallQuirk",
    "unused_port_url",
]


class Fault(enum.StrEnum):
    """A failure the fake upstream injects into one response.

    Content faults (``MALFORMED_JSON``, ``INVALID_UTF8``, ``HUGE_LINE``, ``ERROR_OBJECT``,
    ``MODEL_MISSING``) apply to generated 200 answers. Transport faults (the ``DROP_*``,
    ``HANG_*`` and ``SLOW_DRIP``) apply to every chat-completions answer, error statuses and
    ``Behaviour.body`` overrides included; on a Content-Length body "mid stream" means halfway.
    Positions count the answer's chunks (reasoning, text, refusal and tool-call chunks, in the
    order sent; not the role chunk), and ``fault_after`` larger than their number puts the
    fault after the last of them.
    """

    NONE = "none"
    """No fault: a well-formed answer."""
    DROP_AFTER_HEADERS = "drop_after_headers"
    """Send the status line and headers, then close the socket."""
    DROP_MID_STREAM = "drop_mid_stream"
    """Close the socket after ``fault_after`` content chunks, without the terminating 0-chunk."""
    HANG_BEFORE_HEADERS = "hang_before_headers"
    """Read the request, send nothing for ``hang_seconds``, then answer normally."""
    HANG_BETWEEN_CHUNKS = "hang_between_chunks"
    """After ``fault_after`` content chunks send nothing for ``hang_seconds``, then go on."""
    MALFORMED_JSON = "malformed_json"
    """After ``fault_after`` content chunks, a ``data: {not json`` event; then go on."""
    INVALID_UTF8 = "invalid_utf8"
    """After ``fault_after`` content chunks, a chunk whose JSON string holds bytes ``ff fe``."""
    HUGE_LINE = "huge_line"
    """After ``fault_after`` content chunks, one valid chunk whose data line exceeds 1 MiB."""
    ERROR_OBJECT = "error_object"
    """After ``fault_after`` content chunks, an ``{"error": …}`` event; the stream then ends."""
    SLOW_DRIP = "slow_drip"
    """The whole body one byte at a time, ``drip_interval`` apart; in a stream, a chunk each."""
    MODEL_MISSING = "model_missing"
    """Lockchat quirk: a 200 stream whose only event says model `gpt-4` does not exist."""


class ToolCallQuirk(enum.Flag):
    """How a streamed answer frames its tool calls, beyond OpenAI's own way.

    OpenAI sends each call as a first fragment with ``index``, ``id``, ``type`` and the
    function ``name`` (``arguments`` empty), then fragments with ``index`` and a piece of
    the ``arguments`` only. Real servers differ; combine these flags to imitate them.
    """

    NONE = 0
    """OpenAI's framing."""
    NO_INDEX = enum.auto()
    """Fragments carry no ``index`` (some Gemini and proxy versions)."""
    INDEX_ZERO = enum.auto()
    """Every call's fragments say ``index: 0`` (parallel calls of some Ollama versions)."""
    WHOLE = enum.auto()
    """Each call in one fragment: id, name and all its arguments (Ollama, Mistral)."""
    ONE_CHUNK = enum.auto()
    """All the calls, whole, in a single chunk's ``tool_calls`` list."""
    REPEAT_ID_NAME = enum.auto()
    """``id``, ``type`` and ``name`` repeated on every fragment."""
    NO_ID = enum.auto()
    """No ``id`` on any call (the client must make one up)."""
    ARGUMENTS_OBJECT = enum.auto()
    """``arguments`` sent as a JSON object, not JSON text; implies whole calls in a stream."""
    LEGACY_FUNCTION_CALL = enum.auto()
    """The pre-tools ``function_call`` delta/message (one call only, no id)."""


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the fake upstream answers one chat-completions request.

    A ``Behaviour`` is an immutable value: script the same one many times, compare it, use it as
    a parameter id. ``text()`` is what a correct client must deliver for it.

    Attributes:
        status: HTTP status. Anything but 200 is answered with an OpenAI-style JSON error body
            ``{"error": {"message", "type", "code"}}`` (``code`` is the status).
        tokens: The answer tokens; ``None`` generates ``chunks`` distinct tokens ``"w0 "``,
            ``"w1 "``, … (distinct because some clients abort after 100 identical chunks).
        chunks: How many tokens to generate when ``tokens`` is ``None``.
        fault: The ``Fault`` to inject; ``fault_after`` content chunks are sent before it.
        retry_after: ``Retry-After`` header value, sent whenever set (meant for 429 and 503).
        body: Raw body sent as is, with Content-Length, for any status and either mode.
        content_type: ``Content-Type`` override (defaults: ``text/event-stream`` for 200
            streams, ``application/json`` otherwise).
        usage: Stream: a last chunk with ``"choices": []`` and ``"usage"``; non-stream: a
            ``"usage"`` object. ``completion_tokens`` is the number of answer chunks (see
            ``chunk_count()``) and ``prompt_tokens`` the number of whitespace-separated words
            in the messages' string contents.
        cached_tokens: With ``usage``: ``prompt_tokens_details.cached_tokens``.
        reasoning_tokens: With ``usage``: ``completion_tokens_details.reasoning_tokens``.
        usage_in_final_chunk: Stream: usage rides on the chunk with the finish reason instead
            of a chunk of its own (as some vLLM and llama.cpp versions send it).
        finish_reason: ``finish_reason`` of the final choice; None means ``"tool_calls"``
            when ``tool_calls`` are scripted and ``"stop"`` otherwise.
        tool_calls: Tool calls of the answer, sent after the text, in order.
        tool_call_quirks: How the calls are framed (``ToolCallQuirk`` flags).
        argument_chunk: Characters of ``arguments`` per fragment (0: all in one fragment).
        interleave_tool_calls: Stream: send the calls' fragments in turns (call 0, call 1,
            call 0, ...) instead of one call after the other. Needs an index or an id on
            every fragment to be told apart.
        reasoning: Reasoning ("thinking") fragments, sent before the text.
        reasoning_field: Where reasoning goes: ``"reasoning_content"`` (DeepSeek, vLLM),
            ``"reasoning"`` (OpenRouter, Groq) or ``"both"`` (recent vLLM sends both).
        refusal: Refusal fragments, sent after the text (``content`` is null without text).
        role_chunk: Stream: open with a chunk whose delta is ``{"role": "assistant"}``.
        done: Stream: end with ``data: [DONE]``.
        crlf: Stream: end SSE lines with ``\\r\\n`` instead of ``\\n``.
        comments: Stream: put a ``: keep-alive`` comment before every event.
        events_per_http_chunk: SSE events per HTTP chunk (1 flushes per token, as real servers).
        chunk_delay: Seconds between consecutive HTTP data chunks of a stream.
        hang_seconds: Length of a ``HANG_*`` fault; ``stop()`` and a client close cut it short.
        drip_interval: Seconds between bytes under ``SLOW_DRIP``.
    """

    status: int = 200
    tokens: tuple[str, ...] | None = None
    chunks: int = 3
    fault: Fault = Fault.NONE
    fault_after: int = 1
    retry_after: str | None = None
    body: bytes | None = None
    content_type: str | None = None
    usage: bool = True
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_in_final_chunk: bool = False
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_quirks: ToolCallQuirk = ToolCallQuirk.NONE
    argument_chunk: int = 8
    interleave_tool_calls: bool = False
    reasoning: tuple[str, ...] = ()
    reasoning_field: str = "reasoning_content"
    refusal: tuple[str, ...] = ()
    role_chunk: bool = True
    done: bool = True
    crlf: bool = False
    comments: bool = False
    events_per_http_chunk: int = 1
    chunk_delay: float = 0.0
    hang_seconds: float = 30.0
    drip_interval: float = 0.1

    def __post_init__(self) -> None:
        # Coerce rather than reject: a list of tokens or a fault given as its string value are
        # plain mistakes of convenience, and the behaviour must stay hashable (it keys a cache).
        if self.tokens is not None and not isinstance(self.tokens, tuple):
            object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "fault", Fault(self.fault))
        for name in ("tool_calls", "reasoning", "refusal"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self._check_rich()
        if not 200 <= self.status <= 599:
            raise ValueError(f"Behaviour.status must be a final HTTP status 200-599: {self.status}")
        for name in ("chunks", "fault_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"Behaviour.{name} must be >= 0: {getattr(self, name)}")
        if self.events_per_http_chunk < 1:
            raise ValueError(
                f"Behaviour.events_per_http_chunk must be >= 1: {self.events_per_http_chunk}"
            )
        for name in ("chunk_delay", "hang_seconds", "drip_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"Behaviour.{name} must be >= 0 seconds: {getattr(self, name)}")
        for name in ("retry_after", "content_type"):
            value = getattr(self, name)
            if value is not None and (not value.isprintable() or not value.isascii()):
                raise ValueError(f"Behaviour.{name} must be printable ASCII: {value!r}")

    def _check_rich(self) -> None:
        quirks = self.tool_call_quirks
        if not isinstance(quirks, ToolCallQuirk):
            raise ValueError(f"Behaviour.tool_call_quirks must be ToolCallQuirk flags: {quirks!r}")
        for call in self.tool_calls:
            if not isinstance(call, ToolCall):
                raise ValueError(f"Behaviour.tool_calls takes ToolCall values, not {call!r:.60}")
        for name in ("reasoning", "refusal"):
            if not all(isinstance(text, str) for text in getattr(self, name)):
                raise ValueError(f"Behaviour.{name} must hold strings")
        if self.reasoning_field not in ("reasoning_content", "reasoning", "both"):
            raise ValueError(
                "Behaviour.reasoning_field must be 'reasoning_content', 'reasoning' or 'both': "
                f"{self.reasoning_field!r}"
            )
        for name in ("cached_tokens", "reasoning_tokens", "argument_chunk"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Behaviour.{name} must be >= 0: {value}")
        if ToolCallQuirk.ARGUMENTS_OBJECT in quirks:
            for call in self.tool_calls:
                try:
                    value = json.loads(call.arguments or "{}")
                except ValueError:
                    value = None
                if not isinstance(value, dict | list):
                    raise ValueError(
                        "ToolCallQuirk.ARGUMENTS_OBJECT needs arguments that are a JSON object "
                        f"or array; call {call.id} has {call.arguments!r:.60}"
                    )
        if ToolCallQuirk.LEGACY_FUNCTION_CALL in quirks and len(self.tool_calls) > 1:
            raise ValueError("ToolCallQuirk.LEGACY_FUNCTION_CALL carries one call only")
        if self.interleave_tool_calls and (
            quirks & (ToolCallQuirk.NO_INDEX | ToolCallQuirk.INDEX_ZERO)
            and (ToolCallQuirk.NO_ID in quirks or ToolCallQuirk.REPEAT_ID_NAME not in quirks)
        ):
            raise ValueError(
                "interleaved tool calls without a distinct index need an id on every fragment "
                "(ToolCallQuirk.REPEAT_ID_NAME, without NO_ID): nothing else tells them apart"
            )

    def effective_finish_reason(self) -> str:
        """The finish reason sent: ``finish_reason``, else by what the answer holds."""
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    def chunk_count(self) -> int:
        """How many answer chunks a stream carries (what ``fault_after`` counts)."""
        return len(_answer_deltas(self))

    def expected_tool_calls(self) -> list[ToolCall]:
        """The calls a correct client assembles from this answer.

        As scripted, except: under ``ARGUMENTS_OBJECT`` the arguments are the compact JSON
        text a client re-encodes them to, and under ``NO_ID``/``LEGACY_FUNCTION_CALL`` the
        ``id`` is whatever the client made up (compare names and arguments then).
        """
        if ToolCallQuirk.ARGUMENTS_OBJECT not in self.tool_call_quirks:
            return list(self.tool_calls)
        return [
            ToolCall(call.id, call.name, _compact(json.loads(call.arguments or "{}")))
            for call in self.tool_calls
        ]

    def usage_for(self, messages: Any) -> Usage:
        """The :class:`~provhub.Usage` this answer reports for a request with ``messages``."""
        prompt = _prompt_words({"messages": messages})
        completion = self.chunk_count()
        return Usage(
            prompt,
            completion,
            prompt + completion,
            cached_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )

    def answer_tokens(self) -> tuple[str, ...]:
        """The tokens of the answer, explicit or generated."""
        if self.tokens is not None:
            return self.tokens
        return tuple(f"w{i} " for i in range(self.chunks))

    def text(self) -> str:
        """The full answer text a correct client must deliver: the tokens joined.

        Events a fault injects (a huge line, an error object) are not part of it.
        """
        return "".join(self.answer_tokens())


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake upstream received, recorded before it was answered.

    ``headers`` has lower-case names (repeated headers joined with ``", "``); ``json`` is the
    decoded body, or ``None`` when the body is empty or not JSON.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


def unused_port_url(host: str = "127.0.0.1") -> str:
    """Return ``http://HOST:PORT`` for a port nothing listens on, so connecting is refused.

    The port comes from the OS's ephemeral range and is released at once; another process
    could take it, but the kernel hands ephemeral ports out in rotation, so in practice it
    stays free for the life of a test.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return _url(host, port)


class FakeUpstream:
    """A fake OpenAI-compatible server on a real loopback socket.

    Start it with ``start()`` or ``with FakeUpstream() as upstream:``; point clients at
    ``base_url``. Each chat-completions request takes the next ``Behaviour`` queued with
    ``script()``, or ``default`` when the queue is empty. HTTP/1.1 connections persist until
    the client sends ``Connection: close`` (or speaks HTTP/1.0), so a pooled client reuses one.

    Args:
        host: Interface to listen on (IPv6 literals such as ``"::1"`` work).
        port: Port to listen on; 0 picks a free one.
        default: Answer used when the script queue is empty (default ``Behaviour()``).
        models: Model ids listed by ``GET …/models``.
        record: Record every request in ``requests``; benchmarks pass ``False`` so memory
            stays flat over millions of requests.

    All methods and properties are thread-safe. A stopped upstream cannot be restarted.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Behaviour | None = None,
        models: Sequence[str] = ("gpt-3.5-turbo", "gpt-4", "gpt-4o-mini"),
        record: bool = True,
    ) -> None:
        self._host = host
        self._port = port
        self._default = default if default is not None else Behaviour()
        self._models = tuple(models)
        self._record = record
        self._lock = threading.Lock()
        # Notified whenever a counter or the set of connections changes (the wait_for_* methods).
        self._changed = threading.Condition(self._lock)
        self._script: deque[Behaviour] = deque()
        self._requests: list[RecordedRequest] = []
        self._disconnects = 0
        self._accepted = 0
        self._connections: set[_Connection] = set()
        self._state = _State.NEW
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._waker: socket.socket | None = None
        self._wake_signal: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._thread_ids = itertools.count(1)
        self._plans = _PlanCache()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Bind, listen and start serving in background threads; return ``self``.

        Raises:
            RuntimeError: if already started or stopped.
            OSError: if the address cannot be bound.
        """
        with self._lock:
            if self._state is not _State.NEW:
                raise RuntimeError(f"FakeUpstream is {self._state.value}; create a new one")
            self._state = _State.RUNNING
        listener = socket.socket(_family(self._host), socket.SOCK_STREAM)
        try:
            if os.name == "posix":
                # Lets a fixed port be rebound while old connections sit in TIME_WAIT; on
                # Windows the same option would allow two live listeners on one port.
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(socket.SOMAXCONN)
            # Non-blocking so a connection reset between select() and accept() cannot block
            # the accept loop.
            listener.setblocking(False)
        except BaseException:
            listener.close()
            with self._lock:
                self._state = _State.STOPPED
            raise
        self._listener = listener
        self._port = listener.getsockname()[1]
        # A socket pair wakes the accept loop on stop(): closing a listening socket from
        # another thread does not interrupt accept() on every platform.
        self._wake_signal, self._waker = socket.socketpair()
        self._accept_thread = threading.Thread(
            target=self._accept_loop,
            args=(listener, self._wake_signal),
            name=f"provhub-fake-upstream-accept-{self._port}",
            daemon=True,
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every client socket and join every thread; idempotent.

        Prompt even while handlers hang or stream: their sockets are shut down, which wakes
        any blocked read or write at once. Returns within about a second in all cases.
        """
        with self._lock:
            if self._state is not _State.RUNNING:
                self._state = _State.STOPPED
                return
            self._state = _State.STOPPED
        self._stopping.set()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        if self._waker is not None:
            # Fails only if the pair is already closed, and then the accept loop is gone too.
            with contextlib.suppress(OSError):
                self._waker.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(_remaining(deadline))
        # After the accept loop has exited no connection can be added, so this list is final.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.shut_down()
        for connection in connections:
            if connection.thread is not None and connection.thread.ident is not None:
                connection.thread.join(_remaining(deadline))
            connection.sock.close()
        for sock in (self._listener, self._waker, self._wake_signal):
            if sock is not None:
                sock.close()
        with self._changed:
            self._connections.clear()
            self._changed.notify_all()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = _url(self._host, self._port) if self._listener is not None else self._host
        return f"<FakeUpstream {where} {self._state.value}>"

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server.

        Raises:
            RuntimeError: if the server was never started.
        """
        if self._listener is None:
            raise RuntimeError("FakeUpstream has no address until start() is called")
        return _url(self._host, self._port)

    @property
    def base_url(self) -> str:
        """``url + "/v1"``: what an OpenAI-compatible client takes as its base URL."""
        return self.url + "/v1"

    # -- behaviour -------------------------------------------------------------------------

    @property
    def default(self) -> Behaviour:
        """The ``Behaviour`` used when the script queue is empty; assignable."""
        return self._default

    @default.setter
    def default(self, behaviour: Behaviour) -> None:
        if not isinstance(behaviour, Behaviour):
            raise TypeError(f"default must be a Behaviour, not {type(behaviour).__name__}")
        self._default = behaviour

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours: each chat-completions request consumes the next one, in order.

        Appends to what is already queued; once the queue is empty, ``default`` answers.
        Requests to other routes and malformed requests consume nothing.
        """
        for behaviour in behaviours:
            if not isinstance(behaviour, Behaviour):
                raise TypeError(f"script() takes Behaviour values, not {type(behaviour).__name__}")
        with self._lock:
            self._script.extend(behaviours)

    def reset(self) -> None:
        """Clear the script queue, the recorded requests and the counters.

        ``default`` and open connections are kept.
        """
        with self._changed:
            self._script.clear()
            self._requests.clear()
            self._disconnects = 0
            self._accepted = 0
            self._changed.notify_all()

    # -- observations ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> int:
        """Responses the client abandoned before the server finished sending them.

        Seen as a failed write (broken pipe, reset) or as the peer closing while the server
        waits (a hang, a delay between chunks). A response the kernel has fully buffered
        before the client leaves cannot be noticed, so provoke this with a delay or a hang.
        """
        with self._lock:
            return self._disconnects

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        with self._lock:
            return len(self._connections)

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted since start (or the last ``reset()``)."""
        with self._lock:
            return self._accepted

    def wait_for_disconnects(self, n: int, timeout: float = 5.0) -> bool:
        """Block until ``disconnects >= n``; return whether that happened within ``timeout``."""
        with self._changed:
            return self._changed.wait_for(lambda: self._disconnects >= n, timeout)

    def wait_for_open_connections(self, n: int, timeout: float = 5.0) -> bool:
        """Block until exactly ``n`` connections are open; return whether that happened in time.

        The server notices a client's close asynchronously, so check
        ``wait_for_open_connections(0)`` rather than ``open_connections == 0``.
        """
        with self._changed:
            return self._changed.wait_for(lambda: len(self._connections) == n, timeout)

    # -- serving ---------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket, wake_signal: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake_signal, selectors.EVENT_READ)
            while not self._stopping.is_set():
                selector.select()
                if self._stopping.is_set():
                    return
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue  # the pending connection went away before we took it
                except OSError:
                    # Out of descriptors and the like: back off instead of spinning on a
                    # listener that stays readable.
                    self._stopping.wait(0.05)
                    continue
                self._adopt(sock)

    def _adopt(self, sock: socket.socket) -> None:
        # Accepted sockets inherit non-blocking mode on BSDs; handlers rely on blocking I/O.
        sock.setblocking(True)
        # Small writes (one SSE event per chunk) must leave at once, not wait for Nagle.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock)
        connection.thread = threading.Thread(
            target=self._serve,
            args=(connection,),
            name=f"provhub-fake-upstream-conn-{self._port}-{next(self._thread_ids)}",
            daemon=True,
        )
        with self._changed:
            self._connections.add(connection)
            self._accepted += 1
            self._changed.notify_all()
        connection.thread.start()

    def _serve(self, connection: _Connection) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    request = _read_request(connection)
                except _BadRequest as exc:
                    self._send(connection, _error_plan(exc.status, exc.message, close=True))
                    return
                if request is None or not self._respond(connection, request):
                    return
        except OSError:
            pass  # the client vanished between requests, or stop() shut the socket down
        finally:
            connection.sock.close()
            with self._changed:
                self._connections.discard(connection)
                self._changed.notify_all()

    def _respond(self, connection: _Connection, request: _Request) -> bool:
        """Answer one request; return whether the connection stays open."""
        payload = _decode_json(request.body)
        if self._record:
            recorded = RecordedRequest(
                request.method, request.target, request.headers, request.body, payload
            )
            with self._lock:
                self._requests.append(recorded)
        path = request.target.partition("?")[0]
        close = request.close
        if path.endswith("/chat/completions"):
            if request.method != "POST":
                plan = _error_plan(405, "Use POST for chat completions.", close, allow="POST")
            elif not isinstance(payload, dict):
                plan = _error_plan(400, "The request body must be a JSON object.", close)
            else:
                plan = self._plans.get(self._next_behaviour(), payload, close)
        elif path.endswith("/models"):
            if request.method != "GET":
                plan = _error_plan(405, "Use GET to list models.", close, allow="GET")
            else:
                plan = _models_plan(self._models, close)
        else:
            plan = _error_plan(404, f"Unknown path {path!r}.", close)
        return self._send(connection, plan) and not close

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._script.popleft() if self._script else self._default

    def _send(self, connection: _Connection, plan: _Plan) -> bool:
        """Carry out a response plan; return False if the connection must close."""
        try:
            for step in plan:
                if isinstance(step, bytes):
                    connection.sock.sendall(step)
                elif isinstance(step, _Pause):
                    if not self._pause(connection, step.seconds):
                        self._abandoned()
                        return False
                else:
                    return False  # a drop fault: closing is the whole point
        except OSError:
            self._abandoned()
            return False
        return True

    def _pause(self, connection: _Connection, seconds: float) -> bool:
        """Wait ``seconds``; False as soon as the peer closes or the server stops.

        Waiting in ``recv`` rather than on an Event notices a client close at once, and
        ``stop()`` wakes it by shutting the socket down.
        """
        deadline = time.monotonic() + seconds
        sock = connection.sock
        try:
            while not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                sock.settimeout(remaining)
                try:
                    data = sock.recv(_RECV_SIZE)
                except TimeoutError:
                    return True
                if not data:
                    return False
                # A pipelined next request: keep it for the request reader.
                connection.buffer += data
            return False
        finally:
            sock.settimeout(None)

    def _abandoned(self) -> None:
        # Writes fail during stop() too; those are the server's doing, not the client's.
        if self._stopping.is_set():
            return
        with self._changed:
            self._disconnects += 1
            self._changed.notify_all()


# -- internals ---------------------------------------------------------------------------------

_RECV_SIZE: Final = 65536
_MAX_HEAD: Final = 64 * 1024
_MAX_BODY: Final = 64 * 1024 * 1024
_JOIN_TIMEOUT: Final = 0.9
_DEFAULT_MODEL: Final = "gpt-3.5-turbo"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_HUGE_CONTENT: Final = "x" * (1 << 20)
_SERVER_ERROR: Final = (
    b'{"error":{"message":"The server had an error while processing your request. '
    b'Sorry about that!","type":"server_error","code":500}}'
)
_MODEL_MISSING: Final = (
    b'{"error":{"message":"The model: `gpt-4` does not exist","type":"invalid_request_error",'
    b'"param":null,"code":"model_not_found"}}'
)
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class _Connection:
    """One accepted client socket, the bytes read ahead on it, and the thread serving it."""

    __slots__ = ("buffer", "sock", "thread")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.thread: threading.Thread | None = None

    def shut_down(self) -> None:
        # shutdown() wakes a thread blocked in recv/sendall on this socket; close() does not.
        # OSError: already closed by its own thread or by the peer.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    close: bool


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class _Pause:
    seconds: float


class _Drop:
    """Plan step: close the connection without finishing the response."""


_DROP: Final = _Drop()

# A response plan: bytes are written, a pause waits (cut short by a client close or stop()),
# a drop ends the connection. Consecutive bytes are merged, so most plans are one write.
_Step: TypeAlias = bytes | _Pause | _Drop
_Plan: TypeAlias = tuple[_Step, ...]


def _read_request(connection: _Connection) -> _Request | None:
    """Read one request from the connection; None when the client closed it cleanly."""
    buf = connection.buffer
    while True:
        # RFC 9112 §2.2: ignore empty lines before a request line.
        while buf.startswith(b"\r\n"):
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > _MAX_HEAD:
            raise _BadRequest(431, "Request header fields too large.")
        data = connection.sock.recv(_RECV_SIZE)
        if not data:
            return None
        buf += data
    request_line, *header_lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, f"Malformed request line {request_line[:100]!r}.")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(400, f"Malformed header line {line[:100]!r}.")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "transfer-encoding" in headers:
        # Real OpenAI-compatible servers vary here; the fake keeps to what clients send.
        raise _BadRequest(400, "Chunked request bodies are not supported; send Content-Length.")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadRequest(400, "Content-Length is not a number.") from None
    if length < 0:
        raise _BadRequest(400, "Content-Length is negative.")
    if length > _MAX_BODY:
        raise _BadRequest(413, "Request body too large.")
    if length > len(buf) and headers.get("expect", "").lower() == "100-continue":
        connection.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    while len(buf) < length:
        data = connection.sock.recv(max(_RECV_SIZE, length - len(buf)))
        if not data:
            return None
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
    return _Request(method, target, headers, body, close)


def _decode_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None


def _dumps(value: object) -> bytes:
    # Compact and UTF-8, as OpenAI sends it.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _head(status: int, headers: Iterable[tuple[str, str]], close: bool) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", "Server: provhub-fake-upstream"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("Connection: close" if close else "Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _sized(
    status: int, content_type: str, body: bytes, close: bool, *extra: tuple[str, str]
) -> bytes:
    headers = [("Content-Type", content_type), *extra]
    # RFC 9110 §8.6: no Content-Length (and no body) on 204 and 304.
    if status in (204, 304):
        body = b""
    else:
        headers.append(("Content-Length", str(len(body))))
    return _head(status, headers, close) + body


def _error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return _dumps({"error": {"message": message, "type": kind, "code": status}})


def _error_plan(status: int, message: str, close: bool, allow: str | None = None) -> _Plan:
    extra = (("Allow", allow),) if allow else ()
    return (_sized(status, "application/json", _error_body(status, message), close, *extra),)


def _models_plan(models: Sequence[str], close: bool) -> _Plan:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "provhub"} for m in models]
    body = _dumps({"object": "list", "data": data})
    return (_sized(200, "application/json", body, close),)


def _prompt_words(payload: dict[str, Any]) -> int:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(
        len(message["content"].split())
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), str)
    )


class _PlanCache:
    """Ready-to-send plans per (behaviour, model, mode, prompt size, close), bounded LRU-ish.

    Building a 20,000-chunk stream costs tens of milliseconds; a benchmark repeating it must
    pay that once, not per request.
    """

    _MAX_ENTRIES: Final = 32

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[tuple[Behaviour, str, bool, int, bool], _Plan] = {}
        self._ids = itertools.count(1)

    def get(self, behaviour: Behaviour, payload: dict[str, Any], close: bool) -> _Plan:
        model = payload.get("model")
        if not isinstance(model, str):
            model = _DEFAULT_MODEL
        key = (behaviour, model, payload.get("stream") is True, _prompt_words(payload), close)
        with self._lock:
            plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                ident = f"chatcmpl-provhubfake{next(self._ids):08d}"
            plan = _build_plan(behaviour, model, key[2], key[3], close, ident, int(time.time()))
            with self._lock:
                if len(self._plans) >= self._MAX_ENTRIES:
                    del self._plans[next(iter(self._plans))]
                self._plans[key] = plan
        return plan


def _build_plan(
    b: Behaviour,
    model: str,
    stream: bool,
    prompt_tokens: int,
    close: bool,
    ident: str,
    created: int,
) -> _Plan:
    retry = (("Retry-After", b.retry_after),) if b.retry_after is not None else ()
    if b.body is not None or b.status != 200:
        if b.body is not None:
            body = b.body
        else:
            body = _error_body(b.status, f"Fake upstream answered {b.status} as scripted.")
        default_type = "text/event-stream" if stream and b.status == 200 else "application/json"
        return _merge(
            _sized_transport(
                b, _sized(b.status, b.content_type or default_type, body, close, *retry)
            )
        )
    deltas = _answer_deltas(b)
    usage = _usage_bytes(b, prompt_tokens, len(deltas))
    if not stream:
        body = _completion_body(b, model, usage, ident, created)
        head = _sized(200, b.content_type or "application/json", body, close, *retry)
        return _merge(_sized_transport(b, head))
    head = _head(
        200,
        [
            ("Content-Type", b.content_type or "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
            *retry,
        ],
        close,
    )
    return _merge(_stream_steps(b, model, usage, head, ident, created, deltas))


def _sized_transport(b: Behaviour, response: bytes) -> list[_Step]:
    """Apply a transport fault to a Content-Length response (head and body in ``response``)."""
    split = response.index(b"\r\n\r\n") + 4
    head, body = response[:split], response[split:]
    half = split + len(body) // 2
    match b.fault:
        case Fault.HANG_BEFORE_HEADERS:
            return [_Pause(b.hang_seconds), response]
        case Fault.DROP_AFTER_HEADERS:
            return [head, _DROP]
        case Fault.DROP_MID_STREAM:
            return [response[:half], _DROP]
        case Fault.HANG_BETWEEN_CHUNKS:
            return [response[:half], _Pause(b.hang_seconds), response[half:]]
        case Fault.SLOW_DRIP:
            return [head, *_drip(body, b.drip_interval, framed=False)]
    return [response]


def _completion_body(b: Behaviour, model: str, usage: bytes, ident: str, created: int) -> bytes:
    match b.fault:
        case Fault.MALFORMED_JSON:
            return b"{not json"
        case Fault.ERROR_OBJECT:
            return _SERVER_ERROR
        case Fault.MODEL_MISSING:
            return _MODEL_MISSING
        case Fault.INVALID_UTF8:
            content = _dumps(b.text())[:-1] + b'\xff\xfe"'
        case Fault.HUGE_LINE:
            content = _dumps(b.text() + _HUGE_CONTENT)
        case _:
            # OpenAI sends null content with tool calls or a refusal and no text.
            text = b.text()
            content = b"null" if not text and (b.tool_calls or b.refusal) else _dumps(text)
    envelope = _dumps(
        {"id": ident, "object": "chat.completion", "created": created, "model": model}
    )
    return (
        envelope[:-1]
        + b',"choices":[{"index":0,"message":{"role":"assistant","content":'
        + content
        + _message_extras(b)
        + b'},"finish_reason":'
        + _dumps(b.effective_finish_reason())
        + b"}]"
        + (b',"usage":' + usage if b.usage else b"")
        + b"}"
    )


def _usage_bytes(b: Behaviour, prompt_tokens: int, completion_tokens: int) -> bytes:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if b.cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": b.cached_tokens, "audio_tokens": 0}
    if b.reasoning_tokens is not None:
        usage["completion_tokens_details"] = {
            "reasoning_tokens": b.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return _dumps(usage)


def _compact(value: object) -> str:
    # The JSON text a client makes of arguments sent as a JSON value (provhub._openai).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _reasoning_fields(b: Behaviour, text: str) -> bytes:
    """``"reasoning_content":...`` (or ``reasoning``, or both) for ``text``, comma first."""
    value = _dumps(text)
    if b.reasoning_field == "both":
        return b',"reasoning":' + value + b',"reasoning_content":' + value
    return b',"' + b.reasoning_field.encode() + b'":' + value


def _message_extras(b: Behaviour) -> bytes:
    """The non-text fields of a whole ``chat.completion`` message, comma first."""
    out = b""
    if b.reasoning:
        out += _reasoning_fields(b, "".join(b.reasoning))
    if b.refusal:
        out += b',"refusal":' + _dumps("".join(b.refusal))
    if not b.tool_calls:
        return out
    quirks = b.tool_call_quirks
    if ToolCallQuirk.LEGACY_FUNCTION_CALL in quirks:
        call = b.tool_calls[0]
        return out + b',"function_call":' + _dumps({"name": call.name, "arguments": call.arguments})
    calls = []
    for call in b.tool_calls:
        entry: dict[str, Any] = {} if ToolCallQuirk.NO_ID in quirks else {"id": call.id}
        arguments: Any = call.arguments
        if ToolCallQuirk.ARGUMENTS_OBJECT in quirks:
            arguments = json.loads(call.arguments or "{}")
        entry["type"] = "function"
        entry["function"] = {"name": call.name, "arguments": arguments}
        calls.append(entry)
    return out + b',"tool_calls":' + _dumps(calls)


def _pieces(text: str, size: int) -> list[str]:
    if not text:
        return []
    if size <= 0:
        return [text]
    return [text[start : start + size] for start in range(0, len(text), size)]


def _tool_call_deltas(b: Behaviour) -> list[bytes]:
    """The streamed deltas of the scripted tool calls, framed as ``tool_call_quirks`` say."""
    if not b.tool_calls:
        return []
    quirks = b.tool_call_quirks
    size = b.argument_chunk
    if ToolCallQuirk.LEGACY_FUNCTION_CALL in quirks:
        call = b.tool_calls[0]
        if ToolCallQuirk.WHOLE in quirks:
            legacy = [{"name": call.name, "arguments": call.arguments}]
        else:
            legacy = [{"name": call.name, "arguments": ""}]
            legacy += [{"arguments": piece} for piece in _pieces(call.arguments, size)]
        return [b'{"function_call":' + _dumps(d) + b"}" for d in legacy]
    whole = bool(
        quirks & (ToolCallQuirk.WHOLE | ToolCallQuirk.ONE_CHUNK | ToolCallQuirk.ARGUMENTS_OBJECT)
    )
    repeat = ToolCallQuirk.REPEAT_ID_NAME in quirks
    per_call: list[list[dict[str, Any]]] = []
    for number, call in enumerate(b.tool_calls):
        index = 0 if ToolCallQuirk.INDEX_ZERO in quirks else number

        def fragment(first: bool, arguments: Any, call: ToolCall = call, index: int = index) -> Any:
            # Key order as OpenAI sends them: index, id, type, function{name, arguments}.
            out: dict[str, Any] = {}
            if ToolCallQuirk.NO_INDEX not in quirks:
                out["index"] = index
            if first or repeat:
                if ToolCallQuirk.NO_ID not in quirks:
                    out["id"] = call.id
                out["type"] = "function"
                out["function"] = {"name": call.name, "arguments": arguments}
            else:
                out["function"] = {"arguments": arguments}
            return out

        if whole:
            arguments: Any = call.arguments
            if ToolCallQuirk.ARGUMENTS_OBJECT in quirks:
                arguments = json.loads(call.arguments or "{}")
            per_call.append([fragment(True, arguments)])
        else:
            fragments = [fragment(True, "")]
            fragments += [fragment(False, piece) for piece in _pieces(call.arguments, size)]
            per_call.append(fragments)
    if ToolCallQuirk.ONE_CHUNK in quirks:
        return [b'{"tool_calls":' + _dumps([f for fs in per_call for f in fs]) + b"}"]
    if b.interleave_tool_calls:
        ordered = [
            fragments[turn]
            for turn in range(max(map(len, per_call)))
            for fragments in per_call
            if turn < len(fragments)
        ]
    else:
        ordered = [f for fragments in per_call for f in fragments]
    return [b'{"tool_calls":[' + _dumps(f) + b"]}" for f in ordered]


def _answer_deltas(b: Behaviour) -> list[bytes]:
    """Every answer chunk's delta, in the order sent: reasoning, text, refusal, tool calls."""
    deltas = [b'{"content":null' + _reasoning_fields(b, text) + b"}" for text in b.reasoning]
    deltas.extend(b'{"content":' + _dumps(token) + b"}" for token in b.answer_tokens())
    deltas.extend(b'{"refusal":' + _dumps(text) + b"}" for text in b.refusal)
    deltas.extend(_tool_call_deltas(b))
    return deltas


def _stream_steps(
    b: Behaviour,
    model: str,
    usage: bytes,
    head: bytes,
    ident: str,
    created: int,
    deltas: list[bytes],
) -> list[_Step]:
    eol = b"\r\n" if b.crlf else b"\n"
    comment = b": keep-alive" + eol + eol if b.comments else b""
    # Every chunk shares this prefix; only the choices differ, so each event is a few joins.
    envelope = (
        _dumps(
            {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        )[:-1]
        + b',"choices":'
    )

    def event(data: bytes) -> bytes:
        return comment + b"data: " + data + eol + eol

    def choice(delta: bytes, finish_reason: bytes = b"null", tail: bytes = b"") -> bytes:
        return event(
            envelope
            + b'[{"index":0,"delta":'
            + delta
            + b',"finish_reason":'
            + finish_reason
            + b"}]"
            + tail
            + b"}"
        )

    def content(json_string: bytes) -> bytes:
        return choice(b'{"content":' + json_string + b"}")

    cut = min(b.fault_after, len(deltas))
    events: list[_Step] = []
    ended = False
    if b.fault is Fault.MODEL_MISSING:
        events.append(event(_MODEL_MISSING))
        ended = True
    else:
        if b.role_chunk:
            events.append(choice(b'{"role":"assistant"}'))
        events.extend(choice(delta) for delta in deltas[:cut])
        match b.fault:
            case Fault.DROP_MID_STREAM:
                return _wire(b, head, [*events, _DROP], terminate=False)
            case Fault.HANG_BETWEEN_CHUNKS:
                events.append(_Pause(b.hang_seconds))
            case Fault.MALFORMED_JSON:
                events.append(event(b"{not json"))
            case Fault.INVALID_UTF8:
                events.append(content(b'"bad \xff\xfe bytes"'))
            case Fault.HUGE_LINE:
                events.append(content(_dumps(_HUGE_CONTENT)))
            case Fault.ERROR_OBJECT:
                events.append(event(_SERVER_ERROR))
                ended = True
    if not ended:
        events.extend(choice(delta) for delta in deltas[cut:])
        reason = _dumps(b.effective_finish_reason())
        if b.usage and b.usage_in_final_chunk:
            events.append(choice(b"{}", reason, b',"usage":' + usage))
        else:
            events.append(choice(b"{}", reason))
            if b.usage:
                events.append(event(envelope + b'[],"usage":' + usage + b"}"))
        if b.done:
            events.append(event(b"[DONE]"))
    return _wire(b, head, events, terminate=True)


def _wire(b: Behaviour, head: bytes, events: list[_Step], terminate: bool) -> list[_Step]:
    """Frame SSE events as HTTP chunks and apply the transport faults of a stream."""
    match b.fault:
        case Fault.DROP_AFTER_HEADERS:
            return [head, _DROP]
        case Fault.SLOW_DRIP:
            body = b"".join(e for e in events if isinstance(e, bytes))
            return [head, *_drip(body, b.drip_interval, framed=True), _LAST_CHUNK]
    steps: list[_Step] = [_Pause(b.hang_seconds)] if b.fault is Fault.HANG_BEFORE_HEADERS else []
    steps.append(head)
    group: list[bytes] = []
    sent_data = False

    def flush() -> None:
        nonlocal sent_data
        for start in range(0, len(group), b.events_per_http_chunk):
            if sent_data and b.chunk_delay:
                steps.append(_Pause(b.chunk_delay))
            steps.append(_frame(b"".join(group[start : start + b.events_per_http_chunk])))
            sent_data = True
        group.clear()

    for item in events:
        if isinstance(item, bytes):
            group.append(item)
        else:
            flush()
            steps.append(item)
    flush()
    if terminate:
        steps.append(_LAST_CHUNK)
    return steps


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _drip(body: bytes, interval: float, framed: bool) -> list[_Step]:
    steps: list[_Step] = []
    for i in range(len(body)):
        if i and interval:
            steps.append(_Pause(interval))
        byte = body[i : i + 1]
        steps.append(_frame(byte) if framed else byte)
    return steps


def _merge(steps: list[_Step]) -> _Plan:
    """Join consecutive byte steps so the plan is as few writes as its pauses allow."""
    merged: list[_Step] = []
    pending: list[bytes] = []
    for step in steps:
        if isinstance(step, bytes):
            pending.append(step)
            continue
        if pending:
            merged.append(b"".join(pending))
            pending.clear()
        merged.append(step)
    if pending:
        merged.append(b"".join(pending))
    return tuple(merged)
