"""The gateway's ASGI application: routes, the key check, the hub's lifetime.

``create_app(hub)`` builds a Starlette app over a :class:`~provhub.Hub`, using
only its public API. Routes (SPEC §13): ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /v1/providers``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``, ``GET /`` (the status page).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from provhub._config import ServerConfig
from provhub._metrics import LatencyWindow
from provhub.gateway._auth import KeyRing
from provhub.gateway._chat import ChatEndpoint
from provhub.gateway._errors import GatewayError
from provhub.gateway._http import new_request_id, request_id_of, send_bytes
from provhub.gateway._metrics import PrometheusSink
from provhub.gateway._status import providers_document, status_page

__all__ = ["create_app"]

_JSON = b"application/json"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class _KeyCheck:
    """ASGI middleware: ``/v1/*`` (and ``/metrics`` when asked) need an accepted bearer key."""

    def __init__(
        self,
        app: Any,
        keys: KeyRing,
        *,
        metrics_auth: bool,
        on_denied: Any,
        direct: dict[str, Any] | None = None,
    ) -> None:
        self._app = app
        self._direct = direct or {}
        self._keys = keys
        self._metrics_auth = metrics_auth
        self._on_denied = on_denied

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self._keys.enabled and self._protected(scope["path"]):
            authorization = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value
                    break
            if not self._keys.check(authorization):
                error = GatewayError(
                    401,
                    "missing or invalid API key; send it as 'Authorization: Bearer <key>'",
                    kind="authentication_error",
                    code="invalid_api_key",
                )
                client_id, _ = request_id_of(scope)
                await send_bytes(
                    send,
                    401,
                    error.body(),
                    [
                        (b"www-authenticate", b'Bearer realm="provhub"'),
                        (b"x-request-id", client_id or new_request_id()),
                    ],
                )
                self._on_denied(scope["path"])
                return
        if scope["type"] == "http":
            # The hot route skips Starlette's router and middleware stack (about
            # 10% of the gateway's own CPU per request); it handles its own errors.
            endpoint = self._direct.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _protected(self, path: str) -> bool:
        return path.startswith(("/v1/", "/chat/")) or (self._metrics_auth and path == "/metrics")


def _route_of(path: str) -> str:
    if path.endswith("/chat/completions"):
        return "chat"
    return {
        "/v1/models": "models",
        "/v1/providers": "providers",
        "/healthz": "health",
        "/readyz": "health",
        "/metrics": "metrics",
        "/": "status",
    }.get(path, "other")


def create_app(
    hub: Any,
    server: ServerConfig | None = None,
    *,
    keys: KeyRing | None = None,
    close_hub: bool = True,
) -> Any:
    """Build the gateway's ASGI app over ``hub``.

    ``server`` defaults to ``hub.config.server``; ``keys`` to the keys named by
    its ``api_keys_env`` (:class:`ConfigError` if that variable is empty).
    ``close_hub``: close the hub when the app shuts down (lifespan).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    settings = server or hub.config.server
    ring = keys if keys is not None else KeyRing.from_env(settings.api_keys_env)
    sink = PrometheusSink(hub)
    latency = LatencyWindow()
    # The hub's one derivation, shared with any other metrics backend on this hub
    # (the OpenTelemetry sink): one count of the events, whoever reads it.
    derivation = hub.metrics
    started = time.monotonic()

    def respond(route: str) -> Callable[[int], None]:
        return lambda status: sink.response(route, status)

    chat = ChatEndpoint(
        hub,
        max_body_bytes=settings.max_body_bytes,
        deadline=settings.deadline,
        on_response=respond("chat"),
    )

    def counted(route: str, response: Response) -> Response:
        sink.response(route, response.status_code)
        return response

    async def models(request: Request) -> Response:
        seen: dict[str, str] = {}
        for info in hub.providers():
            for model in (*info.models, *info.aliases):
                seen.setdefault(model, info.name)
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": owner}
            for m, owner in seen.items()
        ]
        return counted("models", JSONResponse({"object": "list", "data": data}))

    async def providers(request: Request) -> Response:
        return counted("providers", JSONResponse(providers_document(hub, latency, started)))

    async def healthz(request: Request) -> Response:
        return counted("health", JSONResponse({"status": "ok"}))

    async def readyz(request: Request) -> Response:
        infos = hub.providers()
        health = hub.health()
        usable = [
            i.name
            for i in infos
            if i.working and health.get(i.name, {}).get("state", "closed") != "open"
        ]
        if usable:
            return counted("health", JSONResponse({"status": "ready", "providers": len(usable)}))
        reason = "no provider is registered" if not infos else "every provider's breaker is open"
        return counted(
            "health", JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        )

    async def metrics(request: Request) -> Response:
        body, content_type = sink.render()
        return counted("metrics", Response(body, media_type=content_type))

    page = status_page()

    async def status(request: Request) -> Response:
        return counted("status", HTMLResponse(page, headers={"cache-control": "no-cache"}))

    async def not_found(request: Request, exc: Exception) -> Response:
        error = GatewayError(
            404,
            f"no route {request.url.path!r}; the API is under /v1 "
            "(e.g. POST /v1/chat/completions, GET /v1/models)",
            code="not_found",
        )
        return counted(
            "other", Response(error.body(), status_code=404, media_type="application/json")
        )

    async def not_allowed(request: Request, exc: Exception) -> Response:
        error = GatewayError(
            405, f"method {request.method} is not allowed here", code="method_not_allowed"
        )
        return counted(
            "other", Response(error.body(), status_code=405, media_type="application/json")
        )

    # Subscribed now, not at start-up: an ASGI server without lifespan support
    # still gets metrics.
    removers = [derivation.add_sink(sink), derivation.add_sink(latency)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for remove in removers:
                remove()
            if close_hub:
                hub.close()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat),
            Route("/chat/completions", chat),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/providers", providers, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/", status, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.state.sink = sink
    app.state.latency = latency
    app.state.metrics = derivation
    return _KeyCheck(
        app,
        ring,
        metrics_auth=settings.metrics_auth,
        on_denied=lambda path: sink.response(_route_of(path), 401),
        direct={"/v1/chat/completions": chat, "/chat/completions": chat},
    )
