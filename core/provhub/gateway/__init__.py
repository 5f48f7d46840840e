"""``provhub serve``: an OpenAI-compatible HTTP gateway over a :class:`~provhub.Hub` (SPEC §13).

Needs the ``server`` extra (``pip install "provhub[server]"``). Use the command
``provhub serve``, or build the ASGI app yourself and run it under any ASGI
server::

    from provhub import Hub
    from provhub.gateway import create_app

    app = create_app(Hub())   # uvicorn module:app
"""

from __future__ import annotations

from provhub.gateway._app import create_app
from provhub.gateway._auth import KeyRing
from provhub.gateway._server import ServeOptions, serve

__all__ = ["KeyRing", "ServeOptions", "create_app", "serve"]
