"""Workloads that need a fresh interpreter: import time, peak RSS, plugin discovery.

Each measurement is one new ``python`` process, started from an empty temporary
directory with no provhub config file in reach, so nothing is cached in the
process and nothing but the client's own work is counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .server import REPO
from .workloads import interleave, median

__all__ = ["discovery_workload", "import_workload", "make_plugins", "rss_workload"]

# Timed inside the child so interpreter start-up (the same for every client) is left out.
_IMPORT_CODE = """\
import time
started = time.perf_counter()
{statement}
print(time.perf_counter() - started)
"""

IMPORT_CLIENTS = {
    "requests": "import requests",
    "provhub": "import provhub",
    "requests_session": "import requests; requests.Session()",
    "provhub_hub": "import provhub; provhub.Hub()",
}


def _environment(home: Path, pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
    env["XDG_CONFIG_HOME"] = str(home)  # no user config file can be found
    env.pop("PYTHONPATH", None)
    # Installed packages come with .pyc files; with this variable set (as in some CI and
    # container images) every edited module would be compiled from source in every child,
    # which measures the compiler, not the import. The warm-up runs write the .pyc files.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def import_workload(rounds: int) -> dict[str, Any]:
    """Seconds to import (and set up) each client in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="provhub-bench-") as tmp:
        where = Path(tmp)
        env = _environment(where)

        def block(statement: str) -> Any:
            code = _IMPORT_CODE.format(statement=statement)
            return lambda: float(_run(["-c", code], where, env)) * 1e3

        for statement in IMPORT_CLIENTS.values():  # warm the OS file cache and .pyc files
            block(statement)()
        results = interleave({k: block(v) for k, v in IMPORT_CLIENTS.items()}, rounds)
        # Where the time goes, for the docs: -X importtime of the heaviest client.
        profile = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", IMPORT_CLIENTS["provhub_hub"]],
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    ms = {name: median(values) for name, values in results.items()}
    return {
        "ms": ms,
        "rounds_ms": results,
        "ratio": {
            "provhub": ms["provhub"] / ms["requests"],
            "provhub_hub": ms["provhub_hub"] / ms["requests_session"],
        },
        "modules_imported": {
            name: _module_count(statement, env) for name, statement in IMPORT_CLIENTS.items()
        },
        "top_imports_provhub_hub": _top_imports(profile, 12),
    }


def _module_count(statement: str, env: dict[str, str]) -> int:
    code = f"import sys; old = set(sys.modules); {statement}; print(len(set(sys.modules) - old))"
    with tempfile.TemporaryDirectory(prefix="provhub-bench-") as tmp:
        return int(_run(["-c", code], Path(tmp), env))


def _top_imports(importtime: str, n: int) -> list[tuple[str, float]]:
    """The ``n`` top-level packages with the largest cumulative import time (ms)."""
    rows = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, raw_name = line[12:].split("|")
        cumulative = cumulative.strip()
        # Nested imports are indented two spaces per level after the one separator space.
        if cumulative.isdigit() and len(raw_name) - len(raw_name.lstrip()) == 1:
            rows.append((raw_name.strip(), int(cumulative) / 1e3))
    rows.sort(key=lambda row: -row[1])
    return rows[:n]


def rss_workload(short_url: str, stream_url: str, rounds: int) -> dict[str, Any]:
    """Peak RSS of each client after the same work, each in its own process."""
    with tempfile.TemporaryDirectory(prefix="provhub-bench-") as tmp:
        env = _environment(Path(tmp), pythonpath=str(REPO))

        def block(kind: str) -> Any:
            def run() -> dict[str, Any]:
                out = _run(["-m", "tests.benchmarks.child", kind, short_url, stream_url], REPO, env)
                return json.loads(out)  # type: ignore[no-any-return]

            return run

        results = interleave({k: block(k) for k in ("raw", "hub", "hub_events_on")}, rounds)
    tokens = {k: {r["tokens"] for r in v} for k, v in results.items()}
    if len({frozenset(t) for t in tokens.values()}) != 1:
        raise RuntimeError(f"RSS clients streamed different token counts: {tokens}")
    mib = {k: median(r["max_rss_kib"] for r in v) / 1024 for k, v in results.items()}
    return {
        "max_rss_mib": mib,
        "ratio": {k: v / mib["raw"] for k, v in mib.items()},
        "work": "200 sequential requests, then 3 streams of 20,000 chunks",
    }


_PLUGIN_MODULE = '''\
"""Generated benchmark plugin {i}."""

import provhub


class BenchProvider{i}:
    name = "benchplug{i}"
    url = "http://127.0.0.1:9"
    models = ["bench-model-{i}"]
    supports_stream = True

    @staticmethod
    def create_completion(model, messages, stream, **kwargs):
        yield "ok"


@provhub.hookimpl
def provhub_register_providers(register):
    register(BenchProvider{i})
'''


def make_plugins(root: Path, count: int) -> Path:
    """Write ``count`` real plugin distributions (dist-info + module) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        module = f"benchplug_{i}"
        (root / f"{module}.py").write_text(_PLUGIN_MODULE.format(i=i), encoding="utf-8")
        info = root / f"{module}-1.0.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: benchplug-{i}\nVersion: 1.0\n", encoding="utf-8"
        )
        (info / "entry_points.txt").write_text(
            f"[provhub]\n{module} = {module}\n", encoding="utf-8"
        )
        (info / "RECORD").write_text(
            f"{module}.py,,\n{info.name}/METADATA,,\n{info.name}/entry_points.txt,,\n"
            f"{info.name}/RECORD,,\n",
            encoding="utf-8",
        )
    return root


_DISCOVERY_CODE = """\
import json, time
import provhub
config = provhub.Config()
provhub.Hub(config, load_plugins=False)  # imports the hub's modules
started = time.perf_counter()
provhub.Hub(config, load_plugins=False)
without = time.perf_counter() - started
started = time.perf_counter()
hub = provhub.Hub(config, load_plugins=True)
with_plugins = time.perf_counter() - started
loaded = [p.name for p in hub.plugins if p.status == "loaded"]
print(json.dumps({"without": without, "with": with_plugins, "loaded": len(loaded),
                  "providers": len(hub.providers())}))
"""


def discovery_workload(counts: tuple[int, ...], rounds: int) -> dict[str, Any]:
    """Hub(load_plugins=True) minus Hub(load_plugins=False), first discovery in a process.

    ``counts`` are numbers of generated plugin distributions, installed on top of the
    shipped ``provhub`` distribution (whose entry point is always there).
    """
    with tempfile.TemporaryDirectory(prefix="provhub-bench-") as tmp:
        where = Path(tmp)

        def block(count: int) -> Any:
            path = make_plugins(where / f"plugins-{count}", count)
            env = _environment(where, pythonpath=str(path))

            def run() -> dict[str, Any]:
                found = json.loads(_run(["-c", _DISCOVERY_CODE], where, env))
                if found["loaded"] != count + 1:
                    raise RuntimeError(f"{found['loaded']} plugins loaded, expected {count + 1}")
                return found  # type: ignore[no-any-return]

            run()  # writes the generated modules' .pyc files, as any installed package has
            return run

        results = interleave({str(count): block(count) for count in counts}, rounds)
    rows = []
    for count in counts:
        values = results[str(count)]
        rows.append(
            {
                "generated_plugins": count,
                "distributions_with_entry_points": count + 1,
                "discovery_ms": median((r["with"] - r["without"]) * 1e3 for r in values),
                "hub_without_plugins_ms": median(r["without"] * 1e3 for r in values),
                "hub_with_plugins_ms": median(r["with"] * 1e3 for r in values),
                "providers": values[0]["providers"],
            }
        )
    return {"rows": rows}
