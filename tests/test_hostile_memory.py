"""Memory per request is bounded by ``[limits]``, whatever the framing or encoding.

Each case runs in a subprocess of its own, so its peak RSS (``ru_maxrss``) is its
own: a hostile server in that process sends a decompression bomb, a single
gigabyte chunk or an event of millions of short lines, and the transport must fail
with the limit's error while the peak stays near the baseline measured after a
warm-up call. Before the fix, a 1 MB gzip chunk inflating to 1 GiB took the
process to 2 GiB (docs/reliability.md, "Bounded memory").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, resource, sys, zlib
sys.path.insert(0, sys.argv[1])
from provhub import Limits, ProviderError, Timeouts, Transport, parse_chat_stream
from tests.hostile import Flood, Hold, HostileServer, Read, Repeat, Send, chunk, chunked, head, sse

GIB = 1 << 30

def bomb(wrapper):
    # 1 GiB of repeated bytes in about 1 MB: one fully flushed deflate segment
    # repeated (the trailer is never reached: the limit trips long before).
    block = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n' if case.endswith("events") else b" " * 1024
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    seg = c.compress(block * 1024) + c.flush(zlib.Z_FULL_FLUSH)
    head_bytes = {"gzip": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", "deflate": b"\x78\x9c"}[wrapper]
    return head_bytes + seg * (GIB // (1024 * len(block))) + c.flush() + b"\0" * 8

case, mode = sys.argv[2], sys.argv[3]
if case.startswith(("gzip", "deflate")):
    coding = case.split("_")[0]
    body = bomb(coding)
    ctype = "application/json" if mode == "json" else "text/event-stream"
    script = [Read(), Send(head(content_type=ctype, headers=[("Content-Encoding", coding)]) + chunk(body) + b"0\r\n\r\n"), Hold()]
elif case == "one_gib_plain_chunk":
    ctype = "application/json" if mode == "json" else "text/event-stream"
    script = [Read(), Send(head(content_type=ctype) + b"40000000\r\n" + (b"data: " if mode == "stream" else b"")), Flood(b"x" * 65536)]
elif case == "event_of_8m_short_lines":
    script = [Read(), Send(head() + b"4000000\r\n"), Flood(b"data:x\n" * 8192)]
else:
    raise SystemExit("unknown case " + case)

warm = [Read(), Send(head() + chunked(sse(["a", "b"]))), Hold()]
with HostileServer([warm, script]) as server:
    transport = Transport()
    timeouts = Timeouts(connect=2, first_token=20, idle=10, total=30)
    url = server.base_url + "/chat/completions"
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert "".join(parse_chat_stream(transport.stream_sse(url, payload, headers={}, timeouts=timeouts, provider="p"), "p", markers=False)) == "ab"
    transport.close()  # the second connection gets the hostile script
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = {"error": None, "tokens": 0}
    try:
        if mode == "json":
            transport.post_json(url, payload, headers={}, timeouts=timeouts, provider="p")
        else:
            for _ in parse_chat_stream(transport.stream_sse(url, payload, headers={}, timeouts=timeouts, provider="p"), "p"):
                outcome["tokens"] += 1
    except ProviderError as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc.detail}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    transport.close()
outcome.update(baseline_mib=baseline / 1024, peak_mib=peak / 1024)
print(json.dumps(outcome))
"""

CASES = [
    # (case, mode, error the limit gives, allowed growth of the peak in MiB)
    ("gzip_bomb", "json", "max_response_bytes", 64 + 48),
    ("gzip_bomb", "stream", "max_line_bytes", 48),
    ("gzip_bomb_events", "stream", "max_response_bytes", 48),
    ("deflate_bomb", "json", "max_response_bytes", 64 + 48),
    ("deflate_bomb_events", "stream", "max_response_bytes", 48),
    ("one_gib_plain_chunk", "stream", "max_line_bytes", 48),
    ("one_gib_plain_chunk", "json", "max_response_bytes", 64 + 48),
    ("event_of_8m_short_lines", "stream", "max_event_bytes", 48),
]


@pytest.mark.parametrize(("case", "mode", "limit", "growth"), CASES)
def test_peak_memory_is_bounded_by_the_limits(
    case: str, mode: str, limit: str, growth: int, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO), case, mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["error"] is not None and limit in outcome["error"], outcome
    assert outcome["peak_mib"] - outcome["baseline_mib"] < growth, outcome
