"""``provhub serve``: run the gateway under uvicorn.

Refuses, before binding, what would be unsafe: no keys configured and a host
that is not loopback (unless ``allow_unauthenticated``), or ``api_keys_env``
naming an empty variable. With ``workers > 1`` uvicorn starts that many
processes, each building its own hub from the same configuration.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provhub._config import Config, load_config
from provhub._errors import ConfigError

__all__ = ["ServeOptions", "is_loopback", "serve", "worker_app"]


class UnsafeBindError(ConfigError):
    """The server would accept anyone's requests from the network."""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``provhub serve`` was asked for (None: take ``[server]``'s value)."""

    host: str | None = None
    port: int | None = None
    workers: int | None = None
    config: str | None = None
    allow_unauthenticated: bool = False
    access_log: bool = False
    log_level: str = "warning"
    # Called once with the startup line (where it listens, auth, workers, config):
    # the CLI prints it on stderr; a library never prints.
    announce: Callable[[str], None] | None = None


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _check_bind(host: str, keys: Any, allow_unauthenticated: bool, config: Config) -> None:
    if keys.enabled or is_loopback(host) or allow_unauthenticated:
        return
    raise UnsafeBindError(
        f"refusing to listen on {host} without API keys: anyone who can reach it could use "
        "your providers. Set [server] api_keys_env to a variable holding the keys, bind to "
        "127.0.0.1, or pass --allow-unauthenticated if a proxy in front checks access",
        path=config.path,
        key="server.api_keys_env",
    )


def worker_app() -> Any:
    """The app factory uvicorn calls in each worker process (``--workers N``)."""
    from provhub._hub import Hub
    from provhub.gateway._app import create_app

    return create_app(Hub(os.environ.get("PROVHUB_CONFIG") or None))


def serve(options: ServeOptions) -> int:
    """Run the gateway until interrupted; returns the exit code."""
    import uvicorn

    from provhub.gateway._auth import KeyRing

    config = load_config(options.config)
    server = config.server
    host = options.host or server.host
    port = server.port if options.port is None else options.port
    workers = options.workers or server.workers
    keys = KeyRing.from_env(server.api_keys_env)
    _check_bind(host, keys, options.allow_unauthenticated, config)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "log_level": options.log_level,
        "access_log": options.access_log,
        "server_header": False,
        "timeout_graceful_shutdown": 30,
    }
    if keys.enabled:
        auth = f"{len(keys)} API key(s) from ${server.api_keys_env}"
    else:
        auth = "no API keys: " + (
            "loopback only"
            if is_loopback(host)
            else "OPEN TO THE NETWORK (--allow-unauthenticated)"
        )
    shown = f"[{host}]" if ":" in host else host
    if options.announce is not None:
        options.announce(
            f"provhub serve: http://{shown}:{port} ({auth}; {workers} worker(s); "
            f"config {config.path or 'defaults'})"
        )
    if workers > 1:
        if config.path:
            os.environ["PROVHUB_CONFIG"] = config.path
        uvicorn.run("provhub.gateway._server:worker_app", factory=True, workers=workers, **common)
        return 0
    from provhub._hub import Hub
    from provhub.gateway._app import create_app

    app = create_app(Hub(config), config.server, keys=keys)
    uvicorn.run(app, **common)
    return 0
