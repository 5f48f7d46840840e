"""The shared HTTP transport of every HTTP provider (SPEC §10): bytes only.

One pooled ``requests.Session`` per transport (a hub owns one), explicit
timeouts for every phase, size limits, SSE framing, and mapping of HTTP
statuses and transport failures to the typed errors of :mod:`provhub._errors`.
What the bytes mean (the OpenAI chat format) is :mod:`provhub._openai`'s job.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Generator, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from provhub import _explain as explain
from provhub._cancel import CancelToken, HTTPPool, HTTPSPool, sending
from provhub._config import Limits, Timeouts
from provhub._errors import (
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
from provhub._redact import Secrets
from provhub._sse import SSEDecodeError, SSEDecoder

__all__ = ["Transport", "parse_retry_after"]

_BODY_EXCERPT = 200


class _Adapter(HTTPAdapter):
    """requests' adapter whose pools use the cancellable connections above."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

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
    message.
    """
    text = raw[: _BODY_EXCERPT * 4].decode("utf-8", "replace")
    try:
        message = json.loads(text)["error"]["message"]
        if isinstance(message, str):
            text = message
    except (ValueError, KeyError, TypeError, RecursionError):
        pass
    if secrets:
        text = secrets.mask(text)
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[: _BODY_EXCERPT - 3] + "..."


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).netloc or None
    except ValueError:
        return None


def _release(response: requests.Response, cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.detach(_socket_of(response))
    response.close()


def _trickle_timeout(timeouts: Timeouts, provider: str) -> UpstreamTimeoutError:
    return UpstreamTimeoutError(
        f"first-token timeout of {explain.seconds(min(timeouts.first_token, timeouts.total))} "
        "exceeded (the upstream trickles bytes too slowly)",
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
        token = sending.set(cancel)
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
                explain.connect_failure(exc, url, connect_timeout=timeouts.connect),
                provider=provider,
                retryable=True,
            ) from exc
        except requests.ReadTimeout as exc:
            raise UpstreamTimeoutError(
                explain.timeout_words(
                    "first-token", min(timeouts.first_token, timeouts.total), _host(url)
                ),
                provider=provider,
                retryable=True,
            ) from exc
        except requests.ConnectionError as exc:
            if cancel is not None and cancel.cancelled:
                raise UpstreamConnectionError("call cancelled", provider=provider) from exc
            raise UpstreamConnectionError(
                explain.connect_failure(exc, url),
                provider=provider,
                retryable=True,
                host=_host(url),
            ) from exc
        except requests.RequestException as exc:
            raise ProviderError(f"request failed: {exc}", provider=provider) from exc
        finally:
            sending.reset(token)
        if response.status_code >= 400:
            try:
                raw = response.raw.read(_BODY_EXCERPT * 4, decode_content=True) or b""
            except Exception:  # the error status matters more than its body
                raw = b""
            finally:
                _release(response, cancel)
            status = response.status_code
            secrets = Secrets()
            secrets.add_headers(all_headers)
            raise UpstreamHTTPError(
                secrets.mask(
                    explain.http_failure(
                        status, response.reason, _host(url), _excerpt(raw, secrets)
                    )
                ),
                response=response,
                provider=provider,
                status=status,
                retryable=status_retryable(status),
                body=_excerpt(raw, secrets),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                kind=kind_of_status(status),
                host=_host(url),
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
            secrets = Secrets()
            secrets.add_headers(headers)
            raise UpstreamProtocolError(
                f"response is not JSON ({len(data)} bytes)",
                provider=provider,
                body=_excerpt(data, secrets),
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
                        f"total timeout of {explain.seconds(timeouts.total)} exceeded",
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
                        f"total timeout of {explain.seconds(timeouts.total)} exceeded",
                        provider=provider,
                        retryable=True,
                    ) from exc
                phase = "idle" if switched else "first-token"
                raise UpstreamTimeoutError(
                    explain.silent(phase, idle if switched else timeouts.first_token),
                    provider=provider,
                    retryable=True,
                ) from exc
            raise UpstreamConnectionError(
                explain.broken_read(exc, response.url),
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
