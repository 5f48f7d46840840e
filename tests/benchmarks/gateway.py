"""The gateway benchmark: ``provhub serve`` beside LiteLLM's proxy and g4f's API, one run.

Run from the repository root (needs the ``server`` and ``bench`` extras)::

    python -m tests.benchmarks.gateway --peers DIR      # DIR/litellm and DIR/g4f are venvs
    python -m tests.benchmarks.gateway --quick          # shorter, provhub only if no peers

Every gateway runs pinned to CPU 0 (``taskset -c 0``); this process (the load generator,
asyncio with raw keep-alive connections) and the fake upstreams run on CPU 1. All gateways
serve the same loopback upstreams. Workloads, each against every gateway in turn, interleaved
over ``--rounds``:

* requests/s with 1, 16 and 64 concurrent clients (non-streamed three-token answers);
* added latency p50/p99 at 1 client over calling the upstream directly (same client);
* chunks/s of one 20,000-chunk stream;
* 256 paced streams (200 chunks 20 ms apart) opened at once: p50/p99/max duration
  against the ideal 4.04 s (what the upstream itself takes);
* 1,000 streams open at once (100 chunks 100 ms apart each, 10,000 chunks/s in all):
  peak RSS, and the latency of a cheap probe request every 50 ms while they run (the
  server's event-loop lag as a client sees it, idle probe latency subtracted).

Writes ``tests/benchmarks/results/gateway.json`` and ``docs/img/gateway.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .gateway_peers import (
    CLIENT_CPU,
    GATEWAYS,
    LONG_CHUNKS,
    REPO,
    Gateway,
    Upstreams,
    describe_versions,
)
from .loadgen import Connection, Reply, prepare

RESULTS = Path(__file__).resolve().parent / "results"
IMAGES = REPO / "docs" / "img"
HOST = "127.0.0.1"
MESSAGES = [{"role": "user", "content": "Say hello"}]
GOALS = {
    "added_p50_ms": 1.0,
    "rps_vs_litellm": 10.0,
    "chunks_vs_peers": 20.0,
    "paced_p99_vs_ideal": 1.25,
    "hold_rss_mib": 300.0,
    "hold_lag_p99_ms": 50.0,
}


def _body(model: str, stream: bool) -> bytes:
    return json.dumps({"model": model, "messages": MESSAGES, "stream": stream}).encode()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Target:
    """Where requests go: a gateway (path under /v1) or the upstream itself."""

    def __init__(self, port: int, prefix: str, headers: dict[str, str]) -> None:
        self.port = port
        self.prefix = prefix
        self.headers = headers

    @classmethod
    def of(cls, gateway: Gateway) -> Target:
        return cls(gateway.port, "/v1", gateway.headers)

    @classmethod
    def upstream(cls, url: str) -> Target:
        # http://127.0.0.1:PORT/v1
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        return cls(port, "/v1", {})

    def chat(self, model: str, stream: bool) -> bytes:
        return prepare(
            HOST, self.port, self.prefix + "/chat/completions", _body(model, stream), self.headers
        )


async def _connections(target: Target, n: int) -> list[Connection]:
    return list(await asyncio.gather(*(Connection.open(HOST, target.port) for _ in range(n))))


async def _check(reply: Reply, what: str) -> None:
    if reply.status != 200:
        raise RuntimeError(f"{what}: HTTP {reply.status}")


# -- workloads ----------------------------------------------------------------------------


async def requests_per_second(target: Target, clients: int, seconds: float) -> dict[str, Any]:
    raw = target.chat("m", False)
    connections = await _connections(target, clients)
    done = 0
    errors: dict[int, int] = {}
    stop = time.perf_counter() + seconds

    async def client(connection: Connection) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            reply = await connection.request(raw)
            if reply.status == 200:
                done += 1
            else:
                errors[reply.status] = errors.get(reply.status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return {"rps": done / elapsed, "errors": errors}


async def latencies(target: Target, count: int) -> list[float]:
    raw = target.chat("m", False)
    (connection,) = await _connections(target, 1)
    out = []
    for _ in range(count):
        started = time.perf_counter()
        reply = await connection.request(raw)
        out.append(time.perf_counter() - started)
        await _check(reply, "latency")
    connection.close()
    return out


async def long_stream(target: Target) -> dict[str, float]:
    raw = target.chat("ml", True)
    (connection,) = await _connections(target, 1)
    started = time.perf_counter()
    reply = await connection.request(raw)
    elapsed = reply.ended - started
    connection.close()
    await _check(reply, "long stream")
    if reply.events < LONG_CHUNKS:
        raise RuntimeError(f"long stream: {reply.events} events, expected {LONG_CHUNKS}+")
    return {"chunks_per_s": LONG_CHUNKS / elapsed, "seconds": elapsed, "events": reply.events}


async def many_streams(
    target: Target,
    model: str,
    count: int,
    limit: float,
    probe: tuple[int, str] | None = None,
    sample_rss: Any = None,
) -> dict[str, Any]:
    """Open ``count`` streams at once; durations, and probe latencies/RSS while they run."""
    raw = target.chat(model, True)
    connections = await _connections(target, count)
    durations: list[float] = []
    failed = 0
    running = True
    probes: list[float] = []
    rss: list[int] = []

    async def one(connection: Connection) -> None:
        nonlocal failed
        started = time.perf_counter()
        try:
            reply = await connection.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            failed += 1
            return
        if reply.status == 200:
            durations.append(reply.ended - started)
        else:
            failed += 1

    async def prober() -> None:
        assert probe is not None
        port, path = probe
        request = prepare(HOST, port, path, b"")
        connection = await Connection.open(HOST, port)
        while running:
            started = time.perf_counter()
            await connection.request(request)
            probes.append(time.perf_counter() - started)
            if sample_rss is not None:
                rss.append(sample_rss())
            await asyncio.sleep(0.05)
        connection.close()

    helper = asyncio.create_task(prober()) if probe is not None else None
    began = time.perf_counter()
    tasks = [asyncio.create_task(one(c)) for c in connections]
    _, pending = await asyncio.wait(tasks, timeout=limit)
    wall = time.perf_counter() - began
    for task in pending:
        task.cancel()
    running = False
    if helper is not None:
        await helper
    for connection in connections:
        connection.close()
    out: dict[str, Any] = {
        "completed": len(durations),
        "failed": failed,
        "unfinished": len(pending),
        "wall_s": wall,
        "p50_s": _pct(durations, 0.5),
        "p99_s": _pct(durations, 0.99) if not pending else float("inf"),
        "max_s": max(durations) if durations and not pending else float("inf"),
    }
    if probes:
        out["probe_ms"] = [p * 1000 for p in probes]
    if rss:
        out["rss_peak_mib"] = max(rss) / 2**20
    return out


async def idle_probe(port: int, path: str, count: int = 40) -> float:
    request = prepare(HOST, port, path, b"")
    connection = await Connection.open(HOST, port)
    values = []
    for _ in range(count):
        started = time.perf_counter()
        await connection.request(request)
        values.append(time.perf_counter() - started)
    connection.close()
    return statistics.median(values)


# -- the run ------------------------------------------------------------------------------


def _lag_path(gateway: Gateway) -> str:
    # A cheap request that the server answers itself on its event loop.
    return {"provhub": "/healthz", "litellm": "/health/liveliness"}.get(
        gateway.name, "/provhub-bench-probe"
    )


async def measure(
    gateway: Gateway, upstreams: Upstreams, settings: argparse.Namespace
) -> dict[str, Any]:
    target = Target.of(gateway)
    out: dict[str, Any] = {}
    if gateway.needs_restart("m"):
        gateway.start("m")
    for _ in range(2):  # warm-up: imports, pools, caches
        await requests_per_second(target, 4, 0.5)
    cpu_before = gateway.cpu_seconds()
    served = 0
    for clients in (1, 16, 64):
        result = await requests_per_second(target, clients, settings.seconds)
        out[f"rps_c{clients}"] = result["rps"]
        served += result["rps"] * settings.seconds
    out["cpu_ms_per_request"] = (gateway.cpu_seconds() - cpu_before) * 1000 / max(served, 1)
    direct = Target.upstream(upstreams.urls["short"])
    base, via = [], []
    for _ in range(settings.latency_rounds):  # interleaved: drift hits both alike
        base += await latencies(direct, settings.latency_requests)
        via += await latencies(target, settings.latency_requests)
    out["direct_p50_ms"] = _pct(base, 0.5) * 1000
    out["direct_p99_ms"] = _pct(base, 0.99) * 1000
    out["added_p50_ms"] = (_pct(via, 0.5) - _pct(base, 0.5)) * 1000
    out["added_p99_ms"] = (_pct(via, 0.99) - _pct(base, 0.99)) * 1000

    if gateway.needs_restart("ml"):
        gateway.start("ml")
    runs = [await long_stream(target) for _ in range(settings.stream_runs)]
    out["stream_chunks_per_s"] = max(r["chunks_per_s"] for r in runs)

    if gateway.needs_restart("mp"):
        gateway.start("mp")
    cpu = gateway.cpu_seconds()
    paced = await many_streams(target, "mp", settings.paced, settings.paced_limit)
    # Share of the gateway's core it used while the paced streams ran.
    paced["cpu_share"] = (gateway.cpu_seconds() - cpu) / paced["wall_s"]
    out["paced"] = paced

    if settings.hold:
        if gateway.needs_restart("mh"):
            gateway.start("mh")
        path = _lag_path(gateway)
        idle = await idle_probe(gateway.port, path)
        rss_start = gateway.rss_bytes() / 2**20
        cpu = gateway.cpu_seconds()
        hold = await many_streams(
            target,
            "mh",
            settings.hold,
            settings.hold_limit,
            probe=(gateway.port, path),
            sample_rss=gateway.rss_bytes,
        )
        lags = [max(0.0, p - idle * 1000) for p in hold.pop("probe_ms", [])]
        hold["lag_p50_ms"] = _pct(lags, 0.5)
        hold["lag_p99_ms"] = _pct(lags, 0.99)
        hold["rss_start_mib"] = rss_start
        hold["cpu_share"] = (gateway.cpu_seconds() - cpu) / hold["wall_s"]
        out["hold"] = hold
    return out


async def direct_figures(upstreams: Upstreams, settings: argparse.Namespace) -> dict[str, Any]:
    """The upstream itself through the same client: the ceiling and the ideal."""
    long_target = Target.upstream(upstreams.urls["long"])
    paced_target = Target.upstream(upstreams.urls["paced"])
    stream = max([(await long_stream(long_target))["chunks_per_s"] for _ in range(3)])
    rps = (await requests_per_second(Target.upstream(upstreams.urls["short"]), 1, 1.0))["rps"]
    paced = await many_streams(paced_target, "mp", settings.paced, settings.paced_limit)
    return {"stream_chunks_per_s": stream, "rps_c1": rps, "paced": paced}


def _median_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds (nested dicts element by element)."""
    first = rounds[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = _median_rounds([r[key] for r in rounds])
        elif isinstance(value, int | float):
            out[key] = statistics.median(r[key] for r in rounds)
        else:
            out[key] = value
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b or b != b or a != a:
        return None
    return a / b


def report(results: dict[str, Any]) -> list[str]:
    """The results table as markdown rows, with ratios and goal status."""
    g = results["gateways"]
    ph = g.get("provhub", {})
    lt = g.get("litellm")
    gf = g.get("g4f")
    ideal = results["ideal_paced_s"]
    rows = [
        "| figure | provhub | LiteLLM | g4f | provhub / LiteLLM | provhub / g4f | goal |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(value: Any, unit: str = "", digits: int = 0) -> str:
        if value is None:
            return "-"
        if value == float("inf"):
            return "did not finish"
        return f"{value:,.{digits}f}{unit}"

    def row(
        label: str, key: Any, unit: str = "", digits: int = 0, goal: str = "", better: str = "high"
    ) -> None:
        values = [key(x) if x else None for x in (ph, lt, gf)]
        ratios = []
        for peer in values[1:]:
            r = _ratio(values[0], peer) if better == "high" else _ratio(peer, values[0])
            ratios.append("-" if r is None else f"{r:.1f}x")
        rows.append(
            f"| {label} | {' | '.join(fmt(v, unit, digits) for v in values)} | "
            f"{' | '.join(ratios)} | {goal} |"
        )

    for c in (1, 16, 64):
        row(f"requests/s, {c} client(s)", lambda x, c=c: x.get(f"rps_c{c}"))
    row("gateway CPU per request", lambda x: x.get("cpu_ms_per_request"), " ms", 2, "", "low")
    row("added latency p50", lambda x: x.get("added_p50_ms"), " ms", 2, "<= 1 ms", "low")
    row("added latency p99", lambda x: x.get("added_p99_ms"), " ms", 2, "", "low")
    row("20,000-chunk stream, chunks/s", lambda x: x.get("stream_chunks_per_s"), "", 0, ">= 20x")
    row(
        f"256 paced streams, p99 (ideal {ideal:.2f} s)",
        lambda x: x["paced"]["p99_s"],
        " s",
        2,
        "<= 1.25x ideal",
        "low",
    )
    row("256 paced streams, max", lambda x: x["paced"]["max_s"], " s", 2, "", "low")
    row("256 paced streams, completed", lambda x: x["paced"]["completed"], "", 0, "")
    row(
        "256 paced streams, gateway CPU",
        lambda x: x["paced"]["cpu_share"] * 100,
        " %",
        0,
        "",
        "low",
    )
    if ph.get("hold"):
        row(
            "1,000 streams: peak RSS",
            lambda x: x.get("hold", {}).get("rss_peak_mib"),
            " MiB",
            0,
            "< 300 MiB",
            "low",
        )
        row(
            "1,000 streams: probe lag p99",
            lambda x: x.get("hold", {}).get("lag_p99_ms"),
            " ms",
            1,
            "< 50 ms",
            "low",
        )
        row("1,000 streams: completed", lambda x: x.get("hold", {}).get("completed"), "", 0, "")
        row(
            "1,000 streams: gateway CPU",
            lambda x: x.get("hold", {}).get("cpu_share", 0) * 100,
            " %",
            0,
            "",
            "low",
        )
    return rows


def goals(results: dict[str, Any]) -> dict[str, bool | None]:
    g = results["gateways"]
    ph = g["provhub"]
    lt = g.get("litellm")
    peers = [p for p in (lt, g.get("g4f")) if p]
    out: dict[str, bool | None] = {
        "added p50 <= 1 ms": ph["added_p50_ms"] <= GOALS["added_p50_ms"],
        "req/s >= 10x LiteLLM (every concurrency)": None
        if not lt
        else all(ph[f"rps_c{c}"] >= 10 * lt[f"rps_c{c}"] for c in (1, 16, 64)),
        "stream >= 20x peers' chunks/s": None
        if not peers
        else all(ph["stream_chunks_per_s"] >= 20 * p["stream_chunks_per_s"] for p in peers),
        "256 paced p99 <= 1.25x ideal": ph["paced"]["p99_s"]
        <= GOALS["paced_p99_vs_ideal"] * results["ideal_paced_s"],
    }
    if ph.get("hold"):
        out["1,000 streams RSS < 300 MiB"] = ph["hold"]["rss_peak_mib"] < GOALS["hold_rss_mib"]
        out["1,000 streams lag p99 < 50 ms"] = ph["hold"]["lag_p99_ms"] < GOALS["hold_lag_p99_ms"]
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = results["gateways"]
    names = [n for n in ("provhub", "litellm", "g4f") if n in g]
    colors = {"provhub": "tab:blue", "litellm": "tab:orange", "g4f": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    ax = axes[0]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [g[name][f"rps_c{c}"] for c in (1, 16, 64)]
        ax.bar([x + i * width for x in range(3)], values, width, label=name, color=colors[name])
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(3)], ["1", "16", "64"])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests/s (gateway on one core)")
    ax.set_yscale("log")
    ax.set_title("Requests per second")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(names, [g[n]["stream_chunks_per_s"] for n in names], color=[colors[n] for n in names])
    ax.set_yscale("log")
    ax.set_title("One 20,000-chunk stream: chunks/s")
    ax = axes[2]
    # A gateway whose streams did not all finish is drawn at the workload's time limit.
    limit = results["settings"]["paced_limit"]
    values = [min(g[n]["paced"]["p99_s"], limit) for n in names]
    ax.bar(names, values, color=[colors[n] for n in names])
    ax.axhline(results["ideal_paced_s"], color="gray", linestyle=":", label="ideal")
    ax.axhline(results["ideal_paced_s"] * 1.25, color="tab:red", linestyle=":", label="goal")
    ax.set_yscale("log")
    ax.set_title(f"256 paced streams: p99 duration (s, capped at {limit:g})")
    ax.legend(fontsize=8)
    machine = results["machine"]
    fig.text(0.01, 0.01, f"{machine['cpu']}; gateway pinned to one core", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


async def run(settings: argparse.Namespace) -> dict[str, Any]:
    peers = Path(settings.peers)
    chosen = [cls for cls in GATEWAYS if cls.name in settings.only]
    available = [cls for cls in chosen if cls.available(peers)]
    for cls in chosen:
        if cls not in available:
            print(f"skipping {cls.name}: no venv at {peers / cls.name}", file=sys.stderr)
    rounds: dict[str, list[dict[str, Any]]] = {cls.name: [] for cls in available}
    with Upstreams() as upstreams:
        direct = await direct_figures(upstreams, settings)
        gateways = [cls(upstreams, peers) for cls in available]
        try:
            for number in range(settings.rounds):
                for gateway in gateways:
                    print(f"round {number + 1}: {gateway.name}", file=sys.stderr, flush=True)
                    gateway.start("m")
                    try:
                        rounds[gateway.name].append(await measure(gateway, upstreams, settings))
                    finally:
                        gateway.stop()
        finally:
            for gateway in gateways:
                gateway.close()
    return {
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "peers": describe_versions(peers),
        },
        "settings": {k: v for k, v in vars(settings).items() if k != "peers"},
        "direct": direct,
        "ideal_paced_s": direct["paced"]["p50_s"],
        "gateways": {name: _median_rounds(rs) for name, rs in rounds.items() if rs},
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.gateway")
    parser.add_argument(
        "--peers",
        default=os.environ.get("PROVHUB_BENCH_PEERS", str(REPO.parent / "peers")),
        help="directory holding the peers' venvs (litellm/, g4f/); absent ones are skipped",
    )
    parser.add_argument("--only", default="provhub,litellm,g4f", type=lambda s: s.split(","))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="short run (smoke test)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per requests/s point")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--stream-runs", type=int, default=3)
    parser.add_argument("--paced", type=int, default=256)
    parser.add_argument("--paced-limit", type=float, default=120.0)
    parser.add_argument("--hold", type=int, default=1000, help="0 skips the 1,000-stream test")
    parser.add_argument("--hold-limit", type=float, default=60.0)
    settings = parser.parse_args(argv)
    if settings.quick:
        settings.rounds, settings.seconds = 1, 1.5
        settings.latency_requests, settings.latency_rounds, settings.stream_runs = 100, 1, 1
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = asyncio.run(run(settings))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print("\n".join(report(results)))
    print()
    for goal, ok in goals(results).items():
        print(f"  {goal}: {'-' if ok is None else 'met' if ok else 'MISSED'}")
    plot(results, IMAGES / "gateway.png")
    print(f"\nwrote {RESULTS / 'gateway.json'} and {IMAGES / 'gateway.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["main"]
