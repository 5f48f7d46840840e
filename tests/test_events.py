"""Structured events (SPEC §7): names, fields, redaction, and what the library leaves alone.

Events are collected in-process with ``hub.subscribe`` and, where the stdlib/structlog side
matters (nothing configured on import, ``configure_logging`` feeding the host's handlers), in
a fresh interpreter, since logging configuration is process-global.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.contextvars import bound_contextvars

from provhub import AllProvidersFailedError, Hub, StreamInterruptedError
from provhub._events import redact
from provhub.testing import Behaviour, FakeUpstream, Fault
from provhub_providers import OpenAICompatible

PROMPT_SENTINEL = "PROMPT-SENTINEL-7f3a"
SYSTEM_SENTINEL = "SYSTEM-SENTINEL-91c2"
ANSWER_SENTINEL = "ANSWER-SENTINEL-5d0e"
MESSAGES = [
    {"role": "system", "content": f"be brief {SYSTEM_SENTINEL}"},
    {"role": "user", "content": f"tell me {PROMPT_SENTINEL}"},
]
ANSWER = Behaviour(tokens=("Hi", f" {ANSWER_SENTINEL}", "!"))
REQUEST_KEYS = ("request_id", "model", "provider", "attempt")
MakeHub = Callable[..., Hub]


@pytest.fixture(autouse=True)
def unconfigured_structlog() -> Iterator[None]:
    """These tests need structlog in its default state; restore whatever was there."""
    if not structlog.is_configured():
        yield
        return
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.configure(**saved)


def hub_with(make_hub: MakeHub, *upstreams: FakeUpstream, **kwargs: Any) -> Hub:
    hub = make_hub(**kwargs)
    for name, upstream in zip("ab", upstreams, strict=False):
        hub.register(OpenAICompatible(name, upstream.base_url, ["gpt-4"]))
    return hub


def collect(hub: Hub) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    hub.subscribe(lambda event: events.append(dict(event)))
    return events


def story(events: list[dict[str, Any]]) -> list[tuple[str, str | None, int]]:
    return [(e["event"], e["provider"], e["attempt"]) for e in events if "request_id" in e]


def assert_request_events(events: list[dict[str, Any]], request_id: str) -> None:
    for event in events:
        if event["event"].startswith("circuit."):
            continue
        for key in REQUEST_KEYS:
            assert key in event, (event["event"], key)
        assert event["request_id"] == request_id
        assert event["model"] == "gpt-4"


def only(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [e for e in events if e["event"] == name]
    assert len(found) == 1, (name, found)
    return found[0]


# -- names and fields per scenario -----------------------------------------------------------


def test_success_emits_planned_started_first_token_completed(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_with(make_hub, upstream)
    events = collect(hub)
    upstream.script(ANSWER)
    stream = hub.stream("gpt-4", MESSAGES)
    assert "".join(stream) == ANSWER.text()
    assert story(events) == [
        ("route.planned", None, 0),
        ("attempt.started", "a", 1),
        ("stream.first_token", "a", 1),
        ("stream.completed", "a", 1),
    ]
    assert_request_events(events, stream.request_id)
    planned = only(events, "route.planned")
    assert planned["level"] == "debug"
    assert planned["candidates"] == ["a"]
    assert planned["excluded"] == []
    first = only(events, "stream.first_token")
    assert isinstance(first["ttft_ms"], float)
    assert first["ttft_ms"] >= 0
    completed = only(events, "stream.completed")
    assert completed["level"] == "info"
    assert completed["chunks"] == 3
    assert completed["chars"] == len(ANSWER.text())
    assert completed["duration_ms"] >= first["ttft_ms"]
    assert completed["finish_reason"] == "stop"
    assert completed["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}


def test_retry_emits_attempt_failed_with_error_fields(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_with(make_hub, upstream)
    events = collect(hub)
    upstream.script(Behaviour(status=503), ANSWER)
    stream = hub.stream("gpt-4", MESSAGES)
    "".join(stream)
    assert story(events) == [
        ("route.planned", None, 0),
        ("attempt.started", "a", 1),
        ("attempt.failed", "a", 1),
        ("attempt.started", "a", 2),
        ("stream.first_token", "a", 2),
        ("stream.completed", "a", 2),
    ]
    assert_request_events(events, stream.request_id)
    failed = only(events, "attempt.failed")
    assert failed["level"] == "warning"
    assert failed["error_type"] == "UpstreamHTTPError"
    assert failed["status"] == 503
    assert failed["retryable"] is True
    assert isinstance(failed["backoff_ms"], float)
    assert 0 <= failed["backoff_ms"] <= 10.0


def test_connection_failure_is_reported_with_a_stable_error_type(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_with(make_hub, upstream)
    events = collect(hub)
    upstream.script(Behaviour(fault=Fault.DROP_AFTER_HEADERS), ANSWER)
    "".join(hub.stream("gpt-4", MESSAGES))
    failed = only(events, "attempt.failed")
    assert failed["error_type"] == "UpstreamConnectionError"
    assert failed["status"] is None
    assert failed["retryable"] is True


def test_fallback_emits_route_fallback_between_the_attempts(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_with(make_hub, upstream, second_upstream)
    events = collect(hub)
    upstream.script(Behaviour(status=401))
    stream = hub.stream("gpt-4", MESSAGES)
    "".join(stream)
    assert story(events) == [
        ("route.planned", None, 0),
        ("attempt.started", "a", 1),
        ("attempt.failed", "a", 1),
        ("route.fallback", "a", 1),
        ("attempt.started", "b", 2),
        ("stream.first_token", "b", 2),
        ("stream.completed", "b", 2),
    ]
    assert_request_events(events, stream.request_id)
    failed = only(events, "attempt.failed")
    assert (failed["status"], failed["retryable"], failed["backoff_ms"]) == (401, False, None)
    fallback = only(events, "route.fallback")
    assert fallback["level"] == "warning"
    assert (fallback["from_provider"], fallback["to_provider"]) == ("a", "b")


def test_interruption_emits_stream_interrupted_and_no_fallback(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_with(make_hub, upstream, second_upstream)
    events = collect(hub)
    upstream.script(Behaviour(chunks=6, fault=Fault.DROP_MID_STREAM, fault_after=2))
    stream = hub.stream("gpt-4", MESSAGES)
    with pytest.raises(StreamInterruptedError):
        "".join(stream)
    assert story(events) == [
        ("route.planned", None, 0),
        ("attempt.started", "a", 1),
        ("stream.first_token", "a", 1),
        ("stream.interrupted", "a", 1),
        ("attempt.failed", "a", 1),
    ]
    assert_request_events(events, stream.request_id)
    interrupted = only(events, "stream.interrupted")
    assert interrupted["level"] == "error"
    assert interrupted["chunks"] == 2
    assert interrupted["chars"] == len("w0 w1 ")
    assert interrupted["error_type"] == "UpstreamConnectionError"
    assert only(events, "attempt.failed")["backoff_ms"] is None


def test_exhaustion_emits_route_exhausted_after_every_failure(
    make_hub: MakeHub, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    hub = hub_with(make_hub, upstream, second_upstream, retries=1)
    events = collect(hub)
    upstream.default = Behaviour(status=500)
    second_upstream.default = Behaviour(status=404)
    stream = hub.stream("gpt-4", MESSAGES)
    with pytest.raises(AllProvidersFailedError):
        "".join(stream)
    assert story(events) == [
        ("route.planned", None, 0),
        ("attempt.started", "a", 1),
        ("attempt.failed", "a", 1),
        ("attempt.started", "a", 2),
        ("attempt.failed", "a", 2),
        ("route.fallback", "a", 2),
        ("attempt.started", "b", 3),
        ("attempt.failed", "b", 3),
        ("route.exhausted", "b", 3),
    ]
    assert_request_events(events, stream.request_id)
    exhausted = only(events, "route.exhausted")
    assert exhausted["level"] == "error"
    assert exhausted["attempts"] == 3
    failures = [e for e in events if e["event"] == "attempt.failed"]
    assert [f["backoff_ms"] is None for f in failures] == [False, True, True]


def test_route_planned_lists_exclusions(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = make_hub({"off": {"enabled": False}})
    hub.register(OpenAICompatible("off", upstream.base_url, ["gpt-4"]))
    hub.register(OpenAICompatible("on", upstream.base_url, ["gpt-4"]))
    events = collect(hub)
    "".join(hub.stream("gpt-4", MESSAGES))
    planned = only(events, "route.planned")
    assert planned["candidates"] == ["on"]
    assert planned["excluded"] == [{"provider": "off", "reason": "disabled in config"}]


def test_every_request_gets_its_own_request_id(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = hub_with(make_hub, upstream)
    events = collect(hub)
    first = hub.stream("gpt-4", MESSAGES)
    "".join(first)
    second = hub.complete("gpt-4", MESSAGES)
    assert first.request_id != second.request_id
    assert {e["request_id"] for e in events} == {first.request_id, second.request_id}


# -- content and secrets ----------------------------------------------------------------------


def test_events_never_carry_message_content_by_default(
    make_hub: MakeHub,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROVHUB_TEST_EVENTS_KEY", "sk-SECRET-SENTINEL-0b1d")
    hub = make_hub()
    hub.register(
        OpenAICompatible("a", upstream.base_url, ["gpt-4"], api_key_env="PROVHUB_TEST_EVENTS_KEY")
    )
    events = collect(hub)
    caplog.set_level(logging.DEBUG, logger="provhub")
    upstream.script(Behaviour(status=500), ANSWER, ANSWER)
    "".join(hub.stream("gpt-4", MESSAGES, temperature=0.5))
    hub.complete("gpt-4", MESSAGES)
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-SECRET-SENTINEL-0b1d"
    logged = repr(events) + caplog.text + repr([r.__dict__ for r in caplog.records])
    assert "stream.chunk" in logged  # debug was on: every event had its chance
    for secret in (PROMPT_SENTINEL, SYSTEM_SENTINEL, ANSWER_SENTINEL, "SECRET-SENTINEL"):
        assert secret not in logged


def test_log_content_true_lets_messages_appear(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = Hub(make_hub().config, load_plugins=False, log_content=True)
    hub.register(OpenAICompatible("a", upstream.base_url, ["gpt-4"]))
    events = collect(hub)
    "".join(hub.stream("gpt-4", MESSAGES))
    hub.close()
    planned = only(events, "route.planned")
    assert planned["messages"] == MESSAGES
    assert PROMPT_SENTINEL in repr(events)


def test_redact_masks_secrets_in_nested_dicts_and_drops_content() -> None:
    fields = {
        "provider": "a",
        "api_key": "sk-1",
        "headers": {
            "Authorization": "Bearer sk-2",
            "X-Api-Key": "sk-3",
            "Accept": "text/event-stream",
            "nested": {"client_secret": "s", "password": "p", "cookie": "c", "depth": 3},
        },
        "params": {"temperature": 0.2, "max_tokens": 9, "access_token": "t"},
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        "messages": [{"role": "user", "content": "hello"}],
        "content": "hello",
        "prompt": "hello",
    }
    assert redact(fields) == {
        "provider": "a",
        "api_key": "***",
        "headers": {
            "Authorization": "***",
            "X-Api-Key": "***",
            "Accept": "text/event-stream",
            "nested": {"client_secret": "***", "password": "***", "cookie": "***", "depth": 3},
        },
        "params": {"temperature": 0.2, "max_tokens": 9, "access_token": "***"},
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    kept = redact(fields, log_content=True)
    assert kept["messages"] == [{"role": "user", "content": "hello"}]
    assert kept["prompt"] == "hello"
    assert kept["api_key"] == "***"  # log_content never un-masks secrets
    assert fields["api_key"] == "sk-1"  # a copy, the input is untouched


def _reference_redact(fields: Mapping[str, Any], log_content: bool) -> dict[str, Any]:
    """The redaction policy written plainly (no caches, no fast path): the oracle."""
    secret = ("key", "authorization", "token", "secret", "password", "cookie")
    counters = {"max_tokens", "prompt_tokens", "completion_tokens", "total_tokens"}
    counters |= {"cached_tokens", "reasoning_tokens", "input_tokens", "output_tokens"}
    content = {"messages", "content", "prompt", "text", "delta", "body"}
    out: dict[str, Any] = {}
    for key, value in fields.items():
        lowered = key.lower()
        if lowered not in counters and any(marker in lowered for marker in secret):
            out[key] = "***"
        elif lowered in content and not log_content:
            continue
        elif isinstance(value, Mapping):
            out[key] = _reference_redact(value, log_content)
        else:
            out[key] = value
    return out


_KEYS = st.sampled_from(
    [
        "provider",
        "model",
        "api_key",
        "Authorization",
        "prompt_tokens",
        "messages",
        "text",
        "usage",
        "headers",
        "max_tokens",
        "X-Token",
        "chunks",
        "body",
        "Content",
        "attempt",
    ]
) | st.text(max_size=6)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.lists(st.integers(), max_size=2),
    lambda inner: st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=8,
)


@given(fields=st.dictionaries(_KEYS, _VALUES, max_size=8), log_content=st.booleans())
def test_redaction_matches_the_policy_written_plainly(
    fields: dict[str, Any], log_content: bool
) -> None:
    expected = _reference_redact(fields, log_content)
    # Twice: the first call fills the caches, the second takes the fast path.
    assert redact(fields, log_content=log_content) == expected
    assert redact(fields, log_content=log_content) == expected


# -- stream.chunk and the debug switch --------------------------------------------------------


def test_stream_chunk_events_only_when_debug_is_enabled(
    make_hub: MakeHub, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    hub = hub_with(make_hub, upstream)
    events = collect(hub)
    caplog.set_level(logging.INFO, logger="provhub")
    "".join(hub.stream("gpt-4", MESSAGES))
    assert [e for e in events if e["event"] == "stream.chunk"] == []
    assert "stream.chunk" not in caplog.text

    caplog.set_level(logging.DEBUG, logger="provhub")
    stream = hub.stream("gpt-4", MESSAGES)
    "".join(stream)
    chunks = [e for e in events if e["event"] == "stream.chunk"]
    assert [(c["index"], c["chars"], c["level"]) for c in chunks] == [
        (1, 3, "debug"),
        (2, 3, "debug"),
        (3, 3, "debug"),
    ]
    assert all(c["request_id"] == stream.request_id for c in chunks)
    assert caplog.text.count("stream.chunk") == 3


def test_stdlib_records_carry_the_event_and_its_fields(
    make_hub: MakeHub, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    hub = hub_with(make_hub, upstream)
    caplog.set_level(logging.DEBUG, logger="provhub")
    stream = hub.stream("gpt-4", MESSAGES)
    "".join(stream)
    records = [r for r in caplog.records if r.name == "provhub"]
    assert [r.provhub_event for r in records] == [  # type: ignore[attr-defined]
        "route.planned",
        "attempt.started",
        "stream.first_token",
        *(["stream.chunk"] * 3),
        "stream.completed",
    ]
    completed = records[-1].provhub_fields  # type: ignore[attr-defined]
    assert completed["request_id"] == stream.request_id
    assert completed["chunks"] == 3


def test_a_failing_subscriber_never_breaks_the_request(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_with(make_hub, upstream)

    def broken(event: Any) -> None:
        raise RuntimeError("subscriber bug")

    hub.subscribe(broken)
    events = collect(hub)
    assert "".join(hub.stream("gpt-4", MESSAGES)) == Behaviour().text()
    assert [e["event"] for e in events][-1] == "stream.completed"


def test_unsubscribe_stops_delivery(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = hub_with(make_hub, upstream)
    events: list[Any] = []
    unsubscribe = hub.subscribe(events.append)
    "".join(hub.stream("gpt-4", MESSAGES))
    seen = len(events)
    unsubscribe()
    "".join(hub.stream("gpt-4", MESSAGES))
    assert len(events) == seen > 0


# -- host context -------------------------------------------------------------------------------


def test_host_bound_contextvars_appear_on_subscriber_events(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_with(make_hub, upstream)
    events = collect(hub)
    with bound_contextvars(tenant="acme", job_id=17):
        "".join(hub.stream("gpt-4", MESSAGES))
    assert events
    assert all((e["tenant"], e["job_id"]) == ("acme", 17) for e in events)
    "".join(hub.stream("gpt-4", MESSAGES))
    assert "tenant" not in events[-1]


def test_host_bound_contextvars_appear_on_async_stream_events(
    make_hub: MakeHub, upstream: FakeUpstream
) -> None:
    hub = hub_with(make_hub, upstream)
    events = collect(hub)

    async def consume(tenant: str) -> str:
        with bound_contextvars(tenant=tenant):
            return "".join([token async for token in hub.astream("gpt-4", MESSAGES)])

    async def main() -> list[str]:
        return await asyncio.gather(consume("t1"), consume("t2"))

    assert asyncio.run(main()) == [Behaviour().text()] * 2
    by_request: dict[str, set[str]] = {}
    for event in events:
        by_request.setdefault(event["request_id"], set()).add(event["tenant"])
    assert sorted(by_request.values(), key=sorted) == [{"t1"}, {"t2"}]


# -- process-wide logging: fresh interpreters ---------------------------------------------------


def run_python(upstream: FakeUpstream, *parts: str) -> subprocess.CompletedProcess[str]:
    """Run the (separately indented) code ``parts`` in a fresh interpreter."""
    env = {
        **os.environ,
        "PROVHUB_PLUGINS": "",
        "FAKE_UPSTREAM": upstream.base_url,
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("PROVHUB_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-c", "\n".join(textwrap.dedent(part) for part in parts)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


HUB_SETUP = """
from provhub import Config, Hub
from provhub_providers import OpenAICompatible
# Plugins load (that is part of "using provhub"); the shipped Lockchat is switched off
# so nothing leaves the machine.
config = Config.from_mapping({
    "router": {"backoff_base": 0.01, "backoff_max": 0.02},
    "providers": {"Lockchat": {"enabled": False}},
})
hub = Hub(config)
hub.register(OpenAICompatible("a", os.environ["FAKE_UPSTREAM"], ["gpt-4"]))
"""


def test_importing_and_using_provhub_configures_nothing(upstream: FakeUpstream) -> None:
    upstream.script(Behaviour(status=500), ANSWER)
    result = run_python(
        upstream,
        """
        import os, logging, structlog, provhub
        assert not structlog.is_configured()
        assert logging.getLogger().handlers == []
        root_level = logging.getLogger().level
        """,
        HUB_SETUP,
        """
        text = "".join(hub.stream("gpt-4", [{"role": "user", "content": "hi"}]))
        assert text == "Hi ANSWER-SENTINEL-5d0e!", text
        assert not structlog.is_configured()
        assert logging.getLogger().handlers == []
        assert logging.getLogger().level == root_level
        print("ok")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    # A warning event (attempt.failed) happened, and still nothing was printed.
    assert result.stderr == ""


def test_configure_logging_json_goes_through_stdlib_to_the_hosts_handler(
    upstream: FakeUpstream,
) -> None:
    upstream.script(Behaviour(status=500), ANSWER)
    result = run_python(
        upstream,
        """
        import os, json, logging, provhub
        from structlog.contextvars import bound_contextvars

        class Host(logging.Handler):
            seen = []
            def emit(self, record):
                Host.seen.append((record.name, record.levelname, self.format(record)))

        logging.getLogger().addHandler(Host())
        provhub.configure_logging(format="json", level="info")
        """,
        HUB_SETUP,
        """
        with bound_contextvars(job="nightly"):
            "".join(hub.stream("gpt-4", [{"role": "user", "content": "PROMPT-SENTINEL-7f3a"}]))
        print(json.dumps(Host.seen))
        """,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    names = [message for _, _, message in seen]
    assert any("attempt.failed" in m for m in names)
    assert any("stream.completed" in m for m in names)
    assert {name for name, _, _ in seen} == {"provhub"}
    assert {level for _, level, _ in seen} == {"INFO", "WARNING"}

    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["event"] for line in lines[:2]] == ["config.loaded", "plugin.loaded"]
    lines = [line for line in lines if "request_id" in line]
    events = [line["event"] for line in lines]
    # INFO: one line per request plus every failure (the steps are DEBUG).
    assert events == ["attempt.failed", "stream.completed"]
    for line in lines:
        assert line["job"] == "nightly"
        assert line["level"] in {"info", "warning"}
        assert "timestamp" in line
        assert line["model"] == "gpt-4"
    assert "PROMPT-SENTINEL" not in result.stderr
    assert "ANSWER-SENTINEL" not in result.stderr


def test_configure_logging_rejects_unknown_format_and_level() -> None:
    from provhub import configure_logging

    with pytest.raises(ValueError, match="format"):
        configure_logging(format="xml")
    with pytest.raises(ValueError, match="level"):
        configure_logging(format="json", level="chatty")
    assert not structlog.is_configured()


def test_subscribers_given_to_the_hub_see_the_events_of_its_construction() -> None:
    from provhub import Config, Hub

    seen: list[Mapping[str, Any]] = []
    config = Config.from_mapping({"providers": {"Lockchat": {"verify_tls": False}}})
    hub = Hub(config, subscribers=[seen.append])
    try:
        names = [e["event"] for e in seen]
        assert "plugin.loaded" in names
        insecure = [e for e in seen if e["event"] == "provider.insecure"]
        assert insecure[0]["provider"] == "Lockchat"
    finally:
        hub.close()
