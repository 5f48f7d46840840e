"""``GET /v1/providers`` (capability matrix and health) and ``GET /`` (the status page).

The page is one static HTML document with a little vanilla JavaScript that
polls ``/v1/providers`` every two seconds; no build step, no external asset.
Values are put in with ``textContent`` only, so a provider or model name can
never inject markup. When the server requires keys, the page asks for one and
keeps it in the tab's ``sessionStorage``.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from provhub._metrics import LatencyWindow

__all__ = ["providers_document", "status_page"]


def providers_document(hub: Any, latency: LatencyWindow, started: float) -> dict[str, Any]:
    """The ``/v1/providers`` JSON: every provider with capabilities, health, recent latency."""
    health = hub.health()
    recent = latency.summary()
    data = []
    for info in hub.providers():
        state = health.get(info.name, {})
        data.append(
            {
                "name": info.name,
                "url": info.url,
                "working": info.working,
                "needs_auth": info.needs_auth,
                "capabilities": info.capabilities.names(),
                "models": list(info.models),
                "aliases": dict(info.aliases),
                "source": info.source,
                "health": {
                    "state": str(state.get("state", "closed")),
                    "consecutive_failures": state.get("consecutive_failures", 0),
                    "ttft_ms": state.get("ttft_ms"),
                    "in_flight": state.get("in_flight", 0),
                },
                "recent": recent.get(
                    info.name,
                    {
                        "samples": 0,
                        "p50_ms": None,
                        "p95_ms": None,
                        "ttft_p50_ms": None,
                        "errors": 0,
                    },
                ),
            }
        )
    return {"object": "list", "data": data, "uptime_s": round(time.monotonic() - started, 1)}


def status_page() -> bytes:
    """The status page's HTML (``status.html`` next to this module)."""
    return resources.files(__package__).joinpath("status.html").read_bytes()
