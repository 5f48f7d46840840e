"""The streamed answer: OpenAI ``chat.completion.chunk`` events over SSE.

The HTTP status is decided before the first token (SPEC §13): the first item
of the hub's stream is awaited before any header goes out, so a request that
retries or falls back to another provider still gets ``200`` and one clean
stream, and a request that fails before it gets the right status and an error
object. After the first token, a failure becomes one SSE error event and the
stream ends (without ``[DONE]``, so a client can tell it is incomplete).

Writes are coalesced: every token the hub has ready goes out in one HTTP chunk
(see :mod:`provhub.gateway._poll`), and the buffer is flushed the moment the
next token is not ready, so a paced stream is never held back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from provhub import _openai
from provhub._errors import ProvhubError
from provhub.gateway._errors import GatewayError, deadline_error, from_failure
from provhub.gateway._http import DisconnectWatch, Headers, send_bytes
from provhub.gateway._limits import Deadline
from provhub.gateway._poll import Resume, ready, step

__all__ = ["CLIENT_CLOSED", "stream_answer"]

# nginx's "client closed request": what the metrics record for a disconnect.
CLIENT_CLOSED = 499
# Most events written in one HTTP chunk while tokens keep coming.
_BATCH = 256
_SSE_HEADERS: Headers = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx and similar proxies must not buffer a stream (see the deployment docs).
    (b"x-accel-buffering", b"no"),
)


async def stream_answer(
    send: Callable[..., Any],
    astream: Any,
    *,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    headers: list[tuple[bytes, bytes]],
    deadline: Deadline,
    watch: DisconnectWatch,
) -> int:
    """Write the answer of ``astream`` as SSE; returns the status sent (499 on disconnect)."""
    encoder = _openai.ChunkEncoder(completion_id, created, model, include_usage=include_usage)
    started = False
    error: GatewayError | None = None
    # Encoded events not written yet: on a failure they go out before the error.
    pending: list[bytes] = []
    iterator = astream.items().__aiter__()
    try:
        async with asyncio.timeout(deadline.remaining()):
            try:
                first = await iterator.__anext__()
            except StopAsyncIteration:
                first = None
            provider = (astream.provider or "").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*_SSE_HEADERS, *headers, (b"x-provhub-provider", provider)],
                }
            )
            started = True
            pending.append(encoder.role())
            if first is not None:
                pending.append(encoder.item(first))
                await _pump(send, iterator, encoder, pending)
            reason = astream.finish_reason or ("tool_calls" if astream.tool_calls else None)
            pending.append(encoder.finish(reason))
            pending.append(encoder.usage(astream.usage))
            pending.append(_openai.DONE)
            watch.stop()
            await send({"type": "http.response.body", "body": b"".join(pending)})
            return 200
    except asyncio.CancelledError:
        if watch.absorb():
            return CLIENT_CLOSED
        raise
    except TimeoutError:
        error = deadline_error(deadline.seconds)
    except ProvhubError as exc:
        error = from_failure(exc, deadline)
    finally:
        watch.stop()
        await astream.aclose()
    if not started:
        provider_headers = (
            [(b"x-provhub-provider", error.provider.encode())] if error.provider else []
        )
        await send_bytes(
            send, error.status, error.body(), [*headers, *error.headers, *provider_headers]
        )
        return error.status
    pending.append(error.event())
    await send({"type": "http.response.body", "body": b"".join(pending)})
    return error.status


async def _pump(
    send: Callable[..., Any], iterator: Any, encoder: _openai.ChunkEncoder, pending: list[bytes]
) -> None:
    """Copy items to the client until the stream ends, one write per ready batch."""
    encode = encoder.item
    while True:
        coro = iterator.__anext__()
        try:
            result, yielded = step(coro)
            if not ready(result):
                # Nothing buffered: send what we hold before waiting for more.
                if pending:
                    await send(
                        {"type": "http.response.body", "body": b"".join(pending), "more_body": True}
                    )
                    pending.clear()
                item = await Resume(coro, yielded)
            else:
                item = result
        except StopAsyncIteration:
            return
        except BaseException:
            coro.close()
            raise
        pending.append(encode(item))
        if len(pending) >= _BATCH:
            await send({"type": "http.response.body", "body": b"".join(pending), "more_body": True})
            pending.clear()
