"""PNG plots of a benchmark run for docs/performance.md (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["render"]


def render(results: dict[str, Any], out: Path) -> list[Path]:
    """Draw routing.png, stream.png, requests.png and toolcalls.png into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    machine = results["machine"]
    note = f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}"
    paths = []

    # Routing time against provider count.
    rows = results["routing"]["rows"]
    counts = [r["providers"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(counts, [r["route_us"] for r in rows], "o-", label="hub.route: 5 of N serve the model")
    ax.plot(counts, [r["plan_us"] for r in rows], "s--", label="Router.plan: 5 of N serve it")
    ax.plot(counts, [r["worst_route_us"] for r in rows], "^-", label="hub.route: all N serve it")
    ax.axhline(50, color="tab:red", linestyle=":", label="target: 50 µs at 10,000")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("registered providers")
    ax.set_ylabel("µs per routing decision")
    ax.set_title("Routing decision time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, note, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    paths.append(out / "routing.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Chunks per second delivered to the caller, one 20,000-chunk stream.
    stream = results["stream"]
    aio = results["astream"]
    labels = [
        ("raw requests loop", stream["chunks_per_s"]["raw"], 1.0),
        ("Hub.stream, events off", *_pair(stream, "hub_events_off")),
        ("Hub.stream, JSON events on", *_pair(stream, "hub_events_on")),
        ("OpenAICompatible direct", *_pair(stream, "openai_compatible_direct")),
        ("Lockchat direct", *_pair(stream, "lockchat_direct")),
        ("Hub.astream, events off", *_pair(aio, "astream_events_off")),
        ("Hub.astream, JSON events on", *_pair(aio, "astream_events_on")),
    ]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = [name for name, _, _ in labels][::-1]
    rates = [rate / 1e3 for _, rate, _ in labels][::-1]
    colors = ["tab:gray" if name.startswith("raw") else "tab:blue" for name in names]
    bars = ax.barh(names, rates, color=colors)
    for bar, (_, _, ratio) in zip(bars, labels[::-1], strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {ratio:.2f}x",
            va="center",
            fontsize=8,
        )
    ax.axvline(
        0.91 * stream["chunks_per_s"]["raw"] / 1e3,
        color="tab:red",
        linestyle=":",
        label="target: 0.91x raw",
    )
    ax.set_xlabel("thousand chunks/s delivered to the caller (higher is better)")
    ax.set_title(f"One {stream['chunks']:,}-chunk stream (ratio to the raw loop of its run)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, max(rates) * 1.18)
    fig.text(0.01, 0.01, note, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    paths.append(out / "stream.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Sequential latency and threaded throughput.
    seq = results["sequential"]["us_per_request"]
    th = results["threads"]["req_per_s"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.8))
    seq_names = ["raw", "raw_trust_env_off", "hub_events_off", "hub_events_on"]
    seq_labels = ["raw", "raw,\ntrust_env off", "Hub,\nevents off", "Hub,\nevents on"]
    left.bar(seq_labels, [seq[n] for n in seq_names], color=_colors(seq_names))
    left.set_ylabel("µs per request (lower is better)")
    left.set_title("Sequential non-streamed requests", fontsize=10)
    left.tick_params(axis="x", labelsize=8)
    th_names = ["raw", "hub_events_off", "hub_events_on"]
    right.bar(
        ["raw", "Hub,\nevents off", "Hub,\nevents on"],
        [th[n] for n in th_names],
        color=_colors(th_names),
    )
    right.axhline(0.9 * th["raw"], color="tab:red", linestyle=":", label="target: 0.9x raw")
    right.set_ylabel("requests/s (higher is better)")
    right.set_title("16 threads, one shared client", fontsize=10)
    right.tick_params(axis="x", labelsize=8)
    right.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, note, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    paths.append(out / "requests.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if "toolcall_assembler" in results:
        paths.append(_toolcalls(plt, results, out, note))
    return paths


def _toolcalls(plt: Any, results: dict[str, Any], out: Path, note: str) -> Path:
    """Time per tool-call fragment against the number of fragments (flat = linear)."""
    assembler = results["toolcall_assembler"]["rows"]
    stream = results["toolcall_stream"]["rows"]
    sizes = [row["fragments"] for row in assembler]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.8))
    for framing, label, style in (
        ("openai", "OpenAI framing", "o-"),
        ("repeated_id_no_index", "id repeated, no index", "s--"),
        ("no_id_no_index_repeated_name", "no id/index, name repeated", "^-"),
    ):
        left.plot(sizes, [row["ns_per_fragment"][framing] for row in assembler], style, label=label)
    left.set_title("ToolCallAssembler alone", fontsize=10)
    left.set_ylabel("ns per fragment (flat = linear)")
    sizes = [row["fragments"] for row in stream]
    right.plot(
        sizes,
        [row["us_per_fragment"]["raw"] for row in stream],
        "o-",
        color="tab:gray",
        label="raw requests loop",
    )
    right.plot(
        sizes,
        [row["us_per_fragment"]["hub"] for row in stream],
        "s-",
        color="tab:blue",
        label="hub.stream().items()",
    )
    right.set_title("Two parallel calls over loopback", fontsize=10)
    right.set_ylabel("µs per fragment (flat = linear)")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("fragments in the answer")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.text(0.01, 0.01, note, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "toolcalls.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pair(section: dict[str, Any], key: str) -> tuple[float, float]:
    return section["chunks_per_s"][key], section["ratio_to_raw"][key]


def _colors(names: list[str]) -> list[str]:
    return ["tab:gray" if name.startswith("raw") else "tab:blue" for name in names]
