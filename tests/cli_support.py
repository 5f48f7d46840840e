"""Running ``provhub`` as a newcomer does, for the CLI tests: a real subprocess.

Each run uses the project's interpreter (``python -m provhub``) in a scratch
working directory, with a scratch ``XDG_CONFIG_HOME`` (no user config), no
``PROVHUB_*`` variable from the outer environment, and only the shipped plugin
(``PROVHUB_PLUGINS=""``) unless a test says otherwise. A config file is found
the way a user's is: ``./provhub.toml`` in the working directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Cli", "HangingServer", "PlainHTTPServer", "one_error_line"]


class Cli:
    """``provhub`` in an isolated environment; ``cli("chat", "hi")`` runs it."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path / "project"
        self.cwd.mkdir()
        self.xdg = tmp_path / "xdg"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
        self.env.pop("PYTHONPATH", None)
        self.env.update(
            PROVHUB_PLUGINS="",
            XDG_CONFIG_HOME=str(self.xdg),
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
        )

    def config(self, text: str) -> Path:
        """Write ``./provhub.toml`` (found without ``--config``, as a user's would be)."""
        path = self.cwd / "provhub.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def __call__(
        self, *args: str, stdin: str = "", timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "provhub", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.env, **env},
            cwd=self.cwd,
            timeout=timeout,
            check=False,
        )

    def terminal(self, *args: str, stdin: str = "", timeout: float = 60, **env: str) -> str:
        """stdout and stderr in one stream, in the order a terminal shows them."""
        done = subprocess.run(
            [sys.executable, "-m", "provhub", *args],
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self.env, **env},
            cwd=self.cwd,
            timeout=timeout,
            check=False,
        )
        return done.stdout


def one_error_line(stderr: str) -> str:
    """The single ``provhub: error:`` line of ``stderr`` (asserting there is exactly one)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("provhub: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


class HangingServer:
    """A raw TCP server on 127.0.0.1 that accepts, reads, and never answers.

    Not ``FakeUpstream``: it speaks no HTTP at all, as a wedged upstream does.
    ``stop()`` closes every connection it holds.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hanging-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        return len(self._held)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(connection)

    def stop(self) -> None:
        """Stop accepting and close every held connection."""
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for connection in self._held:
            connection.close()

    def __enter__(self) -> HangingServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


class PlainHTTPServer(HangingServer):
    """Answers whatever arrives with ``400 Bad Request`` in plain HTTP, then closes.

    What a plain-HTTP server does when a client speaks TLS to it.
    """

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    connection.recv(4096)
                    connection.sendall(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n"
                    )
                except OSError:
                    pass


def hanging() -> Iterator[HangingServer]:
    """Fixture body: a :class:`HangingServer`, stopped after the test."""
    with HangingServer() as server:
        yield server
