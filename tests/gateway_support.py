"""``provhub serve`` as a real subprocess on a free loopback port, for the gateway tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]

# Fast router timings: the failure scenarios finish in well under a second.
FAST_ROUTER = """
[router]
retries = 1
backoff_base = 0.01
backoff_max = 0.05
retry_after_cap = 1.0
breaker_threshold = 3
breaker_cooldown = 30.0
[router.timeouts]
connect = 2.0
first_token = 3.0
idle = 2.0
total = 10.0

# The shipped Lockchat serves gpt-4 too: a fallback must never leave the machine.
[providers.Lockchat]
enabled = false
"""


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def provider_tables(
    upstreams: Mapping[str, Any],
    models: Iterable[str] = ("gpt-4",),
    capabilities: Iterable[str] = (),
) -> str:
    """``[providers.NAME]`` tables pointing at fake upstreams (priority in the given order)."""
    out = []
    shown = ", ".join(f'"{m}"' for m in models)
    caps = ", ".join(f'"{c}"' for c in capabilities)
    for index, (name, upstream) in enumerate(upstreams.items()):
        out.append(
            f'[providers.{name}]\ntype = "openai-compatible"\nbase_url = "{upstream.base_url}"\n'
            f"models = [{shown}]\npriority = {100 - index}\ncapabilities = [{caps}]\n"
        )
    return "\n".join(out)


class Gateway:
    """A running ``provhub serve`` process (``with Gateway(config_text) as gw: gw.url``)."""

    def __init__(
        self,
        config: str,
        *,
        env: Mapping[str, str] | None = None,
        args: Iterable[str] = (),
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="provhub-gw-")
        self.config_path = Path(self._dir.name) / "provhub.toml"
        self.config_path.write_text(config, encoding="utf-8")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self._env = {
            **os.environ,
            # Only the shipped plugin: no third-party plugin of the machine interferes.
            "PROVHUB_PLUGINS": "",
            **(env or {}),
        }
        self._args = list(args)
        self.stderr_path = Path(self._dir.name) / "stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gateway:
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "provhub",
                "serve",
                "--config",
                str(self.config_path),
                "--port",
                str(self.port),
                *self._args,
            ],
            cwd=self._dir.name,
            env=self._env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"provhub serve exited early:\n{self.stderr()}")
            try:
                requests.get(self.url + "/healthz", timeout=0.5)
                return self
            except requests.ConnectionError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"provhub serve did not start:\n{self.stderr()}")

    def __exit__(self, *exc_info: object) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._stderr.close()
        self._dir.cleanup()

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def metrics(self, headers: Mapping[str, str] | None = None) -> str:
        """The ``/metrics`` text."""
        response = requests.get(self.url + "/metrics", headers=headers, timeout=5)
        response.raise_for_status()
        return response.text


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, matched by name and labels."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, rest = head.partition("{")
        if sample != name:
            continue
        found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return None
