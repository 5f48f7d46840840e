"""``python -m tests.benchmarks.state``: groups, limits and shared state (issue 17).

Three figures, each beside its baseline in the same run:

1. **Added latency of the Redis store** per request over the in-memory store, on
   loopback: ``hub.complete`` against the fake upstream (a process of its own), with
   both stores side by side in interleaved rounds; per round the p50 of single
   request latencies, paired. The same around a provider doing no I/O (the store's
   own cost without network noise), and a raw redis-py ``EVALSHA`` of an empty
   script (the floor of one round trip). The number of script calls per request is
   read from Redis' ``INFO commandstats``.
2. **Limit precision across two processes**: two processes of 4 threads hammer one
   ``rpm`` limit (a) end to end through ``hub.complete`` within one real 60-second
   window, and (b) through the store with a 2-second window for several windows:
   admissions in every window-long span, counted from the server's clock.
3. **Routing with groups and limits**: ``hub.route(group)`` (validation, size
   estimate, static plan, the store's check) and ``Router.plan`` for a 5-member
   group whose providers and members all have limits, among 10 to 10,000
   registered providers; then against the number of members, to show the cost
   follows the candidates and not the registry.

The machine is shared: run it several times, read the ratios, and re-run on a quiet
machine before quoting absolute figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.benchmarks.baseline import MESSAGES, RawClient
from tests.benchmarks.server import Upstreams
from tests.benchmarks.workloads import Dummy, interleave, median, per_call_us
from tests.redis_support import RedisServer

from provhub import Capability, Config, FinishReason, Hub
from provhub_providers import OpenAICompatible

MODEL = "bench-model"
RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[2]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _limits() -> dict[str, Any]:
    # Limits high enough never to refuse, so every request runs every counter.
    return {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_in_flight": 10_000}


def _hub(state: dict[str, Any], url: str | None = None) -> Hub:
    config = Config.from_mapping({"providers": {"bench": _limits()}, "state": state})
    hub = Hub(config, load_plugins=False)
    if url is None:
        hub.register(_Constant)
    else:
        hub.register(OpenAICompatible("bench", url, [MODEL]))
    return hub


class _Constant:
    """Answers at once without I/O: what is left is the hub's (and its store's) work."""

    name = "bench"
    models = (MODEL,)
    supports_stream = True

    @staticmethod
    def create_completion(model: str, messages: Any, stream: bool, **kw: Any) -> Any:
        yield "w0 w1 w2 "
        yield FinishReason("stop")


def _latencies(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1e6)
    return out


# -- 1. added latency ---------------------------------------------------------------------------


def latency_section(redis: RedisServer, upstream_url: str, rounds: int, n: int) -> dict[str, Any]:
    state = {"backend": "redis", "url": redis.url, "timeout": 1.0, "connect_timeout": 1.0}
    clients: dict[str, Callable[[], object]] = {}
    raw = RawClient(upstream_url)
    clients["raw_requests"] = lambda: raw.complete(MODEL, MESSAGES)
    memory, shared = _hub({}, upstream_url), _hub(state, upstream_url)
    clients["hub_memory"] = lambda: memory.complete(MODEL, MESSAGES)
    clients["hub_redis"] = lambda: shared.complete(MODEL, MESSAGES)
    memory_local, shared_local = _hub({}), _hub(state)
    clients["noio_memory"] = lambda: memory_local.complete(MODEL, MESSAGES)
    clients["noio_redis"] = lambda: shared_local.complete(MODEL, MESSAGES)
    client = redis.client()
    empty = client.register_script("return 1")
    clients["redis_evalsha"] = lambda: empty()
    for call in clients.values():  # warm-up: connections, scripts, caches
        for _ in range(50):
            call()
    client.config_resetstat()
    count = _latencies(clients["hub_redis"], 200)
    calls, server_us = _evalsha_stats(client)
    per_request = calls / len(count)
    blocks = {name: (lambda c=call: _latencies(c, n)) for name, call in clients.items()}
    results = interleave(blocks, rounds)
    p50 = {name: [statistics.median(r) for r in rs] for name, rs in results.items()}
    p99 = {name: [percentile(r, 0.99) for r in rs] for name, rs in results.items()}

    def paired(a: str, b: str, table: dict[str, list[float]]) -> float:
        return median(x - y for x, y in zip(table[a], table[b], strict=True))

    section = {
        "requests_per_block": n,
        "rounds": rounds,
        "p50_us": {name: median(v) for name, v in p50.items()},
        "p99_us": {name: median(v) for name, v in p99.items()},
        "added_p50_us_redis_over_memory": paired("hub_redis", "hub_memory", p50),
        "added_p99_us_redis_over_memory": paired("hub_redis", "hub_memory", p99),
        "added_p50_us_redis_over_memory_noio": paired("noio_redis", "noio_memory", p50),
        "ratio_p50_memory_to_raw": median(
            a / b for a, b in zip(p50["hub_memory"], p50["raw_requests"], strict=True)
        ),
        "ratio_p50_redis_to_raw": median(
            a / b for a, b in zip(p50["hub_redis"], p50["raw_requests"], strict=True)
        ),
        "script_calls_per_request": per_request,
        "server_us_per_script_call": server_us,
    }
    for hub in (memory, shared, memory_local, shared_local):
        hub.close()
    raw.close()
    client.close()
    return section


def _evalsha_stats(client: Any) -> tuple[int, float]:
    """Script calls since the last reset, and the server's microseconds per call."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), float(stats.get("usec_per_call", 0.0))


# -- 2. limit precision -------------------------------------------------------------------------

_HAMMER = r"""
import json, sys, threading, time
from provhub import Config, Hub, RateLimitedError
from provhub._config import StateConfig
from provhub._limits import LimitSpec, Scope
from provhub._state_redis import RedisStateStore
from provhub._state import Outcome, Verdict
from provhub_providers import OpenAICompatible

mode, url, limit, window, seconds, start, upstream = sys.argv[1:8]
limit, window, seconds, start = int(limit), float(window), float(seconds), float(start)
HI = [{"role": "user", "content": "hi"}]
admitted, refused = [], 0
lock = threading.Lock()

class Slot:
    name = "bench"
    scopes = (Scope("provider:bench", LimitSpec(rpm=limit)),)

if mode == "store":
    from provhub._state import Lease, lease_id
    store = RedisStateStore(StateConfig(url=url, prefix="precision", timeout=1.0), window=window)
    slots = [Slot()]
    def once():
        # The store's own request, to read the server's clock at the admission ("n"):
        # the spans are then free of any client's skew.
        lease = lease_id()
        data = store._request(slots, tokens=0, ttl=5.0, order=None, retry=False, take=True,
                              check_all=False, finish=None, lease=lease)
        if data["c"] < 0:
            return False
        store.finish(Lease(lease, "bench", Slot.scopes, 0, local=False), Outcome(Verdict.SUCCESS))
        return data["n"]
else:
    hub = Hub(Config.from_mapping({
        "providers": {"bench": {"rpm": limit}},
        "state": {"backend": "redis", "url": url, "prefix": "precision-hub", "timeout": 1.0},
    }), load_plugins=False)
    hub.register(OpenAICompatible("bench", upstream, ["m"]))
    def once():
        try:
            hub.complete("m", HI)
        except RateLimitedError:
            return False
        return time.time()

def work():
    global refused
    time.sleep(max(0.0, start - time.time()))
    end = start + seconds
    while time.time() < end:
        when = once()
        with lock:
            if when is False:
                refused += 1
            else:
                admitted.append(when)

threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"admitted": admitted, "refused": refused}))
"""


def _hammer(
    mode: str, redis: RedisServer, limit: int, window: float, seconds: float, upstream: str
) -> list[dict[str, Any]]:
    start = time.time() + 1.0
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _HAMMER,
                mode,
                redis.url,
                str(limit),
                str(window),
                str(seconds),
                str(start),
                upstream,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    return [json.loads(child.communicate(timeout=seconds + 120)[0]) for child in children]


def _max_in_span(times: list[float], span: float) -> int:
    times = sorted(times)
    best, left = 0, 0
    for right, t in enumerate(times):
        while times[left] <= t - span:
            left += 1
        best = max(best, right - left + 1)
    return best


def precision_section(redis: RedisServer, upstream: str, quick: bool) -> dict[str, Any]:
    client = redis.client()
    client.flushall()
    client.close()
    # (a) End to end, the real rpm window: both processes race for 200 admissions.
    hub_runs = _hammer("hub", redis, 200, 60.0, 3.0 if quick else 6.0, upstream)
    hub_admitted = sum(len(r["admitted"]) for r in hub_runs)
    # (b) The store under pressure for several short windows.
    window, limit = 2.0, 100
    seconds = 6.0 if quick else 12.0
    store_runs = _hammer("store", redis, limit, window, seconds, upstream)
    times = sorted(t for r in store_runs for t in r["admitted"])
    first = times[0]
    # Fixed windows from the first admission: each holds exactly the limit when saturated.
    per_window = [
        sum(1 for t in times if first + k * window <= t < first + (k + 1) * window)
        for k in range(int(seconds // window) - 1)
    ]
    return {
        "hub_rpm_limit": 200,
        "hub_admitted_in_one_window": hub_admitted,
        "hub_admitted_per_process": [len(r["admitted"]) for r in hub_runs],
        "hub_refused": sum(r["refused"] for r in hub_runs),
        "store_limit_per_window": limit,
        "store_window_s": window,
        "store_max_in_any_window_span": _max_in_span(times, window),
        "store_admitted_per_window": per_window,
        "store_admitted_per_process": [len(r["admitted"]) for r in store_runs],
        "store_refused": sum(r["refused"] for r in store_runs),
    }


# -- 3. routing ---------------------------------------------------------------------------------


def _routing_hub(total: int, members: int) -> Hub:
    providers = {f"s{i}": _limits() for i in range(members)}
    group = {
        "strategy": "weighted",
        "members": [
            {"model": f"s{i}/{MODEL}", "weight": i + 1, "rpm": 10_000_000, "context_window": 10**6}
            for i in range(members)
        ],
    }
    hub = Hub(
        Config.from_mapping({"providers": providers, "groups": {"group": group}}),
        load_plugins=False,
    )
    for i in range(total - members):
        hub.register(Dummy(f"p{i}", [f"model-{i}"]))
    for i in range(members):
        hub.register(Dummy(f"s{i}", [MODEL]))
    return hub


def routing_section(seconds: float) -> dict[str, Any]:
    rows = [_routing_row(total, 5, seconds) for total in (10, 1_000, 10_000)]
    by_members = [_routing_row(10_000, members, seconds) for members in (5, 50, 500)]
    return {"by_registry_size": rows, "by_candidates": by_members}


def _routing_row(total: int, members: int, seconds: float) -> dict[str, Any]:
    hub = _routing_hub(total, members)
    router = hub._router
    assert len(hub.route("group", MESSAGES).candidates) == members

    def plan() -> object:
        return router.plan("group", Capability.NONE, tokens=10)

    def open_close() -> None:
        # What a request pays before its first byte: plan/acquire, then the admission
        # given back unused (closed before iterating).
        hub.stream("group", MESSAGES).close()

    row = {
        "providers": total,
        "group_members": members,
        "hub_route_group_us": per_call_us(lambda: hub.route("group", MESSAGES), seconds, best=True),
        "router_plan_group_us": per_call_us(plan, seconds, best=True),
        "hub_route_model_us": per_call_us(lambda: hub.route(MODEL, MESSAGES), seconds, best=True),
        "hub_stream_open_close_us": per_call_us(open_close, seconds, best=True),
    }
    hub.close()
    gc.collect()
    return row


# -- the report ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.state")
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    n = 100 if args.quick else 400
    results: dict[str, Any] = {"rounds": rounds}
    with (
        tempfile.TemporaryDirectory() as workdir,
        RedisServer(Path(workdir)) as redis,
        Upstreams() as up,
    ):
        print("latency ...", file=sys.stderr)
        results["latency"] = latency_section(redis, up.short_url, rounds, n)
        print("precision ...", file=sys.stderr)
        results["precision"] = precision_section(redis, up.short_url, args.quick)
    print("routing ...", file=sys.stderr)
    results["routing"] = routing_section(0.1 if args.quick else 0.3)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "state.json").write_text(json.dumps(results, indent=2))
    print(_report(results))
    return 0


def _report(r: dict[str, Any]) -> str:
    lat, pre, rou = r["latency"], r["precision"], r["routing"]
    lines = [
        "## Shared state: added latency per request (loopback)",
        "",
        "| client | p50 µs | p99 µs |",
        "|---|---|---|",
    ]
    for name in lat["p50_us"]:
        lines.append(f"| {name} | {lat['p50_us'][name]:.1f} | {lat['p99_us'][name]:.1f} |")
    lines += [
        "",
        f"- Redis over memory, paired p50: **{lat['added_p50_us_redis_over_memory']:.1f} µs**"
        f" (p99 {lat['added_p99_us_redis_over_memory']:.1f} µs); without upstream I/O "
        f"{lat['added_p50_us_redis_over_memory_noio']:.1f} µs",
        f"- script calls per request: {lat['script_calls_per_request']:.2f}, "
        f"{lat['server_us_per_script_call']:.1f} µs each on the server",
        f"- ratio to raw requests (p50): memory {lat['ratio_p50_memory_to_raw']:.2f}, "
        f"redis {lat['ratio_p50_redis_to_raw']:.2f}",
        "",
        "## Limit precision across 2 processes",
        "",
        f"- hub.complete, rpm {pre['hub_rpm_limit']} in one 60 s window: "
        f"{pre['hub_admitted_in_one_window']} admitted "
        f"({' + '.join(map(str, pre['hub_admitted_per_process']))}), {pre['hub_refused']} refused",
        f"- store, {pre['store_limit_per_window']} per {pre['store_window_s']:g} s window: "
        f"max in any window span {pre['store_max_in_any_window_span']}, per window "
        f"{pre['store_admitted_per_window']}, {pre['store_refused']} refused",
        "",
        "## Routing with a 5-member group, every member and provider limited",
        "",
        "| providers | members | hub.route(group) µs | Router.plan µs | hub.route(model) µs "
        "| stream open+close µs |",
        "|---|---|---|---|---|---|",
    ]
    for row in rou["by_registry_size"] + rou["by_candidates"][1:]:
        lines.append(
            f"| {row['providers']:,} | {row['group_members']} | {row['hub_route_group_us']:.1f} | "
            f"{row['router_plan_group_us']:.1f} | {row['hub_route_model_us']:.1f} | "
            f"{row['hub_stream_open_close_us']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
