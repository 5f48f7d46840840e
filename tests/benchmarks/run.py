"""provhub's benchmark: one command, loopback only, every figure side by side with raw requests.

Run from the repository root (needs the ``bench`` extra)::

    python -m tests.benchmarks            # full run, about two to three minutes
    python -m tests.benchmarks --quick    # smoke run, well under a minute
    python -m tests.benchmarks --rounds 15 --profile

It prints the fake upstream's own capacity, then a table of results with ratios to
the raw baseline and the target status, writes ``tests/benchmarks/results/latest.json``
and renders the plots into ``docs/img/``. See ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .baseline import probe_upstream
from .events import Events
from .isolated import discovery_workload, import_workload, rss_workload
from .server import REPO, STREAM_CHUNKS, Upstreams
from .toolcalls import assembler_workload, toolcall_stream_workload
from .workloads import (
    Settings,
    astream_burst_workload,
    astream_workload,
    routing_workload,
    sequential_workload,
    stream_workload,
    threads_workload,
)

RESULTS = Path(__file__).resolve().parent / "results"
IMAGES = REPO / "docs" / "img"


@dataclass(frozen=True)
class Target:
    """One row of the results table."""

    workload: str
    provhub: str
    baseline: str
    ratio: str
    target: str
    ok: bool | None  # None: reported, no target

    @property
    def status(self) -> str:
        return "-" if self.ok is None else ("met" if self.ok else "MISSED")


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in ("provhub", "requests", "urllib3", "structlog", "pluggy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "versions": versions,
        "environment_variables": len(os.environ),
        "gil_switch_interval_ms": sys.getswitchinterval() * 1e3,
    }


def _settings(args: argparse.Namespace) -> tuple[Settings, dict[str, int]]:
    if args.quick:
        base = args.rounds or 3
        settings = Settings(
            rounds=base,
            sequential_rounds=2 * base,
            sequential_requests=50,
            thread_requests=10,
            burst=200,
            route_seconds=0.05,
        )
        other = {"import": base, "rss": 1, "discovery": 2}
    else:
        base = args.rounds or 9
        settings = Settings(
            rounds=base, sequential_rounds=2 * base + 3, sequential_requests=100, thread_requests=40
        )
        other = {"import": 2 * base, "rss": max(1, base // 3), "discovery": max(3, base // 2)}
    return settings, other


def _fmt(value: float, unit: str = "") -> str:
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _targets(r: dict[str, Any]) -> list[Target]:
    rows: list[Target] = []
    if "import" in r:
        imp = r["import"]["ms"]
        ratio = r["import"]["ratio"]
        rows.append(
            Target(
                "(a) import provhub",
                _fmt(imp["provhub"], "ms"),
                _fmt(imp["requests"], "ms") + " (import requests)",
                f"{ratio['provhub']:.2f}x",
                "<= 1.3x",
                ratio["provhub"] <= 1.3,
            )
        )
        rows.append(
            Target(
                "(a) import provhub; Hub()",
                _fmt(imp["provhub_hub"], "ms"),
                _fmt(imp["requests_session"], "ms") + " (requests.Session())",
                f"{ratio['provhub_hub']:.2f}x",
                "<= 1.3x",
                ratio["provhub_hub"] <= 1.3,
            )
        )
    if "sequential" in r:
        seq = r["sequential"]
        us = seq["us_per_request"]
        for key, label in (("off", "events off"), ("on", "JSON events on")):
            added = seq[f"added_us_events_{key}"]
            rows.append(
                Target(
                    f"(b) added per request, {label}",
                    f"{added:+.0f} us (median {_fmt(us[f'hub_events_{key}'], 'us')})",
                    _fmt(us["raw"], "us"),
                    f"{seq['ratio_to_raw'][f'hub_events_{key}']:.2f}x",
                    "<= +50 us",
                    added <= 50,
                )
            )
        rows.append(
            Target(
                "(b) of which JSON events (on - off)",
                f"{seq['events_cost_us']:+.0f} us",
                "-",
                "-",
                "-",
                None,
            )
        )
        machinery = seq["hub_without_io_us"]
        rows.append(
            Target(
                "(b) hub work per request, provider without I/O",
                f"{machinery['events_off']:.1f} us off / {machinery['events_on']:.1f} us on",
                "-",
                "-",
                "-",
                None,
            )
        )
        rows.append(
            Target(
                "(b) raw client with trust_env off",
                _fmt(us["raw_trust_env_off"], "us"),
                _fmt(us["raw"], "us"),
                f"{seq['ratio_to_raw']['raw_trust_env_off']:.2f}x",
                "-",
                None,
            )
        )
    if "stream" in r:
        st = r["stream"]
        for key, label in (
            ("hub_events_off", "Hub, events off"),
            ("hub_events_on", "Hub, JSON events on"),
            ("openai_compatible_direct", "OpenAICompatible direct"),
            ("lockchat_direct", "Lockchat direct"),
        ):
            rows.append(
                Target(
                    f"(c) stream chunks/s, {label}",
                    _fmt(st["chunks_per_s"][key]),
                    _fmt(st["chunks_per_s"]["raw"]),
                    f"{st['ratio_to_raw'][key]:.2f}x",
                    ">= 0.91x",
                    st["ratio_to_raw"][key] >= 0.91,
                )
            )
        direct = st["chunks_per_s"]["openai_compatible_direct"]
        on_vs_direct = st["hub_events_on_to_direct"]
        rows.append(
            Target(
                "(c) Hub + JSON events vs the same provider direct",
                _fmt(st["chunks_per_s"]["hub_events_on"]),
                _fmt(direct) + " (direct)",
                f"{on_vs_direct:.2f}x",
                ">= 0.91x",
                on_vs_direct >= 0.91,
            )
        )
        rows.append(
            Target(
                "(c) time to first token, Hub",
                _fmt(st["ttft_us"]["hub_events_off"], "us"),
                _fmt(st["ttft_us"]["raw"], "us"),
                f"{st['ttft_ratio_to_raw']['hub_events_off']:.2f}x",
                "-",
                None,
            )
        )
    if "threads" in r:
        th = r["threads"]
        for key, label in (("hub_events_off", "events off"), ("hub_events_on", "JSON events on")):
            rows.append(
                Target(
                    f"(d) 16 threads req/s, {label}",
                    _fmt(th["req_per_s"][key]),
                    _fmt(th["req_per_s"]["raw"]),
                    f"{th['ratio_to_raw'][key]:.2f}x",
                    ">= 0.9x",
                    th["ratio_to_raw"][key] >= 0.9,
                )
            )
    if "rss" in r:
        rss = r["rss"]
        for key, label in (("hub", "events off"), ("hub_events_on", "JSON events on")):
            rows.append(
                Target(
                    f"(e) peak RSS, {label}",
                    _fmt(rss["max_rss_mib"][key], "MiB"),
                    _fmt(rss["max_rss_mib"]["raw"], "MiB"),
                    f"{rss['ratio'][key]:.2f}x",
                    "<= 1.3x",
                    rss["ratio"][key] <= 1.3,
                )
            )
    if "routing" in r:
        for row in r["routing"]["rows"]:
            rows.append(
                Target(
                    f"(f) route, {row['providers']:,} providers (5 serve the model)",
                    _fmt(row["route_us"], "us"),
                    "-",
                    "-",
                    "<= 50 us" if row["providers"] == 10_000 else "-",
                    row["route_us"] <= 50 if row["providers"] == 10_000 else None,
                )
            )
        worst = r["routing"]["rows"][-1]
        rows.append(
            Target(
                f"(f) route, all {worst['providers']:,} serve the model",
                _fmt(worst["worst_route_us"], "us"),
                "-",
                "-",
                "-",
                None,
            )
        )
    if "discovery" in r:
        for row in r["discovery"]["rows"]:
            n = row["generated_plugins"]
            rows.append(
                Target(
                    f"(g) discovery, {n} plugin dists + shipped",
                    _fmt(row["discovery_ms"], "ms"),
                    "-",
                    "-",
                    "<= 30 ms" if n == 50 else "-",
                    row["discovery_ms"] <= 30 if n == 50 else None,
                )
            )
    if "astream" in r:
        aio = r["astream"]
        for key, label in (
            ("astream_events_off", "events off"),
            ("astream_events_on", "events on"),
        ):
            lag = aio["loop_lag"][key]
            rows.append(
                Target(
                    f"(h) astream chunks/s, {label}",
                    _fmt(aio["chunks_per_s"][key])
                    + f" (loop lag p99 {lag['p99_ms']:.2f} / max {lag['max_ms']:.1f} ms)",
                    _fmt(aio["chunks_per_s"]["raw"]),
                    f"{aio['ratio_to_raw'][key]:.2f}x",
                    "-",
                    None,
                )
            )
        for key, label in (
            ("astream_events_off", "events off"),
            ("astream_events_on", "events on"),
        ):
            rows.append(
                Target(
                    f"(h) astream chunks/s vs the sync Hub stream, {label}",
                    _fmt(aio["chunks_per_s"][key]),
                    _fmt(aio["chunks_per_s"]["hub_sync"]) + " (hub.stream)",
                    f"{aio['ratio_to_sync_hub'][key]:.2f}x",
                    ">= 0.8x",
                    aio["ratio_to_sync_hub"][key] >= 0.8,
                )
            )
        for key, label in (
            ("paced_astream", "astream at 500 tokens/s"),
            ("paced_sync_stream_in_coroutine", "sync stream inside a coroutine"),
            ("idle_loop", "idle loop (probe floor)"),
        ):
            lag = aio["loop_lag"][key]
            rows.append(
                Target(
                    f"(h) loop lag, {label}",
                    f"p50 {lag['p50_ms']:.2f} / p99 {lag['p99_ms']:.2f} / "
                    f"max {lag['max_ms']:.1f} ms",
                    "-",
                    "-",
                    "-",
                    None,
                )
            )
    burst = r.get("astream_burst")
    if burst is not None:
        for key, label in (("at_once", "started at once"), ("apart_5ms", "started 5 ms apart")):
            lag = burst["loop_lag"][key]
            ok = lag["p99_ms"] < 20 and lag["max_ms"] < 100
            rows.append(
                Target(
                    f"(j) {burst['streams']} astreams {label}: loop lag",
                    f"p99 {lag['p99_ms']:.2f} / max {lag['max_ms']:.1f} ms "
                    f"(all complete in {burst['seconds'][key]:.2f} s)",
                    "-",
                    "-",
                    "p99 < 20, max < 100 ms",
                    ok,
                )
            )
    rows.extend(_toolcall_targets(r))
    return rows


def _toolcall_targets(r: dict[str, Any]) -> list[Target]:
    """(i) tool-call assembly: per-fragment cost at each size, and its growth."""
    rows: list[Target] = []
    if "toolcall_assembler" not in r or "toolcall_stream" not in r:
        return rows  # a results file from before these workloads
    assembler = r["toolcall_assembler"]
    labels = {
        "openai": "OpenAI framing",
        "repeated_id_no_index": "id repeated, no index",
        "no_id_no_index_repeated_name": "no id/index, name repeated",
    }
    for framing, label in labels.items():
        sizes = " / ".join(f"{row['ns_per_fragment'][framing]:.0f}" for row in assembler["rows"])
        growth = assembler["growth_largest_to_smallest"][framing]
        rows.append(
            Target(
                f"(i) assembler ns/fragment at 1k/10k/100k, {label}",
                sizes,
                "-",
                f"{growth:.2f}x (100k vs 1k)",
                "<= 1.5x (linear)",
                growth <= 1.5,
            )
        )
    stream = r["toolcall_stream"]
    for row in stream["rows"]:
        us = row["us_per_fragment"]
        rows.append(
            Target(
                f"(i) hub tool-call stream, {row['fragments']:,} fragments",
                _fmt(us["hub"], "us/fragment"),
                _fmt(us["raw"], "us/fragment"),
                f"{row['ratio_hub_to_raw_time']:.2f}x time",
                "-",
                None,
            )
        )
    growth = stream["growth_largest_to_smallest"]
    # The raw loop's own growth is the machine's (load drifts between sizes): the hub's
    # growth over the raw loop's is the figure that machine noise cancels out of.
    relative = growth["hub"] / growth["raw"]
    rows.append(
        Target(
            "(i) hub tool-call stream, per-fragment growth 100k vs 1k",
            f"{growth['hub']:.2f}x",
            f"{growth['raw']:.2f}x",
            f"{relative:.2f}x (hub/raw)",
            "<= 1.5x (linear)",
            relative <= 1.5,
        )
    )
    return rows


def _table(rows: list[Target]) -> str:
    head = ("workload", "provhub", "raw baseline", "ratio", "target", "status")
    cells = [head]
    cells += [(t.workload, t.provhub, t.baseline, t.ratio, t.target, t.status) for t in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(rows: list[Target]) -> str:
    out = ["| workload | provhub | raw baseline | ratio | target | status |", "|---" * 6 + "|"]
    for t in rows:
        out.append(
            f"| {t.workload} | {t.provhub} | {t.baseline} | {t.ratio} | {t.target} | {t.status} |"
        )
    return "\n".join(out)


def _step(name: str) -> float:
    print(f"... {name}", file=sys.stderr, flush=True)
    return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    """Run every workload; print the table; write JSON and plots."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profiles too")
    parser.add_argument("--no-plots", action="store_true", help="skip rendering PNGs")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated workloads to run (e.g. sequential,stream,threads,astream)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: print the table and redraw the plots of --output",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        return _report(json.loads(args.output.read_text(encoding="utf-8")), args)
    settings, other = _settings(args)
    began = time.perf_counter()
    results: dict[str, Any] = {
        "command": "python -m tests.benchmarks " + " ".join(argv or sys.argv[1:]),
        "quick": args.quick,
        "settings": asdict(settings) | {"other_rounds": other},
        "machine": _machine(),
    }
    timings: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="provhub-bench-") as tmp,
        Upstreams() as upstreams,
    ):
        events = Events(Path(tmp) / "events.jsonl")
        started = _step("fake upstream capacity (raw socket)")
        capacity = probe_upstream(upstreams.short_url, upstreams.stream_url, STREAM_CHUNKS)
        results["upstream"] = capacity
        print(
            "fake upstream capacity (raw-socket client, separate process): "
            f"{capacity['sequential_req_per_s']:,.0f} sequential req/s "
            f"({capacity['sequential_us_per_req']:.0f} us each), "
            f"{capacity['stream_chunks_per_s']:,.0f} streamed chunks/s",
            flush=True,
        )
        work: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("import", lambda: import_workload(other["import"])),
            ("sequential", lambda: sequential_workload(upstreams.short_url, events, settings)),
            (
                "stream",
                lambda: stream_workload(upstreams.stream_url, STREAM_CHUNKS, events, settings),
            ),
            ("threads", lambda: threads_workload(upstreams.short_url, events, settings)),
            (
                "rss",
                lambda: rss_workload(upstreams.short_url, upstreams.stream_url, other["rss"]),
            ),
            ("routing", lambda: routing_workload(settings)),
            ("discovery", lambda: discovery_workload((0, 1, 50), other["discovery"])),
            (
                "astream",
                lambda: astream_workload(
                    upstreams.stream_url, STREAM_CHUNKS, upstreams.paced_url, events, settings
                ),
            ),
            ("astream_burst", lambda: astream_burst_workload(upstreams.burst_url, settings)),
            ("toolcall_assembler", lambda: assembler_workload(settings)),
            ("toolcall_stream", lambda: toolcall_stream_workload(upstreams.tool_urls, settings)),
        ]
        only = {name for name in args.only.split(",") if name}
        for name, run in work:
            if only and name not in only:
                continue
            started = _step(name)
            results[name] = run()
            timings[name] = time.perf_counter() - started
        if args.profile:
            from .profiles import profile_all

            started = _step("profiles (pyinstrument)")
            results["profiles"] = profile_all(upstreams, events, RESULTS)
            timings["profiles"] = time.perf_counter() - started
        events.close()
    results["machine"]["load_average_end"] = os.getloadavg()
    results["seconds"] = timings | {"total": time.perf_counter() - began}
    return _report(results, args)


def _report(results: dict[str, Any], args: argparse.Namespace) -> int:
    """Write the JSON and Markdown results, draw the plots, print the table."""
    rows = _targets(results)
    results["table"] = [asdict(t) | {"status": t.status} for t in rows]
    results["table_markdown"] = _markdown(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    # The same table as Markdown, ready for docs/performance.md.
    args.output.with_suffix(".md").write_text(results["table_markdown"] + "\n", encoding="utf-8")
    if not args.no_plots:
        from .plots import render

        render(results, IMAGES)
    print()
    print(_table(rows))
    print()
    missed = [t.workload for t in rows if t.ok is False]
    print(f"{len(rows)} rows, {sum(t.ok is True for t in rows)} targets met, {len(missed)} missed")
    print(f"results: {args.output}  ({results['seconds']['total']:.0f} s)")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
