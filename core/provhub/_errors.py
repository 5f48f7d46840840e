"""The exception family of provhub (SPEC §6), and the one mapping into it.

::

    ProvhubError
    ├── InvalidRequestError          the call is wrong (messages, params); also ValueError
    ├── ConfigError                  a config file or value is wrong
    ├── ProviderSpecError            a provider breaks the provider spec
    ├── PluginLoadError              a plugin failed (strict mode)
    ├── ModelNotFoundError           nobody serves the model; also LookupError
    ├── NoProviderError              some serve it, none qualifies (reasons listed)
    ├── ProviderError                one upstream failure of one provider
    │   ├── UpstreamHTTPError        an HTTP error status; also requests.HTTPError
    │   ├── UpstreamConnectionError  connect failed or broke; also requests.ConnectionError
    │   ├── UpstreamTimeoutError     a time budget ran out; also requests.Timeout
    │   ├── UpstreamProtocolError    not the expected wire format
    │   │   └── JSONAnswerError      a stream request answered with a JSON body
    │   └── RequestTooLargeError     the request exceeds the size limit; nothing sent
    ├── StreamInterruptedError       broke after items reached the caller
    └── AllProvidersFailedError      every attempt failed (``attempts`` in order)

The ``Upstream*`` errors also subclass the matching ``requests`` exception, so a
provider called directly still raises ``requests.HTTPError`` on an HTTP error (as
the seed's Lockchat did). Whatever a provider raises is mapped to a
:class:`ProviderError` by :func:`as_provider_error`, in one place. A failure's
*kind* (:class:`FailureKind`, SPEC §14) is data on the error, set by the provider
or the transport, never guessed by the router from message text.

Messages never contain prompt text or secrets.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from provhub._attempt import Attempt

__all__ = [
    "AllProvidersFailedError",
    "ConfigError",
    "FailureKind",
    "InvalidRequestError",
    "JSONAnswerError",
    "ModelNotFoundError",
    "NoProviderError",
    "PluginLoadError",
    "ProvhubError",
    "ProviderError",
    "ProviderSpecError",
    "RequestTooLargeError",
    "StreamInterruptedError",
    "UpstreamConnectionError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamTimeoutError",
    "as_provider_error",
    "kind_of_status",
    "parse_retry_after",
    "status_retryable",
]


class ProvhubError(Exception):
    """Base class of every error provhub raises."""


class InvalidRequestError(ProvhubError, ValueError):
    """The request itself is wrong (messages, parameters); fix the call.

    ``param`` names the offending parameter or message path when there is one.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class ConfigError(ProvhubError):
    """A configuration file or value is invalid.

    Attributes: ``path`` (file or None), ``key`` (dotted key or None), ``reason``.
    """

    def __init__(self, reason: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        where = ", ".join(part for part in (path, f"key {key!r}" if key else None) if part)
        super().__init__(f"{where}: {reason}" if where else reason)


class ProviderSpecError(ProvhubError):
    """A provider does not satisfy the provider spec; it was not registered.

    Attributes: ``provider`` (name or repr of the offender), ``source`` (plugin or
    ``"programmatic"``), ``reason``.
    """

    def __init__(self, provider: str, reason: str, *, source: str | None = None) -> None:
        self.provider = provider
        self.source = source
        self.reason = reason
        origin = f" (from {source})" if source else ""
        super().__init__(f"provider {provider!r}{origin} is invalid: {reason}")


class PluginLoadError(ProvhubError):
    """A plugin failed to load while the hub was in strict mode.

    Attributes: ``plugin`` (entry-point name), ``stage`` (import, hook, register),
    ``reason``.
    """

    def __init__(self, plugin: str, stage: str, reason: str) -> None:
        self.plugin = plugin
        self.stage = stage
        self.reason = reason
        super().__init__(
            f"plugin {plugin!r} failed at {stage}: {reason} "
            "(fix or uninstall it, or deny it with PROVHUB_DISABLE_PLUGINS)"
        )


class ModelNotFoundError(ProvhubError, LookupError):
    """No registered provider serves the model.

    Attributes: ``model``, ``suggestions`` (close model ids), ``available`` (all ids),
    ``hint`` (further advice, such as disabled plugins that may serve the model, or "").
    """

    def __init__(
        self,
        model: str,
        suggestions: Sequence[str],
        available: Sequence[str],
        *,
        hint: str = "",
    ) -> None:
        self.model = model
        self.suggestions = tuple(suggestions)
        self.available = tuple(available)
        self.hint = hint
        close = f"; did you mean {', '.join(map(repr, self.suggestions))}?" if suggestions else ""
        shown = ", ".join(self.available[:20]) + (" ..." if len(self.available) > 20 else "")
        super().__init__(
            f"no provider serves model {model!r}{close} "
            f"(known models: {shown or 'none, no provider is registered'})"
            + (f"; {hint}" if hint else "")
        )


class NoProviderError(ProvhubError):
    """Some providers serve the model but none qualifies for this request.

    Attributes: ``model``, ``excluded`` (mapping provider name -> reason), ``hint``
    (further advice, such as disabled plugins that may serve the model, or "").
    """

    def __init__(self, model: str, excluded: dict[str, str], *, hint: str = "") -> None:
        self.model = model
        self.excluded = dict(excluded)
        self.hint = hint
        reasons = "; ".join(f"{name}: {why}" for name, why in self.excluded.items())
        super().__init__(
            f"no provider qualifies for model {model!r}: {reasons}" + (f"; {hint}" if hint else "")
        )


class FailureKind(enum.StrEnum):
    """What kind of failure a :class:`ProviderError` is (SPEC §14).

    Set by the provider or the transport from status codes and error codes, so
    the router can act on it: ``context_length`` falls back only to larger
    context windows, ``auth`` opens no breaker for other providers.
    """

    RATE_LIMITED = "rate_limited"
    CONTEXT_LENGTH = "context_length"
    CONTENT_POLICY = "content_policy"
    AUTH = "auth"
    OVERLOADED = "overloaded"


class ProviderError(ProvhubError):
    """One upstream failure of one provider.

    Attributes: ``provider``, ``status`` (HTTP status or None), ``retryable``,
    ``body`` (short excerpt of the response body, or ""), ``retry_after`` (seconds
    or None), ``kind`` (a :class:`FailureKind` or None), ``host`` (the upstream's
    ``host:port`` when known). The original exception is chained as ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        retryable: bool = False,
        body: str = "",
        retry_after: float | None = None,
        kind: FailureKind | None = None,
        host: str | None = None,
    ) -> None:
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.body = body
        self.retry_after = retry_after
        self.kind = kind
        self.host = host
        self.detail = message
        super().__init__(message)

    def __str__(self) -> str:
        who = f"provider {self.provider!r}: " if self.provider else ""
        # The transport's messages already name the status and quote the upstream's
        # own message ("HTTP 401 Unauthorized from host: Incorrect API key"): say each once.
        detail = self.detail
        status = f" (HTTP {self.status})" if self.status is not None else ""
        if f"HTTP {self.status}" in detail:
            status = ""
        body = f"; body: {self.body!r}" if self.body and self.body not in detail else ""
        return f"{who}{self.detail}{status}{body}"


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


class JSONAnswerError(UpstreamProtocolError):
    """A stream request was answered with a whole JSON body, not an event stream.

    ``answer`` holds the body, decoded. A provider that knows the format parses
    it as the answer (the openai-compatible provider does: some servers ignore
    ``stream: true``); unhandled, it is a non-retryable protocol error, never an
    empty success.
    """

    def __init__(self, message: str, *, answer: Any, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.answer = answer


class RequestTooLargeError(ProviderError):
    """The encoded request exceeds ``limits.max_request_bytes``; nothing was sent.

    The request is at fault, not the provider: it never counts against a breaker.
    """


class StreamInterruptedError(ProvhubError):
    """A stream failed after items had reached the caller; no fallback was tried.

    Attributes: ``provider``, ``text`` (the text delivered before the failure),
    ``items`` (every item delivered, text and others, in order), ``tool_calls``
    (tool calls assembled from the delivered fragments, possibly partial),
    ``cause`` (the underlying :class:`ProviderError`).
    """

    def __init__(
        self,
        provider: str,
        text: str,
        cause: BaseException,
        *,
        items: Sequence[Any] = (),
        tool_calls: Sequence[Any] = (),
    ) -> None:
        self.provider = provider
        self.text = text
        self.cause = cause
        self.items = tuple(items)
        self.tool_calls = list(tool_calls)
        delivered = f"{len(text)} characters"
        if tool_calls:
            delivered += f" and {len(tool_calls)} tool call(s)"
        super().__init__(
            f"stream from provider {provider!r} broke after {delivered} were delivered: "
            f"{cause}; the partial answer is in .text and .items (retry the request to get "
            "a whole answer)"
        )


class AllProvidersFailedError(ProvhubError):
    """Every attempt on every candidate failed. ``attempts`` lists them in order."""

    def __init__(self, model: str, attempts: Sequence[Attempt]) -> None:
        self.model = model
        self.attempts = tuple(attempts)
        # Retries of one provider usually fail alike: "#1-#3 Lockchat: ..." says it once.
        runs: list[tuple[int, int, str]] = []
        for a in self.attempts:
            text = (
                f"{a.provider}: {a.error_type}"
                + (f" HTTP {a.status}" if a.status is not None else "")
                + (f" ({a.error})" if a.error else "")
            )
            if runs and runs[-1][2] == text and runs[-1][1] == a.number - 1:
                runs[-1] = (runs[-1][0], a.number, text)
            else:
                runs.append((a.number, a.number, text))
        lines = "; ".join(
            (f"#{first}" if first == last else f"#{first}-#{last}") + f" {text}"
            for first, last, text in runs
        )
        super().__init__(f"all providers failed for model {model!r}: {lines}")


def status_retryable(status: int) -> bool:
    """Whether an HTTP status is worth retrying (SPEC §5: 408, 429, 5xx, and alike)."""
    return status in (408, 409, 425, 429) or status >= 500


def kind_of_status(status: int | None) -> FailureKind | None:
    """The failure kind an HTTP status implies on its own, if any."""
    if status == 429:
        return FailureKind.RATE_LIMITED
    if status in (401, 403):
        return FailureKind.AUTH
    if status in (503, 529):
        return FailureKind.OVERLOADED
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        import email.utils
        import time

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN guard


def _from_http_error(exc: requests.HTTPError, provider: str) -> ProviderError:
    response = exc.response
    assert response is not None
    status = response.status_code
    return ProviderError(
        f"HTTP {status}",
        provider=provider,
        status=status,
        retryable=status_retryable(status),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        kind=kind_of_status(status),
    )


def _from_network_error(exc: BaseException, provider: str) -> ProviderError:
    return ProviderError(type(exc).__name__, provider=provider, retryable=True)


def _from_spec_error(exc: BaseException, provider: str) -> ProviderError:
    assert isinstance(exc, ProviderSpecError)
    return ProviderError(f"broke the provider spec: {exc.reason}", provider=provider)


def _from_provhub_error(exc: BaseException, provider: str) -> ProviderError:
    return ProviderError(f"{type(exc).__name__}: {exc}", provider=provider)


def _from_memory_error(exc: BaseException, provider: str) -> ProviderError:
    # Not retryable: the same request would exhaust memory again.
    return ProviderError("ran out of memory while handling the answer", provider=provider)


# What a provider may raise, most specific first, and how it maps (httpx keeps the
# same shape of table for httpcore's exceptions). ProviderError itself passes
# through; anything not listed is "provider raised X".
_EXCEPTION_MAP: tuple[tuple[type[BaseException], Any], ...] = (
    (MemoryError, _from_memory_error),
    (ProviderSpecError, _from_spec_error),
    (ProvhubError, _from_provhub_error),
    (requests.Timeout, _from_network_error),
    (requests.ConnectionError, _from_network_error),
    (TimeoutError, _from_network_error),
)


def as_provider_error(exc: BaseException, provider: str) -> ProviderError:
    """Map anything a provider raised to a :class:`ProviderError` (cause chained)."""
    if isinstance(exc, ProviderError):
        if exc.provider is None:
            exc.provider = provider
        return exc
    error: ProviderError | None = None
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        error = _from_http_error(exc, provider)
    else:
        for exc_type, convert in _EXCEPTION_MAP:
            if isinstance(exc, exc_type):
                error = convert(exc, provider)
                break
    if error is None:
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        error = ProviderError(
            f"provider raised {type(exc).__name__}" + (f": {text}" if text else ""),
            provider=provider,
        )
    error.__cause__ = exc
    return error
