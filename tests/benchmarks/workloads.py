"""In-process workloads: each client side by side, interleaved rounds, medians.

Every workload builds its clients once, warms them up, then runs ``rounds`` rounds;
in each round every client runs one timed block, and the order of the clients
rotates from round to round so none always runs first or last. Event sinks are
switched between blocks, never inside one.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from provhub import Capability, Config, FinishReason, Hub
from provhub_providers import Lockchat, OpenAICompatible

from .baseline import MESSAGES, RawClient
from .events import Events

__all__ = [
    "Dummy",
    "Settings",
    "astream_burst_workload",
    "astream_workload",
    "interleave",
    "per_call_us",
    "routing_workload",
    "sequential_workload",
    "stream_workload",
    "threads_workload",
]

MODEL = "gpt-4"


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``--quick`` shrinks them, ``--rounds`` overrides rounds)."""

    rounds: int
    sequential_rounds: int
    sequential_requests: int
    thread_requests: int
    threads: int = 16
    burst: int = 500
    route_seconds: float = 0.2
    provider_counts: tuple[int, ...] = (10, 100, 1_000, 10_000)


def interleave(blocks: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Run each block once per round, rotating the order; collect their results."""
    names = list(blocks)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()  # a collection left over from one client must not land on the next
            results[name].append(blocks[name]())
    return results


def median(values: Iterable[float]) -> float:
    """The median (shorthand)."""
    return statistics.median(list(values))


def paired_ratio(results: dict[str, list[float]], name: str, base: str = "raw") -> float:
    """Median over rounds of ``name / base`` within the same round.

    Blocks of one round run back to back, so they share the machine's load of that
    moment; on a shared machine the per-round ratio is far steadier than a ratio of
    medians taken over rounds that ran under different loads.
    """
    return median(a / b for a, b in zip(results[name], results[base], strict=True))


def paired_difference(results: dict[str, list[float]], name: str, base: str = "raw") -> float:
    """Median over rounds of ``name - base`` within the same round (see paired_ratio)."""
    return median(a - b for a, b in zip(results[name], results[base], strict=True))


def _hub(url: str, name: str = "bench") -> Hub:
    # An explicit default Config: no config-file search, production timeouts.
    hub = Hub(Config(), load_plugins=False)
    hub.register(OpenAICompatible(name, url, [MODEL]))
    return hub


# -- (b) sequential non-streamed requests --------------------------------------------------


def sequential_workload(url: str, events: Events, settings: Settings) -> dict[str, Any]:
    """Microseconds per non-streamed request: hub.complete vs a raw requests POST + json."""
    raw = RawClient(url)
    raw_no_env = RawClient(url)
    raw_no_env.session.trust_env = False
    hub = _hub(url)
    n = settings.sequential_requests
    expected = "w0 w1 w2 "
    assert raw.complete(MODEL, MESSAGES) == expected
    assert hub.complete(MODEL, MESSAGES).text == expected

    def timed(call: Callable[[], object], state: Callable[[], None]) -> Callable[[], float]:
        def block() -> float:
            state()
            started = time.perf_counter()
            for _ in range(n):
                call()
            return (time.perf_counter() - started) / n * 1e6

        return block

    def raw_call() -> str:
        return raw.complete(MODEL, MESSAGES)

    def raw_no_env_call() -> str:
        return raw_no_env.complete(MODEL, MESSAGES)

    def hub_call() -> object:
        return hub.complete(MODEL, MESSAGES)

    machinery = machinery_workload(events, settings)
    for _ in range(max(20, n // 5)):  # warm-up: connections, caches, branch predictors
        raw_call()
        raw_no_env_call()
        hub_call()
    before = events.lines()
    results = interleave(
        {
            "raw": timed(raw_call, events.off),
            "hub_events_off": timed(hub_call, events.off),
            "hub_events_on": timed(hub_call, events.on),
            "raw_trust_env_off": timed(raw_no_env_call, events.off),
        },
        settings.sequential_rounds,
    )
    events.off()
    written = events.lines() - before
    raw.close()
    raw_no_env.close()
    hub.close()
    medians = {name: median(values) for name, values in results.items()}
    return {
        "requests_per_block": n,
        "us_per_request": medians,
        "rounds_us_per_request": results,
        "ratio_to_raw": {name: paired_ratio(results, name) for name in results},
        "added_us_events_off": paired_difference(results, "hub_events_off"),
        "added_us_events_on": paired_difference(results, "hub_events_on"),
        "events_cost_us": paired_difference(results, "hub_events_on", "hub_events_off"),
        "trust_env_cost_us": paired_difference(results, "raw", "raw_trust_env_off"),
        "event_lines_per_request": written / (n * settings.sequential_rounds),
        "hub_without_io_us": machinery,
        "environment_variables": len(os.environ),
    }


class _Constant:
    """A provider answering at once without I/O: what is left is the hub's own work."""

    name = "constant"
    models = (MODEL,)
    supports_stream = True

    @staticmethod
    def create_completion(model: str, messages: Any, stream: bool, **kw: Any) -> Any:
        yield "w0 w1 w2 "
        yield FinishReason("stop")


def machinery_workload(events: Events, settings: Settings) -> dict[str, float]:
    """Microseconds of hub.complete around a provider that does no I/O, events off and on.

    The difference between the two is the price of the request's JSON events alone,
    free of network noise.
    """
    hub = Hub(Config(), load_plugins=False)
    hub.register(_Constant)

    def call() -> object:
        return hub.complete(MODEL, MESSAGES)

    def block(state: Callable[[], None]) -> Callable[[], float]:
        def run() -> float:
            state()
            return per_call_us(call, settings.route_seconds)

        return run

    results = interleave({"events_off": block(events.off), "events_on": block(events.on)}, 5)
    events.off()
    return {name: median(values) for name, values in results.items()}


# -- (c) one long stream ---------------------------------------------------------------------


def _count(tokens: Iterator[Any], started: float) -> tuple[int, float, float]:
    """Consume ``tokens`` like a caller: (str tokens, seconds to the first, total seconds)."""
    count = 0
    first = 0.0
    for token in tokens:
        if type(token) is str:
            if not count:
                first = time.perf_counter() - started
            count += 1
    return count, first, time.perf_counter() - started


def stream_workload(
    stream_url: str, chunks: int, events: Events, settings: Settings
) -> dict[str, Any]:
    """Chunks/s delivered to the caller and time to first token, per client."""
    raw = RawClient(stream_url)
    hub = _hub(stream_url)
    direct = OpenAICompatible("bench", stream_url, [MODEL])
    # Lockchat appends /v1/chat/completions itself and honours this variable.
    os.environ["PROVHUB_LOCKCHAT_URL"] = stream_url.removesuffix("/v1")

    def block(make: Callable[[], Iterator[Any]], state: Callable[[], None]) -> Callable[[], Any]:
        def run() -> tuple[float, float]:
            state()
            started = time.perf_counter()
            count, first, total = _count(make(), started)
            if count != chunks:
                raise RuntimeError(f"expected {chunks} tokens, got {count}")
            return count / total, first * 1e6

        return run

    clients: dict[str, Callable[[], Iterator[Any]]] = {
        "raw": lambda: raw.stream(MODEL, MESSAGES),
        "hub": lambda: iter(hub.stream(MODEL, MESSAGES)),
        "openai_compatible_direct": lambda: iter(direct.create_completion(MODEL, MESSAGES, True)),
        "lockchat_direct": lambda: iter(Lockchat.create_completion(MODEL, MESSAGES, True)),
    }
    # Correctness once per client: every token, in order.
    expected = "".join(f"w{i} " for i in range(chunks))
    for name, make in clients.items():
        text = "".join(t for t in make() if type(t) is str)
        if text != expected:
            raise RuntimeError(f"{name} delivered a wrong answer")
    blocks = {
        "raw": block(clients["raw"], events.off),
        "hub_events_off": block(clients["hub"], events.off),
        "hub_events_on": block(clients["hub"], events.on),
        "openai_compatible_direct": block(clients["openai_compatible_direct"], events.off),
        "lockchat_direct": block(clients["lockchat_direct"], events.off),
    }
    results = interleave(blocks, settings.rounds)
    events.off()
    raw.close()
    hub.close()
    del os.environ["PROVHUB_LOCKCHAT_URL"]
    per_round = {n: [r[0] for r in v] for n, v in results.items()}
    rates = {name: median(values) for name, values in per_round.items()}
    ttft = {name: median(r[1] for r in values) for name, values in results.items()}
    return {
        "chunks": chunks,
        "chunks_per_s": rates,
        "ttft_us": ttft,
        "ratio_to_raw": {name: paired_ratio(per_round, name) for name in per_round},
        "hub_events_on_to_direct": paired_ratio(
            per_round, "hub_events_on", "openai_compatible_direct"
        ),
        "ttft_ratio_to_raw": {
            name: paired_ratio({n: [r[1] for r in v] for n, v in results.items()}, name)
            for name in results
        },
        "rounds_chunks_per_s": per_round,
        "us_per_chunk": {name: 1e6 / rate for name, rate in rates.items()},
    }


# -- (d) 16 threads ---------------------------------------------------------------------------


def _threaded(call: Callable[[], object], threads: int, per_thread: int) -> float:
    """Requests per second of ``threads`` threads each making ``per_thread`` calls."""
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            for _ in range(per_thread):
                call()
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} threads failed") from errors[0]
    return threads * per_thread / elapsed


def threads_workload(url: str, events: Events, settings: Settings) -> dict[str, Any]:
    """Requests/s of 16 threads sharing one Hub vs 16 threads sharing one raw Session."""
    threads = settings.threads
    raw = RawClient(url, pool_maxsize=threads)
    hub = _hub(url)

    def raw_call() -> str:
        return raw.complete(MODEL, MESSAGES)

    def hub_call() -> object:
        return hub.complete(MODEL, MESSAGES)

    def block(call: Callable[[], object], state: Callable[[], None]) -> Callable[[], float]:
        def run() -> float:
            state()
            return _threaded(call, threads, settings.thread_requests)

        return run

    _threaded(raw_call, threads, 5)  # warm-up: open every pooled connection
    _threaded(hub_call, threads, 5)
    results = interleave(
        {
            "raw": block(raw_call, events.off),
            "hub_events_off": block(hub_call, events.off),
            "hub_events_on": block(hub_call, events.on),
        },
        settings.rounds,
    )
    events.off()
    raw.close()
    hub.close()
    rates = {name: median(values) for name, values in results.items()}
    return {
        "threads": threads,
        "requests_per_thread": settings.thread_requests,
        "req_per_s": rates,
        "ratio_to_raw": {name: paired_ratio(results, name) for name in results},
        "rounds_req_per_s": results,
    }


# -- (f) routing -------------------------------------------------------------------------------


class Dummy:
    """A registered provider that is never called: routing only reads its description."""

    supports_stream = True

    def __init__(self, name: str, models: list[str]) -> None:
        self.name = name
        self.models = models

    def create_completion(self, model: str, messages: Any, stream: bool, **kw: Any) -> Any:
        raise AssertionError("routing benchmark providers are never called")


def per_call_us(call: Callable[[], object], seconds: float, *, best: bool = False) -> float:
    """Microseconds per call over five batches sized to take ``seconds`` in all.

    The median batch, or with ``best`` the fastest (the least disturbed on a
    shared machine).
    """
    call()  # warm: the first call may build caches the batches then reuse
    started = time.perf_counter()
    call()
    once = max(time.perf_counter() - started, 1e-7)
    loops = max(1, int(seconds / 5 / once))
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(loops):
            call()
        samples.append((time.perf_counter() - started) / loops * 1e6)
    return min(samples) if best else median(samples)


def _routing_hub(total: int, serving: int) -> tuple[Hub, float]:
    hub = Hub(Config(), load_plugins=False)
    started = time.perf_counter()
    for i in range(total - serving):
        hub.register(Dummy(f"p{i}", [f"model-{i}"]))
    for i in range(serving):
        hub.register(Dummy(f"s{i}", [MODEL]))
    return hub, time.perf_counter() - started


def routing_workload(settings: Settings) -> dict[str, Any]:
    """Route-decision time against the number of registered providers.

    Typical: N providers with distinct models plus 5 serving the target model. Worst
    case: all N serve the target model, so every one is a candidate to check.
    """
    rows = []
    for count in settings.provider_counts:
        hub, register_s = _routing_hub(count, 5)
        router = hub._router
        seconds = settings.route_seconds
        row: dict[str, Any] = {
            "providers": count,
            "register_ms": register_s * 1e3,
            "route_us": per_call_us(functools.partial(hub.route, MODEL), seconds),
            "route_with_messages_us": per_call_us(
                functools.partial(hub.route, MODEL, MESSAGES), seconds
            ),
            "plan_us": per_call_us(functools.partial(router.plan, MODEL, Capability.NONE), seconds),
        }
        assert len(hub.route(MODEL).candidates) == 5
        worst, _ = _routing_hub(count, count)
        row["worst_route_us"] = per_call_us(functools.partial(worst.route, MODEL), seconds)
        assert len(worst.route(MODEL).candidates) == count
        rows.append(row)
        del hub, worst
        gc.collect()
    return {"serving_target": 5, "rows": rows}


# -- (h) astream ---------------------------------------------------------------------------


async def _ticker(interval: float, lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + interval
        await asyncio.sleep(interval)
        lags.append(max(0.0, loop.time() - expected))


def _lag_summary(lags: list[float]) -> dict[str, float]:
    ordered = sorted(lags) or [0.0]
    return {
        "ticks": len(lags),
        "p50_ms": ordered[len(ordered) // 2] * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


def astream_workload(
    stream_url: str, chunks: int, paced_url: str, events: Events, settings: Settings
) -> dict[str, Any]:
    """``async for`` over hub.astream: chunks/s and event-loop lag while it runs.

    The lag probe is a task sleeping 1 ms in a loop; its lateness is what any other
    coroutine in the application would suffer. The same probe with the loop idle is
    the floor. Chunks/s is compared with the raw (synchronous) loop of the same run.
    The burst (all chunks at once) is the worst case for the loop, since the worker
    thread parses without pause and holds the GIL; a paced stream (tokens arriving at
    a model's pace) shows the usual case, next to a sync stream iterated inside a
    coroutine, which blocks the loop for the whole answer.
    """
    raw = RawClient(stream_url)
    hub = _hub(stream_url)
    interval = 0.001

    async def consume(lags: list[float]) -> tuple[float, float]:
        stop = asyncio.Event()
        probe = asyncio.create_task(_ticker(interval, lags, stop))
        await asyncio.sleep(0)
        started = time.perf_counter()
        count = 0
        first = 0.0
        async for _token in hub.astream(MODEL, MESSAGES):
            if not count:
                first = time.perf_counter() - started
            count += 1
        elapsed = time.perf_counter() - started
        stop.set()
        await probe
        if count != chunks:
            raise RuntimeError(f"astream delivered {count} of {chunks} tokens")
        return count / elapsed, first * 1e6

    async def idle(lags: list[float], seconds: float) -> None:
        stop = asyncio.Event()
        probe = asyncio.create_task(_ticker(interval, lags, stop))
        await asyncio.sleep(seconds)
        stop.set()
        await probe

    all_lags: dict[str, list[float]] = {"astream_events_off": [], "astream_events_on": []}

    def astream_block(name: str, state: Callable[[], None]) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            state()
            return asyncio.run(consume(all_lags[name]))

        return run

    def raw_block() -> tuple[float, float]:
        events.off()
        started = time.perf_counter()
        count, first, total = _count(raw.stream(MODEL, MESSAGES), started)
        return count / total, first * 1e6

    def sync_hub_block() -> tuple[float, float]:
        events.off()
        started = time.perf_counter()
        count, first, total = _count(iter(hub.stream(MODEL, MESSAGES)), started)
        return count / total, first * 1e6

    asyncio.run(consume([]))  # warm-up
    results = interleave(
        {
            "raw": raw_block,
            "hub_sync": sync_hub_block,
            "astream_events_off": astream_block("astream_events_off", events.off),
            "astream_events_on": astream_block("astream_events_on", events.on),
        },
        settings.rounds,
    )
    events.off()
    idle_lags: list[float] = []
    asyncio.run(idle(idle_lags, 0.3))
    paced = _hub(paced_url)
    paced_lags: list[float] = []
    blocking_lags: list[float] = []

    async def paced_astream() -> int:
        stop = asyncio.Event()
        probe = asyncio.create_task(_ticker(interval, paced_lags, stop))
        count = 0
        async for _token in paced.astream(MODEL, MESSAGES):
            count += 1
        stop.set()
        await probe
        return count

    async def paced_sync_in_coroutine() -> int:
        stop = asyncio.Event()
        probe = asyncio.create_task(_ticker(interval, blocking_lags, stop))
        await asyncio.sleep(0)
        count = sum(1 for _token in paced.stream(MODEL, MESSAGES))  # blocks the loop
        stop.set()
        await probe
        return count

    for _ in range(2):
        asyncio.run(paced_astream())
    asyncio.run(paced_sync_in_coroutine())
    raw.close()
    hub.close()
    paced.close()
    per_round = {n: [r[0] for r in v] for n, v in results.items()}
    rates = {name: median(values) for name, values in per_round.items()}
    return {
        "chunks_per_s": rates,
        "ttft_us": {name: median(r[1] for r in values) for name, values in results.items()},
        "ratio_to_raw": {name: paired_ratio(per_round, name) for name in per_round},
        "ratio_to_sync_hub": {
            name: paired_ratio(per_round, name, "hub_sync")
            for name in ("astream_events_off", "astream_events_on")
        },
        "loop_lag": {name: _lag_summary(lags) for name, lags in all_lags.items()}
        | {
            "idle_loop": _lag_summary(idle_lags),
            "paced_astream": _lag_summary(paced_lags),
            "paced_sync_stream_in_coroutine": _lag_summary(blocking_lags),
        },
        "lag_probe_interval_ms": interval * 1e3,
    }


# -- (j) hundreds of astreams -----------------------------------------------------------------


def astream_burst_workload(burst_url: str, settings: Settings) -> dict[str, Any]:
    """Event-loop lag while ``settings.burst`` astreams start and run at once.

    Against one keep-alive upstream in the server process (20 tokens, 2 ms apart,
    per request): every stream must deliver its whole answer. Two patterns per
    round: all started in one go (``asyncio.gather``), and started 5 ms apart.
    The probe is the 1 ms ticker of the astream workload, running from the first
    start to the last token; the idle-loop probe of the same run is the floor.
    """
    from .server import BURST_CHUNKS

    hub = _hub(burst_url)
    expected = "".join(f"w{i} " for i in range(BURST_CHUNKS))
    count = settings.burst
    interval = 0.001

    async def one() -> str:
        async with hub.astream(MODEL, MESSAGES) as stream:
            return "".join([token async for token in stream])

    async def burst(apart: float) -> tuple[list[float], float]:
        lags: list[float] = []
        stop = asyncio.Event()
        probe = asyncio.create_task(_ticker(interval, lags, stop))
        await asyncio.sleep(0)
        started = time.perf_counter()
        if apart:
            tasks = []
            for _ in range(count):
                tasks.append(asyncio.create_task(one()))
                await asyncio.sleep(apart)
            results = await asyncio.gather(*tasks)
        else:
            results = await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - started
        stop.set()
        await probe
        if results != [expected] * count:
            wrong = sum(r != expected for r in results)
            raise RuntimeError(f"{wrong} of {count} astreams delivered a wrong answer")
        return lags, elapsed

    asyncio.run(one())  # warm-up: imports, the first connection, the first worker
    samples: dict[str, list[float]] = {"at_once": [], "apart_5ms": []}
    seconds: dict[str, list[float]] = {"at_once": [], "apart_5ms": []}
    for _ in range(max(2, settings.rounds // 3)):
        for name, apart in (("at_once", 0.0), ("apart_5ms", 0.005)):
            gc.collect()
            lags, elapsed = asyncio.run(burst(apart))
            samples[name] += lags
            seconds[name].append(elapsed)
    health = hub.health()["bench"]
    hub.close()
    return {
        "streams": count,
        "chunks_per_stream": BURST_CHUNKS,
        "rounds": len(seconds["at_once"]),
        "loop_lag": {name: _lag_summary(lags) for name, lags in samples.items()},
        "seconds": {name: median(values) for name, values in seconds.items()},
        "breaker_failures": health["consecutive_failures"],
    }
