"""A Hub in front of a hostile upstream (tests/hostile.py): fallback, deadlines, breakers.

The transport-level outcomes are in tests/test_hostile_transport.py; here the same
kinds of upstream sit behind a real Hub with a healthy fallback (a FakeUpstream),
to check what the caller and the router make of them: a non-stream 200 fails over
instead of being an empty success, a complete answer is not reported interrupted,
a redirect is not followed, retries never carry a call past its deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.hostile import (
    Close,
    Hold,
    HostileServer,
    Read,
    Repeat,
    Send,
    Step,
    Trickle,
    chunk,
    chunked,
    completion_json,
    event,
    head,
    sse,
)

from provhub import (
    AllProvidersFailedError,
    FinishReason,
    Hub,
    ProviderError,
    StreamInterruptedError,
    Usage,
)
from provhub.testing import Behaviour, FakeUpstream
from provhub_providers.openai_compatible import OpenAICompatible

MODEL = "gpt-4"
MESSAGES = [{"role": "user", "content": "hi"}]
TIMEOUTS = {"connect": 1.0, "first_token": 1.0, "idle": 0.5, "total": 3.0}
MARGIN = 1.0
BACKUP = Behaviour(tokens=("from ", "backup"))
MakeHub = Callable[..., Hub]


def _hub(make_hub: MakeHub, primary: str, backup: str | None = None, **router: Any) -> Hub:
    hub = make_hub(timeouts=router.pop("timeouts", TIMEOUTS), retries=1, **router)
    hub.register(OpenAICompatible("hostile", primary, [MODEL], default_model=MODEL))
    if backup is not None:
        hub.register(OpenAICompatible("backup", backup, [MODEL]))
    return hub


def _always(response: bytes) -> list[Step]:
    return [Repeat((Read(), Send(response)))]


NOT_A_STREAM: dict[str, list[Step]] = {
    "html_200": _always(head(content_type="text/html", framing="length", length=6) + b"<html>"),
    "empty_200": _always(head(framing="length", length=0)),
    "no_content_204": _always(head(204, "No Content", content_type=None, framing="none")),
    "switching_101": [
        Read(),
        Send(head(101, "Switching", content_type=None, framing="none")),
        Hold(),
    ],
    "truncated_header_block": [
        Read(),
        Send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event"),
        Close(),
    ],
    "not_a_completion_json": _always(
        head(content_type="application/json", framing="length", length=2) + b"{}"
    ),
}


@pytest.mark.parametrize("case", list(NOT_A_STREAM))
def test_a_200_that_is_not_an_event_stream_fails_over_to_the_healthy_provider(
    make_hub: MakeHub, upstream: FakeUpstream, case: str
) -> None:
    upstream.default = BACKUP
    script = NOT_A_STREAM[case]
    with HostileServer([script, script], default=script) as server:
        hub = _hub(make_hub, server.base_url, upstream.base_url)
        with hub.stream(MODEL, MESSAGES) as stream:
            text = "".join(stream)
    assert text == "from backup"
    assert stream.provider == "backup"
    failed = [a for a in stream.attempts if not a.ok]
    assert [a.provider for a in failed] in (["hostile"], ["hostile", "hostile"])
    assert all(a.error_type == "UpstreamProtocolError" for a in failed)


@pytest.mark.parametrize("case", list(NOT_A_STREAM))
def test_a_200_that_is_not_an_event_stream_alone_is_an_error_never_an_empty_answer(
    make_hub: MakeHub, case: str
) -> None:
    script = NOT_A_STREAM[case]
    with HostileServer([script, script], default=script) as server:
        hub = _hub(make_hub, server.base_url)
        with pytest.raises(AllProvidersFailedError) as caught:
            "".join(hub.stream(MODEL, MESSAGES))
    assert caught.value.attempts
    assert isinstance(caught.value.__cause__, ProviderError)


def test_a_json_completion_answering_a_stream_request_is_the_answer(make_hub: MakeHub) -> None:
    body = completion_json("Hello there", finish="length")
    reply = head(content_type="application/json", framing="length", length=len(body)) + body
    with HostileServer(default=_always(reply)) as server:
        hub = _hub(make_hub, server.base_url)
        with hub.stream(MODEL, MESSAGES) as stream:
            items = list(stream.items())
    assert items == ["Hello there", FinishReason("length"), Usage(1, 1, 2)]
    assert stream.finish_reason == "length"


def test_a_200_error_json_answering_a_stream_request_is_the_upstream_error(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    upstream.default = BACKUP
    body = json.dumps({"error": {"message": "model overloaded", "code": 503}}).encode()
    reply = head(content_type="application/json", framing="length", length=len(body)) + body
    with HostileServer(default=_always(reply)) as server:
        hub = _hub(make_hub, server.base_url, upstream.base_url)
        with hub.stream(MODEL, MESSAGES) as stream:
            assert "".join(stream) == "from backup"
    assert stream.attempts[0].status == 503
    assert "model overloaded" in (stream.attempts[0].error or "")


def _events_of(hub: Hub) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    hub.subscribe(lambda e: events.append(dict(e)))
    return events


WHOLE = [*sse(("Hel", "lo"), done=False), event({"choices": [], "usage": {"total_tokens": 2}})]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param([Send(head() + chunked(WHOLE)[:-5]), Hold()], id="stall-without-done"),
        pytest.param(
            [Send(head(framing="length", length=9999) + b"".join(WHOLE[:3])), Close()],
            id="overstated-length-then-close",
        ),
        pytest.param(
            [Send(head(framing="length", length=9999) + b"".join(WHOLE[:3])), Hold()],
            id="overstated-length-then-stall",
        ),
    ],
)
def test_a_stream_that_fails_after_its_finish_reason_is_a_complete_answer(
    make_hub: MakeHub, upstream: FakeUpstream, tail: list[Step]
) -> None:
    with HostileServer([[Read(), *tail]]) as server:
        hub = _hub(make_hub, server.base_url, upstream.base_url)
        events = _events_of(hub)
        started = time.monotonic()
        with hub.stream(MODEL, MESSAGES) as stream:
            text = "".join(stream)
        took = time.monotonic() - started
    assert text == "Hello"
    assert stream.finish_reason == "stop"
    assert [a.ok for a in stream.attempts] == [True]
    names = [e["event"] for e in events]
    assert "stream.tail_failed" in names
    assert "stream.interrupted" not in names
    assert "stream.completed" in names
    assert took < TIMEOUTS["idle"] + MARGIN  # the idle budget at most
    assert hub.health()["hostile"]["consecutive_failures"] == 0


def test_a_failure_before_the_finish_reason_still_interrupts(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    partial = sse(("Hel", "lo"), finish=None, done=False)
    with HostileServer([[Read(), Send(head() + b"".join(chunk(e) for e in partial)), Hold()]]) as s:
        hub = _hub(make_hub, s.base_url, upstream.base_url)
        with pytest.raises(StreamInterruptedError) as caught, hub.stream(MODEL, MESSAGES) as stream:
            "".join(stream)
    assert caught.value.text == "Hello"


@pytest.mark.parametrize("status", [301, 307, 308])
def test_a_redirect_fails_over_without_following_it(
    make_hub: MakeHub, upstream: FakeUpstream, status: int
) -> None:
    upstream.default = BACKUP
    with HostileServer(default=_always(b"")) as elsewhere:
        reply = head(
            status, "Moved", [("Location", elsewhere.base_url)], framing="length", length=0
        )
        with HostileServer(default=_always(reply)) as server:
            hub = _hub(make_hub, server.base_url, upstream.base_url)
            result = hub.complete(MODEL, MESSAGES)
    assert result.text == "from backup"
    (failed,) = [a for a in result.attempts if not a.ok]  # not retried
    assert failed.status == status
    assert failed.retryable is False
    assert f"127.0.0.1:{elsewhere.port}" in (failed.error or "")
    assert elsewhere.requests == []


@pytest.mark.parametrize("mode", ["stream", "complete"])
def test_retries_never_carry_a_call_past_its_total_deadline(make_hub: MakeHub, mode: str) -> None:
    # Each attempt trickles its header block (a byte every 20 ms, each inside any
    # per-read timeout); five retries are allowed, the total is 1.5 s.
    trickle = [Read(), Send(b"HTTP/1.1 200 OK\r\n"), Trickle(b"X-Slow: " + b"a" * 10_000, 0.02)]
    timeouts = {"connect": 5.0, "first_token": 0.8, "idle": 5.0, "total": 1.5}
    with HostileServer(default=trickle) as server:
        hub = _hub(make_hub, server.base_url, timeouts=timeouts, backoff_base=0.0)
        started = time.monotonic()
        call = hub.complete if mode == "complete" else lambda *a: "".join(hub.stream(*a))
        with pytest.raises(AllProvidersFailedError) as caught:
            call(MODEL, MESSAGES)
        took = time.monotonic() - started
    assert took < 1.5 + 0.5
    assert {a.error_type for a in caught.value.attempts} == {"UpstreamTimeoutError"}


def test_a_provider_running_out_of_memory_is_not_retried_as_a_connection_error(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    upstream.default = BACKUP

    class Greedy:
        name = "greedy"
        models = (MODEL,)
        supports_stream = True

        @staticmethod
        def create_completion(model: str, messages: Any, stream: bool, **kw: Any) -> Any:
            raise MemoryError()
            yield ""  # pragma: no cover

    hub = make_hub(retries=3)
    hub.register(Greedy)
    hub.register(OpenAICompatible("backup", upstream.base_url, [MODEL]))
    result = hub.complete(MODEL, MESSAGES)
    assert result.text == "from backup"
    (failed,) = [a for a in result.attempts if not a.ok]
    assert failed.retryable is False
    assert "memory" in (failed.error or "")


def test_a_real_out_of_memory_while_reading_is_not_a_retryable_connection_error() -> None:
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "tests.probes", "out-of-memory"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=repo,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # The MemoryError reaches the run, which maps it (not retryable); it is never
    # turned into "connection broke" on the way.
    assert done.stdout.strip() == "MemoryError", done.stdout


def test_provhub_chat_exits_non_zero_on_a_200_that_is_not_a_stream(tmp_path: Path) -> None:
    reply = head(content_type="text/html", framing="length", length=6) + b"<html>"
    with HostileServer(default=_always(reply)) as server:
        config = tmp_path / "provhub.toml"
        config.write_text(
            "[router]\nretries = 0\n"
            "timeouts = { connect = 1.0, first_token = 1.0, idle = 0.5, total = 3.0 }\n"
            '[providers.remote]\ntype = "openai-compatible"\n'
            f'url = "{server.base_url}"\nmodels = ["gpt-4"]\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
        env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path), PROVHUB_CONFIG=str(config))
        done = subprocess.run(
            [sys.executable, "-m", "provhub", "chat", "-m", "gpt-4", "hello"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert done.stdout == ""
    assert "text/html" in done.stderr
    assert "Traceback" not in done.stderr
