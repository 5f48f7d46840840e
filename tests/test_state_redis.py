"""State shared across replicas through a real Redis (SPEC §15), marked ``redis``.

Hubs run in separate processes (``state_worker.py``) against one ``redis-server``
the test starts on a free loopback port, and real loopback upstreams: one hub
opens a breaker and the other skips that provider at once; two hubs share one
``rpm`` limit exactly. In-process, Redis is killed, paused and flushed under a
stream of requests: they are all served (``state.degraded``, then
``state.restored``), none fails because of Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provhub import Config, Hub, RateLimitedError
from provhub.testing import Behaviour, FakeUpstream
from provhub_providers import OpenAICompatible
from redis_support import RedisServer, require_redis
from test_docs import _documented_events

pytestmark = pytest.mark.redis

WORKER = Path(__file__).with_name("state_worker.py")
ROUTER = {
    "retries": 0,
    "breaker_threshold": 2,
    "breaker_cooldown": 60,
    "timeouts": {"connect": 2, "first_token": 2, "idle": 2, "total": 10},
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(tmp_path) as server:
        yield server


class Worker:
    """A hub in a child process, answering one JSON line per command."""

    def __init__(self, config: dict[str, Any], endpoints: list[list[Any]]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config), json.dumps(endpoints)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "PYTHONPATH": str(WORKER.parent)},
        )
        assert self.read() == {"ready": True}

    def read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            assert self.process.stderr is not None
            raise AssertionError(f"worker died: {self.process.stderr.read()}")
        return json.loads(line)

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def ask(self, **command: Any) -> Any:
        self.send(**command)
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.send(op="quit")
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


def shared(redis: RedisServer, **extra: Any) -> dict[str, Any]:
    return {
        "router": ROUTER,
        "state": {"backend": "redis", "url": redis.url, "timeout": 2.0},
        **extra,
    }


def test_a_breaker_opened_by_one_process_makes_another_skip_the_provider_at_once(
    redis_server: RedisServer,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    workers: list[Worker],
) -> None:
    endpoints = [["a", upstream.base_url, ["m"]], ["b", second_upstream.base_url, ["m"]]]
    first = Worker(shared(redis_server), endpoints)
    second = Worker(shared(redis_server), endpoints)
    workers += [first, second]
    upstream.default = Behaviour(status=500)
    # The second process has routed before: it knows 'a' as a healthy candidate.
    assert second.ask(op="route", model="m")["candidates"] == ["a", "b"]
    assert first.ask(op="complete", model="m") == {"provider": "b"}
    assert first.ask(op="complete", model="m") == {"provider": "b"}  # 'a' opens
    assert len(upstream.requests) == 2
    plan = second.ask(op="route", model="m")
    assert plan["candidates"] == ["b"]
    assert plan["excluded"][0]["provider"] == "a"
    assert plan["excluded"][0]["reason"].startswith("circuit open after 2 failures")
    assert second.ask(op="complete", model="m") == {"provider": "b"}
    assert len(upstream.requests) == 2  # the second process never called 'a'
    assert second.ask(op="health")["a"]["state"] == "open"


def test_auth_failures_open_no_breaker_for_the_other_processes(
    redis_server: RedisServer,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    workers: list[Worker],
) -> None:
    endpoints = [["a", upstream.base_url, ["m"]], ["b", second_upstream.base_url, ["m"]]]
    bad_key = Worker(shared(redis_server), endpoints)
    other = Worker(shared(redis_server), endpoints)
    workers += [bad_key, other]
    upstream.script(Behaviour(status=401), Behaviour(status=401))
    for _ in range(2):
        assert bad_key.ask(op="complete", model="m") == {"provider": "b"}
    # This hub's own breaker opened: it stops sending its bad key to 'a' ...
    assert bad_key.ask(op="route", model="m")["candidates"] == ["b"]
    # ... but the other process (its key may be good) still uses 'a'.
    assert other.ask(op="route", model="m")["candidates"] == ["a", "b"]
    assert other.ask(op="complete", model="m") == {"provider": "a"}


def test_two_processes_share_one_rpm_limit_exactly(
    redis_server: RedisServer, upstream: FakeUpstream, workers: list[Worker]
) -> None:
    config = shared(redis_server, providers={"a": {"rpm": 25}})
    endpoints = [["a", upstream.base_url, ["m"]]]
    first, second = Worker(config, endpoints), Worker(config, endpoints)
    workers += [first, second]
    at = time.time() + 0.5
    for worker in (first, second):
        worker.send(op="burst", model="m", n=40, threads=6, at=at)
    results = [first.read(), second.read()]
    assert sum(r["ok"] for r in results) == 25
    assert sum(r["limited"] for r in results) == 55
    assert sum(r["other"] for r in results) == 0
    assert all(r["ok"] > 0 for r in results)  # both took part in the race
    assert len(upstream.requests) == 25


def test_a_crashed_process_gives_its_in_flight_slot_back_when_its_deadline_passes(
    redis_server: RedisServer, upstream: FakeUpstream, workers: list[Worker]
) -> None:
    router = {**ROUTER, "timeouts": {"connect": 1, "first_token": 1, "idle": 1, "total": 1}}
    config = {**shared(redis_server, providers={"a": {"max_in_flight": 1}}), "router": router}
    endpoints = [["a", upstream.base_url, ["m"]]]
    doomed, survivor = Worker(config, endpoints), Worker(config, endpoints)
    workers += [doomed, survivor]
    assert doomed.ask(op="open", model="m") == {"opened": True}
    doomed.process.kill()  # no finish: its lease stays in Redis
    doomed.process.wait()
    refused = survivor.ask(op="complete", model="m")
    assert refused["error"] == "RateLimitedError"
    # The lease expires at the request's deadline (1 s) plus 5 s.
    deadline = time.monotonic() + 15
    while survivor.ask(op="complete", model="m") != {"provider": "a"}:
        assert time.monotonic() < deadline, "the dead process's slot never came back"
        time.sleep(0.25)


def test_latency_statistics_are_shared(
    redis_server: RedisServer, upstream: FakeUpstream, workers: list[Worker]
) -> None:
    endpoints = [["a", upstream.base_url, ["m"]]]
    first = Worker(shared(redis_server), endpoints)
    second = Worker(shared(redis_server), endpoints)
    workers += [first, second]
    assert second.ask(op="health")["a"]["ttft_ms"] is None
    first.ask(op="complete", model="m")
    health = second.ask(op="health")["a"]
    assert health["ttft_ms"] > 0
    assert health["in_flight"] == 0


def test_threads_sharing_one_redis_store_never_mix_replies_or_leak_a_slot(
    redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    # Successes finish without waiting for Redis' reply, which the connection's
    # next user reads first: a reply read by the wrong caller would admit or
    # refuse wrongly, and a lost finish would keep its in-flight slot. With
    # max_in_flight equal to the number of threads, either shows as a refusal.
    threads, each = 8, 40
    config = Config.from_mapping(
        {
            **shared(redis_server),
            "providers": {"a": {"max_in_flight": threads, "rpm": 100_000}},
        }
    )
    events: list[dict[str, Any]] = []
    hub = Hub(config, load_plugins=False, subscribers=[lambda e: events.append(dict(e))])
    hub.register(OpenAICompatible("a", upstream.base_url, ["m"]))
    failures: list[BaseException] = []
    start = threading.Barrier(threads)

    def run() -> None:
        start.wait()
        for _ in range(each):
            try:
                assert hub.complete("m", HI).text
            except BaseException as exc:
                failures.append(exc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert failures == []
    assert len(upstream.requests) == threads * each
    # Served from Redis throughout: a misread reply would have degraded the store.
    assert state_events(events) == []
    # The last finishes were sent, not waited for: Redis may still be reading
    # them. A leaked slot never comes back (its lease lives for total + 5 s).
    deadline = time.monotonic() + 2.0
    while hub.health()["a"]["in_flight"] != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hub.health()["a"]["in_flight"] == 0
    hub.close()


# -- Redis going away, in-process ---------------------------------------------------------------


class Traffic:
    """Requests in a loop on a thread until stopped; every outcome recorded."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.done = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.hub.complete("m", HI)
                self.done += 1
            except BaseException as exc:
                self.failures.append(exc)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def served_more(self, than: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.done > than + 5:
                return True
            time.sleep(0.01)
        return False


def resilient_hub(redis: RedisServer, upstream: FakeUpstream, **state: Any) -> tuple[Hub, list]:
    events: list[dict[str, Any]] = []
    config = Config.from_mapping(
        {
            "router": ROUTER,
            "state": {
                "backend": "redis",
                "url": redis.url,
                "timeout": 0.05,
                "connect_timeout": 0.05,
                "retry_interval": 0.1,
                **state,
            },
        }
    )
    hub = Hub(config, load_plugins=False, subscribers=[lambda e: events.append(dict(e))])
    hub.register(OpenAICompatible("a", upstream.base_url, ["m"]))
    return hub, events


def wait_for(events: list[dict[str, Any]], name: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events if e["event"] == name]
        if found:
            return found[-1]
        time.sleep(0.01)
    raise AssertionError(f"no {name} event within {timeout} s")


def state_events(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events if e["event"].startswith("state.")]


def test_killing_and_restarting_redis_mid_run_fails_no_request(
    redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    hub, events = resilient_hub(redis_server, upstream)
    with Traffic(hub) as traffic:
        assert traffic.served_more(0)
        redis_server.kill()
        degraded = wait_for(events, "state.degraded")
        assert traffic.served_more(traffic.done)  # served on local state meanwhile
        redis_server.start()
        restored = wait_for(events, "state.restored")
        assert traffic.served_more(traffic.done)
    assert traffic.failures == []
    assert state_events(events) == ["state.degraded", "state.restored"]
    assert degraded["level"] == "warning"
    assert degraded["backend"] == "redis"
    assert degraded["url"] == redis_server.url
    assert degraded["error"]
    assert restored["level"] == "info"
    assert restored["degraded_s"] > 0
    # Both are documented with their level and every field (as test_docs checks the rest).
    documented = _documented_events()
    for event in (degraded, restored):
        level, part = documented[event["event"]]
        assert event["level"] == level
        for field in set(event) - {"event", "level"}:
            assert f"| `{field}` |" in part, (event["event"], field)
    # Back on Redis: the shared counters move again.
    client = redis_server.client()
    assert client.keys("provhub:*")
    client.close()
    hub.close()


def test_a_redis_too_slow_to_answer_degrades_within_its_timeout(
    redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    hub, events = resilient_hub(redis_server, upstream)
    with Traffic(hub) as traffic:
        assert traffic.served_more(0)
        redis_server.pause()
        try:
            wait_for(events, "state.degraded")
            started = time.monotonic()
            before = traffic.done
            assert traffic.served_more(before)
            # Degraded requests do not wait for Redis: 5 of them well under one timeout each.
            assert time.monotonic() - started < 2.0
        finally:
            redis_server.resume()
        wait_for(events, "state.restored")
    assert traffic.failures == []
    assert "Timeout" in next(e for e in events if e["event"] == "state.degraded")["error"]
    hub.close()


def test_a_flushed_redis_keeps_serving_with_fresh_state(
    redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    hub, events = resilient_hub(redis_server, upstream)
    client = redis_server.client()
    with Traffic(hub) as traffic:
        assert traffic.served_more(0)
        client.flushall()
        client.script_flush()  # the script is reloaded on the next call
        assert traffic.served_more(traffic.done)
    assert traffic.failures == []
    assert state_events(events) == []
    client.close()
    hub.close()


def test_a_hub_whose_redis_is_down_from_the_start_serves_on_local_state(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    require_redis()
    down = RedisServer(tmp_path)  # never started: nothing listens on its port
    hub, events = resilient_hub(down, upstream)
    hub.register(OpenAICompatible("limited", upstream.base_url, ["n"]))
    assert hub.complete("m", HI).provider == "a"
    assert state_events(events) == ["state.degraded"]
    # Limits hold on local state meanwhile.
    limited = Hub(
        Config.from_mapping(
            {
                "router": ROUTER,
                "providers": {"a": {"rpm": 1}},
                "state": {"backend": "redis", "url": down.url, "connect_timeout": 0.05},
            }
        ),
        load_plugins=False,
    )
    limited.register(OpenAICompatible("a", upstream.base_url, ["m"]))
    limited.complete("m", HI)
    with pytest.raises(RateLimitedError):
        limited.complete("m", HI)
    limited.close()
    hub.close()
