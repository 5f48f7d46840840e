"""Soak run (not part of the test suite): many concurrent streams through one Hub, with faults.

    .venv/bin/python tests/soak_run.py                  # 10 minutes, 16 streams, 10% faults
    .venv/bin/python tests/soak_run.py --minutes 1 --out /tmp/soak.md

Sixteen threads stream through one ``Hub`` for the given time. Each request first queues one
answer on the primary fake upstream: a fault drawn at random with probability
``--fault-rate`` (every ``Fault`` and the HTTP error statuses), a healthy stream otherwise. A
healthy second upstream is the fallback. Every ``--interval`` seconds the process's RSS, open
file descriptors, sockets and threads are sampled (from ``/proc/self``; Linux only) and printed;
at the end the table is written to ``--out`` as Markdown with a verdict. Both fake upstreams run
in this process, so their sockets and threads are in the counts too.

Flat means, after a warm-up minute: the median RSS of the last third of the samples is less than
``--rss-slack`` MiB above that of the first third (medians, because a sample taken while a few
1 MiB huge-line buffers are in flight is a spike, not growth); the median count of live Python
memory blocks (``sys.getallocatedblocks``) grows by at most 5%; the descriptor and thread counts
of the last third stay within a small margin of the first third's; and after ``hub.close()``
sockets and threads return to where they were before the first request. Exit status 0 when
flat and no request ended in anything but a provhub error, else 1.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from provhub import (
    AllProvidersFailedError,
    Config,
    Hub,
    ProvhubError,
    StreamInterruptedError,
)
from provhub.testing import Behaviour, FakeUpstream, Fault
from provhub_providers.openai_compatible import OpenAICompatible

MODEL = "gpt-4"
MESSAGES = [{"role": "user", "content": "Soak test: tell me a long story."}]

FAULTS: tuple[Behaviour, ...] = (
    Behaviour(chunks=20, fault=Fault.DROP_AFTER_HEADERS),
    Behaviour(chunks=20, fault=Fault.DROP_MID_STREAM, fault_after=5),
    Behaviour(chunks=20, fault=Fault.DROP_MID_STREAM, fault_after=0),
    Behaviour(chunks=20, fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=4.0),
    Behaviour(chunks=20, fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=3, hang_seconds=4.0),
    Behaviour(chunks=20, fault=Fault.MALFORMED_JSON, fault_after=2),
    Behaviour(chunks=20, fault=Fault.INVALID_UTF8, fault_after=0),
    Behaviour(chunks=20, fault=Fault.HUGE_LINE, fault_after=0),
    Behaviour(chunks=20, fault=Fault.ERROR_OBJECT, fault_after=4),
    Behaviour(chunks=20, fault=Fault.SLOW_DRIP, drip_interval=0.05),
    Behaviour(chunks=20, fault=Fault.MODEL_MISSING),
    Behaviour(status=400),
    Behaviour(status=401),
    Behaviour(status=404),
    Behaviour(status=429, retry_after="1"),
    Behaviour(status=500),
    Behaviour(status=502),
    Behaviour(status=503),
)
# Healthy answers of a few sizes and paces; distinct tokens per chunk, as real streams have.
HEALTHY: tuple[Behaviour, ...] = (
    Behaviour(chunks=20),
    Behaviour(chunks=50, chunk_delay=0.002),
    Behaviour(chunks=200, events_per_http_chunk=4),
)
CONFIG = {
    "router": {
        "retries": 1,
        "backoff_base": 0.05,
        "backoff_max": 0.5,
        "retry_after_cap": 2.0,
        "breaker_threshold": 5,
        "breaker_cooldown": 2.0,
        "timeouts": {"connect": 2.0, "first_token": 2.0, "idle": 1.0, "total": 15.0},
    }
}


@dataclass(frozen=True)
class Sample:
    """One row of the table."""

    elapsed: float
    requests: int
    outcomes: dict[str, int]
    rss_mib: float
    py_blocks: int  # live Python object blocks (sys.getallocatedblocks): a leak shows here
    fds: int
    sockets: int
    threads: int


@dataclass
class Tally:
    """Outcome counters shared by the workers."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    faults_injected: int = 0
    unexpected: list[str] = field(default_factory=list)

    def add(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def descriptors() -> tuple[int, int]:
    """(open file descriptors, of which sockets)."""
    fds = sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        fds += 1
        sockets += target.startswith("socket:")
    return fds, sockets


def sample(started: float, tally: Tally) -> Sample:
    fds, sockets = descriptors()
    with tally.lock:
        outcomes = dict(tally.outcomes)
    return Sample(
        elapsed=time.monotonic() - started,
        requests=sum(outcomes.values()),
        outcomes=outcomes,
        rss_mib=rss_mib(),
        py_blocks=sys.getallocatedblocks(),
        fds=fds,
        sockets=sockets,
        threads=threading.active_count(),
    )


def worker(
    hub: Hub,
    primary: FakeUpstream,
    deadline: float,
    seed: int,
    fault_rate: float,
    abandon_rate: float,
    tally: Tally,
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        faulty = rng.random() < fault_rate
        primary.script(rng.choice(FAULTS) if faulty else rng.choice(HEALTHY))
        if faulty:
            with tally.lock:
                tally.faults_injected += 1
        abandon = rng.random() < abandon_rate
        try:
            with hub.stream(MODEL, MESSAGES) as stream:
                for _ in stream:
                    if abandon:
                        break
            if abandon:
                tally.add("abandoned")
            else:
                tally.add("ok" if stream.provider == "primary" else "fallback_ok")
        except StreamInterruptedError:
            tally.add("interrupted")
        except AllProvidersFailedError:
            tally.add("all_failed")
        except ProvhubError as exc:  # NoProviderError while both breakers are open, ...
            tally.add(type(exc).__name__)
        except Exception:  # a bug: never expected, reported in full
            tally.add("UNEXPECTED")
            with tally.lock:
                if len(tally.unexpected) < 5:
                    tally.unexpected.append(traceback.format_exc())


def _row(s: Sample) -> str:
    o = s.outcomes
    others = s.requests - sum(
        o.get(k, 0) for k in ("ok", "fallback_ok", "interrupted", "all_failed", "abandoned")
    )
    return (
        f"| {s.elapsed:7.0f} | {s.requests:8d} | {o.get('ok', 0):7d} | {o.get('fallback_ok', 0):8d}"
        f" | {o.get('interrupted', 0):11d} | {o.get('all_failed', 0):10d}"
        f" | {o.get('abandoned', 0):9d} | {others:5d}"
        f" | {s.rss_mib:7.1f} | {s.py_blocks / 1000:8.1f} | {s.fds:4d} | {s.sockets:7d}"
        f" | {s.threads:7d} |"
    )


HEADER = (
    "| elapsed s | requests | ok | fallback | interrupted | all_failed | abandoned | other"
    " | RSS MiB | Python blocks (k) | fds | sockets | threads |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def verdict(
    samples: list[Sample], before: Sample, after: Sample, rss_slack: float
) -> tuple[bool, list[str]]:
    """Whether the run stayed flat, with one line of evidence per criterion."""
    lines: list[str] = []
    warm = [s for s in samples if s.elapsed >= 60] or samples[len(samples) // 2 :]
    third = max(1, len(warm) // 3)
    first, last = warm[:third], warm[-third:]
    # Medians: a sample taken while a few 1 MiB huge-line buffers are in flight is a spike,
    # not growth. Floors and peaks are reported too.
    early_rss = statistics.median(s.rss_mib for s in first)
    late_rss = statistics.median(s.rss_mib for s in last)
    ok_rss = late_rss - early_rss < rss_slack
    lines.append(
        f"RSS after the warm-up minute, median of the first third {early_rss:.1f} MiB, of the "
        f"last third {late_rss:.1f} MiB (growth {late_rss - early_rss:+.1f} MiB, allowed "
        f"< {rss_slack}); floors {min(s.rss_mib for s in first):.1f} -> "
        f"{min(s.rss_mib for s in last):.1f} MiB, peak {max(s.rss_mib for s in warm):.1f} MiB: "
        + ("flat" if ok_rss else "GROWING")
    )
    early_blocks = statistics.median(s.py_blocks for s in first)
    late_blocks = statistics.median(s.py_blocks for s in last)
    ok_blocks = late_blocks <= early_blocks * 1.05
    lines.append(
        f"Python blocks, median of the first third {early_blocks / 1000:.1f} k, of the last "
        f"third {late_blocks / 1000:.1f} k (allowed +5%): " + ("flat" if ok_blocks else "GROWING")
    )
    ok = ok_rss and ok_blocks
    for name, margin in (("fds", 40), ("sockets", 40), ("threads", 20)):
        early = max(getattr(s, name) for s in first)
        late = max(getattr(s, name) for s in last)
        flat = late <= early + margin
        ok = ok and flat
        lines.append(
            f"{name}: max {early} in the first third, max {late} in the last third "
            f"(allowed +{margin}, a few hung connections in flight): "
            + ("flat" if flat else "GROWING")
        )
    returned = after.sockets <= before.sockets and after.threads <= before.threads
    ok = ok and returned
    lines.append(
        f"after hub.close(): sockets {after.sockets} (before the first request {before.sockets}), "
        f"threads {after.threads} (before {before.threads}), fds {after.fds} "
        f"(before {before.fds}): {'back to baseline' if returned else 'NOT RELEASED'}"
    )
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fault-rate", type=float, default=0.10)
    parser.add_argument("--abandon-rate", type=float, default=0.02)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--rss-slack", type=float, default=8.0, help="MiB of RSS growth allowed")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--out", default="soak-report.md", help="Markdown report path")
    args = parser.parse_args(argv)
    if not os.path.isdir("/proc/self/fd"):
        print("soak_run needs /proc (Linux)", file=sys.stderr)
        return 2

    tally = Tally()
    samples: list[Sample] = []
    with (
        FakeUpstream(record=False) as primary,
        FakeUpstream(record=False, default=Behaviour(chunks=20)) as backup,
    ):
        hub = Hub(Config.from_mapping(CONFIG), load_plugins=False)
        hub.register(OpenAICompatible("primary", primary.base_url, [MODEL]))
        hub.register(OpenAICompatible("backup", backup.base_url, [MODEL]))
        gc.collect()
        started = time.monotonic()
        before = sample(started, tally)
        deadline = started + args.minutes * 60
        workers = [
            threading.Thread(
                target=worker,
                args=(
                    hub,
                    primary,
                    deadline,
                    args.seed + i,
                    args.fault_rate,
                    args.abandon_rate,
                    tally,
                ),
                name=f"soak-{i}",
            )
            for i in range(args.concurrency)
        ]
        print(
            f"soak: {args.minutes} min, {args.concurrency} concurrent streams, "
            f"{args.fault_rate:.0%} faults, sampling every {args.interval} s",
            flush=True,
        )
        print(HEADER, flush=True)
        for thread in workers:
            thread.start()
        next_sample = started + args.interval
        while any(t.is_alive() for t in workers):
            time.sleep(max(0.0, min(next_sample, deadline + 60) - time.monotonic()))
            if time.monotonic() >= next_sample:
                samples.append(sample(started, tally))
                print(_row(samples[-1]), flush=True)
                next_sample += args.interval
        for thread in workers:
            thread.join()
        hub.close()
        # Give the upstreams a moment to see the pooled connections close.
        primary.wait_for_open_connections(0)
        backup.wait_for_open_connections(0)
        gc.collect()
        after = sample(started, tally)

    ok, evidence = verdict(samples, before, after, args.rss_slack)
    total = after.requests
    with tally.lock:
        faults, unexpected = tally.faults_injected, list(tally.unexpected)
    summary = [
        f"{total} requests in {after.elapsed:.0f} s ({total / max(after.elapsed, 1):.0f}/s), "
        f"{faults} faults injected ({faults / max(total, 1):.1%}), "
        f"outcomes {dict(sorted(after.outcomes.items()))}",
        *evidence,
        f"unexpected exceptions: {after.outcomes.get('UNEXPECTED', 0)}",
    ]
    ok = ok and not unexpected
    summary.append("VERDICT: " + ("flat, no unexpected errors" if ok else "FAILED"))
    report = "\n".join(
        [
            "# provhub soak run",
            "",
            f"`{' '.join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])])}` on Python "
            f"{sys.version.split()[0]}, {os.cpu_count()} CPUs",
            "",
            HEADER,
            *(_row(s) for s in samples),
            "",
            *(f"- {line}" for line in summary),
            "",
        ]
    )
    with open(args.out, "w") as handle:
        handle.write(report)
    print("\n".join(summary))
    for text in unexpected:
        print(text, file=sys.stderr)
    print(f"report written to {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
