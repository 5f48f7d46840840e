"""``provhub route`` and ``provhub chat`` as a user runs them (SPEC §9).

Every test runs the real CLI (``python -m provhub``) in a subprocess with a temporary
``provhub.toml`` passed by ``--config``, pointing the shipped Lockchat (``url``) and/or
``openai-compatible`` entries at fake upstreams on loopback. Only the shipped plugin is loaded
(``PROVHUB_PLUGINS=""``), and Lockchat is always either pointed at loopback or switched off.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from provhub.testing import Behaviour, FakeUpstream, Fault, unused_port_url

SENTINEL = "PROMPT-SENTINEL-c4e1"
HELLO = Behaviour(tokens=("Hel", "lo", " there"))
FAST_ROUTER = {
    "retries": 1,
    "backoff_base": 0.01,
    "backoff_max": 0.02,
    "timeouts": {"connect": 2, "first_token": 10, "idle": 10, "total": 30},
}

Run = Callable[..., subprocess.CompletedProcess[str]]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(
    path: Path,
    *,
    lockchat: str | None = None,
    endpoints: Mapping[str, str | Mapping[str, Any]] | None = None,
    router: Mapping[str, Any] | None = None,
) -> Path:
    """A provhub.toml: Lockchat at ``lockchat`` (or disabled), openai-compatible ``endpoints``."""
    lines = ["[router]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in {**FAST_ROUTER, **(router or {})}.items()]
    lines.append("[providers.Lockchat]")
    lines.append(f"url = {toml_value(lockchat)}" if lockchat else "enabled = false")
    for name, spec in (endpoints or {}).items():
        table: dict[str, Any] = {"url": spec} if isinstance(spec, str) else dict(spec)
        table.setdefault("models", ["gpt-4"])
        lines.append(f"[providers.{name}]")
        lines.append('type = "openai-compatible"')
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVHUB_")}
    env.update(PROVHUB_PLUGINS="", XDG_CONFIG_HOME=str(tmp_path / "xdg"), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def provhub_cli(tmp_path: Path, cli_env: dict[str, str]) -> Run:
    def run(
        *args: str, config: Path | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        prefix = ["--config", str(config)] if config is not None else []
        return subprocess.run(
            [sys.executable, "-m", "provhub", *prefix, *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=cli_env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )

    return run


def json_events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def assert_one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("provhub: error:")]
    assert len(errors) == 1, stderr


# -- route ----------------------------------------------------------------------------------


def test_route_shows_the_plan_and_every_exclusion(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(
        tmp_path / "provhub.toml",
        lockchat=upstream.url,
        endpoints={
            "second": upstream.base_url,
            "off": {"url": upstream.base_url, "enabled": False},
            "keyed": {"url": upstream.base_url, "api_key_env": "PROVHUB_TEST_CLI_UNSET_KEY"},
            "first": {"url": upstream.base_url, "priority": 5},
        },
    )
    result = provhub_cli("route", "-m", "gpt-4", config=config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "gpt-4", "strategy", "priority", "required", "-"]
    assert lines[1:4] == ["  1. first", "  2. Lockchat", "  3. second"]
    assert "  x  off: disabled in config" in lines
    assert (
        "  x  keyed: needs credentials: environment variable PROVHUB_TEST_CLI_UNSET_KEY "
        "is not set" in lines
    )
    assert upstream.requests == []  # planning sends nothing


def test_route_json_is_machine_readable(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(
        tmp_path / "provhub.toml",
        lockchat=upstream.url,
        endpoints={"off": {"url": upstream.base_url, "enabled": False}},
    )
    result = provhub_cli("route", "-m", "gpt-4", "--json", "--require", "stream", config=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "model": "gpt-4",
        "required": ["stream"],
        "strategy": "priority",
        "candidates": ["Lockchat"],
        "excluded": [{"provider": "off", "reason": "disabled in config"}],
    }


def test_route_exits_3_when_no_provider_qualifies(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(
        tmp_path / "provhub.toml",
        endpoints={"off": {"url": upstream.base_url, "enabled": False}},
    )
    result = provhub_cli("route", "-m", "gpt-4", config=config)
    assert result.returncode == 3
    assert "x  off: disabled in config" in result.stdout
    assert "x  Lockchat: disabled in config" in result.stdout
    as_json = provhub_cli("route", "-m", "gpt-4", "--json", config=config)
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["candidates"] == []


def test_route_exits_3_for_an_unknown_model_with_suggestions(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    result = provhub_cli("route", "-m", "gpt4", config=config)
    assert result.returncode == 3
    assert_one_line_error(result.stderr)
    assert "did you mean 'gpt-4'" in result.stderr


# -- chat: output ----------------------------------------------------------------------------


def test_chat_prints_tokens_to_stdout_and_events_to_stderr(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    upstream.script(Behaviour(status=500), HELLO)
    result = provhub_cli("chat", "-m", "gpt-4", SENTINEL, config=config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello there\n"
    # Default verbosity shows warnings: the retry is visible, on stderr only.
    assert "attempt.failed" in result.stderr
    assert "attempt.failed" not in result.stdout
    assert SENTINEL not in result.stderr
    sent = upstream.requests[-1].json
    assert sent["messages"] == [{"role": "user", "content": SENTINEL}]
    assert sent["stream"] is True
    assert sent["temperature"] == 0.7  # Lockchat's default


def test_chat_log_format_json_writes_json_events_without_the_prompt(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    upstream.script(HELLO)
    result = provhub_cli("chat", "-m", "gpt-4", "--log-format", "json", SENTINEL, config=config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello there\n"
    events = json_events(result.stderr)  # every line is JSON
    names = [e["event"] for e in events if "request_id" in e]
    assert names == ["stream.completed"]
    assert all(e["provider"] == "Lockchat" for e in events if e["event"] == "stream.completed")
    assert SENTINEL not in result.stderr
    assert "Hello" not in result.stderr


def test_common_options_work_before_and_after_the_command(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    after = provhub_cli("chat", "-m", "gpt-4", "-v", "--config", str(config), "hi")
    assert after.returncode == 0, after.stderr
    assert after.stdout == "w0 w1 w2 \n"
    # -v: info events, rendered for a console.
    assert "stream.completed" in after.stderr
    assert "stream.completed" in after.stderr
    assert not after.stderr.startswith("{")
    before = provhub_cli("--log-format", "json", "-v", "chat", "-m", "gpt-4", "hi", config=config)
    assert before.returncode == 0, before.stderr
    assert "stream.completed" in [e["event"] for e in json_events(before.stderr)]


def test_chat_options_reach_the_upstream(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    config = write_config(
        tmp_path / "provhub.toml",
        lockchat=upstream.url,
        endpoints={"second": second_upstream.base_url},
    )
    result = provhub_cli(
        "chat",
        "-m",
        "gpt-4",
        "-p",
        "second",
        "-t",
        "0.25",
        "--max-tokens",
        "12",
        "-s",
        "be terse",
        "hi",
        config=config,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "w0 w1 w2 \n"
    assert upstream.requests == []
    body = second_upstream.requests[0].json
    assert body["messages"] == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": "hi"},
    ]
    assert (body["temperature"], body["max_tokens"]) == (0.25, 12)


@pytest.mark.parametrize("args", [["-"], []], ids=["dash", "omitted"])
def test_chat_reads_the_prompt_from_stdin(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream, args: list[str]
) -> None:
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    prompt = f"line one {SENTINEL}\nline two\n"
    result = provhub_cli("chat", "-m", "gpt-4", *args, config=config, stdin=prompt)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "w0 w1 w2 \n"
    assert upstream.requests[0].json["messages"] == [{"role": "user", "content": prompt}]


def test_chat_no_stream_prints_the_whole_answer(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(tmp_path / "provhub.toml", endpoints={"api": upstream.base_url})
    upstream.script(HELLO)
    result = provhub_cli("chat", "-m", "gpt-4", "--no-stream", "hi", config=config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello there\n"
    assert upstream.requests[0].json["stream"] is False


# -- chat: exit codes ----------------------------------------------------------------------


def test_chat_without_a_model_or_a_default_exits_2(
    provhub_cli: Run, cli_env: dict[str, str], tmp_path: Path, upstream: FakeUpstream
) -> None:
    # Without the shipped plugin there is no local model to default to (with it,
    # `provhub chat hi` is the main job: tests/test_local.py).
    cli_env["PROVHUB_DISABLE_PLUGINS"] = "provhub_providers"
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    result = provhub_cli("chat", "hi", config=config)
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert "no model given" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        pytest.param(["chat", "-m", "gpt-4", "--bogus", "hi"], "", "unrecognized", id="bad-flag"),
        pytest.param(["chat", "-m", "gpt-4", "-t", "warm", "hi"], "", "invalid float", id="bad-t"),
        pytest.param(
            ["chat", "-m", "gpt-4", "--require", "telepathy", "hi"],
            "",
            "unknown capability 'telepathy'",
            id="bad-require",
        ),
        pytest.param(["chat", "-m", "gpt-4", "-"], "  \n", "prompt is empty", id="empty-prompt"),
        pytest.param(["teleport"], "", "invalid choice", id="bad-command"),
    ],
)
def test_bad_usage_exits_2_with_one_clear_line(
    provhub_cli: Run,
    tmp_path: Path,
    upstream: FakeUpstream,
    args: list[str],
    stdin: str,
    message: str,
) -> None:
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    result = provhub_cli(*args, config=config, stdin=stdin)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert upstream.requests == []


def test_unknown_model_exits_3(provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream) -> None:
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    result = provhub_cli("chat", "-m", "gpt-5-turbo", "hi", config=config)
    assert result.returncode == 3
    assert_one_line_error(result.stderr)
    assert "no provider serves model 'gpt-5-turbo'" in result.stderr
    assert upstream.requests == []


def test_no_qualifying_provider_exits_3(provhub_cli: Run, tmp_path: Path) -> None:
    config = write_config(tmp_path / "provhub.toml")  # Lockchat disabled, nothing else
    result = provhub_cli("chat", "-m", "gpt-4", "hi", config=config)
    assert result.returncode == 3
    assert_one_line_error(result.stderr)
    assert "Lockchat: disabled in config" in result.stderr


def test_all_providers_failed_exits_4(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(
        tmp_path / "provhub.toml",
        lockchat=upstream.url,
        endpoints={"dead": unused_port_url()},
    )
    upstream.default = Behaviour(status=503)
    result = provhub_cli("chat", "-m", "gpt-4", "hi", config=config)
    assert result.returncode == 4
    assert result.stdout == ""
    assert_one_line_error(result.stderr)
    assert "all providers failed for model 'gpt-4'" in result.stderr
    assert len(upstream.requests) == 2  # one try, retries = 1
    verbose = provhub_cli("chat", "-m", "gpt-4", "-v", "hi", config=config)
    assert verbose.returncode == 4
    assert "Traceback" not in verbose.stderr


def test_stream_broken_after_tokens_exits_4_keeping_the_partial_output(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    upstream.script(Behaviour(chunks=5, fault=Fault.DROP_MID_STREAM, fault_after=2))
    result = provhub_cli("chat", "-m", "gpt-4", "hi", config=config)
    assert result.returncode == 4
    assert result.stdout.startswith("w0 w1 ")
    assert_one_line_error(result.stderr)
    assert "broke after 6 characters" in result.stderr
    assert len(upstream.requests) == 1


# -- chat: interruption ----------------------------------------------------------------------


def read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 10.0) -> bytes:
    """Read the child's stdout until ``marker`` appears (tokens are flushed as they come)."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while marker not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} on stdout, got {seen!r}"
            if selector.select(remaining):
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"stdout closed before {marker!r}, got {seen!r}"
                seen += chunk
    return seen


@pytest.mark.parametrize("phase", ["mid-stream", "before-first-token"])
def test_sigint_during_a_hanging_stream_exits_130_and_disconnects(
    tmp_path: Path, cli_env: dict[str, str], upstream: FakeUpstream, phase: str
) -> None:
    config = write_config(tmp_path / "provhub.toml", lockchat=upstream.url)
    if phase == "mid-stream":
        upstream.default = Behaviour(chunks=4, fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=1)
    else:
        upstream.default = Behaviour(fault=Fault.HANG_BEFORE_HEADERS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "provhub", "--config", str(config), "chat", "-m", "gpt-4", "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env,
        cwd=tmp_path,
    )
    try:
        if phase == "mid-stream":
            assert read_until(proc, b"w0 ") == b"w0 "
        else:
            deadline = time.monotonic() + 10
            while not upstream.requests:  # the request is on the wire, the upstream hangs
                assert time.monotonic() < deadline
                assert proc.poll() is None
                time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert b"Traceback" not in stderr
    assert b"interrupted" in stderr
    assert upstream.wait_for_disconnects(1, timeout=2.0)
    assert len(upstream.requests) == 1  # interrupted, not retried or failed over


# -- the issue's demo ------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["http-500", "refused"])
def test_demo_chat_falls_back_and_json_events_tell_the_story(
    provhub_cli: Run,
    tmp_path: Path,
    upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    broken: str,
) -> None:
    # Two providers for gpt-4; the first one's upstream is broken.
    first = upstream.url if broken == "http-500" else unused_port_url()
    upstream.default = Behaviour(status=500)
    second_upstream.default = HELLO
    config = write_config(
        tmp_path / "provhub.toml",
        lockchat=first,
        endpoints={"backup": second_upstream.base_url},
    )
    result = provhub_cli("chat", "-m", "gpt-4", "--log-format", "json", SENTINEL, config=config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello there\n"
    events = [e for e in json_events(result.stderr) if "request_id" in e]
    story = [(e["event"], e["provider"]) for e in events]
    # At INFO (the CLI's level for JSON events) the story is every failure and
    # fallback, then the one completion line; -vv adds the DEBUG steps.
    assert story == [
        ("attempt.failed", "Lockchat"),
        ("attempt.failed", "Lockchat"),
        ("route.fallback", "Lockchat"),
        ("stream.completed", "backup"),
    ]
    assert len({e["request_id"] for e in events}) == 1
    failed = events[0]
    expected_error = "UpstreamHTTPError" if broken == "http-500" else "UpstreamConnectionError"
    assert failed["error_type"] == expected_error
    assert failed["status"] == (500 if broken == "http-500" else None)
    assert failed["retryable"] is True
    assert failed["level"] == "warning"
    fallback = events[2]
    assert (fallback["from_provider"], fallback["to_provider"]) == ("Lockchat", "backup")
    completed = events[-1]
    assert completed["attempt"] == 3
    assert completed["ttft_ms"] >= 0
    assert completed["chunks"] == 3
    assert completed["finish_reason"] == "stop"
    assert SENTINEL not in result.stderr
    assert len(second_upstream.requests) == 1


# -- chat: --json, tools, structured output ---------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def sse_body(*deltas: Mapping[str, Any], finish_reason: str = "stop") -> bytes:
    """A raw chat-completions event stream carrying ``deltas``, then the finish."""

    def event(delta: Mapping[str, Any], finish: str | None = None) -> str:
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n"

    text = event({"role": "assistant"}) + "".join(event(d) for d in deltas)
    return (text + event({}, finish_reason) + "data: [DONE]\n\n").encode()


TOOL_CALL_STREAM = sse_body(
    {"content": "Let me look."},
    {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    },
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    finish_reason="tool_calls",
)


def tools_config(tmp_path: Path, upstream: FakeUpstream, **tables: Any) -> Path:
    return write_config(
        tmp_path / "provhub.toml",
        endpoints={
            "api": {"url": upstream.base_url, "capabilities": ["tools", "structured_output"]},
            **tables,
        },
    )


def test_chat_json_prints_one_object_with_the_whole_record(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(tmp_path / "provhub.toml", endpoints={"api": upstream.base_url})
    upstream.script(Behaviour(status=500), HELLO)
    result = provhub_cli("chat", "-m", "gpt-4", "--json", "hi", config=config)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    data = json.loads(line)
    assert set(data) == {
        "text",
        "provider",
        "model",
        "finish_reason",
        "usage",
        "attempts",
        "tool_calls",
        "reasoning",
        "refusal",
        "request_id",
    }
    assert (data["text"], data["provider"], data["model"]) == ("Hello there", "api", "gpt-4")
    assert data["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    assert [(a["number"], a["ok"], a["status"]) for a in data["attempts"]] == [
        (1, False, 500),
        (2, True, None),
    ]
    assert (data["tool_calls"], data["reasoning"], data["refusal"]) == ([], None, None)
    assert len(data["request_id"]) == 16


def test_chat_json_on_failure_prints_an_error_object_and_the_line(
    provhub_cli: Run, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "provhub.toml", endpoints={"api": unused_port_url()})
    result = provhub_cli("chat", "-m", "gpt-4", "--json", "hi", config=config)
    assert result.returncode == 4
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "AllProvidersFailedError"
    assert error["exit_code"] == 4
    assert [a["error_type"] for a in error["attempts"]] == ["UpstreamConnectionError"] * 2
    assert_one_line_error(result.stderr)
    assert f"provhub: error: {error['message']}" in result.stderr


def test_chat_tools_are_sent_and_the_tool_call_printed_after_the_text(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    upstream.script(Behaviour(body=TOOL_CALL_STREAM, content_type="text/event-stream"))
    config = tools_config(tmp_path, upstream)
    result = provhub_cli("chat", "-m", "gpt-4", "--tools", str(tools), "weather?", config=config)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ('Let me look.\ntool call get_weather(city="Paris") [id call_1]\n')
    assert upstream.requests[0].json["tools"] == TOOLS


def test_chat_tool_calls_in_json_and_without_streaming(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    tools = tmp_path / "tools.json"
    # A bare function, as many docs write it, is wrapped the way the API wants.
    tools.write_text(json.dumps([TOOLS[0]["function"]]))
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_7",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
            }
        ],
    }
    upstream.default = Behaviour(body=json.dumps(answer).encode())
    config = tools_config(tmp_path, upstream)
    plain = provhub_cli(
        "chat", "-m", "gpt-4", "--no-stream", "--tools", str(tools), "w?", config=config
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == 'tool call get_weather(city="Oslo") [id call_7]\n'
    assert upstream.requests[0].json["tools"] == TOOLS
    as_json = provhub_cli(
        "chat", "-m", "gpt-4", "--no-stream", "--json", "--tools", str(tools), "w?", config=config
    )
    data = json.loads(as_json.stdout)
    assert data["tool_calls"] == answer["choices"][0]["message"]["tool_calls"]
    assert (data["text"], data["finish_reason"]) == ("", "tool_calls")


def test_chat_tool_choice_names_a_tool(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    config = tools_config(tmp_path, upstream)
    result = provhub_cli(
        "chat",
        "-m",
        "gpt-4",
        "--tools",
        str(tools),
        "--tool-choice",
        "get_weather",
        "w?",
        config=config,
    )
    assert result.returncode == 0, result.stderr
    assert upstream.requests[0].json["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "--tools {path}: file not found", id="missing"),
        pytest.param(
            "[{,]",
            "--tools {path}: not valid JSON: Expecting property name enclosed "
            "in double quotes at line 1 column 3",
            id="not-json",
        ),
        pytest.param(
            "[]",
            "--tools {path}: must hold a non-empty JSON array of tools, such as "
            '[{{"type": "function", "function": {{"name": "get_weather", '
            '"parameters": {{...}}}}}}]',
            id="empty",
        ),
        pytest.param(
            '[{"type": "function", "function": {"name": "get weather"}}]',
            "--tools {path}: tools[0] function.name must be 1-64 letters, digits, '_', "
            "'.' or '-', got 'get weather'",
            id="bad-name",
        ),
    ],
)
def test_a_bad_tools_file_is_one_clear_line_and_nothing_is_sent(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream, content: str | None, message: str
) -> None:
    path = tmp_path / "tools.json"
    if content is not None:
        path.write_text(content)
    config = tools_config(tmp_path, upstream)
    result = provhub_cli("chat", "-m", "gpt-4", "--tools", str(path), "w?", config=config)
    assert result.returncode == 2
    errors = [x for x in result.stderr.splitlines() if x.startswith("provhub: error:")]
    assert errors == ["provhub: error: " + message.format(path=path)]
    assert upstream.requests == []


def test_chat_schema_file_is_sent_as_response_format_json_schema(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    path = tmp_path / "city answer.json"
    path.write_text(json.dumps(schema))
    config = tools_config(tmp_path, upstream)
    result = provhub_cli("chat", "-m", "gpt-4", "--schema", str(path), "hi", config=config)
    assert result.returncode == 0, result.stderr
    assert upstream.requests[0].json["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city_answer", "schema": schema, "strict": True},
    }


def test_route_shows_who_lacks_the_capabilities_the_options_imply(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object"}')
    config = tools_config(tmp_path, upstream, plain=upstream.base_url)
    result = provhub_cli("route", "-m", "gpt-4", "--tools", str(tools), config=config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "model gpt-4  strategy priority  required tools",
        "  1. api",
        "  x  Lockchat: disabled in config",
        "  x  plain: lacks capabilities: tools",
    ]
    both = provhub_cli(
        "route",
        "-m",
        "gpt-4",
        "--tools",
        str(tools),
        "--schema",
        str(schema),
        "--json",
        config=config,
    )
    assert json.loads(both.stdout)["excluded"][-1] == {
        "provider": "plain",
        "reason": "lacks capabilities: tools, structured_output",
    }
    # A chat that needs tools never reaches a provider without them, and says why.
    only_plain = provhub_cli(
        "chat", "-m", "gpt-4", "-p", "plain", "--tools", str(tools), "w?", config=config
    )
    assert only_plain.returncode == 3
    assert_one_line_error(only_plain.stderr)
    assert "plain: lacks capabilities: tools" in only_plain.stderr
    assert upstream.requests == []


def test_an_empty_answer_says_so_on_stderr(
    provhub_cli: Run, tmp_path: Path, upstream: FakeUpstream
) -> None:
    upstream.script(Behaviour(tokens=(), finish_reason="length"))
    config = write_config(tmp_path / "provhub.toml", endpoints={"api": upstream.base_url})
    result = provhub_cli("chat", "-m", "gpt-4", "hi", config=config)
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr == "provhub: the answer is empty (finish_reason: length)\n"


def test_provider_progress_events_are_shown_on_stderr(tmp_path: Path) -> None:
    from cli_support import Cli
    from plugin_dists import write_dist

    cli = Cli(tmp_path)
    site = tmp_path / "site"
    write_dist(
        site,
        "slow-loader",
        "import provhub\n"
        "class Slow(provhub.AbstractProvider):\n"
        "    models = ('slow-1',)\n"
        "    supports_stream = True\n"
        "    @staticmethod\n"
        "    def create_completion(model, messages, stream, **kw):\n"
        "        with provhub.provider_call() as call:\n"
        "            call.emit('local.loading', summary='loading slow-1 (slow.gguf)')\n"
        "            call.emit('local.loaded', summary='loaded slow-1 in 0.01 s')\n"
        "            yield 'ready'\n"
        "@provhub.hookimpl\n"
        "def provhub_register_providers(register):\n"
        "    register(Slow)\n",
    )
    cli.env.pop("PROVHUB_PLUGINS")
    result = cli("chat", "-m", "slow-1", "hi", PYTHONPATH=str(site))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ready\n"
    assert result.stderr == (
        "provhub: loading slow-1 (slow.gguf)\nprovhub: loaded slow-1 in 0.01 s\n"
    )
