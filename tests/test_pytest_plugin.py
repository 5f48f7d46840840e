"""provhub's pytest plugin and conformance suite, run the way a plugin author runs them.

Each test writes a small test module into a pytester directory and runs pytest on
it in-process: the fixtures, the conformance suite against Lockchat and an
OpenAI-compatible instance (which must pass), and against deliberately broken
providers (each of which must fail exactly the checks its defect breaks).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PLUGIN_MODULE = "provhub.testing.pytest_plugin"


def _entry_point_installed() -> bool:
    return any(
        ep.name == "provhub" and ep.value == PLUGIN_MODULE
        for ep in metadata.entry_points(group="pytest11")
    )


def _plugin_args() -> list[str]:
    # Once provhub's pytest11 entry point is installed pytest loads the plugin by
    # itself (and a second "-p" of the same module would be an error).
    return [] if _entry_point_installed() else ["-p", PLUGIN_MODULE]


def _outcomes(recorder: pytest.HookRecorder) -> dict[str, str]:
    """Test name (without module) -> passed / failed / skipped / error."""
    outcomes: dict[str, str] = {}
    for report in recorder.getreports("pytest_runtest_logreport"):
        name = report.nodeid.split("::", 1)[1]
        if report.when == "call" or (report.when == "setup" and not report.passed):
            failed = "failed" if report.when == "call" else "error"
            outcomes[name] = failed if report.failed else report.outcome
    return outcomes


def _run(pytester: pytest.Pytester, source: str) -> pytest.HookRecorder:
    pytester.makepyfile(test_subject=textwrap.dedent(source))
    return pytester.inline_run(*_plugin_args(), "-p", "no:cacheprovider")


def test_pytest11_entry_point_is_installed() -> None:
    assert _entry_point_installed(), (
        "provhub's pytest plugin is not registered: add to pyproject.toml\n"
        '[project.entry-points.pytest11]\nprovhub = "provhub.testing.pytest_plugin"\n'
        'and reinstall (pip install -e ".[dev]")'
    )


def test_plugin_module_imports_nothing_heavy() -> None:
    # pytest imports the plugin in every session of every project that has
    # provhub installed; it must not drag requests or structlog along.
    code = (
        f"import sys, {PLUGIN_MODULE}; "
        "print(sorted(m for m in ('requests', 'structlog', 'provhub._hub') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert out.strip() == "[]"


def test_hub_fixture_holds_only_the_authors_providers(pytester: pytest.Pytester) -> None:
    recorder = _run(
        pytester,
        """
        import pytest
        from provhub.testing import Behaviour
        from provhub_providers import Lockchat

        @pytest.fixture
        def provhub_providers():
            return [Lockchat]

        def test_only_lockchat(provhub_hub):
            assert [p.name for p in provhub_hub.providers()] == ["Lockchat"]
            assert provhub_hub.plugins == ()

        def test_lockchat_talks_to_the_fake(provhub_hub, provhub_upstream, provhub_events):
            provhub_upstream.script(Behaviour(tokens=("Hi", " there")))
            result = provhub_hub.complete("gpt-4", [{"role": "user", "content": "hi"}])
            assert result.text == "Hi there"
            assert provhub_upstream.requests[0].json["model"] == "gpt-4"
            names = [e["event"] for e in provhub_events]
            assert names[0] == "route.planned" and names[-1] == "stream.completed"

        def test_hubs_are_fresh(provhub_hub_factory):
            one = provhub_hub_factory(Lockchat)
            two = provhub_hub_factory(Lockchat, retries=0)
            assert one is not two
            assert two.config.router.retries == 0
            assert one.config.router.timeouts.total == 5.0
        """,
    )
    recorder.assertoutcome(passed=3)


def test_hub_fixture_without_providers_fails_with_guidance(pytester: pytest.Pytester) -> None:
    recorder = _run(
        pytester,
        """
        def test_forgot_the_providers(provhub_hub):
            pass
        """,
    )
    recorder.assertoutcome(failed=1)
    (report,) = [r for r in recorder.getfailures() if r.when == "setup"]
    assert "override the provhub_providers fixture" in str(report.longrepr)


def test_call_fixture_returns_what_the_provider_yields(pytester: pytest.Pytester) -> None:
    recorder = _run(
        pytester,
        """
        import pytest, requests
        from provhub import FinishReason, Usage
        from provhub.testing import Behaviour
        from provhub_providers import Lockchat

        def test_markers_and_tokens(provhub_call, provhub_upstream):
            provhub_upstream.script(Behaviour(tokens=("a", "b")))
            items = list(provhub_call(Lockchat, "gpt-4"))
            assert items[:2] == ["a", "b"]
            assert FinishReason("stop") in items
            assert any(isinstance(i, Usage) for i in items)

        def test_errors_are_not_translated(provhub_call, provhub_upstream):
            provhub_upstream.script(Behaviour(status=418))
            with pytest.raises(requests.HTTPError):
                list(provhub_call(Lockchat, "gpt-4"))
        """,
    )
    recorder.assertoutcome(passed=2)


HTTP_ERROR_TESTS = {
    f"test_http_error_raises_a_documented_type[{status}]"
    for status in (400, 401, 404, 429, 500, 503)
}
# The checks of capabilities a provider may lack (skipped then).
RICH_TESTS = {
    "test_parallel_tool_calls_arrive_as_sent[stream]",
    "test_parallel_tool_calls_arrive_as_sent[stream_interleaved]",
    "test_parallel_tool_calls_arrive_as_sent[complete]",
    "test_reasoning_arrives_apart_from_the_text[stream]",
    "test_reasoning_arrives_apart_from_the_text[complete]",
}
USAGE_TESTS = {
    "test_usage_markers_carry_the_upstream_counts[stream]",
    "test_usage_markers_carry_the_upstream_counts[complete]",
}
CONFORMANCE_TESTS = {
    "test_flags_are_real_bools",
    "test_create_completion_is_a_lazy_generator",
    "test_tokens_equal_the_upstream_answer[stream]",
    "test_tokens_equal_the_upstream_answer[complete]",
    "test_streaming_provider_yields_many_chunks",
    "test_streaming_provider_yields_tokens_while_the_answer_arrives",
    *HTTP_ERROR_TESTS,
    "test_connection_failure_raises_a_documented_type",
    "test_hub_retries_a_503_then_delivers_the_answer",
    "test_early_close_closes_the_connection[direct]",
    "test_early_close_closes_the_connection[hub]",
    "test_astream_delivers_the_answer_and_closes_early",
    "test_error_object_in_a_200_answer_is_a_typed_failure[before]",
    "test_error_object_in_a_200_answer_is_a_typed_failure[after_tokens]",
    *USAGE_TESTS,
    *RICH_TESTS,
}


def test_conformance_suite_passes_for_the_shipped_providers(pytester: pytest.Pytester) -> None:
    recorder = _run(
        pytester,
        """
        from provhub import Capability
        from provhub.testing.conformance import ProviderConformance
        from provhub_providers import Lockchat, OpenAICompatible

        class TestLockchat(ProviderConformance):
            provider = Lockchat
            model = "gpt-4"

        class TestOpenAICompatible(ProviderConformance):
            def make_provider(self, upstream):
                return OpenAICompatible(
                    "local",
                    upstream.base_url,
                    ["gpt-4o-mini"],
                    capabilities=Capability.TOOLS | Capability.REASONING,
                )

            def provider_settings(self, upstream):
                return {}

        class TestOpenAICompatiblePlain(TestOpenAICompatible):
            def make_provider(self, upstream):
                return OpenAICompatible("plain", upstream.base_url, ["gpt-4o-mini"])
        """,
    )
    outcomes = _outcomes(recorder)
    for cls in ("TestLockchat", "TestOpenAICompatible", "TestOpenAICompatiblePlain"):
        mine = {k.split("::", 1)[1]: v for k, v in outcomes.items() if k.startswith(cls + "::")}
        assert set(mine) == CONFORMANCE_TESTS
        # A provider not declaring TOOLS/REASONING skips exactly those checks.
        skipped = set() if cls == "TestOpenAICompatible" else RICH_TESTS
        assert {name for name, outcome in mine.items() if outcome == "skipped"} == skipped
        assert {mine[name] for name in CONFORMANCE_TESTS - skipped} == {"passed"}, mine


def test_conformance_skips_stream_checks_for_a_non_streaming_provider(
    pytester: pytest.Pytester,
) -> None:
    recorder = _run(
        pytester,
        """
        from provhub import AbstractProvider, parse_chat_completion, provider_call
        from provhub.testing.conformance import ProviderConformance

        class Whole(AbstractProvider):
            models = ("m1",)

            @staticmethod
            def create_completion(model, messages, stream, **kwargs):
                with provider_call() as call:
                    answer = call.post_json(
                        call.base_url(None) + "/v1/chat/completions",
                        {"model": model, "messages": list(messages), "stream": False},
                        headers={},
                        provider="Whole",
                    )
                    yield from parse_chat_completion(answer, "Whole", markers=call.markers)

        class TestWhole(ProviderConformance):
            provider = Whole
        """,
    )
    outcomes = _outcomes(recorder)
    skipped = {k.split("::", 1)[1] for k, v in outcomes.items() if v == "skipped"}
    assert skipped == {
        "test_streaming_provider_yields_many_chunks",
        "test_streaming_provider_yields_tokens_while_the_answer_arrives",
        "test_early_close_closes_the_connection[direct]",
        "test_early_close_closes_the_connection[hub]",
        "test_astream_delivers_the_answer_and_closes_early",
        "test_error_object_in_a_200_answer_is_a_typed_failure[after_tokens]",
        *RICH_TESTS,
    }
    assert set(outcomes.values()) == {"passed", "skipped"}, outcomes


# The honest core every broken provider below shares; each then adds one defect.
BROKEN_HEADER = """
import requests
from provhub import AbstractProvider, ToolCallDelta, Usage, parse_chat_stream, provider_call
from provhub.testing.conformance import ProviderConformance

_KEPT = []

def events(call, model, messages, name):
    return call.stream_sse(
        call.base_url(None) + "/v1/chat/completions",
        {"model": model, "messages": list(messages), "stream": True},
        headers={},
        provider=name,
    )

class Base(AbstractProvider):
    supports_stream = True
    models = ("m1",)
"""

BROKEN = {
    # Buffers the whole answer, then yields it as one chunk.
    "one_chunk": (
        """
        class Broken(Base):
            @staticmethod
            def create_completion(model, messages, stream, **kwargs):
                with provider_call() as call:
                    stream = events(call, model, messages, "Broken")
                    try:
                        parts = [t for t in parse_chat_stream(stream, "Broken")
                                 if isinstance(t, str)]
                    finally:
                        stream.close()
                yield "".join(parts)
        """,
        {
            "test_streaming_provider_yields_many_chunks",
            "test_streaming_provider_yields_tokens_while_the_answer_arrives",
            "test_early_close_closes_the_connection[direct]",
            "test_early_close_closes_the_connection[hub]",
            "test_error_object_in_a_200_answer_is_a_typed_failure[after_tokens]",
            "test_astream_delivers_the_answer_and_closes_early",
        },
    ),
    # Does its I/O when called and returns a list.
    "not_a_generator": (
        """
        class Broken(Base):
            @staticmethod
            def create_completion(model, messages, stream, **kwargs):
                with provider_call() as call:
                    stream = events(call, model, messages, "Broken")
                    try:
                        return list(parse_chat_stream(stream, "Broken"))
                    finally:
                        stream.close()
        """,
        {
            "test_create_completion_is_a_lazy_generator",
            "test_streaming_provider_yields_tokens_while_the_answer_arrives",
            "test_early_close_closes_the_connection[direct]",
            "test_early_close_closes_the_connection[hub]",
            "test_error_object_in_a_200_answer_is_a_typed_failure[after_tokens]",
            "test_astream_delivers_the_answer_and_closes_early",
        },
    ),
    # Hides every failure behind an empty answer.
    "swallows_errors": (
        """
        class Broken(Base):
            @staticmethod
            def create_completion(model, messages, stream, **kwargs):
                try:
                    with provider_call() as call:
                        yield from parse_chat_stream(
                            events(call, model, messages, "Broken"), "Broken"
                        )
                except Exception:
                    return
        """,
        {
            *HTTP_ERROR_TESTS,
            "test_connection_failure_raises_a_documented_type",
            "test_hub_retries_a_503_then_delivers_the_answer",
            "test_error_object_in_a_200_answer_is_a_typed_failure[before]",
            "test_error_object_in_a_200_answer_is_a_typed_failure[after_tokens]",
        },
    ),
    # Keeps a reference to the live response, so closing never reaches it.
    "leaks_connection": (
        """
        class Broken(Base):
            @staticmethod
            def create_completion(model, messages, stream, **kwargs):
                with provider_call() as call:
                    stream = events(call, model, messages, "Broken")
                    _KEPT.append(stream)
                    yield from parse_chat_stream(stream, "Broken")
        """,
        {
            "test_early_close_closes_the_connection[direct]",
            "test_early_close_closes_the_connection[hub]",
        },
    ),
    # Loses the whitespace between tokens.
    "strips_tokens": (
        """
        class Broken(Base):
            @staticmethod
            def create_completion(model, messages, stream, **kwargs):
                with provider_call() as call:
                    for item in parse_chat_stream(events(call, model, messages, "Broken"),
                                                  "Broken"):
                        yield item.strip() if isinstance(item, str) else item
        """,
        {
            "test_tokens_equal_the_upstream_answer[stream]",
            "test_tokens_equal_the_upstream_answer[complete]",
            "test_hub_retries_a_503_then_delivers_the_answer",
            "test_error_object_in_a_200_answer_is_a_typed_failure[before]",
            "test_astream_delivers_the_answer_and_closes_early",
        },
    ),
    # Declares tools but passes only text and the finish/usage markers on.
    "drops_tool_calls": (
        """
        class Broken(Base):
            supports_tools = True

            @staticmethod
            def create_completion(model, messages, stream, **kwargs):
                payload = {"model": model, "messages": list(messages), "stream": True, **kwargs}
                with provider_call() as call:
                    events = call.stream_sse(
                        call.base_url(None) + "/v1/chat/completions",
                        payload,
                        headers={},
                        provider="Broken",
                    )
                    for item in parse_chat_stream(events, "Broken"):
                        if not isinstance(item, ToolCallDelta):
                            yield item
        """,
        {
            "test_parallel_tool_calls_arrive_as_sent[stream]",
            "test_parallel_tool_calls_arrive_as_sent[stream_interleaved]",
            "test_parallel_tool_calls_arrive_as_sent[complete]",
        },
    ),
    # Reports usage with prompt and completion counts swapped.
    "wrong_usage": (
        """
        class Broken(Base):
            @staticmethod
            def create_completion(model, messages, stream, **kwargs):
                with provider_call() as call:
                    for item in parse_chat_stream(events(call, model, messages, "Broken"),
                                                  "Broken"):
                        if isinstance(item, Usage):
                            item = Usage(item.completion_tokens, item.prompt_tokens,
                                         item.total_tokens)
                        yield item
        """,
        USAGE_TESTS,
    ),
    # Raises a bare exception on HTTP errors instead of a documented type.
    "untyped_errors": (
        """
        class Broken(Base):
            @staticmethod
            def create_completion(model, messages, stream, **kwargs):
                try:
                    with provider_call() as call:
                        yield from parse_chat_stream(
                            events(call, model, messages, "Broken"), "Broken"
                        )
                except requests.RequestException as exc:
                    raise RuntimeError(f"upstream failed: {exc}") from None
        """,
        {
            *HTTP_ERROR_TESTS,
            "test_connection_failure_raises_a_documented_type",
            "test_hub_retries_a_503_then_delivers_the_answer",
        },
    ),
}


@pytest.mark.parametrize("defect", sorted(BROKEN))
def test_conformance_suite_fails_exactly_the_checks_a_defect_breaks(
    pytester: pytest.Pytester, defect: str
) -> None:
    body, expected_failures = BROKEN[defect]
    recorder = _run(
        pytester,
        BROKEN_HEADER
        + textwrap.dedent(body)
        + """
class TestBroken(ProviderConformance):
    provider = Broken
    disconnect_timeout = 1.0
    timeouts = {"idle": 0.3}
""",
    )
    outcomes = {k.split("::", 1)[1]: v for k, v in _outcomes(recorder).items()}
    assert set(outcomes) == CONFORMANCE_TESTS
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    assert failed == expected_failures
    # None of them declares tools or reasoning; usage is skipped where markers are dropped.
    assert {outcomes[n] for n in RICH_TESTS - failed} == {"skipped"}
    assert {outcomes[n] for n in USAGE_TESTS - failed} <= {"passed", "skipped"}
    assert {outcomes[n] for n in CONFORMANCE_TESTS - failed - RICH_TESTS - USAGE_TESTS} == {
        "passed"
    }


def test_conformance_flags_check_names_the_truthy_flag(pytester: pytest.Pytester) -> None:
    recorder = _run(
        pytester,
        """
        from provhub.testing.conformance import ProviderConformance
        from provhub_providers import Lockchat

        class Truthy(Lockchat):
            supports_stream = 1

        class TestTruthy(ProviderConformance):
            provider = Truthy
        """,
    )
    outcomes = {k.split("::", 1)[1]: v for k, v in _outcomes(recorder).items()}
    assert outcomes["test_flags_are_real_bools"] == "failed"
    (report,) = [
        r for r in recorder.getfailures() if r.nodeid.endswith("test_flags_are_real_bools")
    ]
    assert "supports_stream = 1" in str(report.longrepr)
    # Everything else refuses to run an invalid provider rather than passing.
    assert "passed" not in outcomes.values()


def test_conformance_without_a_provider_says_what_to_set(pytester: pytest.Pytester) -> None:
    recorder = _run(
        pytester,
        """
        from provhub.testing.conformance import ProviderConformance

        class TestNothing(ProviderConformance):
            pass
        """,
    )
    failures = recorder.getfailures()
    assert failures
    assert all("must set 'provider = MyProvider'" in str(r.longrepr) for r in failures)


def test_conformance_suite_runs_with_the_pytest_plugin_disabled(tmp_path: Path) -> None:
    # The conformance module works even where the plugin is disabled (-p no:provhub):
    # it starts its own upstreams instead of using the plugin's fixtures.
    test = tmp_path / "test_alone.py"
    test.write_text(
        textwrap.dedent(
            """
            from provhub.testing.conformance import ProviderConformance
            from provhub_providers import Lockchat

            class TestLockchat(ProviderConformance):
                provider = Lockchat
            """
        )
    )
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    if _entry_point_installed():
        args[3:3] = ["-p", "no:provhub"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = len(CONFORMANCE_TESTS - RICH_TESTS)
    assert f"{passed} passed, {len(RICH_TESTS)} skipped" in done.stdout
