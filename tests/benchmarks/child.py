"""Client processes for the peak-RSS workload: ``python -m tests.benchmarks.child KIND ...``.

Each process runs one client through the same work (sequential requests, then
streams of ``STREAM_CHUNKS`` tokens) and prints its peak resident set size
(``ru_maxrss``) as JSON. Only the standard library is imported before the client's
own imports, so the figure is the client's.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

SEQUENTIAL = 200
STREAMS = 3
MESSAGES = [{"role": "user", "content": "Say hello."}]


def _raw(short_url: str, stream_url: str) -> int:
    import requests

    session = requests.Session()
    for _ in range(SEQUENTIAL):
        response = session.post(
            short_url + "/chat/completions",
            json={"model": "gpt-4", "messages": MESSAGES, "stream": False},
            timeout=(10, 60),
        )
        response.raise_for_status()
        response.json()["choices"][0]["message"]["content"]
    count = 0
    for _ in range(STREAMS):
        with session.post(
            stream_url + "/chat/completions",
            json={"model": "gpt-4", "messages": MESSAGES, "stream": True},
            stream=True,
            timeout=(10, 60),
        ) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith(b"data: ") and line[6:] != b"[DONE]":
                    choices = json.loads(line[6:]).get("choices")
                    if choices and choices[0].get("delta", {}).get("content"):
                        count += 1
    return count


def _hub(short_url: str, stream_url: str, events: bool) -> int:
    import provhub
    from provhub_providers import OpenAICompatible

    if events:
        import logging
        import tempfile

        provhub.configure_logging(format="json")
        sink = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the process)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sink)
    hub = provhub.Hub(provhub.Config(), load_plugins=False)
    hub.register(OpenAICompatible("short", short_url, ["gpt-4"]))
    hub.register(OpenAICompatible("long", stream_url, ["gpt-4-long"]))
    for _ in range(SEQUENTIAL):
        hub.complete("gpt-4", MESSAGES)
    count = 0
    for _ in range(STREAMS):
        for _token in hub.stream("gpt-4-long", MESSAGES):
            count += 1
    hub.close()
    return count


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB: ``VmHWM``, else ``ru_maxrss``.

    ``ru_maxrss`` alone is wrong for a child started by ``subprocess``: Linux carries
    the parent's high-water mark across ``vfork``/``exec`` into it, so every child
    reported the benchmark process's own peak. ``VmHWM`` belongs to the new address
    space only.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    # Linux and most BSDs report ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str]) -> None:
    """Run the client named by ``argv[0]``; print tokens streamed and peak RSS."""
    kind, short_url, stream_url = argv
    result: dict[str, Any] = {"kind": kind}
    if kind == "raw":
        result["tokens"] = _raw(short_url, stream_url)
    elif kind in ("hub", "hub_events_on"):
        result["tokens"] = _hub(short_url, stream_url, events=kind == "hub_events_on")
    else:
        raise SystemExit(f"unknown client {kind!r}")
    result["max_rss_kib"] = peak_rss_kib()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
