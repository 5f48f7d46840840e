"""The exception family of provhub (SPEC §6).

Every error carries structured fields and a message that says what happened and
what to do. Messages never contain prompt text or secrets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provhub._router import Attempt

__all__ = [
    "AllProvidersFailedError",
    "ConfigError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "NoProviderError",
    "PluginLoadError",
    "ProvhubError",
    "ProviderError",
    "ProviderSpecError",
    "StreamInterruptedError",
]


class ProvhubError(Exception):
    """Base class of every error provhub raises."""


class InvalidRequestError(ProvhubError, ValueError):
    """The request itself is wrong (messages, parameters); fix the call."""


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

    Attributes: ``model``, ``suggestions`` (close model ids), ``available`` (all ids).
    """

    def __init__(self, model: str, suggestions: Sequence[str], available: Sequence[str]) -> None:
        self.model = model
        self.suggestions = tuple(suggestions)
        self.available = tuple(available)
        hint = f"; did you mean {', '.join(map(repr, self.suggestions))}?" if suggestions else ""
        shown = ", ".join(self.available[:20]) + (" ..." if len(self.available) > 20 else "")
        super().__init__(
            f"no provider serves model {model!r}{hint} "
            f"(known models: {shown or 'none, no provider is registered'})"
        )


class NoProviderError(ProvhubError):
    """Some providers serve the model but none qualifies for this request.

    Attributes: ``model``, ``excluded`` (mapping provider name -> reason).
    """

    def __init__(self, model: str, excluded: dict[str, str]) -> None:
        self.model = model
        self.excluded = dict(excluded)
        reasons = "; ".join(f"{name}: {why}" for name, why in self.excluded.items())
        super().__init__(f"no provider qualifies for model {model!r}: {reasons}")


class ProviderError(ProvhubError):
    """One upstream failure of one provider.

    Attributes: ``provider``, ``status`` (HTTP status or None), ``retryable``,
    ``body`` (short excerpt of the response body, or ""), ``retry_after`` (seconds
    or None). The original exception is chained as ``__cause__``.
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
    ) -> None:
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.body = body
        self.retry_after = retry_after
        self.detail = message
        super().__init__(message)

    def __str__(self) -> str:
        who = f"provider {self.provider!r}: " if self.provider else ""
        status = f" (HTTP {self.status})" if self.status is not None else ""
        body = f"; body: {self.body!r}" if self.body else ""
        return f"{who}{self.detail}{status}{body}"


class StreamInterruptedError(ProvhubError):
    """A stream failed after tokens had reached the caller; no fallback was tried.

    Attributes: ``provider``, ``text`` (what was delivered before the failure),
    ``cause`` (the underlying :class:`ProviderError`).
    """

    def __init__(self, provider: str, text: str, cause: BaseException) -> None:
        self.provider = provider
        self.text = text
        self.cause = cause
        super().__init__(
            f"stream from provider {provider!r} broke after {len(text)} characters were "
            f"delivered: {cause}; the partial answer is in .text (retry the request to get a "
            "whole answer)"
        )


class AllProvidersFailedError(ProvhubError):
    """Every attempt on every candidate failed. ``attempts`` lists them in order."""

    def __init__(self, model: str, attempts: Sequence[Attempt]) -> None:
        self.model = model
        self.attempts = tuple(attempts)
        lines = "; ".join(
            f"#{a.number} {a.provider}: {a.error_type}"
            + (f" HTTP {a.status}" if a.status is not None else "")
            + (f" ({a.error})" if a.error else "")
            for a in self.attempts
        )
        super().__init__(f"all providers failed for model {model!r}: {lines}")
