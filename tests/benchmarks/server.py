"""The benchmark's upstreams: ``provhub.testing.FakeUpstream`` in a process of its own.

The fake runs in a separate interpreter so its request handling does not compete with
the measured client for the GIL (the machine has two cores: one for the client, one
for the server). ``python -m tests.benchmarks.server`` prints one JSON line with the
URLs and serves until its stdin closes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["BURST_CHUNKS", "PACED_CHUNKS", "PACED_DELAY", "STREAM_CHUNKS", "Upstreams"]

STREAM_CHUNKS = 20_000
# A stream at a model's pace (500 tokens/s) for the event-loop lag of a realistic answer.
PACED_CHUNKS = 250
PACED_DELAY = 0.002
# Short streams at a model's pace, for hundreds of astreams started at once.
BURST_CHUNKS = 20
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Upstreams:
    """Two loopback fakes in a child process.

    ``short_url`` answers with the default three-token answer (sequential and threaded
    requests); ``stream_url`` answers with ``STREAM_CHUNKS`` distinct tokens, one SSE
    event per HTTP chunk, as real servers flush them, all at once; ``paced_url`` sends
    ``PACED_CHUNKS`` tokens ``PACED_DELAY`` seconds apart; ``burst_url`` sends
    ``BURST_CHUNKS`` tokens ``PACED_DELAY`` seconds apart (keep-alive); ``tool_urls``
    answer with two parallel tool calls streamed as 1,000, 10,000 and 100,000 fragments.
    """

    short_url: str = ""
    stream_url: str = ""
    paced_url: str = ""
    burst_url: str = ""
    tool_urls: dict[int, str] = field(default_factory=dict)
    stream_chunks: int = STREAM_CHUNKS
    _process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Upstreams:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmarks.server", str(self.stream_chunks)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the fake upstream process did not start")
        urls = json.loads(line)
        self.short_url = urls["short"]
        self.stream_url = urls["stream"]
        self.paced_url = urls["paced"]
        self.burst_url = urls["burst"]
        self.tool_urls = {int(size): url for size, url in urls["tools"].items()}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # the child serves until its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serve(chunks: int) -> None:
    import contextlib

    from provhub.testing import Behaviour, FakeUpstream

    from .toolcalls import ARGUMENT_CHUNK, TOOL_FRAGMENTS, tool_calls_for

    # record=False: no per-request memory, so the server stays flat over a long run.
    with contextlib.ExitStack() as stack:
        short = stack.enter_context(FakeUpstream(record=False))
        stream = stack.enter_context(FakeUpstream(record=False, default=Behaviour(chunks=chunks)))
        paced = stack.enter_context(
            FakeUpstream(
                record=False, default=Behaviour(chunks=PACED_CHUNKS, chunk_delay=PACED_DELAY)
            )
        )
        burst = stack.enter_context(
            FakeUpstream(
                record=False, default=Behaviour(chunks=BURST_CHUNKS, chunk_delay=PACED_DELAY)
            )
        )
        tools = {
            size: stack.enter_context(
                FakeUpstream(
                    record=False,
                    default=Behaviour(
                        tokens=(), tool_calls=tool_calls_for(size), argument_chunk=ARGUMENT_CHUNK
                    ),
                )
            ).base_url
            for size in TOOL_FRAGMENTS
        }
        urls = {
            "short": short.base_url,
            "stream": stream.base_url,
            "paced": paced.base_url,
            "burst": burst.base_url,
            "tools": tools,
        }
        print(json.dumps(urls), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else STREAM_CHUNKS)
