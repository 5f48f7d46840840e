"""The mistakes a newcomer makes, and the one line each gets (issue: the first ten minutes).

Every test runs the real CLI in a subprocess (see ``cli_support``) against a real
server on loopback (``FakeUpstream``), a refused port, a host name that cannot
resolve (``.invalid``, RFC 6761) or a raw socket that never answers, and asserts
the exact error line: what failed (provider, host, status), why (the cause in
plain words, the upstream's own message, masked) and what to do next, without
``-v``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_support import Cli, HangingServer, PlainHTTPServer, one_error_line
from provhub.testing import Behaviour, FakeUpstream, Fault, unused_port_url

KEY_ENV = "PROVHUB_TEST_API_KEY"
KEY = "sk-test-Zq81xV0b2m"
FAST = """
[router]
retries = 1
backoff_base = 0.01
backoff_max = 0.02
timeouts = { connect = 5, first_token = 10, idle = 10, total = 20 }
"""


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    with HangingServer() as server:
        yield server


def endpoint_config(url: str, *, extra: str = "", router: str = FAST) -> str:
    """Lockchat off, one openai-compatible endpoint ``api`` serving gpt-4o-mini."""
    return (
        f"{router}\n[providers.Lockchat]\nenabled = false\n"
        f'[providers.api]\ntype = "openai-compatible"\nbase_url = "{url}"\n'
        f'api_key_env = "{KEY_ENV}"\nmodels = ["gpt-4o-mini"]\n{extra}'
    )


def error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


# -- the provider cannot be reached --------------------------------------------------------


def test_refused_port_names_the_host_the_cause_and_the_variable_that_set_the_url(
    cli: Cli,
) -> None:
    url = unused_port_url()
    host = url.removeprefix("http://")
    result = cli("chat", "-m", "gpt-3.5-turbo", "Hello world", PROVHUB_LOCKCHAT_URL=url)
    assert result.returncode == 4
    assert result.stdout == ""
    assert one_error_line(result.stderr) == (
        "provhub: error: all providers failed for model 'gpt-3.5-turbo'. Lockchat (3 attempts): "
        f"cannot connect to {host}: connection refused (nothing listens on that port). "
        "Next: start the server, or point Lockchat at one that runs; "
        f"its URL {url} comes from $PROVHUB_LOCKCHAT_URL"
    )
    # The retry warnings carry the cause too, not "connection failed: ConnectionError".
    assert "ConnectionError'" not in result.stderr
    assert result.stderr.count("connection refused") == 4


def test_unresolvable_host_says_the_name_does_not_resolve(cli: Cli) -> None:
    cli.config(FAST)
    result = cli(
        "chat", "-m", "gpt-3.5-turbo", "Hello world", PROVHUB_LOCKCHAT_URL="http://lockchat.invalid"
    )
    assert result.returncode == 4
    assert one_error_line(result.stderr) == (
        "provhub: error: all providers failed for model 'gpt-3.5-turbo'. Lockchat (2 attempts): "
        "cannot connect to lockchat.invalid: the host name does not resolve (no network, or a "
        "typo in the URL). Next: check the network and the host name; "
        "its URL http://lockchat.invalid comes from $PROVHUB_LOCKCHAT_URL"
    )


def test_url_from_the_config_file_names_the_table_and_the_file(cli: Cli) -> None:
    url = unused_port_url()
    cli.config(f'{FAST}\n[providers.Lockchat]\nurl = "{url}"\n')
    # The config file wins over the variable: the line names the file, not the variable.
    result = cli("chat", "-m", "gpt-4", "hi", PROVHUB_LOCKCHAT_URL="http://lockchat.invalid")
    assert one_error_line(result.stderr).endswith(
        f"Next: start the server, or point Lockchat at one that runs; its URL {url} is set by "
        "url in [providers.Lockchat] of provhub.toml"
    )


def test_tls_to_a_plain_http_port_says_to_write_http(cli: Cli) -> None:
    with PlainHTTPServer() as plain:
        url = plain.url.replace("http://", "https://") + "/v1"
        cli.config(endpoint_config(url))
        result = cli("chat", "-m", "gpt-4o-mini", "hi", **{KEY_ENV: KEY})
    assert one_error_line(result.stderr) == (
        "provhub: error: all providers failed for model 'gpt-4o-mini'. api (2 attempts): "
        f"TLS handshake with 127.0.0.1:{plain.port} failed: the server does not speak TLS on "
        "this port (should the URL be http://?). Next: if the server does not use TLS, write "
        f"http:// in its URL; its URL {url} is set by url in [providers.api] of provhub.toml"
    )


def test_a_silent_upstream_times_out_in_rounded_seconds(cli: Cli, hanging: HangingServer) -> None:
    router = "[router]\nretries = 0\n[router.timeouts]\nfirst_token = 0.3820692189997317\n"
    cli.config(endpoint_config(hanging.url + "/v1", router=router))
    result = cli("chat", "-m", "gpt-4o-mini", "hi", **{KEY_ENV: KEY})
    assert result.returncode == 4
    assert one_error_line(result.stderr) == (
        "provhub: error: all providers failed for model 'gpt-4o-mini'. api: no response from "
        f"127.0.0.1:{hanging.port} within 0.38 s (first-token timeout). Next: the server is "
        "slow or stuck: try again later, or raise the limits in [router.timeouts] or "
        "[providers.api.timeouts]"
    )


# -- the provider answers with an error ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "reason", "next_step"),
    [
        pytest.param(
            401,
            f"Incorrect API key provided: {KEY}. You can find your API key in your account.",
            "Unauthorized",
            f"check the API key in ${KEY_ENV}",
            id="401-wrong-key",
        ),
        pytest.param(
            400,
            "Invalid value for 'temperature': must be at most 2.",
            "Bad Request",
            "the server refused the request: check the model id and the params",
            id="400-bad-param",
        ),
        pytest.param(
            404,
            "The model 'gpt-4o-mini' does not exist or you do not have access to it.",
            "Not Found",
            "check the URL (OpenAI-compatible base URLs usually end in /v1) and the model id; "
            "its URL {url} is set by url in [providers.api] of provhub.toml",
            id="404-wrong-model-or-path",
        ),
    ],
)
def test_http_error_shows_the_upstreams_own_message_masked_and_what_to_do(
    cli: Cli,
    upstream: FakeUpstream,
    status: int,
    message: str,
    reason: str,
    next_step: str,
) -> None:
    upstream.default = Behaviour(status=status, body=error_body(message))
    cli.config(endpoint_config(upstream.base_url))
    result = cli("chat", "-m", "gpt-4o-mini", "hi", **{KEY_ENV: KEY})
    assert result.returncode == 4
    shown = message.replace(KEY, "***").removesuffix(".")
    assert one_error_line(result.stderr) == (
        "provhub: error: all providers failed for model 'gpt-4o-mini'. api: "
        f"HTTP {status} {reason} from {upstream.url.removeprefix('http://')}: {shown}. "
        f"Next: {next_step.format(url=upstream.base_url)}"
    )
    assert KEY not in result.stderr


def test_http_401_without_the_key_set_says_the_variable_is_not_set(
    cli: Cli, upstream: FakeUpstream
) -> None:
    upstream.default = Behaviour(status=401, body=error_body("You didn't provide an API key."))
    # api_key_env makes the provider need a key; without it the route excludes it.
    cli.config(endpoint_config(upstream.base_url).replace(f'api_key_env = "{KEY_ENV}"\n', ""))
    result = cli("chat", "-m", "gpt-4o-mini", "hi")
    assert one_error_line(result.stderr).endswith(
        "You didn't provide an API key. Next: the server wants an API key: put it in an "
        "environment variable and name it with api_key_env in [providers.api]"
    )


def test_missing_key_is_known_before_anything_is_sent(cli: Cli, upstream: FakeUpstream) -> None:
    cli.config(endpoint_config(upstream.base_url))
    result = cli("chat", "-m", "gpt-4o-mini", "hi")
    assert result.returncode == 3
    assert one_error_line(result.stderr) == (
        "provhub: error: no provider qualifies for model 'gpt-4o-mini': api: needs "
        f"credentials: environment variable {KEY_ENV} is not set"
    )
    assert upstream.requests == []


def test_two_failing_providers_each_get_their_cause_and_next_step(
    cli: Cli, upstream: FakeUpstream
) -> None:
    dead = unused_port_url()
    upstream.default = Behaviour(status=503, body=error_body("The engine is overloaded."))
    cli.config(
        f'{FAST}\n[providers.Lockchat]\nurl = "{dead}"\n'
        f'[providers.api]\ntype = "openai-compatible"\nbase_url = "{upstream.base_url}"\n'
        'models = ["gpt-4"]\n'
    )
    result = cli("chat", "-m", "gpt-4", "hi")
    assert result.returncode == 4
    assert one_error_line(result.stderr) == (
        "provhub: error: all providers failed for model 'gpt-4'. Lockchat (2 attempts): "
        f"cannot connect to {dead.removeprefix('http://')}: connection refused (nothing listens "
        "on that port). Next: check that the server runs and is reachable; its URL "
        f"{dead} is set by url in [providers.Lockchat] of provhub.toml. api (2 attempts): "
        f"HTTP 503 Service Unavailable from {upstream.url.removeprefix('http://')}: The engine "
        "is overloaded. Next: the server is failing: retry later, or add another provider "
        "for fallback"
    )


def test_stream_broken_mid_answer_keeps_the_text_and_says_so(
    cli: Cli, upstream: FakeUpstream
) -> None:
    upstream.default = Behaviour(chunks=5, fault=Fault.DROP_MID_STREAM, fault_after=2)
    cli.config(endpoint_config(upstream.base_url))
    result = cli("chat", "-m", "gpt-4o-mini", "hi", **{KEY_ENV: KEY})
    assert result.returncode == 4
    assert result.stdout == "w0 w1 "
    line = one_error_line(result.stderr)
    assert line.startswith(
        "provhub: error: the answer from api broke after 6 characters: the connection to "
        f"{upstream.url.removeprefix('http://')} broke while reading the answer: "
    )
    assert line.endswith("what arrived is printed above: run the command again for a whole answer")


def test_verbose_adds_the_chain_of_causes(cli: Cli) -> None:
    url = unused_port_url()
    cli.config(f'{FAST}\n[providers.Lockchat]\nurl = "{url}"\n')
    result = cli("chat", "-m", "gpt-4", "hi", "-v")
    assert result.returncode == 4
    assert "  caused by UpstreamConnectionError: provider 'Lockchat': cannot connect to" in (
        result.stderr
    )
    assert "  caused by ConnectionError: " in result.stderr
    assert "[Errno 111] Connection refused" in result.stderr


# -- configuration mistakes: exit 2 at load, before anything is sent ----------------------------


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        pytest.param(
            "http://",
            "must be a URL like https://api.example.com/v1 (a scheme and a host), got 'http://'",
            id="no-host",
        ),
        pytest.param(
            "http://127.0.0.1:8080 /v1",
            "must not contain spaces or line breaks (got 'http://127.0.0.1:8080 /v1'); remove them",
            id="space",
        ),
        pytest.param(
            "127.0.0.1:8080/v1",
            "must start with http:// or https://, got '127.0.0.1:8080/v1'",
            id="no-scheme",
        ),
    ],
)
def test_a_bad_base_url_is_refused_at_load_with_exit_2(
    cli: Cli, base_url: str, reason: str
) -> None:
    cli.config(endpoint_config(base_url))
    result = cli("chat", "-m", "gpt-4o-mini", "hi", **{KEY_ENV: KEY})
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        f"provhub: error: provhub.toml, key 'providers.api.base_url': {reason}"
    )


def test_a_directory_as_config_says_it_is_a_directory(cli: Cli) -> None:
    cli.config(FAST)
    result = cli("providers", "--config", str(cli.cwd))
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        f"provhub: error: {cli.cwd}: is a directory, not a config file; pass the path of the "
        f"TOML file; did you mean '{cli.cwd / 'provhub.toml'}'?"
    )


def test_provhub_config_naming_a_missing_file_says_which_variable(cli: Cli) -> None:
    missing = cli.cwd / "nope.toml"
    result = cli("providers", PROVHUB_CONFIG=str(missing))
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        f"provhub: error: {missing}: file not found (named by $PROVHUB_CONFIG)"
    )


def test_verbose_says_which_config_file_was_loaded(cli: Cli) -> None:
    path = cli.config(FAST)
    result = cli("-v", "providers")
    assert result.returncode == 0
    (line,) = [x for x in result.stderr.splitlines() if "config.loaded" in x]
    assert "origin='working directory'" in line
    assert "path=provhub.toml" in line
    assert str(path) in line  # searched, as an absolute path


def test_verbose_says_no_config_file_was_found_and_where_it_looked(cli: Cli) -> None:
    result = cli("-v", "providers")
    (line,) = [x for x in result.stderr.splitlines() if "config.loaded" in x]
    assert "origin='none found'" in line
    assert "path=None" in line
    assert str(cli.cwd / "provhub.toml") in line
    assert str(cli.xdg / "provhub" / "provhub.toml") in line


def test_json_events_carry_config_loaded_with_its_fields(cli: Cli) -> None:
    cli.config(FAST)
    result = cli("--log-format", "json", "providers")
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (loaded,) = [e for e in events if e["event"] == "config.loaded"]
    assert (loaded["path"], loaded["origin"], loaded["level"]) == (
        "provhub.toml",
        "working directory",
        "info",
    )
    assert loaded["searched"] == [str(cli.cwd / "provhub.toml")]


def test_terminal_control_characters_from_the_upstream_are_shown_not_obeyed(
    cli: Cli, upstream: FakeUpstream
) -> None:
    hostile = "\x1b[2J\x1b[31mYour key was revoked\x07"
    upstream.default = Behaviour(status=400, body=error_body(hostile))
    cli.config(endpoint_config(upstream.base_url, router="[router]\nretries = 0\n"))
    result = cli("chat", "-m", "gpt-4o-mini", "hi", **{KEY_ENV: KEY})
    line = one_error_line(result.stderr)
    assert "\x1b" not in line
    assert "\x07" not in line
    assert "from 127.0.0.1:" in line
    assert line.endswith(
        ": \\x1b[2J\\x1b[31mYour key was revoked\\x07. Next: the server refused the request: "
        "check the model id and the params"
    )
