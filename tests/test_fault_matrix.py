"""The fault matrix: every upstream fault × stream/non-stream × sync/asyncio × alone/with fallback.

Each cell sends one request through a real ``Hub`` to a real loopback ``FakeUpstream`` and
checks the four promises of provhub's reliability contract (docs/reliability.md):

1. the call ends within the request's total timeout plus a small margin;
2. the caller gets either the right answer, every token exactly once, or a provhub error of
   the right type carrying provider, status, delivered text and a chained cause;
3. never a bare ``KeyError``/``JSONDecodeError``/``UnicodeDecodeError``/``IndexError``;
4. the events tell what happened (``attempt.failed`` with ``error_type`` and ``status``,
   ``route.fallback``, ``stream.interrupted``, ``route.exhausted``).

The expected outcome of every fault is decided in ``FAULTS`` below and documented in
docs/reliability.md, which also reports the cell count.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from tests.hostile import (
    ByMode,
    Close,
    Hold,
    HostileServer,
    Pause,
    Read,
    Repeat,
    Send,
    Step,
    Trickle,
    chunk,
    head,
    sse,
)

from provhub import (
    AllProvidersFailedError,
    Hub,
    ProvhubError,
    ProviderError,
    StreamInterruptedError,
)
from provhub.testing import Behaviour, FakeUpstream, Fault, unused_port_url
from provhub_providers.openai_compatible import OpenAICompatible

MODEL = "gpt-4"
MESSAGES = [{"role": "user", "content": "Tell me something."}]

# Short, explicit budgets so a hang costs a fraction of a second; one retry so retrying is
# exercised without doubling the run time. The total is the whole request's deadline.
TIMEOUTS = {"connect": 1.0, "first_token": 0.5, "idle": 0.3, "total": 3.0}
ROUTER = {"retries": 1, "retry_after_cap": 2.0, "timeouts": TIMEOUTS}
# Generous for a loaded 2-core CI machine, small next to the deadline it guards.
MARGIN = 1.0
HANG = 5.0  # longer than any budget above: only a timeout can end it
RETRY_AFTER = 1  # seconds, sent by the 429 cell and honoured exactly

# Multi-byte characters so a token split across reads or mis-decoded would show.
PRIMARY_TOKENS = ("Hé", "llo ", "wörld ", "🙂")
BACKUP_TOKENS = ("from ", "the ", "backup")


@dataclass(frozen=True)
class Outcome:
    """What the caller must see for one fault in one mode (stream or not), alone.

    ``attempts`` is the number of failed attempts on the faulty provider (1 when the
    failure is not retryable, ``retries + 1`` when it is); ``status`` the status each
    carries. With ``interrupted`` the stream breaks after ``partial`` reached the
    caller, so no fallback is allowed. ``recovers``: a retry on the same provider
    succeeds. ``answer`` overrides the expected text of a success (default: the
    behaviour's ``text()``).
    """

    attempts: int = 0
    status: int | None = None
    retryable: bool = False
    interrupted: bool = False
    partial: str = ""
    recovers: bool = False
    answer: str | None = None
    tokens: tuple[str, ...] | None = None  # the streamed tokens, when not the behaviour's


@dataclass(frozen=True)
class FaultCase:
    """A fault: how the primary upstream behaves, and the outcome per mode."""

    behaviours: tuple[Behaviour, ...]  # scripted first, in order
    default: Behaviour  # then this, for every further request
    stream: Outcome
    plain: Outcome
    refused: bool = False  # point the provider at a port nobody listens on
    # A hostile upstream (tests/hostile.py) instead of the FakeUpstream: this script
    # answers every request, on every connection.
    hostile: tuple[Step, ...] | None = None


def _fault(fault: Fault, **kw: Any) -> Behaviour:
    return Behaviour(tokens=PRIMARY_TOKENS, fault=fault, hang_seconds=HANG, **kw)


OK = Behaviour(tokens=PRIMARY_TOKENS)
BACKUP = Behaviour(tokens=BACKUP_TOKENS)
FIRST = PRIMARY_TOKENS[0]
RETRYABLE = Outcome(attempts=2, retryable=True)  # retried once, then given up
FATAL = Outcome(attempts=1)  # not retryable: straight to the next candidate
INTERRUPTED = Outcome(attempts=1, retryable=True, interrupted=True, partial=FIRST)


def _http(status: int, outcome: Outcome, **kw: Any) -> FaultCase:
    behaviour = Behaviour(status=status, **kw)
    return FaultCase((), behaviour, outcome, outcome)


FAULTS: dict[str, FaultCase] = {
    "no_fault": FaultCase((), OK, Outcome(), Outcome()),
    "connection_refused": FaultCase((), OK, RETRYABLE, RETRYABLE, refused=True),
    "drop_after_headers": FaultCase((), _fault(Fault.DROP_AFTER_HEADERS), RETRYABLE, RETRYABLE),
    # After the first token: the stream is committed to this provider (SPEC §5).
    "drop_mid_stream": FaultCase((), _fault(Fault.DROP_MID_STREAM), INTERRUPTED, RETRYABLE),
    # Before any token (only the role chunk went out): still free to retry and fall back.
    "drop_before_first_token": FaultCase(
        (), _fault(Fault.DROP_MID_STREAM, fault_after=0), RETRYABLE, RETRYABLE
    ),
    "hang_before_headers": FaultCase((), _fault(Fault.HANG_BEFORE_HEADERS), RETRYABLE, RETRYABLE),
    "hang_between_chunks": FaultCase((), _fault(Fault.HANG_BETWEEN_CHUNKS), INTERRUPTED, RETRYABLE),
    "hang_before_first_token": FaultCase(
        (), _fault(Fault.HANG_BETWEEN_CHUNKS, fault_after=0), RETRYABLE, RETRYABLE
    ),
    # A broken payload is the upstream's bug: retrying the same provider would repeat it.
    "malformed_json": FaultCase(
        (),
        _fault(Fault.MALFORMED_JSON),
        Outcome(attempts=1, interrupted=True, partial=FIRST),
        FATAL,
    ),
    "malformed_json_first": FaultCase(
        (), _fault(Fault.MALFORMED_JSON, fault_after=0), FATAL, FATAL
    ),
    "invalid_utf8": FaultCase(
        (),
        _fault(Fault.INVALID_UTF8),
        Outcome(attempts=1, interrupted=True, partial=FIRST),
        FATAL,
    ),
    "invalid_utf8_first": FaultCase((), _fault(Fault.INVALID_UTF8, fault_after=0), FATAL, FATAL),
    # Stream: a data line over limits.max_line_bytes (1 MiB) is refused. Without streaming
    # there are no lines: a 1 MiB answer is well inside limits.max_response_bytes.
    "huge_line": FaultCase(
        (),
        _fault(Fault.HUGE_LINE),
        Outcome(attempts=1, interrupted=True, partial=FIRST),
        Outcome(answer="".join(PRIMARY_TOKENS) + "x" * (1 << 20)),
    ),
    "huge_line_first": FaultCase(
        (),
        _fault(Fault.HUGE_LINE, fault_after=0),
        FATAL,
        Outcome(answer="".join(PRIMARY_TOKENS) + "x" * (1 << 20)),
    ),
    # The error object says code 500 (server_error): retryable, in a stream and in a
    # 200 body alike (one wire-format mapping for both).
    "error_object": FaultCase(
        (),
        _fault(Fault.ERROR_OBJECT),
        Outcome(attempts=1, status=500, retryable=True, interrupted=True, partial=FIRST),
        Outcome(attempts=2, status=500, retryable=True),
    ),
    "error_object_first": FaultCase(
        (),
        _fault(Fault.ERROR_OBJECT, fault_after=0),
        Outcome(attempts=2, status=500, retryable=True),
        Outcome(attempts=2, status=500, retryable=True),
    ),
    # One byte every 50 ms: each read is inside the idle budget, but the first token (the
    # whole body without streaming) misses the first-token budget.
    "slow_drip": FaultCase((), _fault(Fault.SLOW_DRIP, drip_interval=0.05), RETRYABLE, RETRYABLE),
    "model_missing": FaultCase((), _fault(Fault.MODEL_MISSING), FATAL, FATAL),
    "http_400": _http(400, Outcome(attempts=1, status=400)),
    "http_401": _http(401, Outcome(attempts=1, status=401)),
    "http_404": _http(404, Outcome(attempts=1, status=404)),
    "http_429_retry_after": _http(
        429, Outcome(attempts=2, status=429, retryable=True), retry_after=str(RETRY_AFTER)
    ),
    "http_500": _http(500, Outcome(attempts=2, status=500, retryable=True)),
    "http_502": _http(502, Outcome(attempts=2, status=502, retryable=True)),
    "http_503": _http(503, Outcome(attempts=2, status=503, retryable=True)),
    "http_500_then_success": FaultCase(
        (Behaviour(status=500),),
        OK,
        Outcome(attempts=1, status=500, retryable=True, recovers=True),
        Outcome(attempts=1, status=500, retryable=True, recovers=True),
    ),
}

# -- hostile upstreams: what FakeUpstream cannot send (issue 12) ------------------------------

_TEXT = "".join(PRIMARY_TOKENS)
_EVENTS = sse(PRIMARY_TOKENS)
_SSE = b"".join(_EVENTS)


def _completion(text: str = _TEXT) -> bytes:
    return json.dumps(
        {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]},
        ensure_ascii=False,
    ).encode()


def _json_reply(body: bytes, status: int = 200, **kw: Any) -> bytes:
    return (
        head(status, content_type="application/json", framing="length", length=len(body), **kw)
        + body
    )


def _hostile(stream: Sequence[Step], plain: Sequence[Step] | None = None) -> tuple[Step, ...]:
    """Every request on every connection: read it, then answer by its mode."""
    both = ByMode(tuple(stream), tuple(stream if plain is None else plain))
    return (Repeat((Read(), both)),)


ANSWER = Outcome()
HOSTILE: dict[str, FaultCase] = {
    # A 200 that is not an event stream is never an empty answer (item 2).
    "html_200": FaultCase(
        (),
        OK,
        RETRYABLE,
        FATAL,  # without streaming: "response is not JSON", not worth repeating
        hostile=_hostile(
            [Send(head(content_type="text/html", framing="length", length=6) + b"<html>")]
        ),
    ),
    "empty_200": FaultCase(
        (), OK, RETRYABLE, FATAL, hostile=_hostile([Send(head(framing="length", length=0))])
    ),
    "no_content_204": FaultCase(
        (),
        OK,
        Outcome(attempts=2, status=204, retryable=True),
        Outcome(attempts=2, status=204, retryable=True),
        hostile=_hostile([Send(head(204, "No Content", content_type=None, framing="none"))]),
    ),
    "truncated_header_block": FaultCase(
        (),
        OK,
        RETRYABLE,
        RETRYABLE,
        hostile=_hostile([Send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event"), Close()]),
    ),
    "json_completion_on_a_stream": FaultCase(
        (),
        OK,
        Outcome(tokens=(_TEXT,)),  # the whole answer, as one token
        ANSWER,
        hostile=_hostile([Send(_json_reply(_completion()))]),
    ),
    # Redirects are reported, never followed (item 8).
    "redirect_307": FaultCase(
        (),
        OK,
        Outcome(attempts=1, status=307),
        Outcome(attempts=1, status=307),
        hostile=_hostile(
            [
                Send(
                    head(
                        307,
                        "Moved",
                        [("Location", "http://elsewhere.invalid/v1")],
                        framing="length",
                        length=0,
                    )
                )
            ]
        ),
    ),
    # Complete answers stay complete (item 6).
    "stall_after_done": FaultCase(
        (),
        OK,
        ANSWER,
        ANSWER,
        hostile=_hostile(
            [Send(head() + chunk(_SSE)), Hold()],
            [
                Send(
                    head(content_type="application/json", framing="length", length=9999)
                    + _completion()
                ),
                Hold(),
            ],
        ),
    ),
    "stall_after_finish_reason_without_done": FaultCase(
        (),
        OK,
        ANSWER,
        ANSWER,
        hostile=_hostile(
            [Send(head() + chunk(b"".join(sse(PRIMARY_TOKENS, done=False)))), Hold()],
            [Send(_json_reply(_completion())), Hold()],
        ),
    ),
    "overstated_content_length": FaultCase(
        (),
        OK,
        ANSWER,
        ANSWER,
        hostile=_hostile(
            [Send(head(framing="length", length=len(_SSE) + 100) + _SSE), Close()],
            [
                Send(
                    head(content_type="application/json", framing="length", length=9999)
                    + _completion()
                ),
                Close(),
            ],
        ),
    ),
    "http_1_0_close_delimited": FaultCase(
        (),
        OK,
        ANSWER,
        ANSWER,
        hostile=_hostile(
            [Send(head(version="HTTP/1.0", framing="none") + _SSE), Close()],
            [
                Send(
                    head(version="HTTP/1.0", content_type="application/json", framing="none")
                    + _completion()
                ),
                Close(),
            ],
        ),
    ),
    # Deadlines (items 5 and 7).
    "trickle_in_header_block": FaultCase(
        (),
        OK,
        RETRYABLE,
        RETRYABLE,
        hostile=_hostile([Send(b"HTTP/1.1 200 OK\r\n"), Trickle(b"X-Slow: " + b"a" * 500, 0.02)]),
    ),
    "endless_100_continue": FaultCase(
        (),
        OK,
        RETRYABLE,
        RETRYABLE,
        hostile=_hostile([Repeat((Send(b"HTTP/1.1 100 Continue\r\n\r\n"), Pause(0.02)))]),
    ),
    "trickle_inside_a_chunk": FaultCase(
        (),
        OK,
        INTERRUPTED,  # the total budget ends it, after the first token
        RETRYABLE,
        hostile=_hostile(
            [Send(head() + chunk(_EVENTS[0]) + b"100000\r\n"), Trickle(b"d" * 500, 0.05)],
            [
                Send(head(content_type="application/json", framing="length", length=99999)),
                Trickle(b" " * 500, 0.05),
            ],
        ),
    ),
    "silence_on_connection_close": FaultCase(
        (),
        OK,
        INTERRUPTED,  # the idle budget holds on a close-delimited body too
        RETRYABLE,
        hostile=_hostile(
            [Send(head(framing="close") + _EVENTS[0]), Hold()],
            [
                Send(head(content_type="application/json", framing="close") + b'{"choices": '),
                Hold(),
            ],
        ),
    ),
    # Framing nobody should send.
    "conflicting_content_lengths": FaultCase(
        (),
        OK,
        RETRYABLE,
        RETRYABLE,
        hostile=_hostile(
            [Send(head(framing="length", length=5, headers=[("Content-Length", "9")]) + b"x" * 9)]
        ),
    ),
    "bad_chunk_size_after_a_token": FaultCase(
        (),
        OK,
        Outcome(attempts=1, retryable=True, interrupted=True, partial=FIRST),
        RETRYABLE,
        hostile=_hostile(
            [Send(head() + chunk(_EVENTS[0]) + b"zz\r\n"), Hold()],
            [Send(head(content_type="application/json") + b"zz\r\n"), Hold()],
        ),
    ),
    "non_utf8_reason_phrase_500": FaultCase(
        (),
        OK,
        Outcome(attempts=2, status=500, retryable=True),
        Outcome(attempts=2, status=500, retryable=True),
        hostile=_hostile([Send(b"HTTP/1.1 500 \xff\xfe\x1b[31m\r\nContent-Length: 0\r\n\r\n")]),
    ),
}
FAULTS.update(HOSTILE)

MODES = ("stream", "complete")
APIS = ("sync", "asyncio")
ROUTES = ("alone", "with_fallback")
BARE = (KeyError, IndexError, UnicodeDecodeError, ValueError, TypeError, AttributeError)


# -- the four ways to call -------------------------------------------------------------------


Call = Callable[[Hub], tuple[list[str], ProvhubError | None]]


def _sync_stream(hub: Hub) -> tuple[list[str], ProvhubError | None]:
    tokens: list[str] = []
    try:
        with hub.stream(MODEL, MESSAGES) as stream:
            for token in stream:
                tokens.append(token)
    except ProvhubError as exc:  # anything else is a bug and fails the cell
        return tokens, exc
    return tokens, None


def _sync_complete(hub: Hub) -> tuple[list[str], ProvhubError | None]:
    try:
        return [hub.complete(MODEL, MESSAGES).text], None
    except ProvhubError as exc:
        return [], exc


def _async_stream(hub: Hub) -> tuple[list[str], ProvhubError | None]:
    async def run() -> tuple[list[str], ProvhubError | None]:
        tokens: list[str] = []
        try:
            async with hub.astream(MODEL, MESSAGES) as stream:
                async for token in stream:
                    tokens.append(token)
        except ProvhubError as exc:
            return tokens, exc
        return tokens, None

    return asyncio.run(run())


def _async_complete(hub: Hub) -> tuple[list[str], ProvhubError | None]:
    async def run() -> tuple[list[str], ProvhubError | None]:
        try:
            return [(await hub.acomplete(MODEL, MESSAGES)).text], None
        except ProvhubError as exc:
            return [], exc

    return asyncio.run(run())


CALLS: dict[tuple[str, str], Call] = {
    ("stream", "sync"): _sync_stream,
    ("complete", "sync"): _sync_complete,
    ("stream", "asyncio"): _async_stream,
    ("complete", "asyncio"): _async_complete,
}


# -- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_ends_in_time_with_the_answer_or_a_typed_error(
    fault: str,
    mode: str,
    api: str,
    route: str,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    make_hub: Callable[..., Hub],
) -> None:
    case = FAULTS[fault]
    expect = case.stream if mode == "stream" else case.plain
    upstream.default = case.default
    upstream.script(*case.behaviours)
    second_upstream.default = BACKUP
    hub = make_hub(**ROUTER)
    events: list[dict[str, Any]] = []
    hub.subscribe(lambda event: events.append(dict(event)))
    primary_url = unused_port_url() if case.refused else upstream.base_url
    hostile = None
    if case.hostile is not None:
        hostile = HostileServer(default=list(case.hostile)).__enter__()
        primary_url = hostile.base_url
    hub.register(OpenAICompatible("primary", primary_url, [MODEL]))
    if route == "with_fallback":
        hub.register(OpenAICompatible("backup", second_upstream.base_url, [MODEL]))

    started = time.monotonic()
    try:
        tokens, error = CALLS[(mode, api)](hub)
    finally:
        if hostile is not None:
            hostile.stop()
    elapsed = time.monotonic() - started

    # 1. In time.
    assert elapsed < TIMEOUTS["total"] + MARGIN, f"took {elapsed:.2f} s"

    fails = expect.attempts > 0 and not expect.recovers
    falls_back = route == "with_fallback" and fails and not expect.interrupted
    # 2. The right answer, or the right typed error.
    if not fails or falls_back:
        assert error is None, f"expected an answer, got {error!r}"
        answering = BACKUP if falls_back else case.default
        if mode == "stream":
            # Every token exactly once, in order, all from one provider.
            wanted = expect.tokens if expect.tokens and not falls_back else None
            assert tokens == list(wanted or answering.answer_tokens())
        else:
            answer = expect.answer if expect.answer and not falls_back else answering.text()
            assert tokens == [answer]
    elif expect.interrupted:
        assert isinstance(error, StreamInterruptedError), repr(error)
        assert error.provider == "primary"
        assert error.text == expect.partial == "".join(tokens)
        assert isinstance(error.cause, ProviderError)
        assert error.cause.provider == "primary"
        assert error.cause.status == expect.status
        assert error.__cause__ is not None
    else:
        assert isinstance(error, AllProvidersFailedError), repr(error)
        assert tokens == []
        assert [a.provider for a in error.attempts] == ["primary"] * expect.attempts
        assert [a.status for a in error.attempts] == [expect.status] * expect.attempts
        assert all(a.error_type and not a.ok for a in error.attempts)
        assert all(a.retryable is expect.retryable for a in error.attempts)
        cause = error.__cause__
        assert isinstance(cause, ProviderError), repr(cause)
        assert cause.provider == "primary"
        assert cause.status == expect.status
    # 3. Never a bare parsing exception: provhub errors only, anything raw only as a cause.
    if error is not None:
        assert isinstance(error, AllProvidersFailedError | StreamInterruptedError)
        assert not isinstance(error, BARE)

    # 4. The events tell the story.
    request_ids = {e["request_id"] for e in events if "request_id" in e}
    assert len(request_ids) == 1
    request_events = [e for e in events if e["event"] != "provider.registered"]
    for event in request_events:
        assert {"request_id", "model", "provider", "attempt"} <= event.keys(), event
    names = [e["event"] for e in request_events]
    failed = [e for e in request_events if e["event"] == "attempt.failed"]
    assert [e["provider"] for e in failed] == ["primary"] * expect.attempts
    for event in failed:
        assert event["status"] == expect.status
        assert event["retryable"] is expect.retryable
        assert isinstance(event["error_type"], str)
        assert event["error_type"]
    fallbacks = [e for e in request_events if e["event"] == "route.fallback"]
    if falls_back:
        assert [(e["from_provider"], e["to_provider"]) for e in fallbacks] == [
            ("primary", "backup")
        ]
    else:
        assert fallbacks == []
    assert ("stream.interrupted" in names) is (error is not None and expect.interrupted)
    assert ("route.exhausted" in names) is isinstance(error, AllProvidersFailedError)
    completed = [e["provider"] for e in request_events if e["event"] == "stream.completed"]
    assert completed == ([] if error else ["backup" if falls_back else "primary"])

    if fault == "http_429_retry_after":
        # Retry-After is honoured exactly (it is within retry_after_cap), not jittered.
        assert failed[0]["backoff_ms"] == RETRY_AFTER * 1000
        assert elapsed >= RETRY_AFTER


def test_matrix_covers_every_fault_the_fake_upstream_can_inject() -> None:
    fake = [case for case in FAULTS.values() if case.hostile is None]
    injected = {b.fault for case in fake for b in (*case.behaviours, case.default)}
    assert injected == set(Fault)
    statuses = {b.status for case in fake for b in (*case.behaviours, case.default)}
    assert {400, 401, 404, 429, 500, 502, 503} <= statuses
    assert any(case.refused for case in FAULTS.values())
