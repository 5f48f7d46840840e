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
    # The same streams read on the event loop (Hub.astream, provhub._loopwire).
    ("gzip_bomb", "astream", "max_line_bytes", 48),
    ("gzip_bomb_events", "astream", "max_response_bytes", 48),
    ("deflate_bomb_events", "astream", "max_response_bytes", 48),
    ("one_gib_plain_chunk", "astream", "max_line_bytes", 48),
    ("event_of_8m_short_lines", "astream", "max_event_bytes", 48),
]


@pytest.mark.parametrize(("case", "mode", "limit", "growth"), CASES)
def test_peak_memory_is_bounded_by_the_limits(
    case: str, mode: str, limit: str, growth: int
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.probes", "memory", case, mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["error"] is not None, outcome
    assert limit in outcome["error"], outcome
    assert outcome["peak_mib"] - outcome["baseline_mib"] < growth, outcome
