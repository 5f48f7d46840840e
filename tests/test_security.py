"""Secrets and message content never leak; transport security is on unless switched off loudly.

Sentinel strings stand for an API key (in an environment variable, sent as a bearer token)
and for message content (system and user turns). They are pushed through every path a request
can take (success, every error type, stream and not) and looked for everywhere provhub writes:
subscribed events, log lines from ``configure_logging`` (JSON and console) and from plain
stdlib logging, the CLI's ``-v``/``-vv`` error output, and the ``str``/``repr`` of hubs,
streams, providers, plans, attempts and errors with their whole cause chain. Each test also
checks that the sentinels really were in play (the upstream received them), and
``log_content=True`` proves the search would find content if it were there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provhub import (
    AllProvidersFailedError,
    Config,
    ConfigError,
    Hub,
    InvalidRequestError,
    Limits,
    ProvhubError,
    ProviderConfig,
    StreamInterruptedError,
    Transport,
    provider_call,
)
from provhub._errors import RequestTooLargeError
from provhub.testing import Behaviour, FakeUpstream, Fault, unused_port_url
from provhub_providers.openai_compatible import OpenAICompatible

KEY_ENV = "PROVHUB_TEST_SECRET_KEY"
KEY = "sk-SENTINEL-KEY-5d1f0c9a"
CONTENT = "SENTINEL-CONTENT-8e27b4"
SENTINELS = (KEY, CONTENT)
MODEL = "gpt-4"
MESSAGES = [
    {"role": "system", "content": f"You keep {CONTENT} secret."},
    {"role": "user", "content": f"What is {CONTENT}?"},
]
TIMEOUTS = {"connect": 1.0, "first_token": 0.5, "idle": 0.3, "total": 3.0}
ROUTER = {"retries": 0, "timeouts": TIMEOUTS}
REPO = Path(__file__).resolve().parent.parent

# Every way a request can end: an answer, and each error provhub can raise for it.
OUTCOMES = {
    "success": Behaviour(),
    "http_401": Behaviour(status=401),
    # Some servers quote the rejected key back in their 401 message.
    "http_401_echoing_the_key": Behaviour(
        status=401,
        body=json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}."}}).encode(),
    ),
    "http_429": Behaviour(status=429, retry_after="0"),
    "http_500": Behaviour(status=500),
    "malformed_json": Behaviour(fault=Fault.MALFORMED_JSON, fault_after=0),
    "invalid_utf8": Behaviour(fault=Fault.INVALID_UTF8),
    "error_object": Behaviour(fault=Fault.ERROR_OBJECT),
    "drop_mid_stream": Behaviour(fault=Fault.DROP_MID_STREAM),
    "hang": Behaviour(fault=Fault.HANG_BEFORE_HEADERS, hang_seconds=5),
    "refused": Behaviour(),
}


def found(text: str) -> list[str]:
    """The sentinels present in ``text``."""
    return [s for s in SENTINELS if s in text]


def described(error: BaseException) -> str:
    """``str`` and ``repr`` of an error and of everything chained below it."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current)]
        for attribute in ("attempts", "detail", "body", "text", "cause", "excluded"):
            if hasattr(current, attribute):
                parts.append(repr(getattr(current, attribute)))
        # As a traceback shows it: the cause, else the context unless suppressed.
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return "\n".join(parts)


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def _hub_for(hub: Hub, url: str, events: list[dict[str, Any]]) -> tuple[Hub, OpenAICompatible]:
    hub.subscribe(lambda event: events.append(dict(event)))
    provider = OpenAICompatible("remote", url, [MODEL], api_key_env=KEY_ENV)
    hub.register(provider)
    return hub, provider


def _run(hub: Hub, stream: bool) -> tuple[str, ProvhubError | None, str]:
    """Run one request; return the answer, the error, and every repr seen on the way."""
    reprs: list[str] = [repr(hub), repr(hub.route(MODEL, MESSAGES)), repr(hub.health())]
    try:
        if stream:
            with hub.stream(MODEL, MESSAGES, temperature=0.1) as handle:
                reprs.append(repr(handle))
                text = "".join(handle)
                reprs += [repr(handle), repr(handle.attempts)]
        else:
            result = hub.complete(MODEL, MESSAGES, temperature=0.1)
            text = result.text
            reprs.append(repr(result.attempts))
    except ProvhubError as exc:
        return "", exc, "\n".join(reprs)
    return text, None, "\n".join(reprs)


# -- in-process: events, errors, reprs ---------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_no_key_or_content_in_events_errors_or_reprs_on_any_path(
    outcome: str,
    stream: bool,
    secret_key: str,
    upstream: FakeUpstream,
    make_hub: Callable[..., Hub],
) -> None:
    upstream.default = OUTCOMES[outcome]
    url = unused_port_url() if outcome == "refused" else upstream.base_url
    events: list[dict[str, Any]] = []
    hub, provider = _hub_for(make_hub(**ROUTER), url, events)

    answer, error, reprs = _run(hub, stream)

    said = "\n".join([repr(events), reprs, repr(provider), described(error) if error else ""])
    assert found(said) == []
    assert events, "the request emitted no events"
    if outcome == "success":
        assert error is None
        assert answer == Behaviour().text()
    else:
        assert isinstance(error, AllProvidersFailedError | StreamInterruptedError)
    if outcome != "refused":  # the sentinels really went out, so absence above means something
        sent = upstream.requests[0]
        assert sent.headers["authorization"] == f"Bearer {secret_key}"
        assert CONTENT in sent.body.decode()


def test_async_paths_leak_no_key_or_content(
    secret_key: str, upstream: FakeUpstream, make_hub: Callable[..., Hub]
) -> None:
    upstream.script(Behaviour(), Behaviour(fault=Fault.DROP_MID_STREAM), Behaviour(status=401))
    events: list[dict[str, Any]] = []
    hub, _ = _hub_for(make_hub(**ROUTER), upstream.base_url, events)

    errors: list[ProvhubError] = []

    async def run() -> list[str]:
        said = []
        completion = await hub.acomplete(MODEL, MESSAGES)
        said.append(repr(completion.attempts))
        for _ in range(2):
            try:
                async with hub.astream(MODEL, MESSAGES) as handle:
                    said.append(repr(handle))
                    async for _token in handle:
                        pass
            except ProvhubError as exc:
                errors.append(exc)
                said.append(described(exc))
        return said

    said = asyncio.run(run())
    assert [type(e) for e in errors] == [StreamInterruptedError, AllProvidersFailedError]
    assert found("\n".join(said) + repr(events)) == []


def test_invalid_request_errors_do_not_echo_message_content(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(**ROUTER)
    hub.register(OpenAICompatible("remote", unused_port_url(), [MODEL]))
    bad_lists: list[Any] = [
        [{"role": "user", "content": {"text": CONTENT}}],
        [{"role": "user", "content": [{"text": CONTENT}]}],
        [{"role": "user", "content": [{"type": "text", "text": b"bytes " + CONTENT.encode()}]}],
        [{"role": "user", "content": f"{CONTENT} \ud800"}],
        [{"role": "user", "content": "fine", "name": {CONTENT, "a set"}}],
        [{"content": CONTENT}],
        [CONTENT],
        CONTENT,
    ]
    for messages in bad_lists:
        with pytest.raises(InvalidRequestError) as caught:
            hub.stream(MODEL, messages)
        assert found(described(caught.value)) == []


def test_log_content_true_lets_content_into_events_but_never_the_key(
    secret_key: str, upstream: FakeUpstream, make_hub: Callable[..., Hub]
) -> None:
    events: list[dict[str, Any]] = []
    with Hub(make_hub(**ROUTER).config, load_plugins=False, log_content=True) as hub:
        _hub_for(hub, upstream.base_url, events)
        assert hub.complete(MODEL, MESSAGES).text == Behaviour().text()
    # The positive control: the searches above would have found content had it been there.
    assert found(repr(events)) == [CONTENT]


def test_secret_looking_fields_are_masked_in_events() -> None:
    from provhub._events import redact

    fields = {"api_key": KEY, "headers": {"Authorization": f"Bearer {KEY}"}, "token": KEY}
    assert found(repr(redact(fields))) == []
    assert found(repr(redact({"messages": MESSAGES, "content": CONTENT}))) == []
    assert found(repr(redact({"messages": MESSAGES}, log_content=True))) == [CONTENT]


# -- log lines and CLI output, in real subprocesses --------------------------------------------

LOGGING_SCRIPT = textwrap.dedent(
    """
    import logging, os, sys
    from provhub import Config, Hub, ProvhubError, configure_logging
    from provhub.testing import Behaviour, FakeUpstream, Fault
    from provhub_providers.openai_compatible import OpenAICompatible

    mode, content = sys.argv[1], os.environ["SENTINEL_CONTENT"]
    if mode == "stdlib":
        logging.basicConfig(level=logging.DEBUG)  # a host without structlog
    else:
        configure_logging(format=mode, level="debug")
    log = logging.getLogger("host")
    messages = [{"role": "system", "content": content}, {"role": "user", "content": content}]
    config = Config.from_mapping({"router": {"retries": 1, "backoff_base": 0.0,
        "breaker_threshold": 1000, "timeouts": {
        "connect": 1.0, "first_token": 0.5, "idle": 0.3, "total": 3.0}}})
    behaviours = [
        Behaviour(), Behaviour(status=401), Behaviour(status=500),
        Behaviour(fault=Fault.MALFORMED_JSON, fault_after=0),
        Behaviour(fault=Fault.DROP_MID_STREAM), Behaviour(fault=Fault.ERROR_OBJECT),
        Behaviour(fault=Fault.HANG_BETWEEN_CHUNKS, hang_seconds=5),
    ]
    with FakeUpstream() as upstream:
        hub = Hub(config, load_plugins=False)
        hub.register(OpenAICompatible(
            "remote", upstream.base_url, ["gpt-4"], api_key_env="PROVHUB_TEST_SECRET_KEY"))
        for behaviour in behaviours:
            upstream.default = behaviour
            for stream in (True, False):
                try:
                    if stream:
                        with hub.stream("gpt-4", messages) as handle:
                            for _ in handle:
                                pass
                    else:
                        hub.complete("gpt-4", messages)
                except ProvhubError:
                    # What a host does with an error: log it, traceback and all.
                    log.exception("request failed")
        try:
            hub.stream("gpt-4", [{"role": "bogus", "content": content}])
        except ProvhubError:
            log.exception("invalid request")
        hub.close()
        assert content in upstream.requests[0].body.decode()
    """
)


def _subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROVHUB_", "SENTINEL_")) and k != "PYTHONPATH"
    }
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path), PROVHUB_PLUGINS="")
    env.update({KEY_ENV: KEY, "SENTINEL_CONTENT": CONTENT}, **extra)
    return env


@pytest.mark.parametrize("mode", ["json", "console", "stdlib"])
def test_log_lines_never_contain_key_or_content(mode: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, mode],
        env=_subprocess_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    # The story was told (at debug level, chunk events included) ...
    for event in ("route.planned", "attempt.failed", "stream.interrupted", "stream.completed"):
        assert event in output
    assert "stream.chunk" in output
    assert "request failed" in output
    # ... without the secrets.
    assert found(output) == []


CLI_CONFIG = """
[router]
retries = 0
timeouts = {{ connect = 1.0, first_token = 1.0, idle = 0.5, total = 3.0 }}

[providers.remote]
type = "openai-compatible"
url = "{url}"
api_key_env = "{key_env}"
models = ["gpt-4"]
"""


@pytest.mark.parametrize(
    ("behaviour", "flags", "exit_code"),
    [
        (Behaviour(), ["-vv"], 0),
        (Behaviour(), ["-v", "--log-format", "json", "--no-stream"], 0),
        (Behaviour(status=401), ["-v"], 4),
        (Behaviour(status=401), ["-vv", "--no-stream"], 4),
        (Behaviour(status=500), ["-v", "--log-format", "json"], 4),
        (Behaviour(fault=Fault.DROP_MID_STREAM), ["-vv"], 4),
        (Behaviour(fault=Fault.MALFORMED_JSON, fault_after=0), ["-v"], 4),
        (Behaviour(fault=Fault.ERROR_OBJECT), ["-v", "--no-stream"], 4),
    ],
    ids=[
        "success_vv",
        "success_json_no_stream",
        "http_401_v",
        "http_401_vv_no_stream",
        "http_500_json",
        "interrupted_vv",
        "malformed_v",
        "error_object_no_stream",
    ],
)
def test_cli_output_never_contains_key_or_content(
    behaviour: Behaviour, exit_code: int, flags: list[str], upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.default = behaviour
    config = tmp_path / "provhub.toml"
    config.write_text(CLI_CONFIG.format(url=upstream.base_url, key_env=KEY_ENV))
    global_flags = [f for f in flags if f != "--no-stream"]
    chat_flags = [f for f in flags if f == "--no-stream"]
    chat = ["chat", "-m", MODEL, "-p", "remote", "-s", CONTENT, *chat_flags, CONTENT]
    done = subprocess.run(
        [sys.executable, "-m", "provhub", "--config", str(config), *global_flags, *chat],
        env=_subprocess_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == exit_code, done.stderr[-3000:]
    assert found(done.stderr) == []
    assert "Traceback" not in done.stderr
    if exit_code:
        assert "provhub: error:" in done.stderr
    else:
        assert done.stdout.strip() == Behaviour().text().strip()
    sent = upstream.requests[0]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert CONTENT in sent.body.decode()


# -- TLS and plain-http credentials ------------------------------------------------------------


def test_tls_verification_is_on_by_default() -> None:
    assert Transport().verify is True
    assert ProviderConfig(name="any").verify_tls is True
    with provider_call() as call:  # a provider called outside any hub
        assert call.verify_tls is True


def test_a_provider_sees_verification_off_only_when_its_config_says_so(
    upstream: FakeUpstream, make_hub: Callable[..., Hub]
) -> None:
    seen: dict[str, bool] = {}

    class Probe(OpenAICompatible):
        def create_completion(
            self, model: str, messages: Any, stream: bool, **kwargs: Any
        ) -> Iterator[str]:
            with provider_call() as call:
                seen[self.name] = call.verify_tls
            yield from super().create_completion(model, messages, stream, **kwargs)

    hub = make_hub({"lax": {"verify_tls": False}}, **ROUTER)
    hub.register(Probe("strict", upstream.base_url, [MODEL]))
    hub.register(Probe("lax", upstream.base_url, ["gpt-3.5-turbo"]))
    hub.complete(MODEL, MESSAGES)
    hub.complete("gpt-3.5-turbo", MESSAGES)
    assert seen == {"strict": True, "lax": False}


def _insecure(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["provider"], e["reason"]) for e in events if e["event"] == "provider.insecure"]


def test_disabled_tls_verification_emits_a_provider_insecure_warning(
    make_hub: Callable[..., Hub],
) -> None:
    hub = make_hub({"lax": {"verify_tls": False}}, **ROUTER)
    events: list[dict[str, Any]] = []
    hub.subscribe(lambda event: events.append(dict(event)))
    hub.register(OpenAICompatible("lax", "https://api.example.com/v1", [MODEL]))
    hub.register(OpenAICompatible("strict", "https://api.example.com/v1", ["gpt-3.5-turbo"]))
    assert _insecure(events) == [("lax", "TLS verification disabled")]
    assert [e["level"] for e in events if e["event"] == "provider.insecure"] == ["warning"]


@pytest.mark.parametrize(
    ("url", "with_key", "warned"),
    [
        ("http://api.example.com/v1", True, True),
        ("http://10.0.0.7:8000/v1", True, True),
        ("http://localhost.example.com/v1", True, True),
        ("http://127.0.0.1.nip.io/v1", True, True),
        ("http://api.example.com/v1", False, False),
        ("https://api.example.com/v1", True, False),
        ("http://127.0.0.1:8000/v1", True, False),
        ("http://127.9.9.9:8000/v1", True, False),
        ("http://localhost:11434/v1", True, False),
        ("http://[::1]:8000/v1", True, False),
    ],
)
def test_credentials_over_plain_http_to_a_remote_host_emit_a_provider_insecure_warning(
    url: str, with_key: bool, warned: bool, make_hub: Callable[..., Hub]
) -> None:
    hub = make_hub(**ROUTER)
    events: list[dict[str, Any]] = []
    hub.subscribe(lambda event: events.append(dict(event)))
    hub.register(OpenAICompatible("p", url, [MODEL], api_key_env=KEY_ENV if with_key else None))
    expected = [("p", "credentials sent over plain http to a remote host")] if warned else []
    assert _insecure(events) == expected


CONFIG_WARNINGS_SCRIPT = textwrap.dedent(
    """
    import sys
    from provhub import Hub, configure_logging
    configure_logging(format="json", level="warning")
    Hub(sys.argv[1])
    """
)


def test_config_created_providers_warn_at_hub_creation(tmp_path: Path) -> None:
    config = tmp_path / "provhub.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [providers.lax]
            type = "openai-compatible"
            url = "https://api.example.com/v1"
            models = ["gpt-4"]
            verify_tls = false

            [providers.cleartext]
            type = "openai-compatible"
            url = "http://api.example.com/v1"
            api_key_env = "{KEY_ENV}"
            models = ["gpt-4"]

            [providers.loopback]
            type = "openai-compatible"
            url = "http://127.0.0.1:11434/v1"
            api_key_env = "{KEY_ENV}"
            models = ["gpt-4"]
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", CONFIG_WARNINGS_SCRIPT, str(config)],
        env=_subprocess_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    warnings = sorted(
        (line["provider"], line["reason"])
        for line in lines
        if line.get("event") == "provider.insecure"
    )
    assert warnings == [
        ("cleartext", "credentials sent over plain http to a remote host"),
        ("lax", "TLS verification disabled"),
    ]
    assert found(done.stderr) == []


# -- size limits -------------------------------------------------------------------------------


def test_size_limits_have_safe_defaults() -> None:
    limits = Config().limits
    assert limits == Limits()
    assert limits.max_request_bytes == 16 * 1024 * 1024
    assert limits.max_response_bytes == 64 * 1024 * 1024
    assert limits.max_line_bytes == 1024 * 1024
    assert Transport().limits == limits


def test_size_limits_are_configured_in_the_limits_table() -> None:
    config = Config.from_mapping(
        {"limits": {"max_request_bytes": 1000, "max_response_bytes": 2000, "max_line_bytes": 300}}
    )
    assert config.limits == Limits(
        max_response_bytes=2000, max_line_bytes=300, max_request_bytes=1000
    )
    for bad in ({"max_line_bytes": 0}, {"max_line_bytes": True}, {"max_body": 5}):
        with pytest.raises(ConfigError, match="limits"):
            Config.from_mapping({"limits": bad})


def _limited_hub(upstream: FakeUpstream, **limits: int) -> Hub:
    base = Config.from_mapping(
        {"router": {"retries": 0, "breaker_threshold": 2, "timeouts": TIMEOUTS}, "limits": limits}
    )
    hub = Hub(base, load_plugins=False)
    hub.register(OpenAICompatible("remote", upstream.base_url, [MODEL]))
    return hub


def test_an_oversized_request_is_a_typed_error_that_spares_the_breaker(
    upstream: FakeUpstream,
) -> None:
    with _limited_hub(upstream, max_request_bytes=1000) as hub:
        big = [{"role": "user", "content": "x" * 2000}]
        for _ in range(3):  # more than breaker_threshold
            with pytest.raises(AllProvidersFailedError) as caught:
                hub.complete(MODEL, big)
            assert isinstance(caught.value.__cause__, RequestTooLargeError)
            assert "limits.max_request_bytes" in str(caught.value)
        assert upstream.requests == []  # refused before sending
        # The caller's mistake did not open the provider's breaker for everyone else.
        assert hub.complete(MODEL, MESSAGES).text == Behaviour().text()


def test_an_oversized_streamed_response_is_a_typed_error(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(chunks=200)
    with _limited_hub(upstream, max_response_bytes=4000) as hub:
        tokens: list[str] = []
        # Tokens flow until the limit trips, so the stream is interrupted, not failed over.
        with pytest.raises(StreamInterruptedError) as caught, hub.stream(MODEL, MESSAGES) as s:
            tokens.extend(s)
        assert caught.value.text == "".join(tokens)
        assert tokens
        assert "limits.max_response_bytes" in str(caught.value)


def test_an_oversized_complete_response_is_a_typed_error(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(chunks=2000)
    with _limited_hub(upstream, max_response_bytes=4000) as hub:
        with pytest.raises(AllProvidersFailedError) as caught:
            hub.complete(MODEL, MESSAGES)
        assert "limits.max_response_bytes" in str(caught.value)


def test_an_over_long_event_line_is_a_typed_error(upstream: FakeUpstream) -> None:
    upstream.default = Behaviour(tokens=("y" * 500,))
    with _limited_hub(upstream, max_line_bytes=300) as hub:
        with pytest.raises(AllProvidersFailedError) as caught, hub.stream(MODEL, MESSAGES) as s:
            "".join(s)
        assert "max_line_bytes" in str(caught.value)


# -- hostile upstreams echoing credentials (tests/leak_cases.py) -------------------------------

LEAK_TIMEOUTS = {"connect": 1.0, "first_token": 1.0, "idle": 0.5, "total": 3.0}


def leaked_credentials(text: str) -> list[str]:
    """Credentials found in ``text``: whole or in part (10 characters), plain or decoded.

    An escaped key is still a key, and so is the first half of one cut off by an
    excerpt limit.
    """
    import codecs
    from urllib.parse import unquote

    from tests.leak_cases import CREDENTIALS

    forms = [text, unquote(text)]
    with contextlib.suppress(UnicodeDecodeError):
        forms.append(codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape"))
    found_ = []
    for secret in CREDENTIALS:
        pieces = {secret[i : i + 10] for i in range(len(secret) - 9)}
        if any(piece in form for form in forms for piece in pieces):
            found_.append(secret)
    return found_


def _leak_hub(make_hub: Callable[..., Hub], url: str, events: list[dict[str, Any]]) -> Hub:
    from tests.leak_cases import HEADER_KEYS

    hub = make_hub(retries=1, backoff_base=0.0, timeouts=LEAK_TIMEOUTS)
    hub.subscribe(lambda event: events.append(dict(event)))
    # Custom credential headers, as a plugin or a programmatic provider sends them.
    hub.register(OpenAICompatible("remote", url, [MODEL], api_key_env=KEY_ENV, headers=HEADER_KEYS))
    return hub


@pytest.mark.parametrize("mode", ["stream", "complete", "astream", "acomplete"])
@pytest.mark.parametrize("case", sorted(__import__("tests.leak_cases").leak_cases.CASES))
def test_credentials_echoed_by_a_hostile_upstream_are_masked_everywhere(
    make_hub: Callable[..., Hub], secret_key: str, case: str, mode: str
) -> None:
    from tests.hostile import HostileServer, Read, Repeat, Send
    from tests.leak_cases import CASES, CREDENTIALS, HEADER_KEYS

    assert secret_key == KEY
    events: list[dict[str, Any]] = []
    with HostileServer(default=[Repeat((Read(), Send(CASES[case])))]) as server:
        hub = _leak_hub(make_hub, server.base_url, events)
        error: BaseException | None = None
        try:
            if mode == "stream":
                with hub.stream(MODEL, MESSAGES) as handle:
                    "".join(handle)
            elif mode == "complete":
                hub.complete(MODEL, MESSAGES)
            elif mode == "astream":

                async def consume() -> None:
                    async with hub.astream(MODEL, MESSAGES) as handle:
                        async for _ in handle:
                            pass

                asyncio.run(consume())
            else:
                asyncio.run(hub.acomplete(MODEL, MESSAGES))
        except ProvhubError as exc:
            error = exc
        # The credentials really went out, each in its own header ...
        sent = server.requests[0].decode("latin-1")
        assert f"Bearer {KEY}" in sent
        for name, value in HEADER_KEYS.items():
            assert f"{name}: {value}" in sent
    # ... every case fails (none of these is an answer) ...
    assert isinstance(error, AllProvidersFailedError | StreamInterruptedError), error
    assert any(e["event"] == "attempt.failed" for e in events)
    # ... and no credential is in any event, error text, cause, attempt or repr.
    seen = json.dumps(events, default=repr) + described(error) + repr(error.__dict__)
    assert leaked_credentials(seen) == [], seen[:2000]
    assert CREDENTIALS


HOSTILE_LOGGING_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    sys.path.insert(0, sys.argv[1])
    from provhub import Config, Hub, ProvhubError, configure_logging
    from provhub_providers.openai_compatible import OpenAICompatible
    from tests.hostile import HostileServer, Read, Repeat, Send
    from tests.leak_cases import CASES, HEADER_KEYS, KEY_ENV

    configure_logging(format="json", level="debug")
    log = logging.getLogger("host")
    config = Config.from_mapping({"router": {"retries": 0, "timeouts": {
        "connect": 1.0, "first_token": 1.0, "idle": 0.5, "total": 3.0}}})
    messages = [{"role": "user", "content": "hi"}]
    for name, response in CASES.items():
        with HostileServer(default=[Repeat((Read(), Send(response)))]) as server:
            hub = Hub(config, load_plugins=False)
            hub.register(OpenAICompatible("remote", server.base_url, ["gpt-4"],
                                          api_key_env=KEY_ENV, headers=HEADER_KEYS))
            for stream in (True, False):
                try:
                    if stream:
                        for _ in hub.stream("gpt-4", messages):
                            pass
                    else:
                        asyncio.run(hub.acomplete("gpt-4", messages))
                except ProvhubError as exc:
                    log.exception("request failed: %s", exc)
                    log.error("as a host prints it: %s / %r", exc, exc)
            hub.close()
    """
)


def test_json_log_lines_of_hostile_echoes_never_contain_credentials(tmp_path: Path) -> None:
    from tests.leak_cases import CASES, CREDENTIALS

    done = subprocess.run(
        [sys.executable, "-c", HOSTILE_LOGGING_SCRIPT, str(REPO)],
        env=_subprocess_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if line.startswith("{")]
    failed = [json.loads(line) for line in lines if '"attempt.failed"' in line]
    assert len(failed) >= 2 * len(CASES) - 2  # every case told its story ...
    assert output.count("request failed") >= 2 * len(CASES) - 2
    assert leaked_credentials(output) == [], output[:3000]  # ... without a credential
    assert CREDENTIALS
