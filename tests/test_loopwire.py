"""Loop-driven streams (provhub._loopwire): TLS, names, refusals, proxies, careless callers.

Everything here goes through ``Hub.astream`` with the shipped OpenAI-compatible
provider, whose streams the event loop drives itself; each test names what a
hostile upstream, a broken network or a careless caller does and what the
caller must see. test_hostile_loop holds the same path to the transport's
hostile table.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from tests.hostile import (
    Hold,
    HostileServer,
    Pause,
    Read,
    Repeat,
    Send,
    chunk,
    head,
    sse,
    sse_response,
)

from provhub import (
    AllProvidersFailedError,
    Hub,
    ProviderError,
    StreamInterruptedError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)
from provhub_providers import OpenAICompatible

MakeHub = Callable[..., Hub]
ANSWER = ("Hel", "lo ", "wörld")
TEXT = "".join(ANSWER)
MESSAGES = [{"role": "user", "content": "hi"}]
SERVE = [Repeat((Read(), Send(sse_response(ANSWER))))]
FAST = {"connect": 1.0, "first_token": 1.0, "idle": 1.0, "total": 3.0}


def event_threads(hub: Hub) -> set[str]:
    """The names of the threads the hub's events come from (filled as they come)."""
    names: set[str] = set()
    hub.subscribe(lambda event: names.add(threading.current_thread().name))
    return names


async def collect(hub: Hub, model: str = "m") -> str:
    async with hub.astream(model, MESSAGES) as stream:
        return "".join([token async for token in stream])


def failure(hub: Hub) -> BaseException:
    """What the astream of ``hub`` raised (the provider's error behind the hub's)."""
    with pytest.raises((AllProvidersFailedError, StreamInterruptedError)) as caught:
        asyncio.run(collect(hub))
    error = caught.value
    cause = error.cause if isinstance(error, StreamInterruptedError) else error.__cause__
    assert cause is not None
    return cause


def one_hub(make_hub: MakeHub, url: str, **provider: Any) -> Hub:
    hub = make_hub(retries=0, timeouts=FAST)
    hub.register(OpenAICompatible("up", url, ["m"], **provider))
    return hub


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(authority: trustme.CA) -> Iterator[HostileServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    with HostileServer(default=SERVE, tls=context) as server:
        yield server


def test_an_https_stream_is_read_on_the_loop_with_tls_and_reuses_its_connection(
    make_hub: MakeHub, tls_server: HostileServer
) -> None:
    hub = make_hub(providers={"up": {"verify_tls": False}}, timeouts=FAST)
    hub.register(OpenAICompatible("up", tls_server.base_url, ["m"]))
    threads = event_threads(hub)

    async def main() -> list[str]:
        return [await collect(hub), await collect(hub)]

    assert asyncio.run(main()) == [TEXT, TEXT]
    assert tls_server.connections == 1  # one TLS session, kept alive
    assert threads == {threading.current_thread().name}  # the requests ran on the loop


def test_an_untrusted_certificate_fails_the_handshake_with_a_clear_error(
    make_hub: MakeHub, tls_server: HostileServer
) -> None:
    hub = one_hub(make_hub, tls_server.base_url)
    error = failure(hub)
    assert isinstance(error, UpstreamConnectionError)
    assert "certificate is not trusted" in str(error)
    assert tls_server.requests == []  # nothing was sent before the handshake failed


def test_tls_to_a_plain_http_port_says_the_url_should_be_http(make_hub: MakeHub) -> None:
    # A plain HTTP server answers the TLS hello with an HTTP error.
    plain = [Send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"), Hold()]
    with HostileServer(default=plain) as server:
        hub = one_hub(make_hub, server.base_url.replace("http://", "https://"))
        error = failure(hub)
    assert isinstance(error, UpstreamConnectionError)
    assert "does not speak TLS on this port (should the URL be http://?)" in str(error)


# -- names, refusals, silence --------------------------------------------------------------


def test_a_host_name_is_resolved_off_the_loop_and_streamed_on_it(make_hub: MakeHub) -> None:
    with HostileServer(default=SERVE) as server:
        hub = one_hub(make_hub, f"http://localhost:{server.port}/v1")
        assert asyncio.run(collect(hub)) == TEXT


def test_a_refused_connection_is_the_same_clear_error_as_on_the_sync_path(
    make_hub: MakeHub,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    hub = one_hub(make_hub, f"http://127.0.0.1:{port}/v1")
    error = failure(hub)
    assert isinstance(error, UpstreamConnectionError)
    assert error.retryable is True
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in str(error)
    with pytest.raises(AllProvidersFailedError) as sync:
        "".join(hub.stream("m", MESSAGES))
    assert str(sync.value.__cause__) == str(error)


def test_a_name_that_does_not_resolve_says_so(make_hub: MakeHub) -> None:
    hub = one_hub(make_hub, "http://no-such-host.invalid/v1")
    error = failure(hub)
    assert isinstance(error, UpstreamConnectionError)
    assert "does not resolve" in str(error)


def test_a_connect_that_never_completes_ends_at_the_connect_budget(make_hub: MakeHub) -> None:
    # A listener whose backlog is full: the kernel drops further SYNs, so a new
    # connection neither succeeds nor fails until the client gives up.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            time.sleep(0.1)
            hub = make_hub(
                retries=0, timeouts={"connect": 0.5, "first_token": 5, "idle": 5, "total": 5}
            )
            hub.register(OpenAICompatible("up", f"http://127.0.0.1:{port}/v1", ["m"]))
            started = time.monotonic()
            error = failure(hub)
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    if isinstance(error, UpstreamConnectionError):
        pytest.skip(f"this kernel refused instead of dropping the SYN: {error}")
    assert isinstance(error, UpstreamTimeoutError)
    assert "no answer within 0.5 s" in str(error)
    assert 0.4 <= elapsed < 1.5


def test_silence_after_the_head_ends_at_the_first_token_budget_with_the_loop_free(
    make_hub: MakeHub,
) -> None:
    with HostileServer(default=[Read(), Send(head()), Hold()]) as server:
        hub = make_hub(
            retries=0, timeouts={"connect": 1, "first_token": 0.5, "idle": 5, "total": 5}
        )
        hub.register(OpenAICompatible("up", server.base_url, ["m"]))
        ticks = 0

        async def main() -> BaseException:
            nonlocal ticks
            task = asyncio.create_task(collect(hub))
            while not task.done():
                await asyncio.sleep(0.01)
                ticks += 1
            exc = task.exception()
            assert exc is not None
            return exc

        started = time.monotonic()
        error = asyncio.run(main())
        elapsed = time.monotonic() - started
    assert isinstance(error.__cause__, UpstreamTimeoutError)
    assert 0.45 <= elapsed < 1.2
    assert ticks >= 30  # the loop ran other work all along


# -- careless callers --------------------------------------------------------------------


def test_aclose_from_another_task_wakes_the_reader_and_closes_the_connection(
    make_hub: MakeHub,
) -> None:
    slow = [Read(), Send(head()), Send(chunk(b"".join(sse(["a"])))), Pause(30)]
    with HostileServer(default=slow) as server:
        hub = one_hub(make_hub, server.base_url)

        async def main() -> list[str]:
            stream = hub.astream("m", MESSAGES)
            got: list[str] = []

            async def read() -> None:
                async for token in stream:
                    got.append(token)

            reader = asyncio.create_task(read())
            while not got:
                await asyncio.sleep(0.01)
            await stream.aclose()  # while the reader waits for the next chunk
            await asyncio.wait_for(reader, 1.0)  # it ends, without an error
            return got

        assert asyncio.run(main()) == ["a"]
        assert server.wait_for_disconnects(1, timeout=2.0)


def test_two_event_loops_in_two_threads_share_one_hub(make_hub: MakeHub) -> None:
    with HostileServer(default=SERVE) as server:
        hub = one_hub(make_hub, server.base_url)
        results: list[list[str]] = []

        def worker() -> None:
            async def main() -> list[str]:
                return list(await asyncio.gather(*(collect(hub) for _ in range(20))))

            results.append(asyncio.run(main()))

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [[TEXT] * 20, [TEXT] * 20]


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(
    make_hub: MakeHub,
) -> None:
    with HostileServer(default=SERVE) as server:
        hub = one_hub(make_hub, server.base_url, headers={"x-note": "a\r\nx-injected: 1"})
        error = failure(hub)
        assert isinstance(error, ProviderError)
        assert "InvalidHeader" in str(error)
        assert "x-note" in str(error)
        assert server.requests == []


def test_a_url_through_a_proxy_is_sent_by_requests_and_read_block_by_block(
    make_hub: MakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hostile server stands in for an HTTP proxy: it answers whatever it is sent.
    with HostileServer(default=SERVE) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        hub = one_hub(make_hub, "http://upstream.example/v1")
        assert asyncio.run(collect(hub)) == TEXT
        assert proxy.requests[0].startswith(b"POST http://upstream.example/v1/chat/completions ")


def test_the_loop_pool_keeps_at_most_its_size_of_idle_connections(make_hub: MakeHub) -> None:
    with HostileServer(default=SERVE) as server:
        hub = one_hub(make_hub, server.base_url)

        async def main() -> list[str]:
            return list(await asyncio.gather(*(collect(hub) for _ in range(60))))

        assert asyncio.run(main()) == [TEXT] * 60
        pool = hub._transport.loop_pool
        idle = sum(len(conns) for conns in pool._idle.values())
        assert 1 <= idle <= 32
        hub.close()
        assert pool._idle == {}
        assert server.wait_for_disconnects(60, timeout=3.0)


def test_a_name_lookup_that_hangs_ends_at_the_connect_budget(
    make_hub: MakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # getaddrinfo cannot be interrupted; a resolver that hangs (a dead DNS server)
    # must still cost the call no more than its connect budget.
    import provhub._loopwire as loopwire

    release = threading.Event()

    def hanging_resolver(host: str, port: int) -> Any:
        release.wait(5)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(loopwire, "_resolve", hanging_resolver)
    hub = make_hub(retries=0, timeouts={"connect": 0.3, "first_token": 5, "idle": 5, "total": 5})
    hub.register(OpenAICompatible("up", "http://slow-dns.example/v1", ["m"]))
    started = time.monotonic()
    try:
        error = failure(hub)
    finally:
        release.set()
    assert time.monotonic() - started < 1.0
    assert isinstance(error, UpstreamTimeoutError)
    assert "within 0.3 s" in str(error)


class Careless(OpenAICompatible):
    """Declares asyncio_native, then drops what stream_sse yields besides bytes."""

    asyncio_native = True

    def create_completion(self, model: str, messages: Any, stream: bool, **kwargs: Any) -> Any:
        from provhub import provider_call

        with provider_call() as call:
            url = call.base_url(self.url) + "/chat/completions"
            payload = {"model": model, "messages": list(messages), "stream": True}
            for data in call.stream_sse(url, payload, headers={}, provider=self.name):
                if isinstance(data, bytes):
                    yield data.decode()


def test_a_provider_that_drops_the_loops_waits_fails_clearly_instead_of_spinning(
    make_hub: MakeHub,
) -> None:
    with HostileServer(default=SERVE) as server:
        hub = make_hub(retries=0, timeouts=FAST)
        hub.register(Careless("careless", server.base_url, ["m"]))
        started = time.monotonic()
        error = failure(hub)
    assert time.monotonic() - started < 1.0
    assert isinstance(error, ProviderError)
    assert error.retryable is False
    assert "declares asyncio_native = True but dropped a wait" in str(error)


def test_event_loops_that_ran_streams_are_not_kept_alive(make_hub: MakeHub) -> None:
    import gc

    import provhub._pacer as pacer

    with HostileServer(default=SERVE) as server:
        hub = one_hub(make_hub, server.base_url)
        for _ in range(20):
            assert asyncio.run(collect(hub)) == TEXT
        gc.collect()
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
    assert [loop for loop in loops if loop.is_closed()] == []
    assert len(pacer._pacers) == 0


def test_a_proxy_for_another_scheme_leaves_the_stream_on_the_loop(
    make_hub: MakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HostileServer(default=SERVE) as server:
        monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # would refuse if used
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        hub = one_hub(make_hub, server.base_url)  # http://: no proxy applies
        threads = event_threads(hub)
        assert asyncio.run(collect(hub)) == TEXT
        assert server.requests[0].startswith(b"POST /v1/chat/completions ")
        assert threads == {threading.current_thread().name}


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_streams_run_on_uvloop_too(make_hub: MakeHub, authority: trustme.CA, tls: bool) -> None:
    # The gateway serves on uvloop when it is installed (the server extra).
    uvloop = pytest.importorskip("uvloop")
    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("127.0.0.1").configure_cert(context)
    with HostileServer(default=SERVE, tls=context) as server:
        hub = make_hub(providers={"up": {"verify_tls": False}}, timeouts=FAST)
        hub.register(OpenAICompatible("up", server.base_url, ["m"]))
        threads = event_threads(hub)

        async def main() -> list[str]:
            return [await collect(hub) for _ in range(3)]

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            assert runner.run(main()) == [TEXT] * 3
        assert threads == {threading.current_thread().name}  # on uvloop, not a worker
        assert server.connections == 1
