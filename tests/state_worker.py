"""A hub in its own process, driven by JSON lines on stdin (for the replica tests).

``python tests/state_worker.py CONFIG_JSON ENDPOINTS_JSON``: ``CONFIG_JSON`` is a
``Config.from_mapping`` mapping (with a ``[state]`` table naming the test's Redis),
``ENDPOINTS_JSON`` a list of ``[name, base_url, [models]]``. Each command line gets
one JSON answer line:

- ``{"op": "complete", "model": M}`` -> ``{"provider": P}`` or ``{"error": TYPE, ...}``
- ``{"op": "route", "model": M}`` -> the plan's ``as_dict()``
- ``{"op": "health"}`` -> ``hub.health()``
- ``{"op": "open", "model": M}`` -> starts a stream and keeps it, unread: ``{"opened": true}``
- ``{"op": "burst", "model": M, "n": N, "threads": T, "at": UNIX_TIME}`` -> N requests
  from T threads starting together at ``at``: ``{"ok": K, "limited": L, "other": O}``
- ``{"op": "quit"}``
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from typing import Any

from provhub import Config, Hub, RateLimitedError
from provhub_providers import OpenAICompatible

HI = [{"role": "user", "content": "hi"}]


def complete(hub: Hub, model: str) -> dict[str, Any]:
    try:
        return {"provider": hub.complete(model, HI).provider}
    except RateLimitedError as exc:
        return {"error": "RateLimitedError", "retry_after": exc.retry_after}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


def burst(hub: Hub, model: str, n: int, threads: int, at: float) -> dict[str, int]:
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    jobs = iter(range(n))

    def work() -> None:
        time.sleep(max(0.0, at - time.time()))
        while True:
            with lock:
                if next(jobs, None) is None:
                    return
            result = complete(hub, model)
            kind = (
                "ok"
                if "provider" in result
                else "limited"
                if result["error"] == "RateLimitedError"
                else "other"
            )
            with lock:
                counts[kind] += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"ok": counts["ok"], "limited": counts["limited"], "other": counts["other"]}


def main() -> None:
    config = Config.from_mapping(json.loads(sys.argv[1]))
    hub = Hub(config, load_plugins=False)
    for name, base_url, models in json.loads(sys.argv[2]):
        hub.register(OpenAICompatible(name, base_url, models))
    print(json.dumps({"ready": True}), flush=True)
    streams: list[Any] = []
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            break
        answer: Any
        if op == "complete":
            answer = complete(hub, command["model"])
        elif op == "route":
            answer = hub.route(command["model"]).as_dict()
        elif op == "health":
            answer = hub.health()
        elif op == "open":
            streams.append(hub.stream(command["model"], HI))
            answer = {"opened": True}
        elif op == "burst":
            answer = burst(hub, command["model"], command["n"], command["threads"], command["at"])
        else:
            answer = {"error": f"unknown op {op!r}"}
        print(json.dumps(answer), flush=True)
    hub.close()


if __name__ == "__main__":
    main()
