"""A small asyncio HTTP/1.1 load generator: keep-alive connections, raw bytes, no framework.

The gateway benchmark measures servers, so the client must cost as little as possible and
the same for every server: one persistent connection per simulated client, requests written
as prepared bytes, responses parsed just enough (status, ``Content-Length`` or chunked body)
and SSE events counted by their ``\\n\\n`` terminators.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

__all__ = ["Connection", "Reply", "prepare"]


@dataclass(slots=True)
class Reply:
    """One response: status, SSE events counted, body size, first-byte and end times."""

    status: int
    events: int
    size: int
    first_event: float | None
    ended: float


def prepare(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """A complete POST request as bytes (or GET when ``body`` is empty)."""
    lines = [
        f"{'POST' if body else 'GET'} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: */*",
    ]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Connect (64 KiB reads: a long stream arrives in few reads)."""
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    def close(self) -> None:
        """Close the socket."""
        self._writer.close()

    async def request(self, raw: bytes) -> Reply:
        """Send ``raw`` and read the whole response."""
        self._writer.write(raw)
        reader = self._reader
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lowered = head.lower()
        events = 0
        size = 0
        first: float | None = None
        if b"transfer-encoding: chunked" in lowered:
            tail = b""
            while True:
                line = await reader.readuntil(b"\r\n")
                length = int(line.split(b";", 1)[0], 16)
                if length == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = await reader.readexactly(length + 2)
                payload = tail + data[:-2]
                found = payload.count(b"\n\n")
                if found and first is None:
                    first = time.perf_counter()
                events += found
                size += length
                tail = payload[-1:]
        else:
            start = lowered.find(b"content-length:")
            if start < 0:
                raise ValueError("response without Content-Length or chunked encoding")
            end = lowered.index(b"\r\n", start)
            length = int(lowered[start + 15 : end])
            body = await reader.readexactly(length)
            size = length
            events = body.count(b"\n\n")
            first = time.perf_counter()
        if b"connection: close" in lowered:
            self._writer.close()
        return Reply(status, events, size, first, time.perf_counter())
