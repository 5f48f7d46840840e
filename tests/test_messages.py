"""Request validation (SPEC §4 ``messages``) and the capabilities messages require (SPEC §2).

A bad request fails before any network I/O with an ``InvalidRequestError`` that names the
message and the reason; a good one reaches the provider unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provhub import (
    AbstractProvider,
    Capability,
    Hub,
    InvalidRequestError,
    ProvhubError,
)
from provhub._request import required_capabilities, validate_messages
from provhub.testing import FakeUpstream
from provhub_providers import OpenAICompatible

MakeHub = Callable[..., Hub]
ROLES = ("system", "user", "assistant", "tool")
TOOL_CALL = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


# -- validate_messages --------------------------------------------------------------------------


def test_valid_messages_come_back_as_plain_dict_copies() -> None:
    original = [
        MappingProxyType({"role": "system", "content": "s"}),
        {"role": "user", "content": "u", "name": "alice"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "content": "42", "tool_call_id": "1"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
    ]
    checked = validate_messages(original)
    assert checked == [dict(m) for m in original]
    assert all(type(m) is dict for m in checked)
    checked[1]["content"] = "changed"
    assert original[1]["content"] == "u"


def test_any_iterable_of_messages_is_accepted() -> None:
    messages = ({"role": "user", "content": str(i)} for i in range(3))
    assert [m["content"] for m in validate_messages(messages)] == ["0", "1", "2"]
    assert validate_messages(({"role": "user", "content": "t"},)) == [
        {"role": "user", "content": "t"}
    ]


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ("hello", "must be a list of {'role': ..., 'content': ...} dicts, got str"),
        (b"hello", "got bytes"),
        ({"role": "user", "content": "hi"}, "got dict"),
        (None, "got NoneType"),
        (42, "got int"),
        ([], "messages is empty"),
        ([["user", "hi"]], "messages[0] must be a dict, got list"),
        ([{"content": "hi"}], "messages[0] has role None"),
        ([{"role": "User", "content": "hi"}], "messages[0] has role 'User'"),
        ([{"role": "robot", "content": "hi"}], "use one of assistant, system, tool, user"),
        ([{"role": "user"}], "messages[0] (user) has no 'content'"),
        ([{"role": "user", "content": None}], "messages[0] (user) content must be a string"),
        ([{"role": "system", "content": 7}], "got int"),
        ([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0] must be"),
        ([{"role": "user", "content": ["x"]}], "messages[0].content[0] must be a dict"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, "c"],
            "messages[2] must be a dict, got str",
        ),
    ],
)
def test_invalid_messages_raise_naming_the_message_and_why(messages: Any, reason: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_messages(messages)
    assert reason in str(info.value)


def test_invalid_request_error_is_a_value_error_and_a_provhub_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        validate_messages([])
    assert issubclass(InvalidRequestError, ProvhubError)


_content = st.one_of(
    st.text(max_size=20),
    st.none(),
    st.integers(),
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"type": st.text(max_size=5)}),
            st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=5)}),
            st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
            st.text(max_size=5),
        ),
        max_size=3,
    ),
)
_message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES), "content": _content},
        optional={"name": st.text(max_size=5)},
    ),
    st.fixed_dictionaries({"role": st.one_of(st.text(max_size=8), st.none(), st.integers())}),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    st.text(max_size=5),
    st.none(),
)


@given(st.lists(_message, max_size=6))
def test_validation_accepts_exactly_well_formed_messages(messages: list[Any]) -> None:
    def well_formed(message: Any) -> bool:
        # A tool message must answer an earlier tool call, which this generator never makes.
        if not isinstance(message, Mapping) or message.get("role") not in ROLES[:3]:
            return False
        if "content" not in message:
            return False
        if not isinstance(message.get("name", ""), str):
            return False
        content = message["content"]
        if isinstance(content, str):
            return True
        if content is None:
            return message["role"] == "assistant"
        if isinstance(content, list):
            return bool(content) and all(
                isinstance(p, Mapping)
                and p.get("type") == "text"
                and isinstance(p.get("text"), str)
                for p in content
            )
        return False

    if messages and all(well_formed(m) for m in messages):
        assert validate_messages(messages) == messages
        return
    with pytest.raises(InvalidRequestError) as info:
        validate_messages(messages)
    bad = next((i for i, m in enumerate(messages) if not well_formed(m)), None)
    expected = f"messages[{bad}]" if bad is not None else "messages is empty"
    assert expected in str(info.value)


# -- required capabilities ------------------------------------------------------------------


@given(
    st.lists(st.sampled_from(ROLES), min_size=1, max_size=8),
    st.sampled_from([Capability.NONE, Capability.STREAM, Capability.AUTH | Capability.STREAM]),
)
def test_messages_require_system_message_and_history_exactly_when_used(
    roles: list[str], asked: Capability
) -> None:
    messages = [{"role": role, "content": "x"} for role in roles]
    needed = required_capabilities(messages, asked)
    assert asked in needed
    assert (Capability.SYSTEM_MESSAGE in needed) == ("system" in roles)
    assert (Capability.MESSAGE_HISTORY in needed) == (roles.count("user") > 1)
    assert (Capability.TOOLS in needed) == ("tool" in roles)
    extra = (
        needed
        & ~asked
        & ~(Capability.SYSTEM_MESSAGE | Capability.MESSAGE_HISTORY | Capability.TOOLS)
    )
    assert extra == Capability.NONE


def test_assistant_and_tool_turns_need_tools_but_not_history() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "content": "r", "tool_call_id": "1"},
        {"role": "assistant", "content": "a"},
    ]
    assert required_capabilities(messages) == Capability.TOOLS


# -- through the hub ------------------------------------------------------------------------


class Recorder(AbstractProvider):
    """A provider that keeps what it was given and answers without any I/O."""

    supports_gpt_4 = True
    supports_stream = True
    seen: list[Any]

    def __init__(self) -> None:
        self.seen = []

    def create_completion(  # type: ignore[override]
        self, model: str, messages: Any, stream: bool, **kwargs: Any
    ) -> Iterator[str]:
        self.seen.append((model, messages, stream, kwargs))
        messages[0]["content"] = "mutated by the provider"
        yield "ok"


def test_provider_receives_the_messages_and_cannot_mutate_the_callers(make_hub: MakeHub) -> None:
    hub = make_hub()
    recorder = Recorder()
    hub.register(recorder)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert hub.complete("gpt-4", messages, temperature=0.1).text == "ok"
    model, received, stream, kwargs = recorder.seen[0]
    assert (model, stream, kwargs) == ("gpt-4", False, {"temperature": 0.1})
    assert received[1] == {"role": "user", "content": "u"}
    assert messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def test_messages_reach_the_upstream_unchanged(make_hub: MakeHub, upstream: FakeUpstream) -> None:
    hub = make_hub()
    hub.register(OpenAICompatible("a", upstream.base_url, ["gpt-4"], capabilities=Capability.TOOLS))
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": 'héllo ✓ \u2028 "quoted"'},
        {"role": "assistant", "content": None, "tool_calls": [{**TOOL_CALL, "id": "c1"}]},
        {"role": "tool", "content": "{}", "tool_call_id": "c1"},
        {"role": "user", "content": [{"type": "text", "text": "and this"}]},
    ]
    "".join(hub.stream("gpt-4", messages))
    assert upstream.requests[0].json["messages"] == messages


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda hub: hub.stream("", [{"role": "user", "content": "x"}]), "model must be"),
        (lambda hub: hub.stream(None, [{"role": "user", "content": "x"}]), "no model given"),
        (lambda hub: hub.stream(7, [{"role": "user", "content": "x"}]), "model must be"),
        (
            lambda hub: hub.stream("gpt-4", [{"role": "user", "content": "x"}], require="stream"),
            "require must be a provhub.Capability",
        ),
        (lambda hub: hub.route("", None), "model must be"),
        (lambda hub: hub.complete("gpt-4", {"role": "user", "content": "x"}), "got dict"),
    ],
)
def test_bad_model_or_require_raise_invalid_request(
    make_hub: MakeHub, upstream: FakeUpstream, call: Callable[[Hub], Any], reason: str
) -> None:
    hub = make_hub()
    hub.register(OpenAICompatible("a", upstream.base_url, ["gpt-4"]))
    with pytest.raises(InvalidRequestError, match=reason):
        call(hub)
    assert upstream.requests == []
