"""The yardsticks: a minimal hand-written ``requests`` client and a raw-socket probe.

``RawClient`` is the baseline of /work/shared/PERFORMANCE.md, kept as plain as a
user would write it: one ``requests.Session`` (defaults, so ``trust_env`` is on),
``iter_lines`` and one ``json.loads`` per ``data:`` line. It reads every stream to
its end (skipping ``[DONE]`` instead of breaking out) so its connection returns to
the pool, as PERFORMANCE.md warns.

``probe_upstream`` measures the fake upstream itself with a raw socket client, to
show it is not the bottleneck of any number here.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

__all__ = ["MESSAGES", "RawClient", "probe_upstream"]

MESSAGES = [{"role": "user", "content": "Say hello."}]
TIMEOUT = (10.0, 60.0)


class RawClient:
    """The baseline: what a user hand-writes with requests, nothing more."""

    def __init__(self, base_url: str, *, pool_maxsize: int | None = None) -> None:
        self.url = base_url + "/chat/completions"
        self.session = requests.Session()
        if pool_maxsize is not None:
            # Only for the threaded workload: the default pool keeps 10 connections, so
            # 16 threads would reconnect all the time and flatter whoever compares.
            adapter = HTTPAdapter(pool_maxsize=pool_maxsize)
            self.session.mount("http://", adapter)

    def complete(self, model: str, messages: list[dict[str, Any]]) -> str:
        """One non-streamed request; the answer's text."""
        payload = {"model": model, "messages": messages, "stream": False}
        response = self.session.post(self.url, json=payload, timeout=TIMEOUT)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

    def stream(self, model: str, messages: list[dict[str, Any]]) -> Iterator[str]:
        """One streamed request; yields each ``delta.content``."""
        payload = {"model": model, "messages": messages, "stream": True}
        with self.session.post(self.url, json=payload, stream=True, timeout=TIMEOUT) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    continue  # read on to the end so the connection is reused
                chunk = json.loads(data)
                choices = chunk.get("choices")
                if choices:
                    content = choices[0].get("delta", {}).get("content")
                    if content:
                        yield content

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()


def _request_bytes(url: str, stream: bool) -> tuple[tuple[str, int], bytes]:
    parts = urlsplit(url + "/chat/completions")
    body = json.dumps({"model": "gpt-4", "messages": MESSAGES, "stream": stream}).encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return (parts.hostname or "127.0.0.1", parts.port or 80), head + body


def _read_sized(sock: socket.socket, buf: bytearray) -> bytearray:
    """Read one Content-Length response off ``sock``; return bytes read past it."""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).lower()
    start = head.index(b"content-length:") + 15
    length = int(head[start : head.index(b"\r\n", start)])
    while len(buf) < end + length:
        buf += sock.recv(65536)
    return buf[end + length :]


def _read_chunked_to_end(sock: socket.socket, buf: bytearray) -> int:
    """Read a chunked response to its terminating zero-size chunk; return bytes read."""
    total = len(buf)
    tail = bytes(buf[-7:])
    while not tail.endswith(b"\r\n0\r\n\r\n"):
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("upstream closed mid-stream")
        total += len(data)
        tail = (tail + data)[-7:]
    return total


def probe_upstream(
    short_url: str, stream_url: str, chunks: int, *, seconds: float = 1.0, streams: int = 5
) -> dict[str, float]:
    """The fake upstream's own capacity, seen by a raw-socket HTTP/1.1 client.

    Returns sequential non-streamed requests per second on one keep-alive
    connection, and streamed chunks per second (median of ``streams`` streams).
    """
    address, request = _request_bytes(short_url, stream=False)
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        for _ in range(50):  # warm-up
            sock.sendall(request)
            buf = _read_sized(sock, buf)
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            sock.sendall(request)
            buf = _read_sized(sock, buf)
            count += 1
        elapsed = time.perf_counter() - started
    address, request = _request_bytes(stream_url, stream=True)
    rates = []
    with socket.create_connection(address) as sock:
        for _ in range(streams + 1):
            started = time.perf_counter()
            sock.sendall(request)
            _read_chunked_to_end(sock, bytearray())
            rates.append(chunks / (time.perf_counter() - started))
    rates = sorted(rates[1:])  # the first builds the server's cached answer
    return {
        "sequential_req_per_s": count / elapsed,
        "sequential_us_per_req": elapsed / count * 1e6,
        "stream_chunks_per_s": rates[len(rates) // 2],
    }
