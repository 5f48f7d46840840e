"""The per-call context a provider reads: transport, timeouts, settings.

A g4f-style provider's ``create_completion(model, messages, stream, **kwargs)``
has no place for a session or a timeout, and stuffing them into ``kwargs`` would
leak into payloads. The hub therefore publishes a :class:`CallContext` in a
``contextvars.ContextVar`` while it starts the provider's generator; the
provider reads it with :func:`provider_call` before its first ``yield``. Called
outside a hub, a provider gets a private one-shot transport that is closed when
its generator ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from provhub._cancel import CancelToken
from provhub._config import Limits, ProviderConfig, Timeouts
from provhub._redact import Secrets
from provhub._transport import Transport

__all__ = ["CallContext", "provider_call"]


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a provider needs for one call.

    ``settings`` is the provider's ``[providers.NAME]`` table if any;
    ``request_id`` ties the call to the hub's events. ``markers`` says whether
    the caller consumes the non-text items (``FinishReason``, ``Usage``, tool
    calls...): a hub does; a direct caller of ``create_completion`` gets ``str``
    tokens only. ``cancel`` is set when the caller gives up (a provider that does
    not use the transport polls ``cancel.cancelled`` between tokens).
    ``suspend`` is set when ``Hub.astream``/``Hub.acomplete`` drive the call on
    their event loop (only for a provider that declares ``asyncio_native``):
    :meth:`stream_sse` then yields :class:`~provhub._suspend.Suspend` objects
    between events, which the provider passes on as they are
    (:func:`~provhub.parse_chat_stream` does), and :meth:`fetch_json` yields them
    to its ``yield from``.
    """

    transport: Transport
    timeouts: Timeouts = field(default_factory=Timeouts)
    settings: ProviderConfig | None = None
    request_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    cancel: CancelToken | None = None
    markers: bool = True
    suspend: bool = False
    emitter: Callable[[str, dict[str, Any]], None] | None = field(default=None, repr=False)
    # The header sets and keys this call sent, kept as they are (cheap) and turned
    # into masks only when an error needs them.
    _sent: list[Mapping[str, str]] = field(default_factory=list, repr=False)
    _keys: list[str] = field(default_factory=list, repr=False)

    def secrets(self) -> Secrets:
        """The credentials this call sent so far, for masking error text."""
        secrets = Secrets(self._keys)
        for headers in self._sent:
            secrets.add_headers(headers)
        return secrets

    def emit(self, event: str, **fields: Any) -> None:
        """Emit an INFO event from the provider (e.g. progress of a model load).

        The event carries the request's fields; outside a hub it goes nowhere.
        """
        if self.emitter is not None:
            self.emitter(event, fields)

    def _sending(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The provider's headers with the config's extra ones, kept for masking."""
        sent = {**headers, **self.headers}
        self._sent.append(sent)
        return sent

    def stream_sse(
        self, url: str, payload: Mapping[str, Any], *, headers: Mapping[str, str], provider: str
    ) -> Generator[bytes, None, None]:
        """POST through the call's transport and yield SSE data payloads.

        Applies this call's timeouts, TLS setting, extra config headers and
        cancellation; see :meth:`Transport.stream_sse`.
        """
        return self.transport.stream_sse(
            url,
            payload,
            headers=self._sending(headers),
            timeouts=self.timeouts,
            provider=provider,
            verify=self.verify_tls,
            cancel=self.cancel,
            suspend=self.suspend,
        )

    def post_json(
        self, url: str, payload: Mapping[str, Any], *, headers: Mapping[str, str], provider: str
    ) -> Any:
        """POST through the call's transport and return the JSON answer."""
        return self.transport.post_json(
            url,
            payload,
            headers=self._sending(headers),
            timeouts=self.timeouts,
            provider=provider,
            verify=self.verify_tls,
            cancel=self.cancel,
        )

    def fetch_json(
        self, url: str, payload: Mapping[str, Any], *, headers: Mapping[str, str], provider: str
    ) -> Generator[Any, None, Any]:
        """:meth:`post_json` for an ``asyncio_native`` provider: ``answer = yield from ...``.

        On the event loop the waits are yielded (``yield from`` passes them on);
        anywhere else it yields nothing and returns the JSON answer.
        """
        return self.transport.fetch_json(
            url,
            payload,
            headers=self._sending(headers),
            timeouts=self.timeouts,
            provider=provider,
            verify=self.verify_tls,
            cancel=self.cancel,
            suspend=self.suspend,
        )

    def base_url(self, default: str | None, env_var: str | None = None) -> str:
        """The base URL: config ``url``, else ``$env_var``, else ``default``.

        Raises ``ValueError`` when none is set.
        """
        url = (
            (self.settings.url if self.settings else None)
            or (os.environ.get(env_var) if env_var else None)
            or default
        )
        if not url:
            raise ValueError("no base URL configured (set url/base_url in [providers.NAME])")
        return url.rstrip("/")

    def api_key(self, env_var: str | None = None) -> str | None:
        """The API key from the environment variable named by config or ``env_var``.

        Read at call time, so rotating the variable needs no restart.
        """
        name = (self.settings.api_key_env if self.settings else None) or env_var
        key = os.environ.get(name) if name else None
        if key:
            self._keys.append(key)
        return key

    @property
    def verify_tls(self) -> bool:
        """Whether TLS certificates are verified (config ``verify_tls``)."""
        return self.settings.verify_tls if self.settings else True


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "provhub_call", default=None
)


@contextlib.contextmanager
def provider_call(limits: Limits | None = None) -> Iterator[CallContext]:
    """The current call's context, for use inside ``create_completion``.

    Inside a hub call this is the hub's context (its pooled transport is not
    closed here); outside one it is a fresh context whose transport is closed
    when the ``with`` block ends.
    """
    context = _current.get()
    if context is not None:
        yield context
        return
    transport = Transport(limits=limits)
    try:
        yield CallContext(transport=transport, markers=False)
    finally:
        transport.close()


def bind_call(context: CallContext) -> contextvars.Token[CallContext | None]:
    """Publish ``context`` for the provider about to run (hub internal)."""
    return _current.set(context)


def unbind_call(token: contextvars.Token[CallContext | None]) -> None:
    """Undo :func:`bind_call`."""
    _current.reset(token)
