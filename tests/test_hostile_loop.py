"""The hostile cases of test_hostile_transport, through ``Hub.astream`` on the event loop.

An asyncio-native provider's stream is sent and read by provhub._loopwire on a
non-blocking socket, not by requests: every stream case of the transport's
table must end the same way there (the answer, or the same typed error within
the same time bound), and the event loop must stay free while it does. A
differential check then holds the loop path to the sync path on every case.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from tests.hostile import HostileServer, Read, Repeat, Send, head, sse_response
from tests.test_hostile_transport import ANSWER, CASES, TEXT, Case

from provhub import (
    AllProvidersFailedError,
    Hub,
    ProviderError,
    StreamInterruptedError,
)
from provhub_providers import OpenAICompatible

MakeHub = Callable[..., Hub]

STREAM_CASES = [name for name, case in CASES.items() if case.mode == "stream"]
JSON_CASES = [name for name, case in CASES.items() if case.mode == "json"]
# Where the hub's answer differs from the transport's outcome: a JSON completion
# sent for a stream request is the transport's JSONAnswerError, and the
# provider's answer.
HUB_TEXT = {"json_body_on_a_stream_request": "Hello"}


class Lag:
    """The event loop's worst lateness while a call runs (a 5 ms ticker)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lag:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - due)


def _hub(make_hub: MakeHub, url: str, case: Case) -> Hub:
    timeouts = case.timeouts
    hub = make_hub(
        retries=0,
        timeouts={
            "connect": timeouts.connect,
            "first_token": timeouts.first_token,
            "idle": timeouts.idle,
            "total": timeouts.total,
        },
    )
    hub.register(OpenAICompatible("hostile", url, ["m"]))
    return hub


def _underlying(error: BaseException) -> BaseException:
    """The provider's error behind the hub's: what the transport raised."""
    if isinstance(error, StreamInterruptedError):
        return error.cause
    if isinstance(error, AllProvidersFailedError) and error.__cause__ is not None:
        return error.__cause__
    return error


async def _astream(
    hub: Hub, collected: list[str]
) -> tuple[str | None, BaseException | None, float]:
    async with Lag() as lag:
        try:
            async with hub.astream("m", [{"role": "user", "content": "hi"}]) as stream:
                async for token in stream:
                    collected.append(token)
        except Exception as exc:  # the outcome under test
            return None, exc, lag.worst
    return "".join(collected), None, lag.worst


def _sync_stream(hub: Hub, collected: list[str]) -> tuple[str | None, BaseException | None]:
    try:
        with hub.stream("m", [{"role": "user", "content": "hi"}]) as stream:
            for token in stream:
                collected.append(token)
    except Exception as exc:
        return None, exc
    return "".join(collected), None


def _holds(
    case: Case,
    expected: str | None,
    text: str | None,
    error: BaseException | None,
    port: int,
    elapsed: float,
    lag: float,
) -> None:
    """The outcome is the case's: ``expected`` text, or its typed error, in time."""
    if expected is not None:
        assert error is None, repr(error)
        assert text == expected
    else:
        assert error is not None, f"no error; answer {text!r}"
        cause = _underlying(error)
        assert isinstance(cause, case.error or ProviderError), repr(cause)
        assert isinstance(cause, ProviderError)
        assert re.search(case.match, str(cause)), str(cause)
        assert cause.retryable is case.retryable
        assert cause.provider == "hostile"
        assert cause.host == f"127.0.0.1:{port}"
    assert case.min_time <= elapsed < case.within, f"{elapsed=:.2f}"
    # Whatever the upstream does, the loop is never held: its waits are the loop's.
    assert lag < 0.25, f"the event loop was held for {lag * 1000:.0f} ms"


@pytest.mark.parametrize("name", STREAM_CASES)
def test_hostile_case_through_astream_on_the_loop_ends_as_on_the_sync_path(
    name: str, make_hub: MakeHub
) -> None:
    case = CASES[name]
    with HostileServer([case.script]) as server:
        hub = _hub(make_hub, server.base_url, case)
        collected: list[str] = []
        started = time.monotonic()
        text, error, lag = asyncio.run(_astream(hub, collected))
        elapsed = time.monotonic() - started
        assert len(server.requests) == 1
    _holds(case, HUB_TEXT.get(name, case.text), text, error, server.port, elapsed, lag)
    assert "".join(collected) == (case.after if error is not None else text)

    # The same case through the sync path: the same outcome, class and text.
    with HostileServer([case.script]) as server:
        hub = _hub(make_hub, server.base_url, case)
        sync_collected: list[str] = []
        sync_text, sync_error = _sync_stream(hub, sync_collected)
    assert sync_text == text
    assert type(sync_error) is type(error)
    if error is not None:
        assert type(_underlying(sync_error)) is type(_underlying(error))  # type: ignore[arg-type]
    assert sync_collected == collected


async def _acomplete(hub: Hub) -> tuple[str | None, BaseException | None, float]:
    async with Lag() as lag:
        try:
            answer = await hub.acomplete("m", [{"role": "user", "content": "hi"}])
        except Exception as exc:  # the outcome under test
            return None, exc, lag.worst
    return answer.text, None, lag.worst


def _complete(hub: Hub) -> tuple[str | None, BaseException | None]:
    try:
        return hub.complete("m", [{"role": "user", "content": "hi"}]).text, None
    except Exception as exc:
        return None, exc


@pytest.mark.parametrize("name", JSON_CASES)
def test_hostile_json_case_through_acomplete_on_the_loop_ends_as_on_the_sync_path(
    name: str, make_hub: MakeHub
) -> None:
    case = CASES[name]
    with HostileServer([case.script]) as server:
        hub = _hub(make_hub, server.base_url, case)
        started = time.monotonic()
        text, error, lag = asyncio.run(_acomplete(hub))
        elapsed = time.monotonic() - started
        assert len(server.requests) == 1
    _holds(case, case.text, text, error, server.port, elapsed, lag)
    with HostileServer([case.script]) as server:
        sync_text, sync_error = _complete(_hub(make_hub, server.base_url, case))
    assert sync_text == text
    assert type(sync_error) is type(error)
    if error is not None:
        assert type(_underlying(sync_error)) is type(_underlying(error))  # type: ignore[arg-type]


def test_acomplete_runs_on_the_loop_and_reuses_its_connection(make_hub: MakeHub) -> None:
    from tests.hostile import completion_json
    from tests.test_hostile_transport import _json_body

    reply = Repeat((Read(), Send(_json_body(completion_json("Hi")))))
    with HostileServer(default=[reply]) as server:
        hub = make_hub()
        hub.register(OpenAICompatible("hostile", server.base_url, ["m"]))
        threads: set[str] = set()
        hub.subscribe(lambda event: threads.add(threading.current_thread().name))

        async def main() -> list[str]:
            return [
                (await hub.acomplete("m", [{"role": "user", "content": "hi"}])).text
                for _ in range(3)
            ]

        assert asyncio.run(main()) == ["Hi"] * 3
        assert server.connections == 1
        assert b'"stream":false' in server.requests[0]
        assert threads == {threading.current_thread().name}  # all on the loop's thread


def test_loop_streams_reuse_one_keepalive_connection(make_hub: MakeHub) -> None:
    answer = Repeat((Read(), Send(sse_response(ANSWER))))
    with HostileServer(default=[answer]) as server:
        hub = make_hub()
        hub.register(OpenAICompatible("hostile", server.base_url, ["m"]))

        async def main() -> list[str]:
            texts = []
            for _ in range(3):
                async with hub.astream("m", [{"role": "user", "content": "hi"}]) as stream:
                    texts.append("".join([token async for token in stream]))
            return texts

        assert asyncio.run(main()) == [TEXT] * 3
        assert server.connections == 1
        assert len(server.requests) == 3


def test_a_stale_pooled_connection_is_not_reused(make_hub: MakeHub) -> None:
    # The first answer says keep-alive, then the server closes the connection: the
    # next stream must see the idle socket is dead and open a new one, not fail.
    first = (Read(), Send(sse_response(ANSWER)))
    later = [Repeat((Read(), Send(sse_response(ANSWER))))]
    with HostileServer([first], default=later) as server:
        hub = make_hub(retries=0)
        hub.register(OpenAICompatible("hostile", server.base_url, ["m"]))

        async def one() -> str:
            async with hub.astream("m", [{"role": "user", "content": "hi"}]) as stream:
                return "".join([token async for token in stream])

        async def main() -> list[str]:
            texts = [await one()]
            await asyncio.sleep(0.2)  # the server closed the first connection meanwhile
            texts.append(await one())
            return texts

        assert asyncio.run(main()) == [TEXT, TEXT]
        assert server.connections == 2


@pytest.mark.parametrize("status", [401, 429, 500, 503])
def test_an_error_status_on_the_loop_reads_its_body_and_maps_like_the_sync_path(
    make_hub: MakeHub, status: int
) -> None:
    body = b'{"error": {"message": "nope: sk-secret-123", "type": "server_error"}}'
    reply = (
        head(status, "Err", content_type="application/json", framing="length", length=len(body))
        + body
    )
    outcomes: list[Any] = []
    for mode in ("loop", "sync"):
        with HostileServer(default=[Repeat((Read(), Send(reply)))]) as server:
            hub = make_hub(retries=0)
            hub.register(OpenAICompatible("hostile", server.base_url, ["m"]))
            if mode == "loop":
                _, error, _ = asyncio.run(_astream(hub, []))
            else:
                _, error = _sync_stream(hub, [])
        assert isinstance(error, AllProvidersFailedError)
        message = re.sub(r"127\.0\.0\.1:\d+", "HOST", str(error.__cause__))
        outcomes.append((type(error.__cause__), message, error.attempts[0].status))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][2] == status
    assert "nope" in outcomes[0][1]
