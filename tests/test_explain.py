"""``_explain``: exception chains in plain words, and the next step from structured data.

The causes are classified from real exceptions, raised by ``requests`` against
real sockets on loopback (a refused port, a raw server that resets, closes,
hangs or answers plain HTTP to TLS) and a name that cannot resolve (``.invalid``).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from cli_support import HangingServer, PlainHTTPServer
from provhub import AbstractProvider, AllProvidersFailedError, Attempt, ProviderConfig
from provhub._explain import (
    Cause,
    Endpoint,
    cause_of,
    connect_failure,
    endpoint_of,
    failure_line,
    next_step,
    seconds,
    url_words,
)
from provhub._registry import describe
from provhub.testing import unused_port_url


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.3820692189997317, "0.38 s"),
        (10.0, "10 s"),
        (600.0, "600 s"),
        (2.5, "2.5 s"),
        (2.0, "2 s"),
        (1.04, "1 s"),
        (0.05, "0.05 s"),
        (0.0004, "0.001 s"),
        (125.4, "125 s"),
        (9.96, "10 s"),
    ],
)
def test_seconds_are_rounded_for_people(value: float, text: str) -> None:
    assert seconds(value) == text


@given(st.floats(min_value=0.001, max_value=1e6))
def test_seconds_stay_short_and_close_to_the_value(value: float) -> None:
    text = seconds(value)
    number = float(text.removesuffix(" s"))
    assert abs(number - value) <= max(0.05 * value, 0.0051)
    assert "e" not in text
    # Rounding may carry into one more digit (999999.5 s -> "1000000 s").
    assert len(text.removesuffix(" s").replace(".", "").lstrip("0")) <= max(
        3, len(str(round(value)))
    )


def raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as exc:
        return exc
    raise AssertionError("nothing was raised")


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        yield s


def test_refused_port(session: requests.Session) -> None:
    url = unused_port_url()
    exc = raised(lambda: session.get(url, timeout=5))
    assert cause_of(exc)[0] is Cause.REFUSED
    host = url.removeprefix("http://")
    assert connect_failure(exc, url) == (
        f"cannot connect to {host}: connection refused (nothing listens on that port)"
    )


def test_unresolvable_host(session: requests.Session) -> None:
    exc = raised(lambda: session.get("http://provhub-test.invalid/v1", timeout=10))
    assert cause_of(exc)[0] is Cause.DNS
    assert connect_failure(exc, "http://provhub-test.invalid/v1") == (
        "cannot connect to provhub-test.invalid: the host name does not resolve (no network, "
        "or a typo in the URL)"
    )


def test_tls_to_a_plain_http_server(session: requests.Session) -> None:
    with PlainHTTPServer() as plain:
        url = plain.url.replace("http://", "https://")
        exc = raised(lambda: session.get(url, timeout=5))
    assert cause_of(exc)[0] is Cause.TLS
    assert connect_failure(exc, url) == (
        f"TLS handshake with 127.0.0.1:{plain.port} failed: the server does not speak TLS on "
        "this port (should the URL be http://?)"
    )


def test_read_timeout_against_a_silent_server(session: requests.Session) -> None:
    with HangingServer() as silent:
        exc = raised(lambda: session.get(silent.url, timeout=(2, 0.2)))
    assert isinstance(exc, requests.ReadTimeout)
    assert cause_of(exc)[0] is Cause.READ_TIMEOUT


def one_shot_server(reply: Callable[[socket.socket], None]) -> tuple[str, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                reply(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{port}", thread


def reset(connection: socket.socket) -> None:
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_reset_and_closed_connections(session: requests.Session) -> None:
    url, thread = one_shot_server(reset)
    exc = raised(lambda: session.get(url, timeout=5))
    thread.join(5)
    assert cause_of(exc)[0] is Cause.RESET
    assert connect_failure(exc, url) == (
        f"{url.removeprefix('http://')} reset the connection before answering"
    )

    url, thread = one_shot_server(lambda c: c.shutdown(socket.SHUT_WR))  # no word, a clean FIN
    exc = raised(lambda: session.get(url, timeout=5))
    thread.join(5)
    assert cause_of(exc)[0] is Cause.CLOSED


def test_connect_timeout_is_named_with_its_limit() -> None:
    import urllib3.exceptions

    # No routable black hole on a loopback-only machine: the chain urllib3 builds.
    inner = urllib3.exceptions.ConnectTimeoutError(None, "timed out")
    outer = requests.ConnectTimeout(urllib3.exceptions.MaxRetryError(None, "/", inner))  # type: ignore[arg-type]
    assert cause_of(outer)[0] is Cause.CONNECT_TIMEOUT
    assert connect_failure(outer, "http://10.1.2.3:8000/v1", connect_timeout=2.0) == (
        "cannot connect to 10.1.2.3:8000: no answer within 2 s (the host is down, or a "
        "firewall drops the packets)"
    )


class _Weird(Exception):
    def __init__(self, reason: object) -> None:
        super().__init__(reason)
        self.reason = reason


@given(
    st.recursive(st.none() | st.text(max_size=5) | st.integers(), lambda inner: st.tuples(inner))
)
def test_cause_of_never_raises_on_odd_chains(reason: object) -> None:
    exc = _Weird(reason)
    exc.__context__ = _Weird(exc)  # a cycle
    cause, link = cause_of(exc)
    assert cause is Cause.OTHER
    assert isinstance(link, BaseException)


# -- where a URL comes from, and the next step ------------------------------------------------


class Upstreamish(AbstractProvider):
    url = "http://supertest.example"
    url_env = "PROVHUB_TEST_EXPLAIN_URL"
    models = ("m",)

    @staticmethod
    def create_completion(model, messages, stream, **kwargs):  # type: ignore[no-untyped-def]
        yield ""


def test_endpoint_origin_is_config_then_env_then_default() -> None:
    info = describe(Upstreamish)
    table = ProviderConfig(name="Upstreamish", url="http://config.example/")
    env = {"PROVHUB_TEST_EXPLAIN_URL": "http://env.example"}
    assert endpoint_of(info, table, "p.toml", env).url == "http://config.example"
    assert endpoint_of(info, table, "p.toml", env).origin == "config"
    assert (endpoint_of(info, None, None, env).url, endpoint_of(info, None, None, env).origin) == (
        "http://env.example",
        "env",
    )
    default = endpoint_of(info, None, None, {})
    assert (default.url, default.origin) == ("http://supertest.example", "default")
    assert url_words(default) == (
        "its URL is the built-in default http://supertest.example; set "
        "$PROVHUB_TEST_EXPLAIN_URL or url in [providers.Upstreamish] to use another server"
    )


def test_keys_are_named_never_read_out() -> None:
    info = describe(Upstreamish)
    table = ProviderConfig(name="Upstreamish", api_key_env="PROVHUB_TEST_EXPLAIN_KEY")
    endpoint = endpoint_of(info, table, None, {"PROVHUB_TEST_EXPLAIN_KEY": "sk-123456789"})
    assert (endpoint.key_env, endpoint.key_set) == ("PROVHUB_TEST_EXPLAIN_KEY", True)
    assert "sk-123456789" not in repr(endpoint) + str(endpoint.as_dict())


ENDPOINT = Endpoint("api", "http://h:1/v1", "env", url_env="API_URL", key_env="API_KEY")


@pytest.mark.parametrize(
    ("error_type", "status", "step"),
    [
        (
            "UpstreamTimeoutError",
            None,
            "the server is slow or stuck: try again later, or raise "
            "the limits in [router.timeouts] or [providers.api.timeouts]",
        ),
        ("UpstreamHTTPError", 401, "check the API key in $API_KEY (it is not set)"),
        (
            "UpstreamHTTPError",
            429,
            "rate limited: wait and retry, or add another provider for fallback",
        ),
        (
            "UpstreamHTTPError",
            502,
            "the server is failing: retry later, or add another provider for fallback",
        ),
        (
            "UpstreamProtocolError",
            None,
            "is this an OpenAI-compatible chat endpoint?; its URL "
            "http://h:1/v1 comes from $API_URL",
        ),
        (
            "CircuitOpen",
            None,
            "it failed repeatedly; provhub tries it again after [router] breaker_cooldown",
        ),
        ("ValueError", None, ""),
    ],
)
def test_next_step_from_structured_fields(error_type: str, status: int | None, step: str) -> None:
    attempt = Attempt(1, "api", False, error_type, status)
    assert next_step(ENDPOINT, attempt) == step


def test_failure_line_shows_the_real_failure_before_a_skipped_retry() -> None:
    # As the run records a candidate skipped over its limit.
    LIMITED = "rate_limited"
    refused = "cannot connect to h:9: connection refused (nothing listens on that port)"
    limited = "rpm limit 1 reached (1 requests in the last minute; room in 59.8 s)"
    attempts = [
        Attempt(1, "a", False, "UpstreamConnectionError", None, True, refused),
        Attempt(2, "a", False, "LimitReached", error=limited, kind=LIMITED, skipped=True),
        Attempt(3, "b", False, "LimitReached", error=limited, kind=LIMITED, skipped=True),
    ]
    line = failure_line(AllProvidersFailedError("m", attempts))
    # What went wrong with a comes first (a skip is not the cause); b was only skipped.
    assert line.startswith(
        f"all providers failed for model 'm'. a (1 attempt, 1 skipped): {refused}; "
        f"then not tried again: {limited}. Next: check that the server runs"
    )
    assert f"b (1 skipped): {limited}. Next: over its limit" in line


def test_failure_line_folds_retries_and_keeps_the_order_of_providers() -> None:
    attempts = [
        Attempt(1, "a", False, "UpstreamHTTPError", 500, True, "HTTP 500 from h: boom."),
        Attempt(2, "a", False, "UpstreamHTTPError", 500, True, "HTTP 500 from h: boom."),
        Attempt(3, "b", False, "UpstreamTimeoutError", None, True, "no response within 1 s"),
    ]
    line = failure_line(AllProvidersFailedError("m", attempts))
    assert line == (
        "all providers failed for model 'm'. a (2 attempts): HTTP 500 from h: boom. Next: the "
        "server is failing: retry later, or add another provider for fallback. b: no response "
        "within 1 s. Next: the server is slow or stuck: try again later, or raise the limits "
        "in [router.timeouts] or [providers.b.timeouts]"
    )
