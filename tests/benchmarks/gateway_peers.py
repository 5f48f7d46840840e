"""The servers of the gateway benchmark: loopback upstreams and the three gateways.

* ``Upstreams``: four ``FakeUpstream`` s in a child process (pinned to the load generator's
  core): ``short`` (a three-token answer), ``long`` (one 20,000-chunk stream, sent at once),
  ``paced`` (200 chunks 20 ms apart) and ``hold`` (the 1,000 open streams' pacing).
* ``Gateway``: ``provhub serve``, LiteLLM's proxy or g4f's API, pinned to CPU 0 with
  ``taskset``. The peers run from their own virtual environments (``--peers DIR`` holding
  ``litellm/`` and ``g4f/``); a peer whose venv is absent is skipped.

Every gateway gets the same model names: ``m`` (short), ``ml`` (long), ``mp`` (paced),
``mh`` (hold). g4f's API takes one upstream URL per process, so it is restarted per workload.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
MODELS = {"m": "short", "ml": "long", "mp": "paced", "mh": "hold"}
LONG_CHUNKS = 20_000
PACED_CHUNKS, PACED_DELAY = 200, 0.020
# The 1,000 open streams: 100 chunks 100 ms apart (10 tokens/s each, 10 s per stream),
# 10,000 chunks/s through the gateway in all.
HOLD_CHUNKS, HOLD_DELAY = 100, 0.100
GATEWAY_CPU, CLIENT_CPU = 0, 1
LITELLM_KEY = "sk-bench-master"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _raise_fd_limit() -> None:
    # 1,000 client connections plus 1,000 upstream ones: above the usual soft limit of 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _pinned(cpu: int) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu)] if taskset and (os.cpu_count() or 1) > 1 else []


@dataclass
class Upstreams:
    """The four fakes, in a child process; ``urls[name]`` is each one's ``/v1`` base URL."""

    urls: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Upstreams:
        self._process = subprocess.Popen(
            [*_pinned(CLIENT_CPU), sys.executable, "-m", "tests.benchmarks.gateway_peers"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_raise_fd_limit,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the upstream process did not start")
        self.urls = json.loads(line)
        return self

    def __exit__(self, *exc_info: object) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serve_upstreams() -> None:
    _raise_fd_limit()
    from provhub.testing import Behaviour, FakeUpstream

    behaviours = {
        "short": Behaviour(),
        "long": Behaviour(chunks=LONG_CHUNKS),
        "paced": Behaviour(chunks=PACED_CHUNKS, chunk_delay=PACED_DELAY),
        "hold": Behaviour(chunks=HOLD_CHUNKS, chunk_delay=HOLD_DELAY),
    }
    fakes = {name: FakeUpstream(record=False, default=b) for name, b in behaviours.items()}
    for fake in fakes.values():
        fake.start()
    try:
        print(json.dumps({name: f.base_url for name, f in fakes.items()}), flush=True)
        sys.stdin.read()
    finally:
        for fake in fakes.values():
            fake.stop()


class Gateway:
    """One gateway process serving ``MODELS`` in front of ``Upstreams``."""

    name = "?"
    headers: dict[str, str] = {}  # noqa: RUF012 - per-class constant
    probe_path = "/"

    def __init__(self, upstreams: Upstreams, peers: Path) -> None:
        self.upstreams = upstreams
        self.peers = peers
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix=f"provhub-bench-{self.name}-"))
        self._log = (self._dir / "server.log").open("wb")

    @classmethod
    def available(cls, peers: Path) -> bool:
        return True

    def command(self, workload: str) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self, workload: str = "m") -> None:
        """Start (or restart, for a gateway bound to one upstream) and wait until ready."""
        self.stop()
        argv, env = self.command(workload)
        self.process = subprocess.Popen(
            [*_pinned(GATEWAY_CPU), *argv],
            cwd=self._dir,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_fd_limit,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early: {self._keep_log()}")
            try:
                requests.get(f"http://127.0.0.1:{self.port}{self.probe_path}", timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready in 180 s: {self._keep_log()}")

    def _keep_log(self) -> str:
        """Copy the server's log next to the results (its folder is removed on close)."""
        kept = REPO / "tests" / "benchmarks" / "results" / f"{self.name}-server.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        self._log.flush()
        shutil.copyfile(self._dir / "server.log", kept)
        return f"see {kept}"

    def needs_restart(self, workload: str) -> bool:
        return False

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def rss_bytes(self) -> int:
        """Resident memory of the gateway and its child processes."""
        import psutil

        if self.process is None:
            return 0
        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs if p.is_running())
        except psutil.Error:
            return 0

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the gateway and its children."""
        import psutil

        if self.process is None:
            return 0.0
        try:
            root = psutil.Process(self.process.pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
            return total
        except psutil.Error:
            return 0.0


class Provhub(Gateway):
    """``provhub serve`` from this checkout (the running interpreter's environment)."""

    name = "provhub"
    probe_path = "/healthz"

    def command(self, workload: str) -> tuple[list[str], dict[str, str]]:
        tables = [
            "[providers.Lockchat]\nenabled = false\n",
            "[router]\nretries = 0\n",
        ]
        for model, upstream in MODELS.items():
            tables.append(
                f'[providers.{upstream}]\ntype = "openai-compatible"\n'
                f'base_url = "{self.upstreams.urls[upstream]}"\nmodels = ["{model}"]\n'
            )
        config = self._dir / "provhub.toml"
        config.write_text("\n".join(tables), encoding="utf-8")
        argv = [sys.executable, "-m", "provhub", "serve", "--config", str(config)]
        return [*argv, "--port", str(self.port)], {"PROVHUB_PLUGINS": ""}


class LiteLLM(Gateway):
    """LiteLLM's proxy 1.110 (``PEERS/litellm``), no database, callbacks off."""

    name = "litellm"
    headers = {"Authorization": f"Bearer {LITELLM_KEY}"}  # noqa: RUF012
    probe_path = "/health/liveliness"

    @classmethod
    def available(cls, peers: Path) -> bool:
        return (peers / "litellm" / "bin" / "litellm").exists()

    def command(self, workload: str) -> tuple[list[str], dict[str, str]]:
        models = "\n".join(
            f"  - model_name: {model}\n    litellm_params:\n      model: openai/bench-{model}\n"
            f"      api_base: {self.upstreams.urls[upstream]}\n      api_key: sk-dummy-upstream"
            for model, upstream in MODELS.items()
        )
        # The settings of the shared litellm-proxy.yaml, one model per upstream.
        config = self._dir / "litellm.yaml"
        config.write_text(
            f"model_list:\n{models}\n"
            "litellm_settings:\n  callbacks: []\n  success_callback: []\n"
            "  failure_callback: []\n  turn_off_message_logging: true\n  set_verbose: false\n"
            "  json_logs: false\n  request_timeout: 120\n  num_retries: 0\n"
            "router_settings:\n  num_retries: 0\n"
            f"general_settings:\n  master_key: {LITELLM_KEY}\n  disable_spend_logs: true\n"
            "  disable_error_logs: true\n  background_health_checks: false\n"
            "  store_model_in_db: false\n  disable_reset_budget: true\n",
            encoding="utf-8",
        )
        env = {
            "LITELLM_TELEMETRY_DISABLED": "true",
            "LITELLM_OFFLINE_MODE": "true",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MODE": "PRODUCTION",
        }
        binary = str(self.peers / "litellm" / "bin" / "litellm")
        return [
            binary,
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ], env


class G4F(Gateway):
    """g4f 8.8.6's API (``PEERS/g4f``); one upstream per process, restarted per workload."""

    name = "g4f"
    probe_path = "/v1/models"

    def __init__(self, upstreams: Upstreams, peers: Path) -> None:
        super().__init__(upstreams, peers)
        self._workload: str | None = None

    @classmethod
    def available(cls, peers: Path) -> bool:
        return (peers / "g4f" / "bin" / "g4f").exists()

    def needs_restart(self, workload: str) -> bool:
        return workload != self._workload

    def command(self, workload: str) -> tuple[list[str], dict[str, str]]:
        self._workload = workload
        upstream = self.upstreams.urls[MODELS[workload]]
        # Offline, g4f fetches a providers list from its website at import: pre-fill its
        # cache with one entry for the local upstream (so nothing leaves the machine).
        cache = self._dir / "cache"
        day = cache / ".models" / datetime.date.today().strftime("%Y-%m-%d")
        day.mkdir(parents=True, exist_ok=True)
        (day / "providers.json").write_text(
            json.dumps(
                {"providers": {"default": {"baseUrl": upstream}}, "defaultModels": {"default": "m"}}
            ),
            encoding="utf-8",
        )
        binary = str(self.peers / "g4f" / "bin" / "g4f")
        argv = [
            binary,
            "api",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--no-gui",
            "--provider",
            upstream,
            "--model",
            workload,
            "--ignore-cookie-files",
            "--no-access-log",
            "--disable-pa-auto-download",
        ]
        return argv, {"G4F_CACHE_DIR": str(cache)}


GATEWAYS: tuple[type[Gateway], ...] = (Provhub, LiteLLM, G4F)


def describe_versions(peers: Path) -> dict[str, Any]:
    """Versions of the gateways' packages, read from their venvs."""
    out: dict[str, Any] = {}
    for dist, venv in (("litellm", "litellm"), ("g4f", "g4f")):
        found = list((peers / venv).glob(f"lib/python*/site-packages/{dist}-*.dist-info"))
        out[dist] = found[0].name.split("-")[1] if found else None
    return out


if __name__ == "__main__":
    _serve_upstreams()
