"""The local model through provhub vs llama-cpp-python called directly (issue 15).

Run from the repository root (needs the ``local`` extra; ``bench`` for nothing
else)::

    python -m tests.benchmarks.local              # about two minutes on 2 cores
    python -m tests.benchmarks.local --rounds 3   # a smoke run

Same GGUF, same ``n_ctx``/``n_threads``, same prompt tokens, seed and sampling
settings on both sides; the direct side is a second ``llama_cpp.Llama`` of the same
file, called with ``create_completion(stream=True)`` exactly as the provider calls
it. Rounds are interleaved and alternate which side goes first. Per round and side:
time to first token (from the call to the first text), decode tokens/s (text
chunks after the first, over the time from first to last chunk) and the answer
(both sides must produce the same text: the same work was done). Also measured:
model load time (``Llama()`` and the provider's first request), first-use assembly
of the GGUF (into a temporary cache), peak RSS of a process that answers one request
through each side, and the time from cancelling a stream mid-answer until the model
is free for the next request (cancel from another thread, as ``astream`` does, and
``close()`` from the consuming thread). Writes ``results/local.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "Write a short story about a lighthouse keeper and the sea."
MAX_TOKENS = 128
SEED = 1234


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _timed(chunks: Any) -> dict[str, Any]:
    """Time to first text, decode tokens/s and CPU per token of an iterator of str.

    CPU time is the process's (all threads, llama.cpp's included): on a shared
    machine wall-clock rates follow the other jobs, CPU per token follows the work.
    """
    started = time.perf_counter()
    first = last = None
    cpu_first = cpu_last = 0.0
    count = 0
    parts: list[str] = []
    for text in chunks:
        if not text:
            continue
        now = time.perf_counter()
        cpu = time.process_time()
        if first is None:
            first, cpu_first = now, cpu
        last, cpu_last = now, cpu
        count += 1
        parts.append(text)
    if first is None or last is None:
        raise RuntimeError("no text produced")
    decode = (count - 1) / (last - first) if count > 1 and last > first else float("nan")
    cpu_ms = (cpu_last - cpu_first) * 1000 / (count - 1) if count > 1 else float("nan")
    return {
        "ttft_s": first - started,
        "tokens_per_s": decode,
        "cpu_ms_per_token": cpu_ms,
        "chunks": count,
        "text": "".join(parts),
    }


def throughput(rounds: int) -> dict[str, Any]:
    """hub.stream vs direct create_completion, interleaved."""
    import llama_cpp

    from provhub import Config, Hub
    from provhub_providers import LocalProvider
    from provhub_providers.local import (
        _DEFAULT_REPEAT_PENALTY,
        _Turn,
        default_model_path,
        gemma_prompt_tokens,
    )

    path = str(default_model_path())
    provider = LocalProvider()
    hub = Hub(Config(), load_plugins=False)
    hub.register(provider)
    messages = [{"role": "user", "content": PROMPT}]
    params = {"max_tokens": MAX_TOKENS, "seed": SEED, "temperature": 0.8}

    started = time.perf_counter()
    hub.complete("local", messages, max_tokens=1)  # loads the model
    hub_first_request = time.perf_counter() - started
    engine = provider._engine
    assert engine is not None
    started = time.perf_counter()
    direct = llama_cpp.Llama(
        model_path=path,
        n_ctx=engine.settings.n_ctx,
        n_threads=engine.llm.n_threads,
        n_threads_batch=engine.llm.n_threads_batch,
        swa_full=False,
        verbose=False,
    )
    direct_load = time.perf_counter() - started
    prompt = gemma_prompt_tokens(direct, [_Turn("user", PROMPT)])

    def via_hub() -> dict[str, Any]:
        with hub.stream("local", messages, **params) as stream:
            return _timed(stream)

    def via_llama() -> dict[str, Any]:
        direct.reset()  # what a seeded provider request does: evaluate the whole prompt
        chunks = direct.create_completion(
            prompt,
            stream=True,
            max_tokens=MAX_TOKENS,
            seed=SEED,
            temperature=0.8,
            repeat_penalty=_DEFAULT_REPEAT_PENALTY,
            stop=[],
        )
        try:
            return _timed(c["choices"][0]["text"] for c in chunks)
        finally:
            chunks.close()

    via_hub()
    via_llama()  # warm-up
    rows: list[dict[str, Any]] = []
    for index in range(rounds):
        order = [("hub", via_hub), ("direct", via_llama)]
        if index % 2:
            order.reverse()
        row: dict[str, Any] = {}
        for side, run in order:
            row[side] = run()
        row["same_text"] = row["hub"]["text"] == row["direct"]["text"]
        row["ratio"] = row["hub"]["tokens_per_s"] / row["direct"]["tokens_per_s"]
        row["cpu_ratio"] = row["direct"]["cpu_ms_per_token"] / row["hub"]["cpu_ms_per_token"]
        rows.append(row)
        print(
            f"  round {index + 1}: hub {row['hub']['tokens_per_s']:.1f} tok/s, direct "
            f"{row['direct']['tokens_per_s']:.1f} tok/s, ratio {row['ratio']:.3f}, cpu/token "
            f"{row['hub']['cpu_ms_per_token']:.1f} / {row['direct']['cpu_ms_per_token']:.1f} ms "
            f"(ratio {row['cpu_ratio']:.3f}), ttft hub "
            f"{row['hub']['ttft_s'] * 1000:.0f} ms / direct {row['direct']['ttft_s'] * 1000:.0f}"
            f" ms, same text: {row['same_text']}",
            flush=True,
        )
    summary = {
        "rounds": rows,
        "hub_tokens_per_s": _median([r["hub"]["tokens_per_s"] for r in rows]),
        "direct_tokens_per_s": _median([r["direct"]["tokens_per_s"] for r in rows]),
        "ratio_median": _median([r["ratio"] for r in rows]),
        "cpu_ratio_median": _median([r["cpu_ratio"] for r in rows]),
        "hub_cpu_ms_per_token": _median([r["hub"]["cpu_ms_per_token"] for r in rows]),
        "direct_cpu_ms_per_token": _median([r["direct"]["cpu_ms_per_token"] for r in rows]),
        "hub_ttft_ms": _median([r["hub"]["ttft_s"] * 1000 for r in rows]),
        "direct_ttft_ms": _median([r["direct"]["ttft_s"] * 1000 for r in rows]),
        "ttft_added_ms": _median(
            [(r["hub"]["ttft_s"] - r["direct"]["ttft_s"]) * 1000 for r in rows]
        ),
        "all_same_text": all(r["same_text"] for r in rows),
        "chunks": rows[-1]["hub"]["chunks"],
        "prompt_tokens": len(prompt),
        "n_threads": engine.llm.n_threads,
        "n_ctx": engine.settings.n_ctx,
        "hub_first_request_s": hub_first_request,
        "direct_load_s": direct_load,
    }
    summary["cancel"] = cancel_latency(hub, provider, messages, max(rounds, 10))
    summary["pool"] = pool(path, prompt, engine.settings.n_ctx, engine.llm.n_threads)
    summary["concurrency"] = concurrency(hub, messages)
    hub.close()
    return summary


def cancel_latency(hub: Any, provider: Any, messages: Any, repeats: int) -> dict[str, Any]:
    """Seconds from cancel (another thread) / close (same thread) to a free model."""
    from provhub import StreamInterruptedError

    def until_free() -> float:
        started = time.perf_counter()
        while provider.busy:
            time.sleep(0.0002)
        return time.perf_counter() - started

    cross: list[float] = []
    for _ in range(repeats):
        stream = hub.stream("local", messages, max_tokens=400, seed=SEED)
        third = threading.Event()
        count = 0

        def consume(stream: Any = stream, third: threading.Event = third) -> None:
            nonlocal count
            try:
                for _ in stream:
                    count += 1
                    if count == 5:
                        third.set()
            except StreamInterruptedError:
                pass

        worker = threading.Thread(target=consume)
        worker.start()
        third.wait(60)
        cancelled = time.perf_counter()
        stream.cancel_token.cancel()
        until_free()
        cross.append(time.perf_counter() - cancelled)
        worker.join(10)
    same: list[float] = []
    for _ in range(repeats):
        stream = hub.stream("local", messages, max_tokens=400, seed=SEED)
        tokens = iter(stream)
        for _ in range(5):
            next(tokens)
        closed = time.perf_counter()
        stream.close()
        until_free()
        same.append(time.perf_counter() - closed)
    return {
        "cancel_other_thread_ms": {
            "median": _median(cross) * 1000,
            "p95": _p95(cross) * 1000,
            "max": max(cross) * 1000,
        },
        "close_same_thread_ms": {
            "median": _median(same) * 1000,
            "p95": _p95(same) * 1000,
            "max": max(same) * 1000,
        },
        "repeats": repeats,
    }


def concurrency(hub: Any, messages: Any, threads: int = 4, each: int = 24) -> dict[str, Any]:
    """Requests from several threads queue on the one model: all succeed, none overlap."""

    def one() -> int:
        result = hub.complete("local", messages, max_tokens=each, seed=SEED)
        return int(result.usage.completion_tokens)

    started = time.perf_counter()
    sequential = sum(one() for _ in range(threads))
    sequential_s = time.perf_counter() - started
    counts: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            counts.append(one())
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    parallel_s = time.perf_counter() - started
    return {
        "threads": threads,
        "succeeded": len(counts),
        "errors": [repr(e) for e in errors],
        "sequential_tokens_per_s": sequential / sequential_s,
        "threaded_tokens_per_s": sum(counts) / parallel_s,
    }


def pool(path: str, prompt: list[int], n_ctx: int, n_threads: int) -> dict[str, Any]:
    """What a pool of two models would give: two generations at once vs one after the other."""
    import llama_cpp

    models = [
        llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            swa_full=False,
            verbose=False,
        )
        for _ in range(2)
    ]

    def generate(model: Any) -> int:
        model.reset()
        chunks = model.create_completion(prompt, stream=True, max_tokens=64, seed=SEED)
        return sum(1 for c in chunks if c["choices"][0]["text"])

    results: dict[str, list[float]] = {"one_after_the_other": [], "two_at_once": []}
    for _ in range(3):
        started = time.perf_counter()
        count = generate(models[0]) + generate(models[0])
        results["one_after_the_other"].append(count / (time.perf_counter() - started))
        counts: list[int] = []
        threads = [
            threading.Thread(target=lambda m=m, out=counts: out.append(generate(m))) for m in models
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results["two_at_once"].append(sum(counts) / (time.perf_counter() - started))
    return {k: _median(v) for k, v in results.items()} | {"n_threads": n_threads}


_CHILD = """
import json, resource, sys, time
side = sys.argv[1]
if side == "hub":
    from provhub import Hub
    with Hub() as hub:
        text = hub.complete("local", [{"role": "user", "content": %(prompt)r}],
                            max_tokens=64, seed=1).text
else:
    import llama_cpp
    from provhub_providers.local import default_model_path
    llm = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=2048,
                          swa_full=False, verbose=False)
    text = "".join(c["choices"][0]["text"] for c in
                   llm.create_completion(%(prompt)r, max_tokens=64, seed=1, stream=True))
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"vmhwm_mib": hwm / 1024}))
"""


def rss(repeats: int = 3) -> dict[str, Any]:
    """Peak RSS (VmHWM) of a process answering one request, hub vs direct."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
    with tempfile.TemporaryDirectory() as home:
        env["XDG_CONFIG_HOME"] = home
        found: dict[str, list[float]] = {"hub": [], "direct": []}
        for _ in range(repeats):
            for side in found:
                done = subprocess.run(
                    [sys.executable, "-c", _CHILD % {"prompt": PROMPT}, side],
                    env=env,
                    cwd=home,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=True,
                )
                found[side].append(json.loads(done.stdout.splitlines()[-1])["vmhwm_mib"])
    return {side: _median(values) for side, values in found.items()}


def assembly() -> dict[str, Any]:
    """First-use assembly of the GGUF into an empty cache, then a verified reuse."""
    script = (
        "import time\n"
        "from provhub_providers.local import default_model_path\n"
        "t = time.perf_counter(); default_model_path(); first = time.perf_counter() - t\n"
        "t = time.perf_counter(); default_model_path(); again = time.perf_counter() - t\n"
        "print(first, again)\n"
    )
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HOME": home}
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    first, again = (float(x) for x in done.stdout.split())
    return {"first_use_s": first, "cached_s": again}


def load_times(repeats: int = 3) -> dict[str, Any]:
    """``Llama()`` of the default GGUF, in-process, page cache warm."""
    import llama_cpp

    from provhub_providers.local import default_model_path

    path = str(default_model_path())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        llm = llama_cpp.Llama(model_path=path, n_ctx=2048, swa_full=False, verbose=False)
        times.append(time.perf_counter() - started)
        del llm
    return {"llama_load_s_median": _median(times), "all": times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.local")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"local model benchmark: {args.rounds} rounds, load average {load:.1f}", flush=True)
    result: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_start": load,
        }
    }
    result["assembly"] = assembly()
    result["load"] = load_times()
    result["throughput"] = throughput(args.rounds)
    result["rss_mib"] = rss()
    result["machine"]["load_average_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "local.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    t = result["throughput"]
    c = t["cancel"]
    print()
    print("| measure | through the hub | llama-cpp-python directly | ratio / added |")
    print("|---|---|---|---|")
    print(
        f"| decode tokens/s (median of {args.rounds}) | {t['hub_tokens_per_s']:.1f} | "
        f"{t['direct_tokens_per_s']:.1f} | {t['ratio_median']:.3f}x (target >= 0.95) |"
    )
    print(
        f"| CPU per decoded token | {t['hub_cpu_ms_per_token']:.2f} ms | "
        f"{t['direct_cpu_ms_per_token']:.2f} ms | {t['cpu_ratio_median']:.3f}x (direct/hub) |"
    )
    print(
        f"| time to first token | {t['hub_ttft_ms']:.0f} ms | {t['direct_ttft_ms']:.0f} ms | "
        f"{t['ttft_added_ms']:+.1f} ms |"
    )
    print(
        f"| peak RSS, one request | {result['rss_mib']['hub']:.0f} MiB | "
        f"{result['rss_mib']['direct']:.0f} MiB | "
        f"{result['rss_mib']['hub'] - result['rss_mib']['direct']:+.0f} MiB |"
    )
    print(
        f"| load | {t['hub_first_request_s']:.2f} s (first request, 1 token) | "
        f"{result['load']['llama_load_s_median']:.2f} s (Llama()) | |"
    )
    print(
        f"| cancel (other thread) to free | median {c['cancel_other_thread_ms']['median']:.1f} ms,"
        f" p95 {c['cancel_other_thread_ms']['p95']:.1f}, max "
        f"{c['cancel_other_thread_ms']['max']:.1f} | | target < 100 ms |"
    )
    print(
        f"| close() to free | median {c['close_same_thread_ms']['median']:.2f} ms, max "
        f"{c['close_same_thread_ms']['max']:.2f} | | |"
    )
    print(
        f"| first-use assembly of the GGUF | {result['assembly']['first_use_s']:.2f} s, "
        f"then {result['assembly']['cached_s'] * 1000:.1f} ms | | |"
    )
    k = t["concurrency"]
    print(
        f"| {k['threads']} threads at once | {k['succeeded']}/{k['threads']} ok, "
        f"{k['threaded_tokens_per_s']:.1f} tok/s | sequential {k['sequential_tokens_per_s']:.1f}"
        " tok/s | |"
    )
    q = t["pool"]
    print(
        f"| pool of 2 models (n_threads {q['n_threads']}) | two at once "
        f"{q['two_at_once']:.1f} tok/s | one after the other {q['one_after_the_other']:.1f} tok/s"
        " | |"
    )
    print(f"\nsame text on both sides in every round: {t['all_same_text']}")
    print(f"load average at the end: {result['machine']['load_average_end']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
