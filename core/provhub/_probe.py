"""Live probes of providers, for ``provhub check``: cheap, bounded, concurrent.

A provider's ``working`` flag is its own claim; a probe asks the upstream. The
probe is free where the endpoint lists its models (``GET {base_url}{models_path}``,
OpenAI style), else a TCP connect (and TLS handshake for ``https``). A real
completion costs tokens, so it runs only when the caller asks for it. Every
probe has short timeouts and the probes run on threads, so one dead provider
does not make the check slow.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from provhub import _explain as explain
from provhub._explain import Endpoint

if TYPE_CHECKING:
    from provhub._config import ProviderConfig
    from provhub._spec import ProviderInfo

__all__ = ["Probe", "ProbeStatus", "probe", "probe_all"]

_MAX_LISTING = 1 << 20  # bytes of a model listing read at most


class ProbeStatus(enum.StrEnum):
    """Outcome of one probe."""

    OK = "ok"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Probe:
    """What the probe of one provider found.

    ``method`` is ``models`` (GET of the model listing), ``connect`` (TCP/TLS
    only), ``completion`` or ``none``; ``detail`` says what happened in words,
    ``next_step`` what to do about a failure (``""`` when nothing). ``models`` is
    the listing when one was read; ``missing`` the provider's models the listing
    does not name (a likely typo in the config).
    """

    provider: str
    status: ProbeStatus
    method: str
    detail: str
    endpoint: Endpoint
    next_step: str = ""
    http_status: int | None = None
    elapsed_ms: float | None = None
    models: tuple[str, ...] | None = None
    missing: tuple[str, ...] = ()
    completion: dict[str, Any] | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``provhub check --json``)."""
        return {
            "provider": self.provider,
            "status": str(self.status),
            "method": self.method,
            "detail": self.detail,
            "next_step": self.next_step,
            "http_status": self.http_status,
            "elapsed_ms": self.elapsed_ms,
            "models": list(self.models) if self.models is not None else None,
            "missing_models": list(self.missing),
            "completion": self.completion,
            **self.endpoint.as_dict(),
        }


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def probe(
    info: ProviderInfo,
    settings: ProviderConfig | None,
    endpoint: Endpoint,
    *,
    timeout: float,
) -> Probe:
    """Probe one provider over the network (no completion); never raises for the upstream."""
    if settings is not None and not settings.enabled:
        return Probe(info.name, ProbeStatus.SKIP, "none", "disabled in config", endpoint)
    if endpoint.url is None:
        return Probe(
            info.name,
            ProbeStatus.SKIP,
            "none",
            "no URL to probe (runs in-process); --completion tries a real request",
            endpoint,
        )
    if endpoint.needs_auth and not endpoint.key_set:
        why = (
            f"environment variable {endpoint.key_env} is not set"
            if endpoint.key_env
            else "no api_key_env is configured"
        )
        return Probe(
            info.name,
            ProbeStatus.FAIL,
            "none",
            f"needs credentials: {why}",
            endpoint,
            next_step=f"put the API key in ${endpoint.key_env}"
            if endpoint.key_env
            else f"name the variable holding the key with api_key_env in [providers.{info.name}]",
        )
    verify = settings.verify_tls if settings is not None else True
    if info.models_path:
        headers = dict(settings.headers) if settings is not None else {}
        return _probe_models(info, endpoint, headers, verify, timeout)
    return _probe_connect(info, endpoint, verify, timeout)


def _probe_models(
    info: ProviderInfo,
    endpoint: Endpoint,
    headers: dict[str, str],
    verify: bool,
    timeout: float,
) -> Probe:
    import os

    import requests

    from provhub._redact import Secrets

    assert endpoint.url is not None
    assert info.models_path is not None
    url = endpoint.url + info.models_path
    path = info.models_path
    key = os.environ.get(endpoint.key_env) if endpoint.key_env else None
    if key:
        # The OpenAI convention, which openai-compatible endpoints follow.
        headers["authorization"] = f"Bearer {key}"
    headers.setdefault("accept", "application/json")
    secrets = Secrets([key] if key else [])
    secrets.add_headers(headers)
    started = time.monotonic()
    host = explain.host_of(url)
    with requests.Session() as session:
        try:
            response = session.get(
                url,
                headers=headers,
                timeout=(timeout, timeout),
                stream=True,
                verify=verify,
                allow_redirects=False,
            )
        except requests.ConnectTimeout as exc:
            words = explain.connect_failure(exc, url, connect_timeout=timeout)
            return _failed(info, endpoint, "models", words, "UpstreamTimeoutError", started)
        except requests.ReadTimeout:
            words = explain.timeout_words("probe", timeout, host)
            return _failed(info, endpoint, "models", words, "UpstreamTimeoutError", started)
        except requests.RequestException as exc:
            words = explain.connect_failure(exc, url)
            return _failed(info, endpoint, "models", words, "UpstreamConnectionError", started, exc)
        with response:
            try:
                body = _read(response, started + 2 * timeout)
            except (requests.RequestException, TimeoutError, OSError) as exc:
                words = explain.broken_read(exc, url)
                return _failed(info, endpoint, "models", words, "UpstreamConnectionError", started)
    elapsed = _ms(started)
    status = response.status_code
    if status in (404, 405, 501):
        # The server answers; it just has no model listing at this path.
        return Probe(
            info.name,
            ProbeStatus.OK,
            "models",
            f"answers (GET {path}: HTTP {status}, no model listing there)",
            endpoint,
            http_status=status,
            elapsed_ms=elapsed,
        )
    if status >= 400:
        message = secrets.mask(_error_message(body))
        words = explain.http_failure(status, response.reason, host, message)
        step = explain.next_step(endpoint, _attempt(info.name, "UpstreamHTTPError", status))
        return Probe(
            info.name,
            ProbeStatus.FAIL,
            "models",
            secrets.mask(words),
            endpoint,
            next_step=step,
            http_status=status,
            elapsed_ms=elapsed,
        )
    models = _listing(body)
    if models is None:
        return Probe(
            info.name,
            ProbeStatus.OK,
            "models",
            f"answers (GET {path}: HTTP {status}, not an OpenAI-style model list)",
            endpoint,
            http_status=status,
            elapsed_ms=elapsed,
        )
    missing = tuple(m for m in info.models if m not in models)
    detail = f"GET {path}: HTTP {status}, {len(models)} model{'s' * (len(models) != 1)} listed"
    step = ""
    if missing and models:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        detail += f"; not listed: {shown}"
        step = f"check the model ids in [providers.{info.name}] against the listing"
    return Probe(
        info.name,
        ProbeStatus.OK,
        "models",
        detail,
        endpoint,
        next_step=step,
        http_status=status,
        elapsed_ms=elapsed,
        models=tuple(models),
        missing=missing,
    )


def _read(response: Any, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(65536):
        chunks.append(chunk)
        size += len(chunk)
        # A listing is small; a server that trickles or sends a flood is cut off.
        if size >= _MAX_LISTING or time.monotonic() > deadline:
            break
    return b"".join(chunks)


def _error_message(body: bytes) -> str:
    text = body[:800].decode("utf-8", "replace")
    try:
        message = json.loads(text)["error"]["message"]
        if isinstance(message, str):
            text = message
    except (ValueError, KeyError, TypeError):
        pass
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def _listing(body: bytes) -> list[str] | None:
    try:
        data = json.loads(body)["data"]
        ids = [entry["id"] for entry in data]
    except (ValueError, KeyError, TypeError):
        return None
    return [i for i in ids if isinstance(i, str)]


def _probe_connect(info: ProviderInfo, endpoint: Endpoint, verify: bool, timeout: float) -> Probe:
    import socket
    import ssl
    from urllib.parse import urlsplit

    assert endpoint.url is not None
    parts = urlsplit(endpoint.url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if secure:
                context = ssl.create_default_context()
                if not verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                with context.wrap_socket(sock, server_hostname=host):
                    pass
    except (OSError, ssl.SSLError) as exc:
        if isinstance(exc, TimeoutError):
            words = explain.connect_failure(exc, endpoint.url, connect_timeout=timeout)
            return _failed(info, endpoint, "connect", words, "UpstreamTimeoutError", started)
        words = explain.connect_failure(exc, endpoint.url)
        return _failed(info, endpoint, "connect", words, "UpstreamConnectionError", started, exc)
    how = "TLS handshake done" if secure else "TCP connect"
    return Probe(
        info.name,
        ProbeStatus.OK,
        "connect",
        f"{how} to {parts.netloc} ({info.name} lists no models to probe further)",
        endpoint,
        elapsed_ms=_ms(started),
    )


def _attempt(provider: str, error_type: str, status: int | None = None) -> Any:
    from provhub._attempt import Attempt

    return Attempt(1, provider, False, error_type, status)


def _failed(
    info: ProviderInfo,
    endpoint: Endpoint,
    method: str,
    words: str,
    error_type: str,
    started: float,
    exc: BaseException | None = None,
) -> Probe:
    attempt = _attempt(info.name, error_type)
    error = None
    if exc is not None:
        from provhub._errors import ProviderError

        error = ProviderError(words, provider=info.name)
        error.__cause__ = exc
    return Probe(
        info.name,
        ProbeStatus.FAIL,
        method,
        words,
        endpoint,
        next_step=explain.next_step(endpoint, attempt, error),
        elapsed_ms=_ms(started),
    )


def probe_all(
    jobs: Sequence[tuple[ProviderInfo, ProviderConfig | None, Endpoint]],
    *,
    timeout: float,
    completion: Callable[[ProviderInfo, Probe], Probe] | None = None,
) -> list[Probe]:
    """Probe every provider concurrently; results in the order given.

    ``completion(info, probe)``, when given, runs after a probe that did not
    fail (a real request; it may cost money) and returns the updated probe.
    """

    def one(job: tuple[ProviderInfo, ProviderConfig | None, Endpoint]) -> Probe:
        info, settings, endpoint = job
        result = probe(info, settings, endpoint, timeout=timeout)
        enabled = settings is None or settings.enabled
        reachable = result.status is ProbeStatus.OK or (
            result.status is ProbeStatus.SKIP and endpoint.url is None
        )
        if completion is not None and enabled and reachable:
            result = completion(info, result)
        return result

    if not jobs:
        return []
    with ThreadPoolExecutor(
        max_workers=min(16, len(jobs)), thread_name_prefix="provhub-probe"
    ) as pool:
        return list(pool.map(one, jobs))
