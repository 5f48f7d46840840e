"""The shared HTTP transport of every HTTP provider (SPEC §10): bytes only.

One pooled ``requests.Session`` per transport (a hub owns one), explicit
budgets for every phase, size limits, SSE framing, and mapping of HTTP statuses
and transport failures to the typed errors of :mod:`provhub._errors`. What the
bytes mean (the OpenAI chat format) is :mod:`provhub._openai`'s job; how every
read and write is bounded is :mod:`provhub._exchange`'s.

What an upstream cannot do to a call, whatever it sends (docs/reliability.md):

- hold it past its deadline: every operation of every exchange is bounded by
  what is left of ``first_token`` and ``total``;
- make it follow a redirect: a 3xx is an error naming where it pointed (a 307
  would re-send the prompt to another origin);
- pass off something else as a stream: a stream is accepted only as
  ``text/event-stream``; a JSON body is handed over as
  :class:`~provhub.JSONAnswerError` for the provider to parse; anything else,
  an empty stream included, is a retryable :class:`UpstreamProtocolError`;
- fill memory: bodies are read and decompressed in bounded blocks, and lines,
  events and whole responses are capped by ``[limits]``;
- spoil a complete answer: after ``[DONE]`` the rest of the body is drained
  within a small bound, and the connection is closed instead if it does not come.
"""

from __future__ import annotations

import functools
import http.client
import http.cookiejar
import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Generator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from provhub import _explain as explain
from provhub._body import Body, Ended
from provhub._cancel import CancelToken
from provhub._config import Limits, Timeouts
from provhub._errors import (
    JSONAnswerError,
    ProviderError,
    RequestTooLargeError,
    UpstreamConnectionError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    kind_of_status,
    parse_retry_after,
    status_retryable,
)
from provhub._exchange import (
    Cancelled,
    Exchange,
    Expired,
    HTTPPool,
    HTTPSPool,
    Response,
    exchanging,
)
from provhub._loopwire import Conn, ConnectTimeout, Head, LoopPool, Target, exchange_head
from provhub._redact import Secrets
from provhub._sse import SSEDecodeError, SSEDecoder
from provhub._suspend import Offload, Readable, Suspend, WouldBlock

__all__ = ["Transport", "parse_retry_after"]

_BODY_EXCERPT = 200
_USER_AGENT = requests.utils.default_user_agent()
# Bytes of an error body read for its excerpt, and how long that may take: the
# status is the news, the body only its explanation.
_ERROR_BODY_BYTES = 16384
_ERROR_BODY_SECONDS = 1.0
# After [DONE]: how long and how much to read for the end of the framing (the
# final zero-length chunk) so the connection can be reused; past that it is closed.
_DRAIN_SECONDS = 0.25
_DRAIN_BYTES = 65536


class _Session(requests.Session):
    """A session that never looks at redirects.

    requests reads a redirect's whole body (``resp.content``) to build the next
    request even with ``allow_redirects=False``; provhub reports redirects
    instead (see :meth:`Transport._redirect`).
    """

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None


class _Adapter(HTTPAdapter):
    """requests' adapter whose pools use the bounded connections of :mod:`provhub._exchange`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            # Through an HTTP(S) proxy too, every read is bounded by the exchange.
            manager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}
        return manager

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


def _excerpt(raw: bytes, secrets: Secrets | None = None) -> str:
    """A short, single-line, secret-free excerpt of an error body.

    JSON bodies of the common ``{"error": {"message": ...}}`` shape give their
    message. JSON is decoded before masking, so a key the upstream quoted with
    some characters ``\\u``-escaped is masked like any other.
    """
    text = raw.decode("utf-8", "replace")
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError):
        pass
    else:
        message = decoded.get("error") if isinstance(decoded, dict) else None
        if isinstance(message, dict):
            message = message.get("message")
        if isinstance(message, str):
            text = message
        elif decoded is not None:
            text = json.dumps(decoded, ensure_ascii=False)
    if secrets:
        text = secrets.mask(text)
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[: _BODY_EXCERPT - 3] + "..."


def _error_fields(raw: bytes) -> tuple[str | None, str | None]:
    """The ``error.code`` and ``error.type`` strings of an OpenAI-style error body.

    Kept as data on the error (SPEC §14), so providers map failure kinds from
    them instead of parsing the message text.
    """
    try:
        error = json.loads(raw.decode("utf-8", "replace"))["error"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None, None
    if not isinstance(error, dict):
        return None, None
    code, kind = error.get("code"), error.get("type")
    return (
        code[:64] if isinstance(code, str) and code else None,
        kind[:64] if isinstance(kind, str) and kind else None,
    )


def _host(url: str) -> str | None:
    """``host:port`` of ``url``; never its userinfo (``user:password@``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            return None
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return None


def _shown(url: str) -> str:
    """``url`` as messages may show it: without ``user:password@``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _timeout_error(exc: Expired, provider: str, host: str | None) -> UpstreamTimeoutError:
    if exc.budget == "idle":
        message = explain.silent("idle", exc.seconds)
    elif exc.budget == "total":
        message = f"total timeout of {explain.seconds(exc.seconds)} exceeded"
    else:
        message = explain.timeout_words("first-token", exc.seconds, host)
    return UpstreamTimeoutError(message, provider=provider, retryable=True, host=host)


def _read_error(
    exc: BaseException, provider: str, host: str | None, url: str | None = None
) -> ProviderError:
    """Map a failure while reading a body (the answer had started or not)."""
    if isinstance(exc, Expired):
        return _timeout_error(exc, provider, host)
    if isinstance(exc, Cancelled):
        return UpstreamConnectionError("call cancelled", provider=provider, host=host)
    if isinstance(exc, UpstreamProtocolError):
        exc.provider = provider
        exc.host = exc.host or host
        return exc
    if isinstance(exc, Ended):
        return UpstreamConnectionError(
            f"the connection to {host or 'the upstream'} broke while reading the answer: "
            "it closed the connection before the end of the response body",
            provider=provider,
            retryable=True,
            host=host,
        )
    return UpstreamConnectionError(
        explain.broken_read(exc, _shown(url) if url else None),
        provider=provider,
        retryable=True,
        host=host,
    )


def _original(exc: BaseException) -> BaseException:
    """What to chain: the socket's own error behind a budget or a cancel, if any."""
    if isinstance(exc, Expired | Cancelled) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


# What a body read may raise besides ProviderError; MemoryError is deliberately
# absent (it is not a connection failure, and must not be retried as one).
_READ_ERRORS = (Expired, Cancelled, Ended, OSError, http.client.HTTPException)


def _completed(steps: Generator[Readable, None, Any]) -> Any:
    """Run ``steps`` to its end where nothing waits (a blocking socket): its value."""
    try:
        next(steps)
    except StopIteration as done:
        return done.value
    steps.close()
    raise AssertionError("a blocking read asked the event loop to wait")  # pragma: no cover


def _response_of(head: Head, url: str) -> requests.Response:
    """A loop-read response head as ``requests`` would show it (for errors and checks)."""
    response = requests.Response()
    response.status_code = head.status
    response.reason = head.reason
    response.url = url
    fields = CaseInsensitiveDict[str]()
    for name, _ in head.headers.items():
        fields[name] = head.headers.get(name) or ""  # repeated fields joined
    response.headers = fields
    return response


def _whole_json(data: bytes | bytearray) -> Any:
    """``data`` decoded if it is one whole JSON object, else None."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class Transport:
    """Pooled, thread-safe HTTP for providers, with budgets, limits and typed errors.

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
        self._targets: dict[str, Target | None] = {}
        self._tls_contexts: dict[bool, ssl.SSLContext] = {}
        self._loop_pool: LoopPool | None = None

    @property
    def session(self) -> requests.Session:
        """The pooled session, created on first use."""
        session = self._session
        if session is None:
            with self._lock:
                if self._session is None:
                    session = _Session()
                    session.trust_env = False
                    # No cookie an upstream sets is kept or sent back: LLM APIs use
                    # keys (from the environment), and a jar shared by every
                    # provider would grow with each Set-Cookie a hostile one sends.
                    session.cookies.set_policy(
                        http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
                    )
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
            pool, self._loop_pool = self._loop_pool, None
        if session is not None:
            session.close()
        if pool is not None:
            pool.close()

    def _proxies_for(self, url: str) -> dict[str, str] | None:
        if not self._proxies:
            return None
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
        if key not in self._proxy_cache:
            bypass = requests.utils.should_bypass_proxies(url, no_proxy=self._no_proxy)
            self._proxy_cache[key] = None if bypass else self._proxies
        return self._proxy_cache[key]

    # -- one exchange ------------------------------------------------------------

    def _open(
        self,
        url: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, str],
        timeouts: Timeouts,
        provider: str,
        verify: bool | None,
        cancel: CancelToken | None,
        *,
        stream: bool,
    ) -> tuple[requests.Response, Exchange, Body]:
        """Send the request and check the status; the body is still to be read."""
        started = time.monotonic()
        body, all_headers = self._prepare(payload, headers, provider, stream)
        exchange = Exchange(timeouts, started, cancel)
        # The connect budget is capped by what is left of the total.
        connect = max(0.001, min(timeouts.connect, timeouts.total))
        token = exchanging.set(exchange)
        try:
            response = self.session.post(
                url,
                data=body,
                headers=all_headers,
                stream=True,
                allow_redirects=False,
                timeout=(connect, exchange.first_token),
                proxies=self._proxies_for(url),
                verify=self.verify if verify is None else verify,
            )
        except BaseException as exc:
            exchange.release()
            error = self._send_error(exc, url, provider, connect, all_headers)
            if error is exc:
                raise
            raise error from _original(exc)
        finally:
            exchanging.reset(token)
        raw = response.raw._original_response
        if not isinstance(raw, Response) or raw.exchange is not exchange:
            # Not read through the bounded wire: a SOCKS proxy (urllib3's own pools).
            response.close()
            exchange.release()
            raise ProviderError(
                "SOCKS proxies are not supported (their connections cannot be bounded); "
                "use an HTTP proxy or none",
                provider=provider,
            )
        status = response.status_code
        refused = status >= 300 or status < 200 or status in (204, 205)
        try:
            reader: Body | None = Body(raw, self.limits.max_response_bytes)
        except UpstreamProtocolError as exc:
            if not refused:
                self._finish(response, exchange, None)
                exc.provider = provider
                exc.host = _host(url)
                raise
            reader = None  # an error status with an unreadable body: the status still counts
        if refused or reader is None:
            try:
                self._refuse(response, exchange, reader, url, provider, all_headers, stream)
            finally:
                self._finish(response, exchange, reader)
        assert reader is not None  # refused otherwise
        return response, exchange, reader

    def _prepare(
        self, payload: Mapping[str, Any], headers: Mapping[str, str], provider: str, stream: bool
    ) -> tuple[bytes, dict[str, str]]:
        """The request body (within ``max_request_bytes``) and its headers."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        if len(body) > self.limits.max_request_bytes:
            raise RequestTooLargeError(
                f"request body of {len(body)} bytes exceeds limits.max_request_bytes "
                f"({self.limits.max_request_bytes}); shorten the messages or raise the limit",
                provider=provider,
            )
        all_headers = {
            "content-type": "application/json",
            "accept": "text/event-stream, application/json" if stream else "application/json",
            # Only what Body decodes (requests would add br/zstd when installed).
            "accept-encoding": "gzip, deflate",
        }
        all_headers.update(headers)
        return body, all_headers

    # -- on the event loop ---------------------------------------------------------

    def _loop_target(self, url: str) -> Target | None:
        """Where a loop-driven request to ``url`` goes, or None when requests must send it.

        None for a URL through a proxy, with credentials in it, or not http(s).
        """
        targets = self._targets
        target = targets.get(url, False)
        if target is False:
            proxies = self._proxies_for(url) or {}
            scheme = url.split(":", 1)[0].lower()
            try:
                target = None if proxies.get(scheme) or proxies.get("all") else Target(url)
            except ValueError:
                target = None
            if len(targets) < 256:  # one per provider URL; bounded whatever the config
                targets[url] = target
        return target  # type: ignore[return-value]

    def _tls(self, verify: bool) -> ssl.SSLContext:
        """The TLS settings of loop-driven requests: requests' CA bundle, HTTP/1.1."""
        context = self._tls_contexts.get(verify)
        if context is None:
            if verify:
                context = ssl.create_default_context(cafile=requests.utils.DEFAULT_CA_BUNDLE_PATH)
            else:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["http/1.1"])
            self._tls_contexts[verify] = context
        return context

    @property
    def loop_pool(self) -> LoopPool:
        """The idle connections of loop-driven requests, created on first use."""
        pool = self._loop_pool
        if pool is None:
            with self._lock:
                if self._loop_pool is None:
                    self._loop_pool = LoopPool(self._pool_maxsize)
                pool = self._loop_pool
        return pool

    def _open_on_loop(
        self,
        target: Target,
        url: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, str],
        timeouts: Timeouts,
        provider: str,
        verify: bool | None,
        cancel: CancelToken | None,
        *,
        stream: bool,
    ) -> Generator[Suspend, None, tuple[Head, Exchange, Body, Callable[[], None]]]:
        """:meth:`_open` for a request driven on the event loop (:mod:`provhub._loopwire`)."""
        started = time.monotonic()
        body, all_headers = self._prepare(payload, headers, provider, stream)
        all_headers.setdefault("user-agent", _USER_AGENT)
        exchange = Exchange(timeouts, started, cancel)
        connect = max(0.001, min(timeouts.connect, timeouts.total))
        checked = self.verify if verify is None else verify
        context = self._tls(checked) if target.tls else None
        try:
            conn, head = yield from exchange_head(
                self.loop_pool, target, context, checked, all_headers, body, exchange, connect
            )
        except BaseException as exc:
            exchange.release()
            error = self._send_error(exc, url, provider, connect, all_headers)
            if error is exc:
                raise
            raise error from _original(exc)
        status = head.status
        refused = status >= 300 or status < 200 or status in (204, 205)
        reader: Body | None = None
        try:
            reader = Body(head, self.limits.max_response_bytes)
        except UpstreamProtocolError as exc:
            if not refused:
                self._finish_loop(conn, head, exchange, None)
                exc.provider = provider
                exc.host = _host(url)
                raise
        if refused or reader is None:
            # Reading the body that explains a refusal blocks: a worker does it.
            head.fp.blocking()
            refusal: Offload[None] = Offload(
                functools.partial(
                    self._refuse,
                    _response_of(head, url),
                    exchange,
                    reader,
                    url,
                    provider,
                    all_headers,
                    stream,
                )
            )
            try:
                yield refusal
                refusal.result()
            finally:
                self._finish_loop(conn, head, exchange, reader)
        assert reader is not None  # refused otherwise
        return (
            head,
            exchange,
            reader,
            functools.partial(self._finish_loop, conn, head, exchange, reader),
        )

    def _finish_loop(self, conn: Conn, head: Head, exchange: Exchange, reader: Body | None) -> None:
        """Give a loop-driven connection back to its pool if it is clean, else close it."""
        exchange.release()
        pool = self._loop_pool  # None once the transport closed: nothing is kept then
        # (exchange.suspended: its socket was not switched to blocking for a worker)
        clean = reader is not None and reader.clean and head.reusable and exchange.suspended
        if pool is not None and clean:
            pool.put(conn)
        else:
            conn.close()

    def _send_error(
        self,
        exc: BaseException,
        url: str,
        provider: str,
        connect: float,
        headers: Mapping[str, str],
    ) -> BaseException:
        host = _host(url)
        if isinstance(exc, Expired):
            return _timeout_error(exc, provider, host)
        if isinstance(exc, Cancelled):
            return UpstreamConnectionError("call cancelled", provider=provider, host=host)
        if isinstance(exc, UpstreamProtocolError):  # raised by the wire's header checks
            exc.provider = provider
            exc.host = host
            return exc
        if isinstance(exc, requests.ConnectTimeout):
            return UpstreamTimeoutError(
                explain.connect_failure(exc, _shown(url), connect_timeout=connect),
                provider=provider,
                retryable=True,
                host=host,
            )
        if isinstance(exc, requests.ReadTimeout):
            return UpstreamTimeoutError(
                explain.timeout_words("first-token", connect, host),
                provider=provider,
                retryable=True,
                host=host,
            )
        if isinstance(exc, requests.ConnectionError):
            return UpstreamConnectionError(
                explain.connect_failure(exc, _shown(url)),
                provider=provider,
                retryable=True,
                host=host,
            )
        if isinstance(exc, requests.RequestException):
            secrets = Secrets()
            secrets.add_headers(headers)
            text = secrets.mask(" ".join(str(exc).split()))[:160]
            return ProviderError(f"request failed: {type(exc).__name__}: {text}", provider=provider)
        # What provhub's own loop-driven sending raises (provhub._loopwire).
        if isinstance(exc, ConnectTimeout):
            return UpstreamTimeoutError(
                explain.connect_failure(exc, _shown(url), connect_timeout=connect),
                provider=provider,
                retryable=True,
                host=host,
            )
        if isinstance(exc, OSError | http.client.HTTPException):
            return UpstreamConnectionError(
                explain.connect_failure(exc, _shown(url)),
                provider=provider,
                retryable=True,
                host=host,
            )
        if isinstance(exc, ProviderError):
            exc.provider = exc.provider or provider
        return exc  # MemoryError, KeyboardInterrupt...: not the network's doing

    def _refuse(
        self,
        response: requests.Response,
        exchange: Exchange,
        reader: Body | None,
        url: str,
        provider: str,
        headers: Mapping[str, str],
        stream: bool,
    ) -> None:
        """Raise the error for a status that is not an answer (3xx, 4xx, 5xx, 1xx, 204)."""
        status = response.status_code
        secrets = Secrets()
        secrets.add_headers(headers)
        host = _host(url)
        if 300 <= status < 400:
            raise self._redirect(response, url, provider, secrets)
        if status < 400:
            what = "an event stream" if stream else "a JSON answer"
            raise UpstreamProtocolError(
                f"HTTP {status} carries no body; expected {what}",
                provider=provider,
                status=status,
                retryable=True,
                host=host,
            )
        raw = self._error_body(exchange, reader)
        excerpt = _excerpt(raw, secrets)
        code, error_type = _error_fields(raw)
        raise UpstreamHTTPError(
            secrets.mask(explain.http_failure(status, response.reason, host, excerpt)),
            response=response,
            provider=provider,
            status=status,
            retryable=status_retryable(status),
            body=excerpt,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            kind=kind_of_status(status),
            host=host,
            code=code,
            error_type=error_type,
        )

    @staticmethod
    def _error_body(exchange: Exchange, reader: Body | None) -> bytes:
        """Up to ``_ERROR_BODY_BYTES`` of an error body, within a short budget."""
        if reader is None:
            return b""
        exchange.cap(_ERROR_BODY_SECONDS)
        exchange.waiting = False
        chunks: list[bytes] = []
        size = 0
        try:
            while size < _ERROR_BODY_BYTES:
                block = reader.read()
                if not block:
                    break
                chunks.append(block)
                size += len(block)
        except (*_READ_ERRORS, ProviderError):  # the status matters more than its body
            pass
        return b"".join(chunks)[:_ERROR_BODY_BYTES]

    @staticmethod
    def _redirect(
        response: requests.Response, url: str, provider: str, secrets: Secrets
    ) -> UpstreamHTTPError:
        status = response.status_code
        location = response.headers.get("location")
        if location:
            try:
                target = urlsplit(urljoin(url, location.strip()))
                where = f"{target.scheme}://{_host(target.geturl()) or '?'}"
            except ValueError:
                where = "an invalid Location"
            where = "to " + secrets.mask(where)
        else:
            where = "without a Location header"
        return UpstreamHTTPError(
            f"upstream redirected {where} (HTTP {status}); provhub does not follow "
            "redirects (they would re-send the prompt): set the provider's URL to the "
            "final address",
            response=response,
            provider=provider,
            status=status,
            retryable=False,
            host=_host(url),
        )

    @staticmethod
    def _finish(response: requests.Response, exchange: Exchange, reader: Body | None) -> None:
        """Hand the connection back to the pool if it is clean, else close it."""
        raw = response.raw._original_response
        # Before the pool can hand the connection to anyone else.
        exchange.release()
        if reader is not None and reader.clean and isinstance(raw, Response) and raw.reusable:
            raw.close()  # http.client: this response is done, the connection may send again
            response.raw.release_conn()
        else:
            response.close()

    def _read_json(
        self,
        exchange: Exchange,
        reader: Body,
        provider: str,
        host: str | None,
        headers: Mapping[str, str],
    ) -> Any:
        """Read a whole JSON body within the first-token budget and decode it."""
        return _completed(self._json_steps(exchange, reader, provider, host, headers))

    def _json_steps(
        self,
        exchange: Exchange,
        reader: Body,
        provider: str,
        host: str | None,
        headers: Mapping[str, str],
    ) -> Generator[Readable, None, Any]:
        """:meth:`_read_json`, yielding the waits when the loop reads the socket."""
        # One growing buffer: a list of blocks joined at the end would hold the
        # body twice at its peak.
        data = bytearray()
        try:
            while True:
                try:
                    block = reader.read()
                except WouldBlock as wait:
                    if (yield from wait.waiting()):
                        raise exchange.expired(wait.budget) from None
                    continue
                if not block:
                    break
                data += block
        except UpstreamProtocolError as exc:
            exc.provider = provider
            exc.host = exc.host or host
            raise
        except _READ_ERRORS as exc:
            # A body that stalls or ends early (an overstated Content-Length) after
            # a whole JSON object is a complete answer.
            answer = _whole_json(data)
            if answer is None:
                url = f"http://{host}" if host else None
                raise _read_error(exc, provider, host, url) from _original(exc)
            return answer
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
            secrets = Secrets()
            secrets.add_headers(headers)
            raise UpstreamProtocolError(
                f"response is not JSON ({len(data)} bytes)",
                provider=provider,
                body=_excerpt(bytes(data[:_ERROR_BODY_BYTES]), secrets),
                host=host,
            ) from exc

    # -- the two calls -------------------------------------------------------------

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
        """POST ``payload`` as JSON and return the decoded JSON answer.

        The whole body must arrive within the first-token budget: its first token
        is in the complete body, and one slow upstream must not eat the deadline
        a fallback needs.
        """
        response, exchange, reader = self._open(
            url, payload, headers, timeouts, provider, verify, cancel, stream=False
        )
        try:
            return self._read_json(exchange, reader, provider, _host(url), headers)
        finally:
            self._finish(response, exchange, reader)

    def fetch_json(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        provider: str,
        verify: bool | None = None,
        cancel: CancelToken | None = None,
        suspend: bool = False,
    ) -> Generator[Suspend, None, Any]:
        """:meth:`post_json` as a generator: ``answer = yield from transport.fetch_json(...)``.

        Without ``suspend`` it yields nothing and returns what :meth:`post_json`
        returns. With it (the asyncio front end's mode) the request is sent and the
        answer read on a non-blocking socket, and the waits are yielded, as
        :meth:`stream_sse` does.
        """
        target = self._loop_target(url) if suspend else None
        sending = functools.partial(
            self.post_json,
            url,
            payload,
            headers=headers,
            timeouts=timeouts,
            provider=provider,
            verify=verify,
            cancel=cancel,
        )
        if target is None:
            if not suspend:
                return sending()
            # Through a proxy: requests sends it, on a worker.
            offload: Offload[Any] = Offload(sending)
            try:
                yield offload
            except GeneratorExit:
                offload.abandon()
                raise
            return offload.result()
        _, exchange, reader, finish = yield from self._open_on_loop(
            target, url, payload, headers, timeouts, provider, verify, cancel, stream=False
        )
        try:
            return (yield from self._json_steps(exchange, reader, provider, _host(url), headers))
        finally:
            finish()

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
        suspend: bool = False,
    ) -> Generator[bytes, None, None]:
        """POST ``payload`` and yield each SSE event's data until ``[DONE]``.

        Raises :class:`UpstreamProtocolError` (retryable) for an answer that is
        not ``text/event-stream`` or ends before its first event, and
        :class:`~provhub.JSONAnswerError` (carrying the decoded body) for a JSON
        answer. Closing the iterator early closes the HTTP response (and its
        connection) at once; a stream read to its end returns its connection to
        the pool.

        ``suspend`` (the asyncio front end's mode, :mod:`provhub._suspend`): the
        request is sent and the answer read on a non-blocking socket
        (:mod:`provhub._loopwire`; through a proxy, ``requests`` sends it on a
        worker), and :class:`~provhub._suspend.Suspend` objects are yielded between
        the events, for the event loop to wait on.
        """
        target = self._loop_target(url) if suspend else None
        # Sent by requests on a worker (a proxy, credentials in the URL): its
        # socket is read by a worker too, one block at a time.
        offloaded = suspend and target is None
        head: Head | None = None
        if target is not None:
            head, exchange, reader, finish = yield from self._open_on_loop(  # type: ignore[misc]
                target, url, payload, headers, timeouts, provider, verify, cancel, stream=True
            )
            content_type = head.headers.get("content-type")
        else:
            opening = functools.partial(
                self._open, url, payload, headers, timeouts, provider, verify, cancel, stream=True
            )
            if offloaded:
                offload = Offload(opening, cleanup=self._finish_all)
                try:
                    yield offload  # type: ignore[misc]
                except GeneratorExit:
                    offload.abandon()
                    raise
                response, exchange, reader = offload.result()
            else:
                response, exchange, reader = opening()
            finish = functools.partial(self._finish, response, exchange, reader)
            content_type = response.headers.get("content-type")
        host = _host(url)
        done = False
        try:
            mime = (content_type or "").split(";", 1)[0].strip().lower()
            if mime != "text/event-stream":
                if head is not None:
                    response = _response_of(head, url)
                    head.fp.blocking()
                refusing = functools.partial(
                    self._not_a_stream, mime, response, exchange, reader, provider, host, headers
                )
                if suspend:
                    # Reading the body that explains the refusal blocks: a worker does it.
                    refused: Offload[None] = Offload(refusing)
                    yield refused  # type: ignore[misc]
                    refused.result()
                else:
                    refusing()
            limits = self.limits
            decoder = SSEDecoder(limits.max_line_bytes, limits.max_event_bytes)
            feed = decoder.feed
            read = reader.read
            seen = False
            try:
                while True:
                    if offloaded:
                        reading: Offload[bytes] = Offload(read)
                        yield reading  # type: ignore[misc]
                        block = reading.result()
                    else:
                        try:
                            block = read()
                        except WouldBlock as wait:
                            if (yield from wait.waiting()):  # type: ignore[misc]
                                raise exchange.expired(wait.budget) from None
                            continue
                    if not block:
                        break
                    events = feed(block)
                    if events:
                        if not seen:
                            # The answer has started: from now on the idle and
                            # total budgets apply, no longer first-token.
                            seen = True
                            exchange.waiting = False
                        for data in events:
                            if data == b"[DONE]":
                                done = True
                                break
                            yield data
                        if done:
                            break
                if not done:
                    rest = decoder.close()
                    for data in rest:
                        if data == b"[DONE]":
                            done = True
                            break
                        yield data
                    if not seen and not rest:
                        raise UpstreamProtocolError(
                            "the event stream ended before its first event",
                            provider=provider,
                            retryable=True,
                            host=host,
                        )
            except SSEDecodeError as exc:
                raise UpstreamProtocolError(
                    f"invalid event stream: {exc}", provider=provider, host=host
                ) from exc
            except _READ_ERRORS as exc:
                raise _read_error(exc, provider, host, url) from _original(exc)
            except UpstreamProtocolError as exc:
                raise _read_error(exc, provider, host) from None
            # The answer is whole; a body that does not end within a small bound
            # costs the connection, never the answer.
            reader.start_drain(_DRAIN_SECONDS)
            while not offloaded:
                try:
                    reader.drain_rest(_DRAIN_BYTES)
                    break
                except WouldBlock as wait:
                    if (yield from wait.waiting()):  # type: ignore[misc]
                        break
        finally:
            finish()

    def _finish_all(self, opened: tuple[requests.Response, Exchange, Body]) -> None:
        """Close what an abandoned :meth:`_open` returned (its body was never read)."""
        self._finish(*opened)

    def _not_a_stream(
        self,
        mime: str,
        response: requests.Response,
        exchange: Exchange,
        reader: Body,
        provider: str,
        host: str | None,
        headers: Mapping[str, str],
    ) -> None:
        """Raise for a 2xx stream answer that is not an event stream."""
        status = response.status_code
        if mime == "application/json" or mime.endswith("+json"):
            answer = self._read_json(exchange, reader, provider, host, headers)
            raise JSONAnswerError(
                f"a stream request was answered with a JSON body (HTTP {status} {mime}), "
                "not an event stream",
                answer=answer,
                provider=provider,
                host=host,
            )
        secrets = Secrets()
        secrets.add_headers(headers)
        raw = self._error_body(exchange, reader)
        raise UpstreamProtocolError(
            f"expected an event stream, got {mime or 'no Content-Type'} (HTTP {status})",
            provider=provider,
            retryable=True,
            body=_excerpt(raw, secrets),
            host=host,
        )
