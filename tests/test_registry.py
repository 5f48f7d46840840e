"""Provider validation (``describe``) and the registry's name and model index (SPEC §2)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provhub import (
    AbstractProvider,
    Capability,
    Config,
    Hub,
    ProviderInfo,
    ProviderSpecError,
)
from provhub._registry import PROGRAMMATIC, Registry, describe
from provhub._spec import FLAG_NAMES
from provhub_providers import Lockchat, OpenAICompatible

SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def provider(
    name: str | None = None,
    *,
    base: type = AbstractProvider,
    method: str = "static",
    **attrs: Any,
) -> type:
    """A provider class built on the fly; ``name=None`` leaves the name to the class name."""

    def gen(*args: Any, **kwargs: Any) -> Iterator[str]:
        yield "ok"

    body: dict[str, Any] = dict(attrs)
    if name is not None:
        body["name"] = name
    if method == "static":
        body["create_completion"] = staticmethod(gen)
    elif method == "class":
        body["create_completion"] = classmethod(gen)
    elif method == "plain":
        body["create_completion"] = gen
    return type("Made", (base,), body)


class Endpoint(AbstractProvider):
    """A configurable provider: one instance per endpoint, plain-method create_completion."""

    supports_stream = True

    def __init__(self, name: str, models: tuple[str, ...], **attrs: Any) -> None:
        self.name = name
        self.models = models
        for key, value in attrs.items():
            setattr(self, key, value)

    def create_completion(  # type: ignore[override]
        self, model: str, messages: Any, stream: bool, **kwargs: Any
    ) -> Iterator[str]:
        yield self.name


# -- both provider forms -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["static", "class"])
def test_g4f_style_class_with_static_or_class_method_is_accepted(method: str) -> None:
    info = describe(provider("g4f-style", method=method, supports_gpt_4=True), source="plug")
    assert (info.name, info.source, info.models) == ("g4f-style", "plug", ("gpt-4",))
    assert isinstance(info.provider, type)


def test_configurable_instances_are_accepted_and_stay_distinct() -> None:
    eu = describe(Endpoint("eu", ("m-eu",)))
    us = describe(Endpoint("us", ("m-us",), needs_auth=True))
    assert (eu.name, eu.models, eu.needs_auth) == ("eu", ("m-eu",), False)
    assert (us.name, us.models, us.needs_auth) == ("us", ("m-us",), True)
    assert eu.source == PROGRAMMATIC


def test_shipped_providers_satisfy_the_spec() -> None:
    lockchat = describe(Lockchat)
    assert lockchat.name == "Lockchat"
    assert lockchat.models == ("gpt-3.5-turbo", "gpt-4")
    assert lockchat.capabilities & Capability.STREAM
    endpoint = describe(OpenAICompatible("local-llm", "http://127.0.0.1:1", ["llama-3"]))
    assert (endpoint.name, endpoint.models) == ("local-llm", ("llama-3",))


def test_duck_typed_class_without_the_base_gets_spec_defaults() -> None:
    info = describe(provider(base=object, supports_stream=True))
    assert info.name == "Made"
    assert dict(info.flags) == {
        "working": True,
        "needs_auth": False,
        "supports_stream": True,
        "supports_message_history": True,
        "supports_system_message": True,
        "supports_gpt_35_turbo": False,
        "supports_gpt_4": False,
        "supports_tools": False,
        "supports_vision": False,
        "supports_structured_output": False,
        "supports_reasoning": False,
    }
    assert info.url is None


# -- validation rules --------------------------------------------------------------------------


def spec_error(candidate: Any, source: str = "acme-plugin") -> ProviderSpecError:
    with pytest.raises(ProviderSpecError) as info:
        describe(candidate, source=source)
    error = info.value
    # The message names the offender and where it came from (SPEC §2).
    assert f"(from {source})" in str(error)
    assert error.source == source
    assert error.reason in str(error)
    return error


@pytest.mark.parametrize(
    "name",
    ["", " ", "has space", "-leading", ".dot", "a" * 65, "ünïcode", "slash/name", "tab\t", 123],
)
def test_provider_name_must_be_a_slug(name: Any) -> None:
    error = spec_error(provider(name=name))
    assert "slug" in error.reason
    assert repr(name) in error.reason


@pytest.mark.parametrize("name", ["a", "A1", "my-provider", "my_provider.v2", "9lives", "x" * 64])
def test_slug_names_are_accepted(name: str) -> None:
    assert describe(provider(name=name)).name == name


def test_instance_with_a_non_string_name_is_rejected_not_renamed() -> None:
    error = spec_error(Endpoint(42, ("m",)))  # type: ignore[arg-type]
    assert error.provider == "Endpoint"


@pytest.mark.parametrize("flag", FLAG_NAMES)
@pytest.mark.parametrize("value", [1, 0, "yes", "", None, 1.0, [True]])
def test_flags_must_be_real_bools(flag: str, value: Any) -> None:
    error = spec_error(provider("flaggy", **{flag: value}))
    assert error.provider == "flaggy"
    assert f"flag {flag} must be True or False, got {value!r}" in error.reason


def test_flags_on_an_instance_are_validated_too() -> None:
    error = spec_error(Endpoint("eu", ("m",), supports_stream="true"))
    assert "supports_stream" in error.reason


def test_abstract_class_is_rejected_naming_the_missing_method() -> None:
    error = spec_error(provider("halfway", method="none"))
    assert "abstract" in error.reason
    assert "create_completion" in error.reason


def test_plain_method_on_a_class_is_rejected_with_both_fixes_named() -> None:
    error = spec_error(provider("plain", method="plain"))
    assert "@staticmethod" in error.reason
    assert "instance" in error.reason


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param(provider("nothing", base=object, method="none"), id="class-without-method"),
        pytest.param(Endpoint("eu", ("m",), create_completion=None), id="instance-attr-none"),
        pytest.param(Endpoint("eu", ("m",), create_completion="go"), id="instance-attr-str"),
        pytest.param(object(), id="plain-object"),
        pytest.param(42, id="int"),
    ],
)
def test_create_completion_must_exist_and_be_callable(candidate: Any) -> None:
    assert "create_completion" in spec_error(candidate).reason


@pytest.mark.parametrize(
    ("models", "reason"),
    [
        ("gpt-4", "list of model id strings"),
        (b"gpt-4", "list of model id strings"),
        (42, "list of model id strings"),
        (None, "list of model id strings"),
        (["ok", 42], "non-empty strings, got 42"),
        (["ok", ""], "non-empty strings, got ''"),
        (["  "], "non-empty strings"),
        ([None], "non-empty strings, got None"),
    ],
)
def test_models_must_be_a_collection_of_non_empty_strings(models: Any, reason: str) -> None:
    assert reason in spec_error(provider("modelled", models=models)).reason


@pytest.mark.parametrize(
    ("aliases", "reason"),
    [
        ([("best", "m-1")], "must be a mapping"),
        ("best=m-1", "must be a mapping"),
        ({1: "m-1"}, "map str to str"),
        ({"best": 1}, "map str to str"),
        ({"": "m-1"}, "map str to str"),
        ({"best": "m-2"}, "points to 'm-2', which the provider does not serve"),
        ({"best": "gpt-4"}, "does not serve"),
    ],
)
def test_model_aliases_must_map_strings_to_served_models(aliases: Any, reason: str) -> None:
    assert reason in spec_error(provider("aliased", models=["m-1"], model_aliases=aliases)).reason


def test_alias_may_target_a_flag_model_or_an_extra_model() -> None:
    info = describe(
        provider(
            "aliased",
            models=["m-1"],
            supports_gpt_4=True,
            model_aliases={"best": "gpt-4", "cheap": "m-1"},
        )
    )
    assert info.aliases == {"best": "gpt-4", "cheap": "m-1"}


@pytest.mark.parametrize(("attr", "value"), [("url", 8080), ("default_model", 3)])
def test_url_and_default_model_must_be_strings(attr: str, value: Any) -> None:
    assert attr in spec_error(provider("typed", **{attr: value})).reason


def test_flag_models_come_first_then_extra_models_without_duplicates() -> None:
    info = describe(
        provider(
            "many",
            supports_gpt_35_turbo=True,
            supports_gpt_4=True,
            models=["llama-3", "gpt-4", "llama-3", "mistral"],
        )
    )
    assert info.models == ("gpt-3.5-turbo", "gpt-4", "llama-3", "mistral")


def test_gpt_flags_mean_exact_model_ids_only() -> None:
    info = describe(provider("exact", supports_gpt_4=True))
    assert info.models == ("gpt-4",)
    assert not info.serves("gpt-4o")
    assert not info.serves("gpt-4-turbo")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, Capability.MESSAGE_HISTORY | Capability.SYSTEM_MESSAGE),
        (
            {"supports_stream": True},
            Capability.STREAM | Capability.MESSAGE_HISTORY | Capability.SYSTEM_MESSAGE,
        ),
        (
            {"supports_message_history": False, "supports_system_message": False},
            Capability.NONE,
        ),
        (
            {"needs_auth": True, "supports_system_message": False},
            Capability.AUTH | Capability.MESSAGE_HISTORY,
        ),
        # working and the model flags are not capabilities.
        (
            {"working": False, "supports_gpt_4": True, "supports_message_history": False},
            Capability.SYSTEM_MESSAGE,
        ),
    ],
)
def test_capabilities_derive_from_flags(flags: dict[str, bool], expected: Capability) -> None:
    assert describe(provider("capable", **flags)).capabilities == expected


# -- the registry ------------------------------------------------------------------------------


def info_for(name: str, *models: str, source: str = "tests", **attrs: Any) -> ProviderInfo:
    return describe(provider(name, models=list(models), **attrs), source=source)


def test_registry_keeps_registration_order_and_finds_names_case_insensitively() -> None:
    registry = Registry()
    registry.add(info_for("Zeta", "z"))
    registry.add(info_for("Alpha", "a"))
    assert [i.name for i in registry.all()] == ["Zeta", "Alpha"]
    assert registry.get("zeta") is registry.get("ZETA") is registry.all()[0]
    assert registry.get("nope") is None
    assert (registry.order("alpha"), registry.order("Zeta")) == (1, 0)
    assert len(registry) == 2


@pytest.mark.parametrize("clash", ["openai", "OPENAI", "OpenAI"])
def test_duplicate_names_are_rejected_case_insensitively_naming_both_sources(clash: str) -> None:
    registry = Registry()
    registry.add(info_for("OpenAI", "gpt-4o", source="first-plugin"))
    with pytest.raises(ProviderSpecError) as info:
        registry.add(info_for(clash, "other", source="second-plugin"))
    message = str(info.value)
    assert "first-plugin" in message
    assert "second-plugin" in message
    assert "'OpenAI'" in message
    assert registry.get(clash) is not None
    assert registry.get(clash).source == "first-plugin"  # type: ignore[union-attr]
    assert registry.serving("other") == ()


def test_add_all_is_atomic_on_a_conflict_with_an_existing_provider() -> None:
    registry = Registry()
    registry.add(info_for("taken", "m-0"))
    before = (registry.all(), registry.model_ids())
    batch = [info_for("fresh", "m-1", "m-0"), info_for("also-fresh", "m-2"), info_for("TAKEN")]
    with pytest.raises(ProviderSpecError):
        registry.add_all(batch)
    assert (registry.all(), registry.model_ids()) == before
    assert registry.get("fresh") is None
    assert registry.serving("m-0") == (registry.get("taken"),)
    assert registry.serving("m-1") == ()


def test_add_all_is_atomic_on_a_conflict_inside_the_batch() -> None:
    registry = Registry()
    with pytest.raises(ProviderSpecError, match="duplicate name"):
        registry.add_all([info_for("twin", "m-1"), info_for("other", "m-2"), info_for("Twin")])
    assert len(registry) == 0
    assert registry.model_ids() == []


def test_serving_indexes_model_ids_and_aliases_in_registration_order() -> None:
    registry = Registry()
    first = info_for("first", "llama-3", supports_gpt_4=True, model_aliases={"smart": "gpt-4"})
    second = info_for("second", "llama-3", "mistral", model_aliases={"small": "mistral"})
    registry.add_all([first, second])
    assert registry.serving("llama-3") == (first, second)
    assert registry.serving("gpt-4") == (first,)
    assert registry.serving("smart") == (first,)
    assert registry.serving("small") == (second,)
    assert registry.serving("gpt-4o") == ()
    assert registry.serving("LLAMA-3") == ()
    assert registry.model_ids() == ["gpt-4", "llama-3", "mistral", "small", "smart"]


def test_concurrent_registration_loses_nothing() -> None:
    registry = Registry()
    barrier = threading.Barrier(8)

    def add(worker: int) -> None:
        barrier.wait()
        for n in range(25):
            registry.add(info_for(f"p{worker}-{n}", "shared", f"own-{worker}"))

    threads = [threading.Thread(target=add, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(registry) == 200
    assert len(registry.serving("shared")) == 200
    assert all(len(registry.serving(f"own-{w}")) == 25 for w in range(8))


def test_hub_register_validates_and_never_half_registers() -> None:
    hub = Hub(Config(), load_plugins=False)
    hub.register(provider("kept", models=["m-1"]))
    with pytest.raises(ProviderSpecError, match="programmatic"):
        hub.register(provider("broken", models=["m-2"], supports_stream="yes"))
    with pytest.raises(ProviderSpecError, match="duplicate name"):
        hub.register(provider("KEPT", models=["m-3"]))
    assert [i.name for i in hub.providers()] == ["kept"]
    assert hub.providers(model="m-2") == hub.providers(model="m-3") == []


def test_hub_providers_filters_by_model_and_required_capabilities() -> None:
    hub = Hub(Config(), load_plugins=False)
    hub.register(provider("streamer", models=["m"], supports_stream=True))
    hub.register(provider("blocking", models=["m"], model_aliases={"alias": "m"}))
    hub.register(provider("elsewhere", models=["n"], supports_stream=True))
    assert [i.name for i in hub.providers(model="m")] == ["streamer", "blocking"]
    assert [i.name for i in hub.providers(model="alias")] == ["blocking"]
    assert [i.name for i in hub.providers(require=Capability.STREAM)] == ["streamer", "elsewhere"]
    assert [i.name for i in hub.providers("m", Capability.STREAM)] == ["streamer"]
    assert hub.providers(model="m", require=Capability.AUTH) == []


# -- properties --------------------------------------------------------------------------------

ATTRIBUTES = (
    *FLAG_NAMES,
    "name",
    "url",
    "models",
    "model_aliases",
    "default_model",
    "model_capabilities",
    "config_keys",
    "url_env",
    "models_path",
)
FORMS = ("static", "class", "instance", "plain", "none", "duck")

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.one_of(st.text(max_size=6), st.integers(), st.none()), max_size=3),
    st.dictionaries(
        st.one_of(st.text(max_size=6), st.integers()),
        st.one_of(st.text(max_size=6), st.integers()),
        max_size=3,
    ),
)
slugs = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
model_ids = st.text(min_size=1, max_size=12).filter(lambda s: s.strip() != "")


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Attributes that satisfy the spec (absent keys take the spec defaults)."""
    spec: dict[str, Any] = {}
    for flag in FLAG_NAMES:
        if draw(st.booleans()):
            spec[flag] = draw(st.booleans())
    spec["name"] = draw(slugs)
    spec["url"] = draw(st.one_of(st.none(), st.text(max_size=20)))
    models = draw(st.lists(model_ids, max_size=4))
    spec["models"] = draw(st.sampled_from([list(models), tuple(models)]))
    served = [*models]
    if spec.get("supports_gpt_4"):
        served.append("gpt-4")
    if spec.get("supports_gpt_35_turbo"):
        served.append("gpt-3.5-turbo")
    if served:
        spec["model_aliases"] = draw(
            st.dictionaries(st.text(min_size=1, max_size=8), st.sampled_from(served), max_size=3)
        )
    spec["default_model"] = draw(st.one_of(st.none(), model_ids))
    return spec


def build(form: str, spec: Mapping[str, Any]) -> Any:
    """A provider of the given form carrying ``spec``'s attributes."""
    if form == "instance":
        instance = Endpoint("placeholder", ())
        del instance.name, instance.models  # fall back to the class's, as a real instance may
        for key, value in spec.items():
            setattr(instance, key, value)
        return instance
    method = {"duck": "static"}.get(form, form)
    base = object if form == "duck" else AbstractProvider
    attrs = {k: v for k, v in spec.items() if k != "name"}
    return provider(spec.get("name"), base=base, method=method, **attrs)


def assert_consistent(info: ProviderInfo, candidate: Any) -> None:
    """What every successfully described provider must look like."""
    assert SLUG.match(info.name)
    declared = getattr(candidate, "name", None)
    expected_name = declared if declared is not None else type(candidate).__name__
    if isinstance(candidate, type) and declared is None:
        expected_name = candidate.__name__
    assert info.name == expected_name
    assert tuple(info.flags) == FLAG_NAMES
    for flag in FLAG_NAMES:
        assert type(info.flags[flag]) is bool
        assert info.flags[flag] is getattr(candidate, flag, info.flags[flag])
    assert all(isinstance(m, str) and m.strip() for m in info.models)
    assert len(set(info.models)) == len(info.models)
    assert ("gpt-4" in info.models) >= info.flags["supports_gpt_4"]
    assert ("gpt-3.5-turbo" in info.models) >= info.flags["supports_gpt_35_turbo"]
    extra = set(getattr(candidate, "models", ()))
    flagged = {
        m
        for m, f in (("gpt-4", "supports_gpt_4"), ("gpt-3.5-turbo", "supports_gpt_35_turbo"))
        if info.flags[f]
    }
    assert set(info.models) == extra | flagged
    assert all(target in info.models for target in info.aliases.values())
    assert info.url is None or isinstance(info.url, str)
    assert info.default_model is None or isinstance(info.default_model, str)
    expected = Capability.NONE
    for flag, capability in (
        ("supports_stream", Capability.STREAM),
        ("supports_message_history", Capability.MESSAGE_HISTORY),
        ("supports_system_message", Capability.SYSTEM_MESSAGE),
        ("needs_auth", Capability.AUTH),
        ("supports_tools", Capability.TOOLS),
        ("supports_vision", Capability.VISION),
        ("supports_structured_output", Capability.STRUCTURED_OUTPUT),
        ("supports_reasoning", Capability.REASONING),
    ):
        if info.flags[flag]:
            expected |= capability
    assert info.capabilities == expected
    registry = Registry()
    registry.add(info)
    for model in (*info.models, *info.aliases):
        assert info.serves(model)
        assert registry.serving(model) == (info,)


@given(form=st.sampled_from(["static", "class", "instance", "duck"]), spec=valid_specs())
def test_every_valid_spec_is_described_consistently(form: str, spec: dict[str, Any]) -> None:
    candidate = build(form, spec)
    assert_consistent(describe(candidate, source="prop"), candidate)


@given(
    form=st.sampled_from(FORMS),
    spec=valid_specs(),
    corrupt=st.dictionaries(st.sampled_from(ATTRIBUTES), anything, max_size=3),
)
def test_any_attribute_values_give_spec_error_or_consistent_info(
    form: str, spec: dict[str, Any], corrupt: dict[str, Any]
) -> None:
    candidate = build(form, {**spec, **corrupt})
    try:
        info = describe(candidate, source="prop")
    except ProviderSpecError as exc:
        error: ProviderSpecError | None = exc
    else:
        error = None
    if error is not None:
        assert error.source == "prop"
        assert isinstance(error.provider, str)
        assert error.provider
        assert error.reason
        return
    assert form not in {"plain", "none"}
    assert_consistent(info, candidate)


def test_alias_equal_to_one_of_its_own_model_ids_is_indexed_once() -> None:
    # Found by the property test: {"gpt-4o": "gpt-4o-2024-08-06"} next to
    # models ["gpt-4o", "gpt-4o-2024-08-06"] listed the provider twice.
    registry = Registry()
    info = info_for(
        "snapshots", "gpt-4o", "gpt-4o-2024-08-06", model_aliases={"gpt-4o": "gpt-4o-2024-08-06"}
    )
    registry.add(info)
    assert registry.serving("gpt-4o") == (info,)
    assert registry.serving("gpt-4o-2024-08-06") == (info,)
