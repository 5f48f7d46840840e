"""The gateway's small parts on their own: keys, the poll helper, config, the bind check."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provhub import Config, ConfigError
from provhub.gateway import KeyRing
from provhub.gateway._chat import parse_chat_request, request_timeouts
from provhub.gateway._errors import GatewayError
from provhub.gateway._metrics import OTHER, _Folder
from provhub.gateway._poll import Resume, ready, step
from provhub.gateway._server import is_loopback

# -- keys ---------------------------------------------------------------------------------


def test_keys_come_from_the_named_variable_separated_by_commas_or_spaces() -> None:
    ring = KeyRing.from_env("K", {"K": "one, two\nthree"})
    assert len(ring) == 3
    for key in (b"one", b"two", b"three"):
        assert ring.check(b"Bearer " + key)
        assert ring.check(b"bearer  " + key + b" ")
    assert not ring.check(b"Bearer four")
    assert not ring.check(b"Bearer ")
    assert not ring.check(b"one")  # no scheme
    assert not ring.check(b"Basic one")
    assert not ring.check(None)


def test_no_variable_means_no_keys_and_everyone_allowed() -> None:
    ring = KeyRing.from_env(None)
    assert not ring.enabled
    assert ring.check(None)


@pytest.mark.parametrize("value", [None, "", " , "])
def test_a_named_but_empty_variable_is_a_config_error(value: str | None) -> None:
    environ = {} if value is None else {"K": value}
    with pytest.raises(ConfigError, match=r"K \(named by api_keys_env\) is unset or empty"):
        KeyRing.from_env("K", environ)


def test_the_keys_never_appear_in_the_ring_or_its_repr() -> None:
    ring = KeyRing(["sk-secret-1"])
    assert "sk-secret" not in repr(ring)
    assert not any(b"sk-secret" in d for d in ring._digests)
    assert ring._digests == (hashlib.sha256(b"sk-secret-1").digest(),)


@given(st.binary(max_size=64))
def test_arbitrary_authorization_headers_never_raise(header: bytes) -> None:
    ring = KeyRing(["k"])
    scheme, _, token = header.strip().partition(b" ")
    expected = scheme.lower() == b"bearer" and token.strip() == b"k"
    assert ring.check(header) is expected
    assert ring.check(b"Bearer k" if not expected else header)


# -- stepping a coroutine -----------------------------------------------------------------


def test_step_returns_a_result_that_needed_no_wait() -> None:
    async def at_once() -> int:
        return 7

    coro = at_once()
    result, yielded = step(coro)
    assert ready(result)
    assert (result, yielded) == (7, None)


def test_a_suspended_coroutine_resumes_with_its_result() -> None:
    async def main() -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def wait() -> int:
            return await future + 1

        coro = wait()
        result, yielded = step(coro)
        assert not ready(result)
        asyncio.get_running_loop().call_later(0.01, future.set_result, 41)
        return await Resume(coro, yielded)

    assert asyncio.run(main()) == 42


def test_exceptions_and_cancellation_pass_through_resume() -> None:
    async def main() -> list[str]:
        seen: list[str] = []
        loop = asyncio.get_running_loop()

        async def waits_then_raises() -> None:
            await asyncio.sleep(0.01)
            raise StopAsyncIteration

        coro = waits_then_raises()
        _, yielded = step(coro)
        with pytest.raises(StopAsyncIteration):
            await Resume(coro, yielded)
        seen.append("raised")

        async def cleans_up() -> None:
            try:
                await loop.create_future()
            except asyncio.CancelledError:
                seen.append("cancelled inside")
                raise

        async def outer() -> None:
            inner = cleans_up()
            _, pending = step(inner)
            await Resume(inner, pending)

        task = asyncio.create_task(outer())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        seen.append("task cancelled")
        return seen

    assert asyncio.run(main()) == ["raised", "cancelled inside", "task cancelled"]


# -- request parsing ----------------------------------------------------------------------


def test_unknown_fields_pass_through_as_params() -> None:
    request = parse_chat_request(
        b'{"model": "m", "messages": [], "stream": true, "stream_options": {"include_usage": true},'
        b' "temperature": 0.1, "user": "u", "n": 1}'
    )
    assert request.stream
    assert request.include_usage
    assert request.params == {"temperature": 0.1, "user": "u"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m", "messages": [], "stream_options": {}}', "stream_options"),
        (b'{"model": "m", "messages": [], "stream": true, "stream_options": []}', "stream_options"),
        (b'{"model": "", "messages": []}', "model"),
        (b'{"model": "m", "messages": [], "timeouts": 1}', "timeouts"),
        (b"", None),
        (b"[" * 100_000, None),
    ],
)
def test_malformed_requests_are_400(body: bytes, param: str | None) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_chat_request(body)
    assert caught.value.status == 400
    assert caught.value.param == param


@given(st.binary(max_size=200))
def test_any_body_parses_or_is_a_400(body: bytes) -> None:
    status = 200
    try:
        parse_chat_request(body)
    except GatewayError as exc:
        status = exc.status
    assert status in (200, 400)


def test_the_deadline_caps_the_total_timeout_only() -> None:
    base = Config().router.timeouts
    capped = request_timeouts(base, 3.0)
    assert (capped.total, capped.connect, capped.idle) == (3.0, base.connect, base.idle)
    assert request_timeouts(base, 10_000.0) is base


# -- label folding, config, binding -------------------------------------------------------


def test_label_folding_keeps_known_values_and_caps_them() -> None:
    fold = _Folder([f"m{i}" for i in range(10)], cap=5)
    assert [fold(f"m{i}") for i in range(7)] == ["m0", "m1", "m2", "m3", "m4", OTHER, OTHER]
    assert fold(None) == OTHER


def test_server_table_is_parsed_and_validated() -> None:
    config = Config.from_mapping(
        {
            "server": {
                "host": "0.0.0.0",
                "port": 9000,
                "workers": 2,
                "api_keys_env": "MY_KEYS",
                "max_body_bytes": 1000,
                "deadline": 30,
                "metrics_auth": True,
            }
        }
    )
    server = config.server
    assert (server.host, server.port, server.workers, server.api_keys_env) == (
        "0.0.0.0",
        9000,
        2,
        "MY_KEYS",
    )
    assert (server.max_body_bytes, server.deadline, server.metrics_auth) == (1000, 30.0, True)
    assert Config().server.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ({"prot": 1}, "server.prot", "unknown key"),
        ({"port": 70000}, "server.port", "0-65535"),
        ({"workers": 0}, "server.workers", ">= 1"),
        ({"deadline": -1}, "server.deadline", "above 0"),
        ({"metrics_auth": "yes"}, "server.metrics_auth", "true or false"),
        ({"api_keys_env": "sk-abc123"}, "server.api_keys_env", "not hold a key"),
        ({"api_keys_env": "MY KEYS"}, "server.api_keys_env", "environment variable"),
    ],
)
def test_bad_server_settings_name_the_key(table: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping({"server": table})
    assert caught.value.key == key
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("gateway.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("interrupted", [False, True], ids=["before", "after_first_token"])
def test_a_timeout_at_the_request_deadline_is_a_504_whichever_timer_fired_first(
    interrupted: bool,
) -> None:
    # The hub's total is capped by the request's deadline: when its timer wins the
    # race with the gateway's, the answer must still say "deadline", not "upstream".
    from provhub import AllProvidersFailedError, StreamInterruptedError, UpstreamTimeoutError
    from provhub._attempt import Attempt
    from provhub.gateway._errors import from_failure
    from provhub.gateway._limits import Deadline

    timeout = UpstreamTimeoutError("total timeout of 0.8 s exceeded", provider="slow")
    exc: Exception
    if interrupted:
        exc = StreamInterruptedError("slow", "Hel", timeout)
    else:
        attempt = Attempt(1, "slow", False, "UpstreamTimeoutError")
        exc = AllProvidersFailedError("slow-model", [attempt])
        exc.__cause__ = timeout  # as the run raises it: ... from the last failure
    passed = Deadline(0.0)
    assert from_failure(exc, passed).status == 504
    assert from_failure(exc, passed).code == "deadline_exceeded"
    running = Deadline(30.0)  # the upstream's own timeout, long before the deadline
    assert from_failure(exc, running).status == 502
