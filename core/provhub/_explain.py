"""Plain words for failures: what failed, why, and what to do next.

A newcomer reading ``connection failed: ConnectionError`` learns nothing; the
cause is three exceptions deep (``requests`` wraps urllib3's ``MaxRetryError``,
which holds a ``NewConnectionError``, caused by ``ConnectionRefusedError``).
This module walks such a chain once and says it in words: which host, refused
or unresolvable or a TLS failure, timeouts in rounded seconds. The transport
builds its error messages with these functions; the CLI adds the next step
from structured data (where a provider's URL comes from, which variable holds
its key), never from parsing message text.

Pure functions over exceptions and plain values: no I/O, no logging.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from provhub._attempt import Attempt
    from provhub._config import ProviderConfig
    from provhub._errors import AllProvidersFailedError, ProviderError
    from provhub._spec import ProviderInfo

__all__ = [
    "Cause",
    "Endpoint",
    "broken_read",
    "cause_of",
    "connect_failure",
    "endpoint_of",
    "failure_line",
    "host_of",
    "http_failure",
    "next_step",
    "seconds",
    "silent",
    "timeout_words",
    "url_words",
]


def seconds(value: float) -> str:
    """A duration for people: ``0.3820692`` -> ``"0.38 s"``, ``10.0`` -> ``"10 s"``.

    Two significant digits below ten seconds, whole seconds above.
    """
    if value != value or value < 0:  # NaN or negative: say what it is
        return f"{value} s"
    if value >= 10:
        return f"{value:.0f} s"
    if value >= 1:
        text = f"{value:.1f}"
    else:
        text = f"{max(value, 0.001):.2g}"
        if "e" in text:  # 2g turns 0.0001 into 1e-04
            text = f"{max(value, 0.001):.3f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} s"


def host_of(url: str | None) -> str | None:
    """``host:port`` of ``url`` as written (``"127.0.0.1:9"``), or None."""
    if not url:
        return None
    try:
        return urlsplit(url).netloc or None
    except ValueError:
        return None


class Cause(enum.StrEnum):
    """What a network failure was, in the terms a user acts on."""

    REFUSED = "refused"
    DNS = "dns"
    TLS = "tls"
    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"
    UNREACHABLE = "unreachable"
    PROXY = "proxy"
    RESET = "reset"
    CLOSED = "closed"
    OTHER = "other"


def _links(exc: BaseException) -> Iterator[BaseException]:
    """Every exception in ``exc``'s chain: causes, contexts, urllib3's ``reason``, args."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 32:
        link = todo.pop(0)
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        # urllib3's MaxRetryError keeps the cause in ``reason`` (ssl.SSLError's
        # ``reason`` is a string: only exceptions are followed).
        reason = getattr(link, "reason", None)
        nested = [*getattr(link, "args", ()), link.__cause__, link.__context__, reason]
        todo += [e for e in nested if isinstance(e, BaseException)]


def cause_of(exc: BaseException) -> tuple[Cause, BaseException]:
    """Classify a network failure; return the cause and the link that shows it.

    The most telling link wins wherever it sits in the chain: a refused
    connection is ``ConnectionRefusedError`` three levels below
    ``requests.ConnectionError``.
    """
    import http.client
    import socket
    import ssl

    import urllib3.exceptions as u3

    links = list(_links(exc))

    def first(*types: type[BaseException]) -> BaseException | None:
        return next((link for link in links if isinstance(link, types)), None)

    found: BaseException | None
    if (found := first(socket.gaierror, u3.NameResolutionError)) is not None:
        return Cause.DNS, found
    if (found := first(ConnectionRefusedError)) is not None:
        return Cause.REFUSED, found
    if (found := first(ssl.SSLError)) is not None or (found := first(u3.SSLError)) is not None:
        return Cause.TLS, found
    if (found := first(u3.ProxyError)) is not None:
        return Cause.PROXY, found
    unreachable = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN)
    for link in links:
        if isinstance(link, OSError) and link.errno in unreachable:
            return Cause.UNREACHABLE, link
    for link in links:
        # urllib3 makes "cannot connect" a subclass of "connect timed out".
        if isinstance(link, u3.ConnectTimeoutError) and not isinstance(link, u3.NewConnectionError):
            return Cause.CONNECT_TIMEOUT, link
    # RemoteDisconnected is a ConnectionResetError too: the clean close is told first.
    if (found := first(http.client.RemoteDisconnected, http.client.IncompleteRead)) is not None:
        return Cause.CLOSED, found
    if (found := first(ConnectionResetError, BrokenPipeError)) is not None:
        return Cause.RESET, found
    if (found := first(TimeoutError, u3.ReadTimeoutError)) is not None:
        return Cause.READ_TIMEOUT, found
    return Cause.OTHER, links[-1]


def _tls_words(link: BaseException) -> str:
    import ssl

    if isinstance(link, ssl.SSLCertVerificationError):
        why = link.verify_message or link.reason or "verification failed"
        return f"the certificate is not trusted ({why})"
    reason = getattr(link, "reason", None)
    if reason == "WRONG_VERSION_NUMBER":
        return "the server does not speak TLS on this port (should the URL be http://?)"
    text = str(link).split("] ", 1)[-1].split(" (_ssl.c", 1)[0]
    return text or type(link).__name__


def _short(link: BaseException) -> str:
    text = " ".join(str(link).split())
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(link).__name__}: {text}" if text else type(link).__name__


def connect_failure(exc: BaseException, url: str, *, connect_timeout: float | None = None) -> str:
    """Why connecting to ``url`` failed, in one phrase naming the host.

    ``"cannot connect to 127.0.0.1:9: connection refused (nothing listens on that
    port)"``; ``"cannot connect to api.example: the host name does not resolve
    (no network, or a typo in the URL)"``.
    """
    host = host_of(url) or url
    cause, link = cause_of(exc)
    where = f"cannot connect to {host}"
    if cause is Cause.REFUSED:
        return f"{where}: connection refused (nothing listens on that port)"
    if cause is Cause.DNS:
        return f"{where}: the host name does not resolve (no network, or a typo in the URL)"
    if cause is Cause.TLS:
        return f"TLS handshake with {host} failed: {_tls_words(link)}"
    if cause is Cause.CONNECT_TIMEOUT or (
        cause is Cause.READ_TIMEOUT and connect_timeout is not None
    ):
        limit = f" within {seconds(connect_timeout)}" if connect_timeout is not None else ""
        return f"{where}: no answer{limit} (the host is down, or a firewall drops the packets)"
    if cause is Cause.UNREACHABLE:
        return f"{where}: the network or host is unreachable"
    if cause is Cause.PROXY:
        return f"{where} through the proxy (from the *_proxy variables): {_short(link)}"
    if cause is Cause.RESET:
        return f"{host} reset the connection before answering"
    if cause is Cause.CLOSED:
        return f"{host} closed the connection without answering"
    return f"{where}: {_short(link)}"


def broken_read(exc: BaseException, url: str | None) -> str:
    """Why reading an answer broke after the connection was up."""
    host = host_of(url) or "the upstream"
    cause, link = cause_of(exc)
    if cause is Cause.RESET:
        why = "it reset the connection"
    elif cause is Cause.CLOSED:
        why = "it closed the connection"
    else:
        why = _short(link)
    return f"the connection to {host} broke while reading the answer: {why}"


def timeout_words(phase: str, limit: float, host: str | None = None) -> str:
    """``"no response from 127.0.0.1:5000 within 0.38 s (first_token timeout)"``."""
    source = f" from {host}" if host else ""
    return f"no response{source} within {seconds(limit)} ({phase} timeout)"


def silent(phase: str, limit: float) -> str:
    """``"the upstream went silent for 0.5 s (idle timeout)"``."""
    return f"the upstream went silent for {seconds(limit)} ({phase} timeout)"


def http_failure(status: int, reason: str | None, host: str | None, message: str) -> str:
    """``"HTTP 401 Unauthorized from api.example: Incorrect API key provided"``.

    ``message`` is the upstream's own short (already masked) error text.
    """
    text = f"HTTP {status}"
    if reason:
        text += f" {reason}"
    if host:
        text += f" from {host}"
    if message:
        text += f": {message}"
    return text


# -- what to do next ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a provider's URL and key come from, for hints and probes.

    ``origin`` is ``"config"`` (``url`` in its table), ``"env"`` (the
    provider's ``url_env`` variable), ``"default"`` (its built-in ``url``) or
    ``"none"`` (in-process, no URL). ``key_env`` is the variable named for its
    API key (``api_key_env``), ``key_set`` whether it holds a value (never the
    value itself).
    """

    provider: str
    url: str | None
    origin: str
    url_env: str | None = None
    config_path: str | None = None
    key_env: str | None = None
    key_set: bool = False
    needs_auth: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``provhub check --json``)."""
        return {
            "url": self.url,
            "url_origin": self.origin,
            "url_env": self.url_env,
            "key_env": self.key_env,
            "key_set": self.key_set,
        }


def endpoint_of(
    info: ProviderInfo,
    settings: ProviderConfig | None,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Endpoint:
    """Resolve a provider's URL the way a call does (config, then ``url_env``, then default)."""
    env = os.environ if environ is None else environ
    url_env = getattr(info, "url_env", None)
    key_env = (settings.api_key_env if settings else None) or getattr(
        info.provider, "api_key_env", None
    )
    if settings is not None and settings.url:
        # A ``type`` table creates the provider from its url: that is config too.
        url, origin = settings.url, "config"
    elif url_env and env.get(url_env):
        url, origin = env[url_env], "env"
    elif info.url:
        url, origin = info.url, "default"
    else:
        url, origin = None, "none"
    return Endpoint(
        info.name,
        url.rstrip("/") if url else None,
        origin,
        url_env=url_env,
        config_path=config_path,
        key_env=key_env,
        key_set=bool(key_env and env.get(key_env)),
        needs_auth=info.needs_auth,
    )


def url_words(endpoint: Endpoint) -> str:
    """Where the URL comes from and how to change it, as one clause."""
    name = endpoint.provider
    table = f"[providers.{name}]"
    if endpoint.origin == "config":
        where = f" of {endpoint.config_path}" if endpoint.config_path else ""
        return f"its URL {endpoint.url} is set by url in {table}{where}"
    if endpoint.origin == "env":
        return f"its URL {endpoint.url} comes from ${endpoint.url_env}"
    if endpoint.origin == "default":
        how = f"${endpoint.url_env} or url in {table}" if endpoint.url_env else f"url in {table}"
        return f"its URL is the built-in default {endpoint.url}; set {how} to use another server"
    return ""


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def next_step(
    endpoint: Endpoint | None,
    attempt: Attempt | None = None,
    error: ProviderError | None = None,
) -> str:
    """What the user should do about one provider's failure (``""`` when nothing useful).

    Decided from structured fields: the attempt's error type, status and kind,
    the cause classified from ``error``'s exception chain when there is one, and
    where the provider's URL and key come from.
    """
    error_type = attempt.error_type if attempt is not None else None
    status = attempt.status if attempt is not None else None
    if error is not None:
        error_type = error_type or type(error).__name__
        status = status if status is not None else error.status
    if endpoint is not None:
        name = endpoint.provider
    elif attempt is not None:
        name = attempt.provider
    else:
        name = (error.provider if error is not None else None) or "NAME"
    where = url_words(endpoint) if endpoint is not None else ""
    cause = link = None
    if error is not None and error.__cause__ is not None:
        cause, link = cause_of(error.__cause__)
    if error_type == "CircuitOpen":
        return "it failed repeatedly; provhub tries it again after [router] breaker_cooldown"
    if error_type == "LimitReached":
        return f"over its limit: retry later, or raise rpm/tpm/max_in_flight in [providers.{name}]"
    if error_type == "ContextWindow":
        return "its context window is too small for this request: shorten it or use a larger model"
    if error_type == "UpstreamConnectionError" or cause in (Cause.REFUSED, Cause.DNS):
        if cause is Cause.TLS:
            if getattr(link, "reason", None) == "WRONG_VERSION_NUMBER":
                return _join("if the server does not use TLS, write http:// in its URL", where)
            return (
                "check the server's certificate (for a test server only: verify_tls = false "
                f"in [providers.{name}])"
            )
        if cause is Cause.REFUSED:
            return _join(f"start the server, or point {name} at one that runs", where)
        if cause is Cause.DNS:
            return _join("check the network and the host name", where)
        return _join("check that the server runs and is reachable", where)
    if error_type == "UpstreamTimeoutError":
        return (
            "the server is slow or stuck: try again later, or raise the limits in "
            f"[router.timeouts] or [providers.{name}.timeouts]"
        )
    if status in (401, 403):
        if endpoint is not None and endpoint.key_env:
            state = "" if endpoint.key_set else " (it is not set)"
            return f"check the API key in ${endpoint.key_env}{state}"
        return (
            "the server wants an API key: put it in an environment variable and name it "
            f"with api_key_env in [providers.{name}]"
        )
    if status == 404:
        return _join(
            "check the URL (OpenAI-compatible base URLs usually end in /v1) and the model id",
            where,
        )
    if status in (400, 422):
        return "the server refused the request: check the model id and the params"
    if status == 429:
        return "rate limited: wait and retry, or add another provider for fallback"
    if status is not None and status >= 500:
        return "the server is failing: retry later, or add another provider for fallback"
    if error_type == "UpstreamProtocolError":
        return _join("is this an OpenAI-compatible chat endpoint?", where)
    return ""


def failure_line(
    exc: AllProvidersFailedError, endpoints: Mapping[str, Endpoint] | None = None
) -> str:
    """One line for an :class:`AllProvidersFailedError`: per provider what failed and what next.

    Attempts of one provider are folded (``Lockchat (3 attempts)``); the last
    error of each provider is shown, since it is what finally failed, unless
    that attempt was only skipped (over a limit, circuit open) after a real
    failure: then the real failure is shown and the skip follows it.
    """
    from provhub._errors import ProviderError

    endpoints = endpoints or {}
    order: list[str] = []
    by_provider: dict[str, list[Attempt]] = {}
    for attempt in exc.attempts:
        if attempt.ok:
            continue
        if attempt.provider not in by_provider:
            order.append(attempt.provider)
        by_provider.setdefault(attempt.provider, []).append(attempt)
    last_error = exc.__cause__ if isinstance(exc.__cause__, ProviderError) else None
    last_provider = last_error.provider if last_error is not None else None
    sentences = [f"all providers failed for model {exc.model!r}"]
    for name in order:
        attempts = by_provider[name]
        tried = [a for a in attempts if not a.skipped]
        count = _attempt_count(len(tried), len(attempts) - len(tried))
        last = tried[-1] if tried and attempts[-1].skipped else attempts[-1]
        what = last.error or last.error_type or "failed"
        if last.status is not None and f"HTTP {last.status}" not in what:
            what = f"HTTP {last.status}: {what}"
        if last is not attempts[-1]:
            # The real failure first; why the provider was not tried again after.
            what = f"{_sentence(what)}; then not tried again: {attempts[-1].error or 'skipped'}"
        error = last_error if name == last_provider and last is attempts[-1] else None
        step = next_step(endpoints.get(name), last, error)
        sentences.append(f"{name}{count}: {_sentence(what)}" + (f". Next: {step}" if step else ""))
    if not order:
        sentences.append("no attempt was made (the deadline passed or the call was cancelled)")
    return ". ".join(_sentence(s) for s in sentences)


def _attempt_count(tried: int, skipped: int) -> str:
    """`` (3 attempts)``, `` (1 attempt, 1 skipped)``; empty for one plain attempt."""
    if not skipped:
        return f" ({tried} attempts)" if tried > 1 else ""
    plural = "s" if tried != 1 else ""
    return f" ({tried} attempt{plural}, {skipped} skipped)" if tried else f" ({skipped} skipped)"


def _sentence(text: str) -> str:
    """``text`` without its own final period (an ellipsis stays), to join sentences."""
    return text[:-1] if text.endswith(".") and not text.endswith("...") else text
