"""Measurements that need a process of their own, run as ``python -m tests.probes NAME ...``.

- ``memory CASE MODE``: peak RSS while the transport reads one hostile answer (a
  decompression bomb, a 1 GiB chunk, an event of 8 M short lines); prints JSON.
  MODE ``astream`` reads the stream through ``Hub.astream`` on the event loop.
- ``out-of-memory``: a real ``MemoryError`` while reading a body, under a capped
  address space; prints what reached the caller.

Used by tests/test_hostile_memory.py and tests/test_hostile_hub.py.
"""

from __future__ import annotations

import json
import resource
import sys
import zlib
from typing import Any

from tests.hostile import Flood, Hold, HostileServer, Read, Send, Step, chunk, chunked, head, sse

from provhub import Limits, ProvhubError, ProviderError, Timeouts, Transport, parse_chat_stream

GIB = 1 << 30
PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
TIMEOUTS = Timeouts(connect=2, first_token=20, idle=10, total=30)
EVENT = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
_MAGIC = {"gzip": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", "deflate": b"\x78\x9c"}


def bomb(coding: str, block: bytes) -> bytes:
    """1 GiB of ``block`` repeated, in about 1 MB of ``coding`` (gzip or deflate).

    One fully flushed deflate segment, repeated; the trailer is never reached (a
    limit trips long before), so it is left as zeros.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = compressor.compress(block * 1024) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeats = GIB // (1024 * len(block))
    return _MAGIC[coding] + segment * repeats + compressor.flush() + b"\0" * 8


def _script(case: str, mode: str) -> list[Step]:
    mode = "stream" if mode == "astream" else mode
    ctype = "application/json" if mode == "json" else "text/event-stream"
    if case.startswith(("gzip", "deflate")):
        coding = case.split("_")[0]
        body = bomb(coding, EVENT if case.endswith("events") else b" " * 1024)
        reply = head(content_type=ctype, headers=[("Content-Encoding", coding)])
        return [Read(), Send(reply + chunk(body) + b"0\r\n\r\n"), Hold()]
    if case == "one_gib_plain_chunk":
        start = b"data: " if mode == "stream" else b""
        return [
            Read(),
            Send(head(content_type=ctype) + b"40000000\r\n" + start),
            Flood(b"x" * 65536),
        ]
    if case == "event_of_8m_short_lines":
        return [Read(), Send(head() + b"4000000\r\n"), Flood(b"data:x\n" * 8192)]
    raise SystemExit(f"unknown case {case!r}")


def _stream(transport: Transport, url: str) -> Any:
    events = transport.stream_sse(url, PAYLOAD, headers={}, timeouts=TIMEOUTS, provider="p")
    return parse_chat_stream(events, "p")


def _astream_memory(case: str) -> dict[str, Any]:
    """:func:`memory` through ``Hub.astream``: the loop reads the socket itself."""
    import asyncio

    from provhub import Config, Hub, StreamInterruptedError
    from provhub_providers import OpenAICompatible

    warm = [Read(), Send(head() + chunked(sse(["a", "b"]))), Hold()]
    outcome: dict[str, Any] = {"error": None, "tokens": 0}
    config = Config.from_mapping(
        {"router": {"retries": 0, "timeouts": {"connect": 2, "first_token": 20, "total": 30}}}
    )

    async def read(hub: Hub) -> list[str]:
        tokens = []
        async with hub.astream("m", PAYLOAD["messages"]) as stream:
            async for token in stream:
                tokens.append(token)
                outcome["tokens"] += 1
        return tokens

    with HostileServer([warm, _script(case, "astream")]) as server:
        for phase in ("warm", "hostile"):
            hub = Hub(config, load_plugins=False)  # a new pool: the next connection
            hub.register(OpenAICompatible("p", server.base_url, ["m"]))
            if phase == "warm":
                assert asyncio.run(read(hub)) == ["a", "b"]
                outcome["tokens"] = 0
                baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            else:
                try:
                    asyncio.run(read(hub))
                except ProvhubError as exc:
                    cause = exc.cause if isinstance(exc, StreamInterruptedError) else exc.__cause__
                    detail = cause.detail if isinstance(cause, ProviderError) else repr(exc)
                    outcome["error"] = f"{type(cause).__name__}: {detail}"
            hub.close()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome.update(baseline_mib=baseline / 1024, peak_mib=peak / 1024)
    return outcome


def memory(case: str, mode: str) -> dict[str, Any]:
    """Peak RSS growth (MiB) while one hostile answer is read, and how it ended."""
    if mode == "astream":
        return _astream_memory(case)
    warm = [Read(), Send(head() + chunked(sse(["a", "b"]))), Hold()]
    outcome: dict[str, Any] = {"error": None, "tokens": 0}
    with HostileServer([warm, _script(case, mode)]) as server:
        url = server.base_url + "/chat/completions"
        transport = Transport()
        assert [t for t in _stream(transport, url) if type(t) is str] == ["a", "b"]
        transport.close()  # the next connection gets the hostile script
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            if mode == "json":
                transport.post_json(url, PAYLOAD, headers={}, timeouts=TIMEOUTS, provider="p")
            else:
                for _ in _stream(transport, url):
                    outcome["tokens"] += 1
        except ProviderError as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc.detail}"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        transport.close()
    outcome.update(baseline_mib=baseline / 1024, peak_mib=peak / 1024)
    return outcome


def out_of_memory() -> str:
    """Read a gigabyte-long JSON body with the address space capped near current use."""
    reply = head(content_type="application/json", framing="length", length=GIB)
    with HostileServer(default=[Read(), Send(reply), Flood(b" " * 65536)]) as server:
        transport = Transport(limits=Limits(max_response_bytes=2 * GIB))
        with open("/proc/self/status", encoding="ascii") as status:
            size = next(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (size + (300 << 20), resource.RLIM_INFINITY))
        try:
            transport.post_json(
                server.base_url + "/chat/completions",
                PAYLOAD,
                headers={},
                timeouts=TIMEOUTS,
                provider="p",
            )
            result = "answer"
        except MemoryError:
            result = "MemoryError"
        except ProviderError as exc:
            result = f"{type(exc).__name__} retryable={exc.retryable}: {exc}"
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)
            transport.close()
    return result


if __name__ == "__main__":
    if sys.argv[1] == "memory":
        print(json.dumps(memory(sys.argv[2], sys.argv[3])))
    elif sys.argv[1] == "out-of-memory":
        print(out_of_memory())
    else:
        raise SystemExit("usage: python -m tests.probes memory CASE MODE | out-of-memory")
