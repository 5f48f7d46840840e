"""The tool-call assembler (SPEC §11): fragments in, whole calls out, whatever the framing.

Each quirk of a real server has its own test; the hypothesis tests split a set of calls at
arbitrary points, frame the fragments the way each kind of server does, and check that the
same calls come out. ``ToolCall.parsed()`` fails with a typed error that never quotes the
arguments.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provhub import ToolCall, ToolCallDelta, UpstreamProtocolError
from provhub._toolcalls import ToolCallAssembler

WEATHER = ToolCall("call_w", "get_weather", '{"city": "Paris", "unit": "celsius"}')
TIME = ToolCall("call_t", "get_time", '{"tz": "Europe/Paris"}')
GENERATED_ID = re.compile(r"call_[0-9a-f]{24}")


def assemble(deltas: Sequence[ToolCallDelta]) -> tuple[list[ToolCall], list[ToolCallDelta]]:
    """Feed ``deltas``; return the calls and the normalized fragments."""
    assembler = ToolCallAssembler()
    normalized = [assembler.add(delta) for delta in deltas]
    assert len(assembler) == len(assembler.calls())
    return assembler.calls(), normalized


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def openai_fragments(call: ToolCall, index: int | None, size: int = 4) -> list[ToolCallDelta]:
    """OpenAI's framing: id and name first with empty arguments, then argument pieces."""
    first = ToolCallDelta(index, call.id, call.name, "")
    return [first] + [ToolCallDelta(index, None, None, p) for p in pieces(call.arguments, size)]


def names_and_arguments(calls: Sequence[ToolCall]) -> list[tuple[str, str]]:
    return [(call.name, call.arguments) for call in calls]


# -- one test per quirk -----------------------------------------------------------------------


def test_parallel_calls_by_index_come_out_in_order() -> None:
    deltas = openai_fragments(WEATHER, 0) + openai_fragments(TIME, 1)
    calls, _ = assemble(deltas)
    assert calls == [WEATHER, TIME]


def test_interleaved_fragments_are_sorted_out_by_index() -> None:
    weather, time = openai_fragments(WEATHER, 0, 2), openai_fragments(TIME, 1, 3)
    mixed: list[ToolCallDelta] = []
    for turn in range(max(len(weather), len(time))):
        mixed += weather[turn : turn + 1] + time[turn : turn + 1]
    assert assemble(mixed)[0] == [WEATHER, TIME]


def test_arguments_split_into_single_characters_are_joined_exactly() -> None:
    call = ToolCall("c", "f", '{"text": "ünïcode \\"quoted\\" {braces} [x]", "n": [1, 2]}')
    calls, normalized = assemble(openai_fragments(call, 0, 1))
    assert calls == [call]
    assert "".join(d.arguments for d in normalized) == call.arguments


def test_indexes_need_not_start_at_zero_or_be_contiguous() -> None:
    deltas = openai_fragments(WEATHER, 3) + openai_fragments(TIME, 7)
    calls, normalized = assemble(deltas)
    assert calls == [WEATHER, TIME]
    assert {d.index for d in normalized} == {0, 1}


def test_missing_index_with_ids_separates_calls() -> None:
    deltas = openai_fragments(WEATHER, None) + openai_fragments(TIME, None)
    assert assemble(deltas)[0] == [WEATHER, TIME]


def test_missing_index_and_id_separates_whole_calls_of_the_same_function() -> None:
    paris = ToolCall("x", "get_weather", '{"city": "Paris"}')
    rome = ToolCall("y", "get_weather", '{"city": "Rome"}')
    deltas = [ToolCallDelta(None, None, c.name, c.arguments) for c in (paris, rome)]
    calls, _ = assemble(deltas)
    assert names_and_arguments(calls) == names_and_arguments([paris, rome])


def test_missing_index_and_id_separates_streamed_calls_of_the_same_function() -> None:
    paris = ToolCall("x", "get_weather", '{"city": "Paris"}')
    rome = ToolCall("y", "get_weather", '{"city": "Rome"}')
    deltas = [
        ToolCallDelta(None, None, d.name, d.arguments)
        for call in (paris, rome)
        for d in openai_fragments(call, None, 3)
    ]
    calls, _ = assemble(deltas)
    assert names_and_arguments(calls) == names_and_arguments([paris, rome])


def test_index_zero_repeated_for_distinct_ids_starts_new_calls() -> None:
    deltas = openai_fragments(WEATHER, 0) + openai_fragments(TIME, 0)
    calls, normalized = assemble(deltas)
    assert calls == [WEATHER, TIME]
    assert [d.index for d in normalized if d.id is not None] == [0, 1]


def test_index_zero_repeated_without_ids_separates_whole_calls() -> None:
    deltas = [ToolCallDelta(0, None, c.name, c.arguments) for c in (WEATHER, TIME)]
    calls, _ = assemble(deltas)
    assert names_and_arguments(calls) == names_and_arguments([WEATHER, TIME])


def test_whole_call_in_one_fragment() -> None:
    calls, normalized = assemble([ToolCallDelta(0, WEATHER.id, WEATHER.name, WEATHER.arguments)])
    assert calls == [WEATHER]
    assert normalized == [ToolCallDelta(0, WEATHER.id, WEATHER.name, WEATHER.arguments)]


def test_id_and_name_repeated_on_every_fragment_are_kept_once() -> None:
    deltas = [
        ToolCallDelta(0, WEATHER.id, WEATHER.name, piece) for piece in pieces(WEATHER.arguments, 5)
    ]
    calls, normalized = assemble(deltas)
    assert calls == [WEATHER]
    # Passed on once, so a client concatenating names does not read get_weatherget_weather.
    assert [d.name for d in normalized] == [WEATHER.name] + [None] * (len(deltas) - 1)
    assert [d.id for d in normalized] == [WEATHER.id] + [None] * (len(deltas) - 1)


def test_repeated_name_without_id_or_index_stays_one_call() -> None:
    deltas = [ToolCallDelta(None, None, "f", p) for p in pieces('{"a": {"b": [1, 2]}}', 2)]
    calls, _ = assemble(deltas)
    assert names_and_arguments(calls) == [("f", '{"a": {"b": [1, 2]}}')]


def test_trailing_name_only_fragment_after_a_complete_call_adds_no_call() -> None:
    deltas = [ToolCallDelta(None, None, "f", '{"a": 1}'), ToolCallDelta(None, None, "f", "")]
    calls, _ = assemble(deltas)
    assert names_and_arguments(calls) == [("f", '{"a": 1}')]


def test_name_only_fragment_then_arguments_after_a_complete_call_is_a_new_call() -> None:
    deltas = [
        ToolCallDelta(None, None, "f", '{"a": 1}'),
        ToolCallDelta(None, None, "f", ""),
        ToolCallDelta(None, None, None, '{"a": '),
        ToolCallDelta(None, None, None, "2}"),
    ]
    calls, normalized = assemble(deltas)
    assert names_and_arguments(calls) == [("f", '{"a": 1}'), ("f", '{"a": 2}')]
    assert normalized[2].index == 1
    assert normalized[2].name == "f"
    assert normalized[2].id


def test_a_different_name_after_a_complete_call_is_a_new_call() -> None:
    deltas = [ToolCallDelta(0, None, "f", "{}"), ToolCallDelta(0, None, "g", "")]
    calls, _ = assemble([*deltas, ToolCallDelta(0, None, None, '{"x": 1}')])
    assert names_and_arguments(calls) == [("f", "{}"), ("g", '{"x": 1}')]


def test_braces_inside_strings_do_not_end_a_call_early() -> None:
    arguments = '{"s": "}\\"{ ]", "t": "\\\\"}'
    assert json.loads(arguments) == {"s": '}"{ ]', "t": "\\"}
    deltas = [ToolCallDelta(None, None, "f", p) for p in pieces(arguments, 1)]
    calls, _ = assemble(deltas)
    assert names_and_arguments(calls) == [("f", arguments)]


def test_no_id_gets_a_generated_one_per_call() -> None:
    deltas = [
        ToolCallDelta(0, None, "f", "{}"),
        ToolCallDelta(1, None, "g", ""),
        ToolCallDelta(1, None, None, "{}"),
    ]
    calls, normalized = assemble(deltas)
    assert [c.name for c in calls] == ["f", "g"]
    assert all(GENERATED_ID.fullmatch(c.id) for c in calls)
    assert calls[0].id != calls[1].id
    # The caller learns the id on the call's first fragment, the same one as assembled.
    assert [d.id for d in normalized] == [calls[0].id, calls[1].id, None]


def test_a_known_id_wins_over_a_missing_index() -> None:
    deltas = [
        ToolCallDelta(None, "a", "f", '{"x":'),
        ToolCallDelta(None, "b", "g", '{"y":'),
        ToolCallDelta(None, "a", "f", "1}"),
        ToolCallDelta(None, "b", "g", "2}"),
    ]
    calls, _ = assemble(deltas)
    assert calls == [ToolCall("a", "f", '{"x":1}'), ToolCall("b", "g", '{"y":2}')]


def test_an_empty_id_is_no_id() -> None:
    deltas = [
        ToolCallDelta(0, "", "f", '{"a": 1}'),
        ToolCallDelta(1, "", "g", '{"b": 2}'),
    ]
    calls, normalized = assemble(deltas)
    assert names_and_arguments(calls) == [("f", '{"a": 1}'), ("g", '{"b": 2}')]
    assert all(GENERATED_ID.fullmatch(c.id) for c in calls)
    assert [d.id for d in normalized] == [c.id for c in calls]


def test_a_new_index_is_a_new_call_even_when_its_id_repeats() -> None:
    # Some servers number ids per answer badly; merging would lose a call.
    deltas = [ToolCallDelta(0, "call_0", "f", "{}"), ToolCallDelta(1, "call_0", "g", "[]")]
    calls, _ = assemble(deltas)
    assert calls == [ToolCall("call_0", "f", "{}"), ToolCall("call_0", "g", "[]")]


def test_interleaved_calls_all_at_index_zero_are_told_apart_by_id() -> None:
    deltas = [
        ToolCallDelta(0, "a", "f", '{"x":'),
        ToolCallDelta(0, "b", "g", '{"y":'),
        ToolCallDelta(0, "a", "f", "1}"),
        ToolCallDelta(0, "b", "g", "2}"),
    ]
    assert assemble(deltas)[0] == [ToolCall("a", "f", '{"x":1}'), ToolCall("b", "g", '{"y":2}')]


def test_a_trailing_fragment_repeating_id_and_name_adds_no_call() -> None:
    deltas = [ToolCallDelta(0, "a", "f", p) for p in ('{"x":', "1}", "")]
    assert assemble(deltas)[0] == [ToolCall("a", "f", '{"x":1}')]


def test_a_name_arriving_after_the_first_fragment_is_passed_on_once() -> None:
    deltas = [ToolCallDelta(0, "c", None, ""), ToolCallDelta(0, None, "f", "{}")]
    deltas.append(ToolCallDelta(0, None, "f", ""))
    calls, normalized = assemble(deltas)
    assert calls == [ToolCall("c", "f", "{}")]
    assert [d.name for d in normalized] == [None, "f", None]


def test_a_call_never_named_has_an_empty_name() -> None:
    assert assemble([ToolCallDelta(0, "c", None, "{}")])[0] == [ToolCall("c", "", "{}")]


def test_normalized_fragments_carry_positions_and_arguments_unchanged() -> None:
    deltas = openai_fragments(WEATHER, 5, 3) + openai_fragments(TIME, 2, 3)
    _, normalized = assemble(deltas)
    assert [d.arguments for d in normalized] == [d.arguments for d in deltas]
    assert [d.index for d in normalized] == [0] * len(openai_fragments(WEATHER, 5, 3)) + [1] * len(
        openai_fragments(TIME, 2, 3)
    )


# -- ToolCall ---------------------------------------------------------------------------------


def test_parsed_decodes_the_arguments() -> None:
    assert WEATHER.parsed() == {"city": "Paris", "unit": "celsius"}
    assert ToolCall("c", "f", "").parsed() == {}
    assert ToolCall("c", "f", "  \n").parsed() == {}
    assert ToolCall("c", "f", "[1, 2]").parsed() == [1, 2]


@pytest.mark.parametrize(
    "arguments", ['{"city": "Par', "{'city': 'Paris'}", '{"a": 1}{"b": 2}', "[" * 100_000]
)
def test_parsed_raises_a_typed_error_that_never_quotes_the_arguments(arguments: str) -> None:
    call = ToolCall("call_9", "get_weather", arguments)
    with pytest.raises(UpstreamProtocolError) as caught:
        call.parsed()
    message = str(caught.value)
    assert "call_9" in message
    assert "get_weather" in message
    assert f"{len(arguments)} characters" in message
    assert "Par" not in message
    assert "'city'" not in message
    # The decoder's error holds the whole text: it must not ride along for a logger.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_as_dict_is_the_openai_message_format() -> None:
    assert WEATHER.as_dict() == {
        "id": "call_w",
        "type": "function",
        "function": {"name": "get_weather", "arguments": WEATHER.arguments},
    }


# -- any fragmentation reassembles ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
arguments_text = st.dictionaries(st.text(max_size=6), json_values, max_size=4).map(
    lambda value: json.dumps(value, ensure_ascii=False)
)
call_names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)


@st.composite
def call_sets(draw: st.DrawFn) -> list[ToolCall]:
    count = draw(st.integers(1, 4))
    names = [draw(call_names) for _ in range(count)]
    return [ToolCall(f"call_{i}", names[i], draw(arguments_text)) for i in range(count)]


@st.composite
def splits(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` cut at arbitrary points (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


Framing = Callable[[int, ToolCall, list[str]], list[ToolCallDelta]]


def _openai(index: int, call: ToolCall, parts: list[str]) -> list[ToolCallDelta]:
    return [ToolCallDelta(index, call.id, call.name, "")] + [
        ToolCallDelta(index, None, None, p) for p in parts
    ]


def _no_index(index: int, call: ToolCall, parts: list[str]) -> list[ToolCallDelta]:
    return [ToolCallDelta(None, d.id, d.name, d.arguments) for d in _openai(index, call, parts)]


def _index_zero(index: int, call: ToolCall, parts: list[str]) -> list[ToolCallDelta]:
    return [ToolCallDelta(0, d.id, d.name, d.arguments) for d in _openai(index, call, parts)]


def _repeat(index: int, call: ToolCall, parts: list[str]) -> list[ToolCallDelta]:
    return [ToolCallDelta(index, call.id, call.name, p) for p in parts or [""]]


def _whole(index: int, call: ToolCall, parts: list[str]) -> list[ToolCallDelta]:
    return [ToolCallDelta(index, call.id, call.name, "".join(parts))]


FRAMINGS: dict[str, Framing] = {
    "openai": _openai,
    "no_index": _no_index,
    "index_zero": _index_zero,
    "repeat_id_name": _repeat,
    "whole": _whole,
}


@pytest.mark.parametrize("framing", FRAMINGS)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_any_fragmentation_reassembles_to_the_same_calls(framing: str, data: Any) -> None:
    calls = data.draw(call_sets())
    frame = FRAMINGS[framing]
    per_call = [frame(i, call, data.draw(splits(call.arguments))) for i, call in enumerate(calls)]
    deltas = [d for fragments in per_call for d in fragments]
    assembled, normalized = assemble(deltas)
    assert assembled == calls
    assert [d.arguments for d in normalized] == [d.arguments for d in deltas]


@given(calls=call_sets(), data=st.data())
@settings(max_examples=60, deadline=None)
def test_any_interleaving_by_index_reassembles(calls: list[ToolCall], data: Any) -> None:
    queues = [_openai(i, call, data.draw(splits(call.arguments))) for i, call in enumerate(calls)]
    deltas: list[ToolCallDelta] = []
    while any(queues):
        # The first fragment of each call must stay first within its call.
        pick = data.draw(st.sampled_from([i for i, q in enumerate(queues) if q]))
        deltas.append(queues[pick].pop(0))
    assert assemble(deltas)[0] == sorted(
        calls, key=lambda c: next(i for i, d in enumerate(deltas) if d.id == c.id)
    )


@pytest.mark.parametrize("index", [None, 0], ids=["no_index", "index_zero"])
@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "whole"])
@given(calls=call_sets(), data=st.data())
@settings(max_examples=60, deadline=None)
def test_calls_without_ids_or_indexes_reassemble_when_arguments_are_objects(
    index: int | None, whole: bool, calls: list[ToolCall], data: Any
) -> None:
    deltas: list[ToolCallDelta] = []
    for call in calls:
        if whole:
            deltas.append(ToolCallDelta(index, None, call.name, call.arguments))
            continue
        deltas.append(ToolCallDelta(index, None, call.name, ""))
        deltas += [ToolCallDelta(index, None, None, p) for p in data.draw(splits(call.arguments))]
    assembled, _ = assemble(deltas)
    assert names_and_arguments(assembled) == names_and_arguments(calls)
    assert all(GENERATED_ID.fullmatch(c.id) for c in assembled)
