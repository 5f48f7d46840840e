"""Tool-call assembly: time per fragment from 1,000 to 100,000 fragments (issue 14).

Two measurements, each at every size in ``TOOL_FRAGMENTS``:

- the assembler alone (``ToolCallAssembler.add`` for every fragment, then ``calls()``),
  for OpenAI's framing and for the two quirk paths that do extra work (fragments found by
  a repeated id; the id-less, index-less framing that needs the JSON completeness scan);
- through the hub over a loopback upstream (``hub.stream(...).items()`` consumed, then
  ``stream.tool_calls``), side by side with a hand-written ``requests`` loop that
  accumulates ``delta.tool_calls`` by index, in the same rounds.

Every timed block handles the same number of fragments (100 answers of 1,000, ten of
10,000, one of 100,000), so caches, collections and machine noise weigh alike at each
size.

Linear means the time per fragment does not grow with the size: the figure reported is
the per-fragment time at 100,000 divided by the one at 1,000.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from provhub import Capability, Config, Hub, ToolCall, ToolCallDelta
from provhub._toolcalls import ToolCallAssembler
from provhub_providers import OpenAICompatible

from .baseline import MESSAGES, RawClient
from .workloads import MODEL, Settings, interleave, median, paired_ratio

__all__ = [
    "ARGUMENT_CHUNK",
    "TOOL_FRAGMENTS",
    "assembler_workload",
    "tool_calls_for",
    "toolcall_stream_workload",
]

TOOL_FRAGMENTS = (1_000, 10_000, 100_000)
ARGUMENT_CHUNK = 4
TOOLS = [
    {"type": "function", "function": {"name": "write_file"}},
    {"type": "function", "function": {"name": "append_log"}},
]


def tool_calls_for(fragments: int) -> tuple[ToolCall, ...]:
    """Two parallel calls that stream as ``fragments`` fragments in all.

    Each call is one header fragment (id, name) plus argument pieces of
    ``ARGUMENT_CHUNK`` characters, OpenAI's framing.
    """
    per_call = fragments // 2 - 1
    calls = []
    for number, name in enumerate(("write_file", "append_log")):
        body = "".join(
            chr(97 + (i * 7 + number) % 26) for i in range(per_call * ARGUMENT_CHUNK - 15)
        )
        arguments = '{"content": "' + body + '"}'
        assert len(arguments) == per_call * ARGUMENT_CHUNK
        calls.append(ToolCall(f"call_{name}", name, arguments))
    return tuple(calls)


# -- the assembler alone ---------------------------------------------------------------------


def _deltas(calls: tuple[ToolCall, ...], framing: str) -> list[ToolCallDelta]:
    out: list[ToolCallDelta] = []
    for index, call in enumerate(calls):
        pieces = [
            call.arguments[i : i + ARGUMENT_CHUNK]
            for i in range(0, len(call.arguments), ARGUMENT_CHUNK)
        ]
        if framing == "openai":
            out.append(ToolCallDelta(index, call.id, call.name, ""))
            out += [ToolCallDelta(index, None, None, p) for p in pieces]
        elif framing == "repeated_id_no_index":
            out.append(ToolCallDelta(None, call.id, call.name, ""))
            out += [ToolCallDelta(None, call.id, call.name, p) for p in pieces]
        else:  # no id, no index, name repeated: every fragment takes the completeness scan
            out.append(ToolCallDelta(None, None, call.name, ""))
            out += [ToolCallDelta(None, None, call.name, p) for p in pieces]
    return out


def _assemble(deltas: list[ToolCallDelta]) -> list[ToolCall]:
    assembler = ToolCallAssembler()
    add = assembler.add
    for delta in deltas:
        add(delta)
    return assembler.calls()


def _assembler_block(deltas: list[ToolCallDelta], repeat: int) -> float:
    """Nanoseconds per fragment over ``repeat`` assemblies (mean, not best: every size
    does the same total work, so caches and collections weigh the same at each)."""
    started = time.perf_counter()
    for _ in range(repeat):
        _assemble(deltas)
    return (time.perf_counter() - started) / (repeat * len(deltas)) * 1e9


def assembler_workload(
    settings: Settings, sizes: tuple[int, ...] = TOOL_FRAGMENTS
) -> dict[str, Any]:
    """Nanoseconds per fragment of the assembler alone, per framing and size."""
    framings = ("openai", "repeated_id_no_index", "no_id_no_index_repeated_name")
    rows = []
    for size in sizes:
        calls = tool_calls_for(size)
        inputs = {framing: _deltas(calls, framing) for framing in framings}
        for framing, deltas in inputs.items():
            assembled = _assemble(deltas)
            assert [(c.name, c.arguments) for c in assembled] == [
                (c.name, c.arguments) for c in calls
            ], framing
            assert len(deltas) == size

        # Every block assembles 100,000 fragments: 100 answers of 1,000, ..., one of 100,000.
        repeat = max(1, max(sizes) // size)
        results = interleave(
            {
                framing: functools.partial(_assembler_block, deltas, repeat)
                for framing, deltas in inputs.items()
            },
            settings.rounds,
        )
        rows.append(
            {"fragments": size, "ns_per_fragment": {k: median(v) for k, v in results.items()}}
        )
    return {
        "rows": rows,
        "growth_largest_to_smallest": {
            framing: rows[-1]["ns_per_fragment"][framing] / rows[0]["ns_per_fragment"][framing]
            for framing in framings
        },
    }


# -- through the hub over a loopback upstream ------------------------------------------------


def _raw_tool_calls(raw: RawClient) -> tuple[int, list[tuple[str, str, str]]]:
    """The hand-written loop: (fragments seen, calls as (id, name, arguments))."""
    import json

    calls: dict[int, dict[str, Any]] = {}
    fragments = 0
    payload = {"model": MODEL, "messages": MESSAGES, "stream": True, "tools": TOOLS}
    with raw.session.post(raw.url, json=payload, stream=True, timeout=(10.0, 60.0)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                continue
            chunk = json.loads(data)
            choices = chunk.get("choices")
            if not choices:
                continue
            for call in choices[0].get("delta", {}).get("tool_calls") or ():
                fragments += 1
                entry = calls.setdefault(call["index"], {"id": None, "name": None, "args": []})
                if call.get("id"):
                    entry["id"] = call["id"]
                function = call.get("function") or {}
                if function.get("name"):
                    entry["name"] = function["name"]
                if function.get("arguments"):
                    entry["args"].append(function["arguments"])
    return fragments, [(e["id"], e["name"], "".join(e["args"])) for _, e in sorted(calls.items())]


def _hub_tool_calls(hub: Hub) -> tuple[int, list[tuple[str, str, str]]]:
    fragments = 0
    with hub.stream(MODEL, MESSAGES, tools=TOOLS) as stream:
        for item in stream.items():
            if type(item) is ToolCallDelta:
                fragments += 1
    return fragments, [(c.id, c.name, c.arguments) for c in stream.tool_calls]


def _stream_block(call: Callable[[], tuple[int, Any]], repeat: int) -> float:
    """Microseconds per fragment over ``repeat`` streamed answers (the same total work
    at every size, as for the assembler)."""
    fragments = 0
    started = time.perf_counter()
    for _ in range(repeat):
        fragments += call()[0]
    return (time.perf_counter() - started) / fragments * 1e6


def toolcall_stream_workload(urls: dict[int, str], settings: Settings) -> dict[str, Any]:
    """Microseconds per tool-call fragment delivered: hub vs the raw requests loop."""
    rows = []
    for size, url in sorted(urls.items()):
        expected = [(c.id, c.name, c.arguments) for c in tool_calls_for(size)]
        raw = RawClient(url)
        hub = Hub(Config(), load_plugins=False)
        hub.register(OpenAICompatible("bench", url, [MODEL], capabilities=Capability.TOOLS))
        clients: dict[str, Callable[[], tuple[int, list[tuple[str, str, str]]]]] = {
            "raw": functools.partial(_raw_tool_calls, raw),
            "hub": functools.partial(_hub_tool_calls, hub),
        }
        for name, client in clients.items():
            fragments, calls = client()
            if (fragments, calls) != (size, expected):
                raise RuntimeError(f"{name} assembled wrong tool calls at {size} fragments")
        repeat = max(1, max(urls) // size)
        results = interleave(
            {
                name: functools.partial(_stream_block, client, repeat)
                for name, client in clients.items()
            },
            settings.rounds,
        )
        raw.close()
        hub.close()
        rows.append(
            {
                "fragments": size,
                "us_per_fragment": {name: median(values) for name, values in results.items()},
                "ratio_hub_to_raw_time": paired_ratio(results, "hub"),
                "rounds_us_per_fragment": results,
            }
        )
    return {
        "rows": rows,
        "growth_largest_to_smallest": {
            name: rows[-1]["us_per_fragment"][name] / rows[0]["us_per_fragment"][name]
            for name in ("raw", "hub")
        },
    }
