"""Spec values: AbstractProvider defaults, Capability, stream markers, ProviderInfo (SPEC §2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest

import provhub
from provhub import (
    GPT_4,
    GPT_35_TURBO,
    AbstractProvider,
    Capability,
    FinishReason,
    ProviderInfo,
    Usage,
)
from provhub._registry import describe


class Seed(AbstractProvider):
    """The seed's reference shape (Lockchat-like)."""

    url = "http://supertest.lockchat.app"
    supports_stream = True
    supports_gpt_35_turbo = True
    supports_gpt_4 = True
    model_aliases = MappingProxyType({"smart": "gpt-4"})

    @staticmethod
    def create_completion(model: str, messages: Any, stream: bool, **kwargs: Any) -> Iterator[str]:
        yield "hi"


# -- AbstractProvider --------------------------------------------------------------------------


def test_abstract_provider_declares_the_spec_defaults() -> None:
    class Bare(AbstractProvider):
        @staticmethod
        def create_completion(model: str, messages: Any, stream: bool, **kw: Any) -> Any:
            return iter(())

    assert Bare.name == "Bare"
    assert Bare.url is None
    assert Bare.working is True
    assert Bare.needs_auth is False
    assert Bare.supports_stream is False
    assert Bare.supports_message_history is True
    assert Bare.supports_system_message is True
    assert Bare.supports_gpt_35_turbo is False
    assert Bare.supports_gpt_4 is False
    assert tuple(Bare.models) == ()
    assert dict(Bare.model_aliases) == {}
    assert Bare.default_model is None


def test_provider_name_defaults_to_each_class_name_unless_set() -> None:
    class Named(Seed):
        name = "seed-eu"

    class Child(Named):
        pass

    assert Seed.name == "Seed"
    assert Named.name == "seed-eu"
    # A subclass is a different provider: it does not inherit its parent's name.
    assert Child.name == "Child"


def test_abstract_provider_cannot_be_instantiated_without_create_completion() -> None:
    class Unfinished(AbstractProvider):
        pass

    with pytest.raises(TypeError, match="create_completion"):
        Unfinished()  # type: ignore[abstract]


def test_g4f_style_provider_ports_with_an_import_change() -> None:
    # The seed's Lockchat, unchanged apart from the import line.
    assert list(Seed.create_completion("gpt-4", [], True)) == ["hi"]
    assert provhub.AbstractProvider is AbstractProvider
    assert (GPT_35_TURBO, GPT_4) == ("gpt-3.5-turbo", "gpt-4")


# -- Capability --------------------------------------------------------------------------------


def test_capability_has_the_spec_members() -> None:
    assert {m.name for m in Capability if m.value} == {
        "STREAM",
        "MESSAGE_HISTORY",
        "SYSTEM_MESSAGE",
        "AUTH",
        "TOOLS",
        "VISION",
        "STRUCTURED_OUTPUT",
        "REASONING",
    }
    assert issubclass(Capability, __import__("enum").Flag)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Capability.NONE),
        ("stream", Capability.STREAM),
        ("STREAM", Capability.STREAM),
        ("stream,system_message", Capability.STREAM | Capability.SYSTEM_MESSAGE),
        (" Stream , System_Message ", Capability.STREAM | Capability.SYSTEM_MESSAGE),
        ("stream|auth", Capability.STREAM | Capability.AUTH),
        ("stream,,stream,", Capability.STREAM),
        (
            "stream,message_history,system_message,auth",
            Capability.STREAM
            | Capability.MESSAGE_HISTORY
            | Capability.SYSTEM_MESSAGE
            | Capability.AUTH,
        ),
    ],
)
def test_capability_parse_reads_comma_lists_case_insensitively(
    text: str, expected: Capability
) -> None:
    assert Capability.parse(text) == expected


@pytest.mark.parametrize("text", ["streaming", "stream,telepathy", "none", "1", "stream;auth"])
def test_capability_parse_rejects_unknown_words_listing_known_ones(text: str) -> None:
    with pytest.raises(ValueError, match="unknown capability") as info:
        Capability.parse(text)
    message = str(info.value)
    assert "stream, message_history, system_message, auth" in message


def test_capability_names_round_trip_through_parse() -> None:
    every = Capability.STREAM | Capability.MESSAGE_HISTORY | Capability.SYSTEM_MESSAGE
    every |= Capability.AUTH
    assert every.names() == ["stream", "message_history", "system_message", "auth"]
    assert Capability.NONE.names() == []
    for flag in (Capability.NONE, Capability.STREAM | Capability.AUTH, every):
        assert Capability.parse(",".join(flag.names())) == flag


# -- stream markers ----------------------------------------------------------------------------


def test_stream_markers_are_immutable_comparable_values() -> None:
    assert FinishReason("stop") == FinishReason("stop")
    assert FinishReason("stop") != FinishReason("length")
    assert Usage(1, 2, 3) == Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    assert Usage() == Usage(None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FinishReason("stop").reason = "length"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Usage().total_tokens = 3  # type: ignore[misc]
    assert not isinstance(FinishReason("stop"), str)
    assert {FinishReason("stop"), FinishReason("stop")} == {FinishReason("stop")}


# -- ProviderInfo ------------------------------------------------------------------------------


@pytest.fixture
def info() -> ProviderInfo:
    return describe(Seed, source="tests")


def test_provider_info_attributes_cannot_be_reassigned(info: ProviderInfo) -> None:
    for field in dataclasses.fields(ProviderInfo):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(info, field.name, None)
    with pytest.raises((AttributeError, TypeError)):
        info.extra = 1  # type: ignore[attr-defined]


def test_provider_info_mappings_are_read_only(info: ProviderInfo) -> None:
    with pytest.raises(TypeError):
        info.flags["working"] = False  # type: ignore[index]
    with pytest.raises(TypeError):
        info.aliases["smart"] = "gpt-3.5-turbo"  # type: ignore[index]
    assert info.working is True
    assert info.aliases == {"smart": "gpt-4"}


def test_provider_info_as_dict_is_a_json_ready_copy(info: ProviderInfo) -> None:
    data = info.as_dict()
    assert data == {
        "name": "Seed",
        "url": "http://supertest.lockchat.app",
        "flags": {
            "working": True,
            "needs_auth": False,
            "supports_stream": True,
            "supports_message_history": True,
            "supports_system_message": True,
            "supports_gpt_35_turbo": True,
            "supports_gpt_4": True,
            "supports_tools": False,
            "supports_vision": False,
            "supports_structured_output": False,
            "supports_reasoning": False,
        },
        "capabilities": ["stream", "message_history", "system_message"],
        "models": ["gpt-3.5-turbo", "gpt-4"],
        "aliases": {"smart": "gpt-4"},
        "model_capabilities": {},
        "default_model": None,
        "source": "tests",
        "url_env": None,
        "models_path": None,
    }
    data["flags"]["working"] = False
    data["models"].append("x")
    assert info.working is True
    assert info.models == ("gpt-3.5-turbo", "gpt-4")


def test_provider_info_serves_model_ids_and_aliases_exactly(info: ProviderInfo) -> None:
    assert info.serves("gpt-4")
    assert info.serves("gpt-3.5-turbo")
    assert info.serves("smart")
    # No prefix guessing (SPEC §2): gpt-4o is another model.
    assert not info.serves("gpt-4o")
    assert not info.serves("GPT-4")


def test_provider_info_equality_ignores_the_provider_object() -> None:
    class Other(Seed):
        name = "Seed"

    assert describe(Seed, source="s") == describe(Other, source="s")
    assert describe(Seed, source="s") != describe(Seed, source="t")
    assert "provider=" not in repr(describe(Seed))
