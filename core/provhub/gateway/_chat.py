"""``POST /v1/chat/completions``: an OpenAI chat request in, the hub's answer out.

The request is parsed and checked here (JSON object, ``model``, ``stream``,
``stream_options``); messages and parameters are validated by the hub itself,
before any I/O, and its :class:`InvalidRequestError` becomes a 400. Everything
the gateway does not interpret passes through to the provider as a parameter.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provhub import _openai
from provhub._config import Timeouts
from provhub._errors import ProvhubError
from provhub.gateway._errors import GatewayError, deadline_error, from_exception, from_failure
from provhub.gateway._http import DisconnectWatch, new_request_id, request_id_of, send_bytes
from provhub.gateway._limits import ClientGone, Deadline, read_body
from provhub.gateway._sse import CLIENT_CLOSED, stream_answer

__all__ = ["ChatEndpoint", "ChatRequest", "parse_chat_request", "request_timeouts"]

# Fields of the OpenAI request the gateway consumes itself; the rest are params.
_OWN = frozenset({"model", "messages", "stream", "stream_options"})
# Names that would collide with the hub's own keyword arguments.
_RESERVED = frozenset({"provider", "require", "timeouts"})


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A parsed chat-completions request."""

    model: str
    messages: Any
    stream: bool
    include_usage: bool
    params: dict[str, Any]
    created: int


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, code="invalid_request", param=param)


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse a request body; raises :class:`GatewayError` (400) saying what is wrong."""
    if not body:
        raise _bad("the request body is empty; send a JSON object with model and messages")
    try:
        # UTF-8 only (RFC 8259 §8.1), decoded here: json.loads on bytes would
        # guess UTF-16/32 from the first bytes.
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad("the request body is not UTF-8 JSON") from None
    except ValueError as exc:
        raise _bad(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise _bad("the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise _bad(f"the request body must be a JSON object, got {type(data).__name__}")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: a non-empty string", "model")
    if "messages" not in data:
        raise _bad("'messages' is required: a list of {role, content} objects", "messages")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {stream!r:.40}", "stream")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object", "stream_options")
        if not stream:
            raise _bad("'stream_options' is only allowed with 'stream': true", "stream_options")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _bad("'stream_options.include_usage' must be true or false", "stream_options")
    reserved = _RESERVED.intersection(data)
    if reserved:
        name = sorted(reserved)[0]
        raise _bad(f"parameter {name!r} is not accepted by the gateway", name)
    n = data.get("n")
    if n is not None and n != 1:
        raise _bad("only 'n': 1 is supported (one choice per request)", "n")
    params = {k: v for k, v in data.items() if k not in _OWN and k != "n"}
    return ChatRequest(
        model=model,
        messages=data["messages"],
        stream=stream,
        include_usage=include_usage,
        params=params,
        created=int(time.time()),
    )


def request_timeouts(base: Timeouts, deadline: float) -> Timeouts:
    """The hub's timeouts with ``total`` capped by the request's deadline."""
    if base.total <= deadline:
        return base
    return Timeouts(base.connect, base.first_token, base.idle, deadline)


class ChatEndpoint:
    """The ASGI app of ``POST /v1/chat/completions``.

    ``on_response(status)`` is told the status of every answer (499 when the
    client went away first), for the gateway's HTTP metrics.
    """

    def __init__(
        self,
        hub: Any,
        *,
        max_body_bytes: int,
        deadline: float,
        on_response: Callable[[int], None] | None = None,
    ) -> None:
        self._hub = hub
        self._max_body = max_body_bytes
        self._deadline = deadline
        self._on_response = on_response

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        deadline = Deadline(self._deadline)
        client_id, _ = request_id_of(scope)
        status = 500
        try:
            if scope["method"] != "POST":
                raise GatewayError(
                    405,
                    "use POST for /v1/chat/completions",
                    code="method_not_allowed",
                    headers=((b"allow", b"POST"),),
                )
            body = await read_body(scope, receive, self._max_body)
            request = parse_chat_request(body)
            status = await self._answer(scope, receive, send, request, client_id, deadline)
        except ClientGone:
            status = 499
        except GatewayError as error:
            status = error.status
            request_id = client_id or new_request_id()
            await send_bytes(
                send, error.status, error.body(), [(b"x-request-id", request_id), *error.headers]
            )
        finally:
            if self._on_response is not None:
                self._on_response(status)

    async def _answer(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        request: ChatRequest,
        client_id: bytes | None,
        deadline: Deadline,
    ) -> int:
        hub = self._hub
        timeouts = request_timeouts(hub.config.router.timeouts, deadline.remaining())
        if not request.stream:
            watch = DisconnectWatch(receive)
            return await self._complete(send, request, client_id, deadline, timeouts, watch)
        try:
            astream = hub.astream(
                request.model, request.messages, timeouts=timeouts, **request.params
            )
        except ProvhubError as exc:
            raise from_exception(exc) from exc
        watch = DisconnectWatch(receive)
        request_id = client_id or astream.request_id.encode()
        return await stream_answer(
            send,
            astream,
            completion_id=f"chatcmpl-{astream.request_id}",
            created=request.created,
            model=request.model,
            include_usage=request.include_usage,
            headers=[(b"x-request-id", request_id)],
            deadline=deadline,
            watch=watch,
        )

    async def _complete(
        self,
        send: Any,
        request: ChatRequest,
        client_id: bytes | None,
        deadline: Deadline,
        timeouts: Timeouts,
        watch: DisconnectWatch,
    ) -> int:
        try:
            async with asyncio.timeout(deadline.remaining()):
                result = await self._hub.acomplete(
                    request.model, request.messages, timeouts=timeouts, **request.params
                )
        except asyncio.CancelledError:
            if watch.absorb():
                return CLIENT_CLOSED
            raise
        except TimeoutError:
            error = deadline_error(deadline.seconds)
        except ProvhubError as exc:
            error = from_failure(exc, deadline)
        else:
            watch.stop()
            body = _openai.completion_body(
                f"chatcmpl-{result.request_id}", request.created, request.model, result
            )
            headers = [
                (b"x-request-id", client_id or result.request_id.encode()),
                (b"x-provhub-provider", result.provider.encode()),
            ]
            await send_bytes(send, 200, body, headers)
            return 200
        finally:
            watch.stop()
        headers = [(b"x-request-id", client_id or new_request_id()), *error.headers]
        if error.provider:
            headers.append((b"x-provhub-provider", error.provider.encode()))
        await send_bytes(send, error.status, error.body(), headers)
        return error.status
