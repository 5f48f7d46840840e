"""The shared HTTP transport of every HTTP provider (SPEC §10).

One pooled ``requests.Session`` per transport (a hub owns one), explicit
timeouts for every phase, SSE decoding, and mapping of HTTP statuses and
transport failures to typed errors. The typed errors also subclass the matching
``requests`` exception, so a provider called directly still raises
``requests.HTTPError`` on an HTTP error, as the seed's Lockchat did.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.utils
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import requests
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from provhub._config import Limits, Timeouts
from provhub._errors import ProviderError
from provhub._spec import FinishReason, Usage
from provhub._sse import SSEDecodeError, SSEDecoder

__all__ = [
    "CancelToken",
    "RequestTooLargeError",
    "Transport",
    "UpstreamConnectionError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamTimeoutError",
    "parse_chat_stream",
    "parse_retry_after",
]

_BODY_EXCERPT = 200


class UpstreamHTTPError(ProviderError, requests.HTTPError):
    """The upstream answered with an HTTP error status (also a ``requests.HTTPError``)."""

    def __init__(self, message: str, *, response: requests.Response | None = None, **kw: Any):
        ProviderError.__init__(self, message, **kw)
        self.response = response
        self.request = response.request if response is not None else None


class UpstreamConnectionError(ProviderError, requests.ConnectionError):
    """The connection failed or broke (also a ``requests.ConnectionError``)."""

    def __init__(self, message: str, **kw: Any) -> None:
        ProviderError.__init__(self, message, **kw)
        self.response = None
        self.request = None


class UpstreamTimeoutError(ProviderError, requests.Timeout):
    """A phase of the call exceeded its timeout (also a ``requests.Timeout``)."""

    def __init__(self, message: str, **kw: Any) -> None:
        ProviderError.__init__(self, message, **kw)
        self.response = None
        self.request = None


class UpstreamProtocolError(ProviderError):
    """The upstream sent something that is not the expected wire format."""


class RequestTooLargeError(ProviderError):
    """The encoded request exceeds ``limits.max_request_bytes``; nothing was sent.

    The request is at fault, not the provider: it never counts against a breaker.
    """


class CancelToken:
    """Lets another thread abort a call blocked on the network.

    ``cancel`` shuts down the sockets attached to the token, which wakes a
    blocked connect-less read at once (waiting for headers or for the next
    chunk); the upstream sees the disconnect.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.event = threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        return self.event.is_set()

    def attach(self, sock: socket.socket) -> None:
        """Track a socket in use (shutting it down at once if already cancelled)."""
        with self._lock:
            if not self.event.is_set():
                self._sockets.add(sock)
                return
        _shutdown(sock)

    def detach(self, sock: socket.socket | None) -> None:
        """Stop tracking a socket whose response is finished."""
        if sock is not None:
            with self._lock:
                self._sockets.discard(sock)

    def cancel(self) -> None:
        """Abort every attached socket and refuse new ones."""
        with self._lock:
            self.event.set()
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by either side
        sock.shutdown(socket.SHUT_RDWR)


# The token of the call this thread is sending, read by the connection classes
# below: the socket must be attachable *before* the response headers arrive,
# which is the moment requests would hand it to us.
_sending: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar(
    "provhub_sending", default=None
)


class _CancellableHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        token = _sending.get()
        if token is not None and self.sock is not None:
            token.attach(self.sock)


class _CancellableHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        token = _sending.get()
        if token is not None and self.sock is not None:
            token.attach(self.sock)


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _CancellableHTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _CancellableHTTPSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter whose pools use the cancellable connections above."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def close(self) -> None:
        # urllib3 2 forgets its pools on clear() without closing them; they close when
        # garbage-collected. A response still referenced (an UpstreamHTTPError's
        # .response, a frame in a traceback cycle) keeps its pool and the pool's idle
        # sockets alive meanwhile. Close every pool now, as urllib3 1 did.
        for manager in (self.poolmanager, *self.proxy_manager.values()):
            for key in list(manager.pools.keys()):
                pool = manager.pools.get(key)
                if pool is not None:
                    pool.close()
        super().close()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN guard


def _excerpt(raw: bytes) -> str:
    text = raw[: _BODY_EXCERPT * 4].decode("utf-8", "replace")
    try:
        message = json.loads(text)["error"]["message"]
        if isinstance(message, str):
            text = message
    except (ValueError, KeyError, TypeError):
        pass
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[: _BODY_EXCERPT - 3] + "..."


_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key"})


def _without_credentials(raw: bytes, headers: Mapping[str, str]) -> bytes:
    """Mask credentials the upstream echoed back in an error body.

    Some servers quote the rejected key in their 401 message; the excerpt ends up
    in ``str(error)``, which callers log.
    """
    for name, value in headers.items():
        if name.lower() in _CREDENTIAL_HEADERS:
            secret = value.rsplit(" ", 1)[-1].encode()
            if len(secret) >= 8:
                raw = raw.replace(secret, b"***")
    return raw


def _status_retryable(status: int) -> bool:
    return status in (408, 409, 425, 429) or status >= 500


def _error_from_object(error: Any, provider: str) -> ProviderError:
    """Map an OpenAI-style ``{"error": {...}}`` object sent inside a stream."""
    message, code, kind = "upstream reported an error", None, ""
    if isinstance(error, Mapping):
        message = str(error.get("message") or message)[:_BODY_EXCERPT]
        code = error.get("code")
        kind = str(error.get("type") or "")
    elif isinstance(error, str):
        message = error[:_BODY_EXCERPT]
    status = code if isinstance(code, int) and 100 <= code <= 599 else None
    retryable = (status is not None and _status_retryable(status)) or kind in {
        "server_error",
        "rate_limit_exceeded",
        "overloaded_error",
    }
    return UpstreamProtocolError(
        f"error in stream: {message}", provider=provider, status=status, retryable=retryable
    )


# The scanner behind json.loads (the C one when available); see parse_chat_stream.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def parse_chat_stream(
    events: Iterator[bytes], provider: str, *, markers: bool = True
) -> Iterator[str | FinishReason | Usage]:
    """Turn OpenAI chat-completion chunk payloads into tokens and markers.

    With ``markers=False`` only ``str`` tokens are yielded (what a caller of a
    provider outside a hub expects: ``"".join(...)`` must work).

    Handles empty ``choices`` (usage-only chunks), an ``error`` object inside a
    data line, and malformed chunks, which raise :class:`UpstreamProtocolError`
    instead of a bare ``KeyError``/``JSONDecodeError``.
    """
    loads = json.loads
    scan = _scan_json
    for data in events:
        try:
            # The per-chunk hot path (PERFORMANCE.md): event-stream data is UTF-8 by
            # definition, so decode it in C instead of json.loads' Python-level encoding
            # detection, then call the C scanner json.loads ends in directly. Whatever
            # the scanner does not take whole (surrounding whitespace, trailing bytes,
            # invalid JSON) goes through json.loads for its exact result or error.
            # Saves about 1.5 us of the ~5 us a chunk costs.
            text = data.decode()
            try:
                chunk, end = scan(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                chunk = loads(text)
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    content = delta.get("content")
                    if content:
                        if type(content) is not str:
                            raise TypeError("delta.content is not a string")
                        yield content
                reason = choice.get("finish_reason")
                if reason and markers:
                    yield FinishReason(str(reason))
            elif chunk.get("error"):
                raise _error_from_object(chunk["error"], provider)
            usage = chunk.get("usage")
            if usage and markers:
                yield _usage(usage)
        except ProviderError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError) as exc:
            # RecursionError: json.loads on absurdly nested arrays/objects.
            what = "invalid UTF-8" if isinstance(exc, UnicodeDecodeError) else "a malformed chunk"
            raise UpstreamProtocolError(
                f"upstream sent {what} ({type(exc).__name__})", provider=provider
            ) from exc


def _usage(usage: Any) -> Usage:
    def count(key: str) -> int | None:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return Usage(count("prompt_tokens"), count("completion_tokens"), count("total_tokens"))


def _release(response: requests.Response, cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.detach(_socket_of(response))
    response.close()


def _trickle_timeout(timeouts: Timeouts, provider: str) -> UpstreamTimeoutError:
    return UpstreamTimeoutError(
        f"first-token timeout of {min(timeouts.first_token, timeouts.total)} s exceeded "
        "(the upstream trickles bytes too slowly)",
        provider=provider,
        retryable=True,
    )


def _socket_of(response: requests.Response) -> Any:
    # urllib3 2.x keeps the live connection on the response while streaming;
    # reaching its socket lets us switch from the first-token timeout to the idle
    # timeout once headers arrived. Absent (other urllib3), we keep one timeout.
    connection = getattr(response.raw, "_connection", None)
    return getattr(connection, "sock", None)


class Transport:
    """Pooled, thread-safe HTTP for providers, with timeouts and typed errors.

    Proxy settings are read from the environment once, at creation: requests
    re-reads them on every call otherwise (``trust_env``), which PERFORMANCE.md
    measured at about 30% of per-call time.
    """

    def __init__(
        self, *, limits: Limits | None = None, verify: bool = True, pool_maxsize: int = 32
    ) -> None:
        self.limits = limits or Limits()
        self.verify = verify
        self._pool_maxsize = pool_maxsize
        self._session: requests.Session | None = None
        self._lock = threading.Lock()
        environment = urllib.request.getproxies()
        self._no_proxy = environment.pop("no", None)
        self._proxies = environment
        self._proxy_cache: dict[str, dict[str, str] | None] = {}

    @property
    def session(self) -> requests.Session:
        """The pooled session, created on first use."""
        session = self._session
        if session is None:
            with self._lock:
                if self._session is None:
                    session = requests.Session()
                    session.trust_env = False
                    adapter = _Adapter(pool_connections=8, pool_maxsize=self._pool_maxsize)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    self._session = session
                session = self._session
        return session

    def close(self) -> None:
        """Close pooled connections; the transport can be used again afterwards."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def _proxies_for(self, url: str) -> dict[str, str] | None:
        if not self._proxies:
            return None
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
        if key not in self._proxy_cache:
            bypass = requests.utils.should_bypass_proxies(url, no_proxy=self._no_proxy)
            self._proxy_cache[key] = None if bypass else self._proxies
        return self._proxy_cache[key]

    def _send(
        self,
        url: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, str],
        timeouts: Timeouts,
        provider: str,
        *,
        verify: bool | None = None,
        cancel: CancelToken | None = None,
    ) -> requests.Response:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        if len(body) > self.limits.max_request_bytes:
            raise RequestTooLargeError(
                f"request body of {len(body)} bytes exceeds limits.max_request_bytes "
                f"({self.limits.max_request_bytes}); shorten the messages or raise the limit",
                provider=provider,
            )
        all_headers = {
            "content-type": "application/json",
            "accept": "text/event-stream, application/json",
        }
        all_headers.update(headers)
        sending = _sending.set(cancel)
        try:
            response = self.session.post(
                url,
                data=body,
                headers=all_headers,
                stream=True,
                timeout=(timeouts.connect, min(timeouts.first_token, timeouts.total)),
                proxies=self._proxies_for(url),
                verify=self.verify if verify is None else verify,
            )
        except requests.ConnectTimeout as exc:
            raise UpstreamTimeoutError(
                f"connect timed out after {timeouts.connect} s", provider=provider, retryable=True
            ) from exc
        except requests.ReadTimeout as exc:
            raise UpstreamTimeoutError(
                f"no response within {min(timeouts.first_token, timeouts.total)} s",
                provider=provider,
                retryable=True,
            ) from exc
        except requests.ConnectionError as exc:
            if cancel is not None and cancel.cancelled:
                raise UpstreamConnectionError("call cancelled", provider=provider) from exc
            raise UpstreamConnectionError(
                f"connection failed: {type(exc).__name__}", provider=provider, retryable=True
            ) from exc
        except requests.RequestException as exc:
            raise ProviderError(f"request failed: {exc}", provider=provider) from exc
        finally:
            _sending.reset(sending)
        if response.status_code >= 400:
            try:
                raw = response.raw.read(_BODY_EXCERPT * 4, decode_content=True) or b""
            except Exception:  # the error status matters more than its body
                raw = b""
            finally:
                _release(response, cancel)
            status = response.status_code
            raise UpstreamHTTPError(
                f"HTTP {status} {response.reason or ''}".strip(),
                response=response,
                provider=provider,
                status=status,
                retryable=_status_retryable(status),
                body=_excerpt(_without_credentials(raw, all_headers)),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return response

    def post_json(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        provider: str,
        verify: bool | None = None,
        cancel: CancelToken | None = None,
    ) -> Any:
        """POST ``payload`` as JSON and return the decoded JSON answer."""
        # Measured before sending, as in stream_sse: the total budget covers the
        # wait for headers too, not only the body.
        started = time.monotonic()
        response = self._send(
            url, payload, headers, timeouts, provider, verify=verify, cancel=cancel
        )
        # Without streaming, the first token is in the whole body: a body that
        # trickles in (each read within the idle budget) must still be complete
        # within the first-token budget, or one slow upstream eats the deadline
        # that a fallback needs.
        first_deadline = started + min(timeouts.first_token, timeouts.total)
        try:
            chunks = []
            size = 0
            for block in self._blocks(response, timeouts, provider, started, cancel):
                size += len(block)
                chunks.append(block)
                if time.monotonic() > first_deadline:
                    raise _trickle_timeout(timeouts, provider)
            data = b"".join(chunks)
        finally:
            _release(response, cancel)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
            raise UpstreamProtocolError(
                f"response is not JSON ({len(data)} bytes)", provider=provider, body=_excerpt(data)
            ) from exc

    def stream_sse(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        provider: str,
        verify: bool | None = None,
        cancel: CancelToken | None = None,
    ) -> Generator[bytes, None, None]:
        """POST ``payload`` and yield each SSE event's data until ``[DONE]``.

        Closing the iterator early closes the HTTP response (and its connection)
        at once; a stream read to its end returns its connection to the pool.
        """
        started = time.monotonic()
        response = self._send(
            url, payload, headers, timeouts, provider, verify=verify, cancel=cancel
        )
        # The socket timeouts bound the wait for each read; this bounds the wait
        # for the first event when an upstream trickles bytes (each read within
        # the idle budget) without completing one.
        first_deadline = started + min(timeouts.first_token, timeouts.total)
        waiting = True
        try:
            decoder = SSEDecoder(self.limits.max_line_bytes)
            done = False
            try:
                for block in self._blocks(response, timeouts, provider, started, cancel):
                    if done:
                        continue  # drain to the end so the connection is reusable
                    events = decoder.feed(block)
                    if waiting:
                        if events:
                            waiting = False
                        elif time.monotonic() > first_deadline:
                            raise _trickle_timeout(timeouts, provider)
                    for data in events:
                        if data == b"[DONE]":
                            done = True
                            break
                        yield data
                if not done:
                    for data in decoder.close():
                        if data != b"[DONE]":
                            yield data
            except SSEDecodeError as exc:
                raise UpstreamProtocolError(
                    f"invalid event stream: {exc}", provider=provider
                ) from exc
        finally:
            _release(response, cancel)

    def _blocks(
        self,
        response: requests.Response,
        timeouts: Timeouts,
        provider: str,
        started: float,
        cancel: CancelToken | None = None,
    ) -> Iterator[bytes]:
        """Network reads of the body, enforcing idle and total timeouts and size."""
        raw = response.raw
        monotonic = time.monotonic
        deadline = started + timeouts.total
        sock = _socket_of(response)
        if sock is not None:
            # Until the first block arrives the first-token budget applies; after
            # it, the idle budget between blocks (both capped by the deadline).
            first_deadline = min(deadline, started + timeouts.first_token)
            sock.settimeout(max(0.001, first_deadline - monotonic()))
        idle = timeouts.idle
        switched = False
        limit = self.limits.max_response_bytes
        received = 0
        reads: Iterator[bytes] = (
            raw.stream(None, decode_content=True)
            if raw.chunked
            else iter(lambda: raw.read1(65536), b"")
        )
        try:
            for block in reads:
                received += len(block)
                if received > limit:
                    raise UpstreamProtocolError(
                        f"response exceeds limits.max_response_bytes ({limit})", provider=provider
                    )
                remaining = deadline - monotonic()
                if remaining <= 0:
                    raise UpstreamTimeoutError(
                        f"total timeout of {timeouts.total} s exceeded",
                        provider=provider,
                        retryable=True,
                    )
                if sock is not None and getattr(raw, "_connection", sock) is None:
                    # The read that completed the body handed the connection back
                    # to the pool (urllib3 does it inside that read). From now on
                    # the socket is another request's, or closed if the pool was
                    # full: never touch it again, and let no cancel shut it down.
                    if cancel is not None:
                        cancel.detach(sock)
                    sock = None
                if sock is not None and (not switched or remaining < idle):
                    sock.settimeout(min(idle, remaining))
                    switched = True
                yield block
        except ProviderError:
            raise
        except Exception as exc:
            if cancel is not None and cancel.cancelled:
                raise UpstreamConnectionError("call cancelled", provider=provider) from exc
            if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError) or (
                isinstance(exc, requests.ConnectionError) and "timed out" in str(exc)
            ):
                if deadline - monotonic() <= 0.01:
                    # The socket timeout was cut to what was left of the total
                    # budget: a slow drip hit the deadline, the upstream never
                    # went silent.
                    raise UpstreamTimeoutError(
                        f"total timeout of {timeouts.total} s exceeded",
                        provider=provider,
                        retryable=True,
                    ) from exc
                phase = "idle" if switched else "first-token"
                raise UpstreamTimeoutError(
                    f"upstream went silent ({phase} timeout)", provider=provider, retryable=True
                ) from exc
            raise UpstreamConnectionError(
                f"connection broke while reading: {type(exc).__name__}",
                provider=provider,
                retryable=True,
            ) from exc
        finally:
            if (
                sock is not None
                and cancel is not None
                and getattr(raw, "_connection", sock) is None
            ):
                # Released to the pool after the last block: see above.
                cancel.detach(sock)
