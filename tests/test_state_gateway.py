"""Two ``provhub serve`` processes behind one Redis share one limit (SPEC §13, §15).

Marked ``redis``: a real ``redis-server`` on a free loopback port, two real gateway
processes, a fake upstream; clients race both gateways at once for one ``rpm``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway_support import FAST_ROUTER, Gateway
from provhub.testing import FakeUpstream
from redis_support import RedisServer, require_redis

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(tmp_path) as server:
        yield server


def test_two_gateways_behind_one_redis_hold_one_rpm_limit_exactly(
    redis_server: RedisServer, upstream: FakeUpstream
) -> None:
    config = (
        FAST_ROUTER
        + f'\n[state]\nbackend = "redis"\nurl = "{redis_server.url}"\ntimeout = 2.0\n'
        + f'\n[providers.a]\ntype = "openai-compatible"\nbase_url = "{upstream.base_url}"\n'
        + 'models = ["gpt-4"]\nrpm = 12\n'
    )
    statuses: Counter[int] = Counter()
    retry_after: list[str] = []
    lock = threading.Lock()
    with Gateway(config) as one, Gateway(config) as two:
        start = threading.Barrier(8)

        def client(url: str) -> None:
            session = requests.Session()
            start.wait()
            for _ in range(5):
                answer = session.post(
                    url + "/v1/chat/completions",
                    json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
                    timeout=10,
                )
                with lock:
                    statuses[answer.status_code] += 1
                    if answer.status_code == 429:
                        retry_after.append(answer.headers.get("retry-after", ""))
            session.close()

        threads = [
            threading.Thread(target=client, args=(server.url,))
            for server in (one, two, one, two, one, two, one, two)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == {200: 12, 429: 28}
    assert len(upstream.requests) == 12
    assert all(value.isdigit() and int(value) >= 1 for value in retry_after)
