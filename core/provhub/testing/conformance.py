"""The provider conformance suite: does a provider keep the promises of the spec?

Subclass :class:`ProviderConformance` in a test module and say which provider to
check; pytest then runs every check against a real fake upstream::

    from provhub.testing.conformance import ProviderConformance
    from my_pkg import MyProvider

    class TestMyProvider(ProviderConformance):
        provider = MyProvider

Each check is also a plain function (``check_*``) taking a :class:`Harness`, for
suites that want to pick and choose. The checks:

* the spec flags are real ``bool`` values and the provider passes registration;
* ``create_completion`` is a generator that does no I/O before it is iterated;
* the tokens add up to exactly the upstream's answer, streamed and not;
* a provider claiming ``supports_stream`` yields more than one chunk for a long
  answer, and yields tokens while the answer is still arriving;
* HTTP and connection errors surface as the documented types
  (``requests.RequestException`` subclasses such as ``requests.HTTPError``, or
  :class:`provhub.ProviderError`) carrying the HTTP status, so a hub can tell a
  retryable failure from a final one, and a hub does retry a 503;
* closing the stream early closes the upstream connection, called directly and
  through a hub;
* ``hub.astream`` delivers the same answer and leaving it early closes the
  connection (on the event loop for an ``asyncio_native`` provider);
* an ``{"error": ...}`` object inside a 200 answer is a typed, retryable failure
  before any token, and a :class:`~provhub.StreamInterruptedError` keeping the
  tokens after some;
* usage markers, when the provider reports usage, carry the upstream's counts
  (cached and reasoning tokens included when reported);
* a provider declaring ``TOOLS`` (for the model checked) delivers parallel tool
  calls whose arguments arrive split over many chunks, streamed (in order and
  interleaved) and not, as the upstream sent them; one declaring ``REASONING``
  delivers the reasoning apart from the text. Without the capability these
  checks are skipped.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import requests

from provhub._errors import (
    AllProvidersFailedError,
    ProviderError,
    ProviderSpecError,
    StreamInterruptedError,
)
from provhub._registry import describe
from provhub._spec import FLAG_NAMES, Capability, ProviderInfo, Usage
from provhub._toolcalls import ToolCall
from provhub.testing.pytest_plugin import build_hub, call_provider, fast_config, provider_name
from provhub.testing.upstream import Behaviour, FakeUpstream, Fault

if TYPE_CHECKING:
    from provhub import Hub

__all__ = [
    "ERROR_STATUSES",
    "Harness",
    "ProviderConformance",
    "check_connection_error",
    "check_early_close",
    "check_error_object_in_200_answer",
    "check_flags",
    "check_http_error",
    "check_lazy_generator",
    "check_many_chunks",
    "check_reasoning",
    "check_retried_by_hub",
    "check_tokens_arrive_while_streaming",
    "check_tokens_match",
    "check_tool_calls",
    "check_usage_markers",
]

ERROR_STATUSES = (400, 401, 404, 429, 500, 503)
"""HTTP statuses the error checks script: request faults, auth, rate limit, outages."""

# Whitespace, punctuation and non-ASCII: a provider that strips, re-encodes or
# drops a token shows up as a text mismatch.
ANSWER = Behaviour(tokens=("Hello", ",", " wor", "ld", "! ", "Grüße ", "✓", "\n", "done."))

MESSAGES = [{"role": "user", "content": "Say hello."}]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
"""The tools the tool-call checks send."""

TOOL_CALLS = (
    ToolCall("call_conf_weather", "get_weather", '{"city": "Zürich", "unit": "celsius"}'),
    ToolCall("call_conf_time", "get_time", '{"tz": "Europe/Zurich", "format": "{24h}"}'),
)
"""The parallel calls the fake upstream answers with (arguments split in 3-character pieces)."""


@dataclass
class Harness:
    """A provider under test wired to a fake upstream.

    ``provider`` was built by the test class for ``upstream``; ``settings`` is its
    ``[providers.NAME]`` table (by default ``{"url": upstream.url}``); ``model``
    is the model id the checks request. :meth:`hub` and :meth:`call` give the
    two ways a provider is used: through a hub, and called directly.
    """

    upstream: FakeUpstream
    provider: Any
    model: str
    settings: Mapping[str, Any]
    disconnect_timeout: float = 5.0
    timeouts: Mapping[str, float] = field(default_factory=dict)
    _hubs: list[Hub] = field(default_factory=list)
    _calls: list[Iterator[Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The provider's registered name."""
        return provider_name(self.provider)

    @property
    def info(self) -> ProviderInfo:
        """The provider's validated description."""
        return describe(self.provider)

    @property
    def streams(self) -> bool:
        """Whether the provider claims ``supports_stream``."""
        return getattr(self.provider, "supports_stream", False) is True

    def has(self, capability: Capability) -> bool:
        """Whether the provider declares ``capability`` for the model checked."""
        return capability in self.info.capabilities_for(self.model)

    def hub(self, **router: Any) -> Hub:
        """A fresh hub with only this provider (closed at teardown); ``retries=0`` etc."""
        hub = build_hub(
            [self.provider],
            settings={self.name: self.settings},
            timeouts=self.timeouts,
            **router,
        )
        self._hubs.append(hub)
        return hub

    def call(self, *, stream: bool | None = None, **params: Any) -> Iterator[Any]:
        """Call ``create_completion`` directly (see :func:`call_provider`)."""
        generator = call_provider(
            self.provider,
            self.model,
            MESSAGES,
            stream=self.streams if stream is None else stream,
            settings=self.settings,
            timeouts=self.timeouts,
            **params,
        )
        self._calls.append(generator)
        return generator

    def close(self) -> None:
        """Close every hub and direct call made through this harness."""
        for generator in self._calls:
            close = getattr(generator, "close", None)
            if close is not None:
                close()
        for hub in self._hubs:
            hub.close()


# -- checks --------------------------------------------------------------------


def check_flags(provider: Any) -> None:
    """Every spec flag is a real ``bool``, and the provider passes registration."""
    wrong = {
        flag: getattr(provider, flag)
        for flag in FLAG_NAMES
        if hasattr(provider, flag) and type(getattr(provider, flag)) is not bool
    }
    assert not wrong, "spec flags must be True or False, not merely truthy: " + ", ".join(
        f"{flag} = {value!r}" for flag, value in wrong.items()
    )
    try:
        describe(provider)
    except ProviderSpecError as exc:
        pytest.fail(f"the provider does not pass registration: {exc}", pytrace=False)


def check_lazy_generator(h: Harness) -> None:
    """``create_completion`` returns a generator and sends nothing until iterated.

    A hub publishes the call's context (timeouts, settings, cancellation) while it
    starts the generator; a function that does its I/O when called runs before
    any of that, and cannot be stopped by closing it.
    """
    from provhub._context import CallContext, bind_call, unbind_call
    from provhub._transport import Transport

    config = fast_config({h.name: h.settings}, timeouts=h.timeouts)
    context = CallContext(
        transport=Transport(),
        timeouts=config.router.timeouts,
        settings=config.provider(h.name),
    )
    # Bound even for the bare call, so an eager provider talks to the fake
    # upstream (and is caught) instead of its real one.
    token = bind_call(context)
    try:
        result = h.provider.create_completion(h.model, MESSAGES, h.streams)
    finally:
        unbind_call(token)
    try:
        assert inspect.isgenerator(result), (
            f"create_completion must be a generator function (use 'yield'); it returned "
            f"{type(result).__name__}"
        )
        sent = len(h.upstream.requests)
        assert sent == 0, (
            f"create_completion sent {sent} request(s) before being iterated; do the I/O "
            "inside the generator, after its first next()"
        )
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
        context.transport.close()


def check_tokens_match(h: Harness, *, stream: bool) -> None:
    """The text a hub delivers is exactly the upstream's answer, markers excluded."""
    h.upstream.script(ANSWER)
    hub = h.hub(retries=0)
    if stream:
        with hub.stream(h.model, MESSAGES) as result:
            tokens = list(result)
        assert all(type(t) is str for t in tokens)
        text = "".join(tokens)
    else:
        text = hub.complete(h.model, MESSAGES).text
    assert text == ANSWER.text(), (
        f"the provider delivered {text!r}; the upstream answered {ANSWER.text()!r}"
    )


def check_many_chunks(h: Harness, chunks: int = 40) -> None:
    """A provider claiming ``supports_stream`` yields a long answer in several chunks."""
    if not h.streams:
        pytest.skip("the provider does not claim supports_stream")
    answer = Behaviour(chunks=chunks)
    h.upstream.script(answer)
    with h.hub(retries=0).stream(h.model, MESSAGES) as result:
        tokens = list(result)
    assert len(tokens) > 1, (
        f"supports_stream is True but a {chunks}-chunk answer arrived as {len(tokens)} "
        "chunk(s); yield each token as it arrives, or set supports_stream = False"
    )


def check_tokens_arrive_while_streaming(h: Harness, before_pause: int = 3) -> None:
    """A streaming provider yields tokens while the answer is still arriving.

    The upstream sends ``before_pause`` tokens and then goes silent; a provider
    that buffers the whole answer yields nothing and hits the idle timeout.
    """
    if not h.streams:
        pytest.skip("the provider does not claim supports_stream")
    h.upstream.script(
        Behaviour(chunks=20, fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=before_pause)
    )
    call = h.call(stream=True)
    try:
        first = next(item for item in call if isinstance(item, str) and item)
    except StopIteration:
        pytest.fail("the stream ended without a token although the upstream was sending")
    except Exception as exc:
        pytest.fail(
            f"the upstream sent {before_pause} tokens and paused, but the provider yielded "
            f"nothing and raised {type(exc).__name__}: {exc}; it seems to wait for the "
            "whole answer instead of yielding tokens as they arrive",
            pytrace=False,
        )
    finally:
        call.close()  # type: ignore[attr-defined]
    expected = Behaviour(chunks=before_pause).text()
    assert expected.startswith(first), (
        f"the first token {first!r} is not the start of the answer {expected!r}"
    )


def check_http_error(h: Harness, status: int) -> None:
    """An HTTP error status raises a documented type that carries the status."""
    h.upstream.script(Behaviour(status=status))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is what we check
        for _ in h.call():
            pass
    _assert_documented(caught.value, f"HTTP {status}")
    found = _status_of(caught.value)
    assert found == status, (
        f"the error for HTTP {status} does not carry the status (found {found!r}); "
        "raise response.raise_for_status()'s HTTPError or a ProviderError(status=...)"
    )


def check_connection_error(h: Harness) -> None:
    """A refused connection raises a documented type (retryable when a ProviderError)."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is what we check
        for _ in h.call():
            pass
    error = caught.value
    _assert_documented(error, "a refused connection")
    if isinstance(error, ProviderError):
        assert error.retryable, "a refused connection is worth retrying: set retryable=True"
    else:
        assert isinstance(error, requests.ConnectionError), (
            f"a refused connection should be a requests.ConnectionError, got {type(error)}"
        )


def check_retried_by_hub(h: Harness) -> None:
    """A hub retries a 503 from this provider and then delivers the whole answer."""
    h.upstream.script(Behaviour(status=503), ANSWER)
    result = h.hub(retries=1).complete(h.model, MESSAGES)
    first = result.attempts[0] if result.attempts else None
    assert first is not None, "the 503 was not seen as a failure by the hub"
    assert (first.status, first.retryable) == (503, True), (
        f"the hub saw the 503 as {first}; raise an error carrying the status"
    )
    assert result.text == ANSWER.text()


def check_early_close(h: Harness, *, via_hub: bool) -> None:
    """Stopping after the first token closes the HTTP connection to the upstream."""
    if not h.streams:
        pytest.skip("the provider does not claim supports_stream")
    # The upstream pauses after two tokens: its connection can only end because
    # the client closed it.
    h.upstream.script(Behaviour(chunks=50, fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=2))
    if via_hub:
        stream = h.hub(retries=0).stream(h.model, MESSAGES)
        first = next(iter(stream))
        stream.close()
    else:
        call = h.call(stream=True)
        first = next(item for item in call if isinstance(item, str))
        call.close()  # type: ignore[attr-defined]
    assert first, "no token arrived before the close"
    assert len(h.upstream.requests) == 1, "the request was sent more than once"
    assert h.upstream.wait_for_disconnects(1, timeout=h.disconnect_timeout), (
        "closing the stream early did not close the upstream connection within "
        f"{h.disconnect_timeout} s; close the response in a finally block (or use the "
        "iterator of CallContext.stream_sse and close it)"
    )


def check_astream(h: Harness) -> None:
    """``hub.astream`` delivers the same answer, and an early ``aclose`` closes the connection.

    For an ``asyncio_native`` provider this runs on the event loop itself, where a
    provider that drops the transport's waits fails (see the plugin guide);
    otherwise on a worker thread.
    """
    import asyncio

    if not h.streams:
        pytest.skip("the provider does not claim supports_stream")
    hub = h.hub(retries=0)
    h.upstream.script(ANSWER)

    async def whole() -> str:
        async with hub.astream(h.model, MESSAGES) as stream:
            return "".join([token async for token in stream])

    text = asyncio.run(whole())
    assert text == ANSWER.text(), (
        f"hub.astream delivered {text!r}; the upstream answered {ANSWER.text()!r}"
    )
    h.upstream.script(Behaviour(chunks=50, fault=Fault.HANG_BETWEEN_CHUNKS, fault_after=2))

    async def first() -> str:
        async with hub.astream(h.model, MESSAGES) as stream:
            async for token in stream:
                return token
        return ""

    assert asyncio.run(first()), "no token arrived through hub.astream"
    assert h.upstream.wait_for_disconnects(1, timeout=h.disconnect_timeout), (
        "leaving an astream early did not close the upstream connection within "
        f"{h.disconnect_timeout} s"
    )


def check_error_object_in_200_answer(h: Harness, *, after_tokens: bool) -> None:
    """An ``{"error": ...}`` object inside a 200 answer is a typed failure.

    Before any token it is retryable (the hub retries and delivers the next
    answer); after tokens of a stream, the hub raises
    :class:`~provhub.StreamInterruptedError` keeping the tokens delivered.
    """
    if after_tokens:
        if not h.streams:
            pytest.skip("the provider does not claim supports_stream")
        h.upstream.script(Behaviour(tokens=ANSWER.tokens, fault=Fault.ERROR_OBJECT, fault_after=2))
        tokens: list[str] = []
        stream = h.hub(retries=0).stream(h.model, MESSAGES)

        def consume() -> None:
            tokens.extend(stream)

        with pytest.raises((StreamInterruptedError, AllProvidersFailedError)) as caught:
            consume()
        error = caught.value
        assert isinstance(error, StreamInterruptedError), (
            "an error object after two tokens should end the stream with "
            f"StreamInterruptedError, got {type(error).__name__}: {error}; yield each token "
            "as it arrives, and let the error propagate"
        )
        expected = "".join(ANSWER.answer_tokens()[:2])
        assert "".join(tokens) == error.text == expected, (
            f"the tokens before the error ({expected!r}) were not delivered"
        )
        assert isinstance(error.cause, ProviderError), (
            f"the error object surfaced as {type(error.cause).__name__}, not a ProviderError"
        )
        return
    h.upstream.script(Behaviour(tokens=ANSWER.tokens, fault=Fault.ERROR_OBJECT, fault_after=0))
    h.upstream.script(ANSWER)
    hub = h.hub(retries=1)
    if h.streams:
        with hub.stream(h.model, MESSAGES) as stream:
            text = "".join(stream)
        attempts = stream.attempts
    else:
        result = hub.complete(h.model, MESSAGES)
        text, attempts = result.text, list(result.attempts)
    assert text == ANSWER.text(), (
        f"after an error object the hub should retry and deliver {ANSWER.text()!r}, got "
        f"{text!r}; raise the error (parse_chat_stream does) instead of ending the answer"
    )
    first = attempts[0]
    assert not first.ok, "the error object was not seen as a failure"
    assert first.retryable, (
        f"the error object ({first.error_type}: {first.error}) should be retryable: it "
        "reports a server error"
    )


def check_usage_markers(h: Harness, *, stream: bool) -> None:
    """Usage a provider reports carries the upstream's counts; finish reason too.

    Skipped when the provider reports no usage at all (it should, so hosts can
    count tokens; ``parse_chat_stream`` yields it).
    """
    answer = Behaviour(tokens=ANSWER.tokens, cached_tokens=4, reasoning_tokens=0)
    h.upstream.script(answer)
    hub = h.hub(retries=0)
    if stream:
        with hub.stream(h.model, MESSAGES) as result:
            items = list(result.items())
        usage, reason = result.usage, result.finish_reason
    else:
        completion = hub.complete(h.model, MESSAGES)
        items = list(completion.items)
        usage, reason = completion.usage, completion.finish_reason
    if reason is not None:
        assert reason == "stop", f"the upstream finished with 'stop', the provider said {reason!r}"
    if usage is None:
        pytest.skip("the provider reports no usage (yield provhub.Usage so hosts can count)")
    expected = answer.usage_for(MESSAGES)
    got = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    want = (expected.prompt_tokens, expected.completion_tokens, expected.total_tokens)
    assert got == want, f"usage (prompt, completion, total) is {got}; the upstream sent {want}"
    for detail in ("cached_tokens", "reasoning_tokens"):
        value = getattr(usage, detail)
        assert value is None or value == getattr(expected, detail), (
            f"usage.{detail} is {value}; the upstream sent {getattr(expected, detail)}"
        )
    last_text = max((i for i, item in enumerate(items) if type(item) is str), default=-1)
    first_usage = min(i for i, item in enumerate(items) if isinstance(item, Usage))
    assert first_usage > last_text, "usage arrived before the end of the text"


def check_tool_calls(h: Harness, *, stream: bool, interleaved: bool = False) -> None:
    """A provider declaring ``TOOLS`` delivers parallel tool calls as the upstream sent them.

    The arguments of both calls arrive in 3-character fragments (interleaved:
    the calls' fragments in turns, told apart by their ``index``).
    """
    if not h.has(Capability.TOOLS):
        pytest.skip(f"the provider does not declare TOOLS for {h.model!r}")
    if stream and not h.streams:
        pytest.skip("the provider does not claim supports_stream")
    answer = Behaviour(
        tokens=(),
        tool_calls=TOOL_CALLS,
        argument_chunk=3,
        interleave_tool_calls=interleaved,
    )
    h.upstream.script(answer)
    hub = h.hub(retries=0)
    if stream:
        with hub.stream(h.model, MESSAGES, tools=TOOLS) as result:
            list(result.items())
        calls, reason = result.tool_calls, result.finish_reason
    else:
        completion = hub.complete(h.model, MESSAGES, tools=TOOLS)
        calls, reason = list(completion.tool_calls), completion.finish_reason
    sent = h.upstream.requests[-1].json or {}
    assert sent.get("tools") == TOOLS, (
        "the tools were not sent upstream as given: pass the 'tools' param through"
    )
    assert calls == list(TOOL_CALLS), (
        f"the provider delivered the tool calls {calls}; the upstream sent {list(TOOL_CALLS)} "
        "(yield the ToolCallDelta items parse_chat_stream/parse_chat_completion give)"
    )
    assert reason == "tool_calls", f"finish_reason is {reason!r}, the upstream said 'tool_calls'"


def check_reasoning(h: Harness, *, stream: bool) -> None:
    """A provider declaring ``REASONING`` delivers reasoning apart from the text."""
    if not h.has(Capability.REASONING):
        pytest.skip(f"the provider does not declare REASONING for {h.model!r}")
    answer = Behaviour(tokens=ANSWER.tokens, reasoning=("Greet ", "briefly", "."))
    h.upstream.script(answer)
    hub = h.hub(retries=0)
    if stream:
        with hub.stream(h.model, MESSAGES, reasoning_effort="low") as result:
            list(result.items())
        text, reasoning = result.text, result.reasoning
    else:
        completion = hub.complete(h.model, MESSAGES, reasoning_effort="low")
        text, reasoning = completion.text, completion.reasoning
    assert reasoning == "Greet briefly.", (
        f"the reasoning delivered is {reasoning!r}; the upstream sent 'Greet briefly.'"
    )
    assert text == ANSWER.text(), "reasoning leaked into the text, or text was lost"


def _assert_documented(error: BaseException, what: str) -> None:
    assert isinstance(error, requests.RequestException | ProviderError), (
        f"{what} raised {type(error).__module__}.{type(error).__name__}: {error}; "
        "raise a requests.RequestException (e.g. response.raise_for_status()) or a "
        "provhub.ProviderError"
    )


def _status_of(error: BaseException) -> int | None:
    if isinstance(error, ProviderError) and error.status is not None:
        return error.status
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


# -- the mixin -----------------------------------------------------------------


class ProviderConformance:
    """Mixin running the conformance checks; subclass it as ``Test...``.

    Set ``provider`` (a provider class or instance), or override
    :meth:`make_provider` when the provider is built for a URL. By default the
    provider's ``[providers.NAME]`` table is ``{"url": upstream.url}``, which
    :meth:`provhub.CallContext.base_url` reads first; override
    :meth:`provider_settings` for more (``api_key_env``, ``headers``).
    ``model`` defaults to the provider's ``default_model``, else its first
    model; ``env`` is set in the environment for each check; ``timeouts``
    overrides phases of the fast test timeouts (``{"idle": 5.0}`` for a slow
    local model).
    """

    provider: ClassVar[Any] = None
    model: ClassVar[str | None] = None
    env: ClassVar[Mapping[str, str]] = {}
    disconnect_timeout: ClassVar[float] = 5.0
    timeouts: ClassVar[Mapping[str, float]] = {}

    def make_provider(self, upstream: FakeUpstream) -> Any:
        """The provider to check, built for ``upstream`` (default: ``self.provider``)."""
        if self.provider is None:
            pytest.fail(
                f"{type(self).__name__} must set 'provider = MyProvider' or override "
                "make_provider(self, upstream)",
                pytrace=False,
            )
        return self.provider

    def provider_settings(self, upstream: FakeUpstream) -> dict[str, Any]:
        """The provider's ``[providers.NAME]`` table for ``upstream``."""
        return {"url": upstream.url}

    @pytest.fixture
    def provhub_conformance(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
        """The harness for one check: a fresh fake upstream and the provider for it."""
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        with FakeUpstream() as upstream:
            harness = self._harness(upstream)
            try:
                yield harness
            finally:
                harness.close()

    @pytest.fixture
    def provhub_dead_upstream(self) -> FakeUpstream:
        """A stopped fake upstream: connecting to its address is refused."""
        upstream = FakeUpstream().start()
        upstream.stop()
        return upstream

    def _harness(self, upstream: FakeUpstream) -> Harness:
        provider = self.make_provider(upstream)
        model = self.model
        if model is None:
            try:
                info = describe(provider)
            except ProviderSpecError as exc:
                pytest.fail(f"the provider does not pass registration: {exc}", pytrace=False)
            model = info.default_model or (info.models[0] if info.models else None)
            if model is None:
                pytest.fail("the provider serves no model; set 'model' on the test class")
        return Harness(
            upstream=upstream,
            provider=provider,
            model=model,
            settings=self.provider_settings(upstream),
            disconnect_timeout=self.disconnect_timeout,
            timeouts=self.timeouts,
        )

    def test_flags_are_real_bools(self) -> None:
        """Spec flags are ``bool`` and the provider passes registration."""
        with FakeUpstream() as upstream:
            check_flags(self.make_provider(upstream))

    def test_create_completion_is_a_lazy_generator(self, provhub_conformance: Harness) -> None:
        """``create_completion`` is a generator doing no I/O before iteration."""
        check_lazy_generator(provhub_conformance)

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
    def test_tokens_equal_the_upstream_answer(
        self, provhub_conformance: Harness, stream: bool
    ) -> None:
        """The delivered text is exactly the upstream's answer."""
        check_tokens_match(provhub_conformance, stream=stream)

    def test_streaming_provider_yields_many_chunks(self, provhub_conformance: Harness) -> None:
        """``supports_stream`` means more than one chunk for a long answer."""
        check_many_chunks(provhub_conformance)

    def test_streaming_provider_yields_tokens_while_the_answer_arrives(
        self, provhub_conformance: Harness
    ) -> None:
        """``supports_stream`` means tokens before the answer is complete."""
        check_tokens_arrive_while_streaming(provhub_conformance)

    @pytest.mark.parametrize("status", ERROR_STATUSES)
    def test_http_error_raises_a_documented_type(
        self, provhub_conformance: Harness, status: int
    ) -> None:
        """HTTP errors raise ``requests.HTTPError``/``ProviderError`` with the status."""
        check_http_error(provhub_conformance, status)

    def test_connection_failure_raises_a_documented_type(
        self, provhub_dead_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A refused connection raises ``requests.ConnectionError``/``ProviderError``."""
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        harness = self._harness(provhub_dead_upstream)
        try:
            check_connection_error(harness)
        finally:
            harness.close()

    def test_hub_retries_a_503_then_delivers_the_answer(self, provhub_conformance: Harness) -> None:
        """Errors carry enough for the hub's retry policy."""
        check_retried_by_hub(provhub_conformance)

    @pytest.mark.parametrize("via_hub", [False, True], ids=["direct", "hub"])
    def test_early_close_closes_the_connection(
        self, provhub_conformance: Harness, via_hub: bool
    ) -> None:
        """Closing a stream early closes the upstream connection."""
        check_early_close(provhub_conformance, via_hub=via_hub)

    def test_astream_delivers_the_answer_and_closes_early(
        self, provhub_conformance: Harness
    ) -> None:
        """``hub.astream``: the same answer; leaving early closes the connection."""
        check_astream(provhub_conformance)

    @pytest.mark.parametrize("after_tokens", [False, True], ids=["before", "after_tokens"])
    def test_error_object_in_a_200_answer_is_a_typed_failure(
        self, provhub_conformance: Harness, after_tokens: bool
    ) -> None:
        """An error object inside a 200 answer: retried before tokens, kept tokens after."""
        check_error_object_in_200_answer(provhub_conformance, after_tokens=after_tokens)

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
    def test_usage_markers_carry_the_upstream_counts(
        self, provhub_conformance: Harness, stream: bool
    ) -> None:
        """Reported usage equals the upstream's; skipped when none is reported."""
        check_usage_markers(provhub_conformance, stream=stream)

    @pytest.mark.parametrize(
        ("stream", "interleaved"),
        [(True, False), (True, True), (False, False)],
        ids=["stream", "stream_interleaved", "complete"],
    )
    def test_parallel_tool_calls_arrive_as_sent(
        self, provhub_conformance: Harness, stream: bool, interleaved: bool
    ) -> None:
        """TOOLS: two calls, arguments in many fragments, come out whole."""
        check_tool_calls(provhub_conformance, stream=stream, interleaved=interleaved)

    @pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
    def test_reasoning_arrives_apart_from_the_text(
        self, provhub_conformance: Harness, stream: bool
    ) -> None:
        """REASONING: the reasoning text is delivered as such."""
        check_reasoning(provhub_conformance, stream=stream)
