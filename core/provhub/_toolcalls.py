"""Tool calls: the assembled value, and the assembler that builds it from fragments.

Upstreams stream a tool call as fragments (SPEC §11): the first carries the call's
``id`` and function ``name``, the rest carry pieces of the ``arguments`` JSON text,
and ``index`` says which call a fragment belongs to. Real servers bend this
(LiteLLM's, llm's and aisuite's trackers hold the bug reports); the assembler
resolves each case the same way for every provider:

- ``index`` missing: a fragment continues the latest call, unless it starts a
  new one by the rules below;
- ``index=0`` repeated for distinct calls: a fragment whose ``id`` differs from
  the id of the call at that index starts a new call;
- a known ``id`` wins over a missing or reused index: a fragment repeating the id
  of an earlier call belongs to that call (a new ``index`` is always a new call,
  even if a server repeats ids across calls); an empty ``id`` is no id;
- neither a distinguishing ``id`` nor ``index``: a fragment that names a
  function after the call it would continue is already complete (its arguments
  are a whole JSON value) starts a new call, so whole calls sent one after the
  other without ids stay apart; a name alone (no arguments) is held until
  arguments follow, since a server repeating the name on every fragment looks
  the same;
- the whole call in one fragment: just a call with one fragment;
- ``id``/``name`` repeated on every fragment: kept once (an OpenAI client that
  concatenates names would otherwise read ``get_weatherget_weather``);
- no ``id`` at all: the hub gives the call one (``call_`` + 24 hex digits), as
  a caller needs it to answer with a ``tool`` message.

Every fragment costs O(1) amortized: arguments are joined once, when the calls
are read, and the completeness test of the id-less rules scans each argument
character at most once, only for servers that need it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from provhub._spec import ToolCallDelta

__all__ = ["ToolCall", "ToolCallAssembler"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call the model asked for: ``id``, function ``name``, ``arguments`` (JSON text)."""

    id: str
    name: str
    arguments: str

    def parsed(self) -> Any:
        """The decoded arguments (empty arguments decode as ``{}``).

        Raises :class:`UpstreamProtocolError` when the arguments are not JSON, as
        when a stream broke inside them or a model wrote invalid JSON. The error
        names the call, never the arguments (they may hold private data).
        """
        if not self.arguments.strip():
            return {}
        # Imported here: ToolCall is a plain value, and the error family imports
        # requests (``from provhub.testing import ToolCall`` must stay light).
        from provhub._errors import UpstreamProtocolError

        try:
            return json.loads(self.arguments)
        except (ValueError, RecursionError):
            error = UpstreamProtocolError(
                f"tool call {self.id} ({self.name!r}) has arguments that are not JSON "
                f"({len(self.arguments)} characters); the stream may have broken inside them"
            )
        # Raised outside the except block: the JSONDecodeError holds the whole text
        # (its .doc), which must not ride along as __context__ into logs.
        raise error from None

    def as_dict(self) -> dict[str, Any]:
        """The call in OpenAI's message format (``{"id", "type", "function"}``).

        Ready for the ``tool_calls`` of the assistant message a caller sends back
        with the tool results.
        """
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


# The characters that change the nesting state of JSON text.
_STRUCTURE = re.compile(r'[\\"{}\[\]]')


class _Call:
    __slots__ = (
        "arguments",
        "depth",
        "escaped_at",
        "held_name",
        "id",
        "id_given",
        "in_string",
        "name",
        "scanned",
        "scanned_chars",
        "state",
    )

    def __init__(self, call_id: str | None, name: str | None) -> None:
        self.id = call_id or "call_" + os.urandom(12).hex()
        self.id_given = call_id is not None
        self.name = name
        self.arguments: list[str] = []
        # A name that arrived alone after this call was complete (see the module doc).
        self.held_name: str | None = None
        # Incremental JSON nesting scan of the arguments, run only when needed:
        # fragments scanned, characters scanned, and the state so far.
        self.scanned = 0
        self.scanned_chars = 0
        self.depth = 0
        self.in_string = False
        self.escaped_at = -1
        self.state = _OPEN

    def complete(self) -> bool:
        """Whether the arguments so far are one whole JSON object or array."""
        arguments = self.arguments
        while self.scanned < len(arguments) and self.state is _OPEN:
            self._scan(arguments[self.scanned])
            self.scanned += 1
        return self.state is _COMPLETE

    def _scan(self, text: str) -> None:
        base = self.scanned_chars
        self.scanned_chars += len(text)
        depth = self.depth
        in_string = self.in_string
        for match in _STRUCTURE.finditer(text):
            at = base + match.start()
            char = match.group()
            if in_string:
                if at == self.escaped_at:
                    continue
                if char == "\\":
                    self.escaped_at = at + 1
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth <= 0:
                    self.state = _COMPLETE if depth == 0 else _BROKEN
                    break
        self.depth = depth
        self.in_string = in_string


_OPEN = "open"
_COMPLETE = "complete"
_BROKEN = "broken"


class ToolCallAssembler:
    """Collects :class:`ToolCallDelta` fragments into :class:`ToolCall` values.

    :meth:`add` returns the fragment as the hub passes it on: ``index`` set to the
    call's position (0, 1, ... in order of first appearance), ``id`` and ``name``
    only on a call's first fragment (a name the first fragment lacked comes on
    the fragment that brings it).
    """

    __slots__ = ("_by_id", "_by_index", "_calls")

    def __init__(self) -> None:
        self._calls: list[_Call] = []
        # The upstream's index -> position in _calls (remapped when a server
        # reuses an index for a distinct call).
        self._by_index: dict[int, int] = {}
        # Ids the upstream gave -> position.
        self._by_id: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, delta: ToolCallDelta) -> ToolCallDelta:
        """Take one fragment; return it normalized."""
        calls = self._calls
        # An empty id ("id": "", sent by some servers) is no id: it must neither match
        # every other id-less call nor reach the caller as the call's id.
        call_id = delta.id or None
        position, name = self._position(delta, call_id)
        if position is None:
            position = len(calls)
            call = _Call(call_id, name)
            calls.append(call)
            if delta.index is not None:
                self._by_index[delta.index] = position
            if call_id is not None:
                self._by_id[call_id] = position
            if delta.arguments:
                call.arguments.append(delta.arguments)
            if delta.index == position and delta.id == call.id and delta.name == call.name:
                return delta  # already as the caller sees it: no copy
            return ToolCallDelta(position, call.id, call.name, delta.arguments)
        call = calls[position]
        if delta.index is not None:
            # A fragment found by its id tells where its index points from now on.
            self._by_index[delta.index] = position
        name = None
        if call.name is None and delta.name:
            call.name = name = delta.name  # the name is news to the caller
        if delta.arguments:
            call.arguments.append(delta.arguments)
        if delta.index == position and delta.id is None and delta.name == name:
            return delta  # OpenAI's own framing: nothing to normalize, no copy
        return ToolCallDelta(position, None, name, delta.arguments)

    def _position(self, delta: ToolCallDelta, call_id: str | None) -> tuple[int | None, str | None]:
        """Where ``delta`` belongs (None: it starts a new call) and the new call's name."""
        calls = self._calls
        index = delta.index
        if index is None:
            if call_id is not None:
                known = self._by_id.get(call_id)
                if known is not None:
                    return known, None
            position = len(calls) - 1 if calls else None
        else:
            # A new index is a new call, even when its id repeats an earlier one
            # (servers that number ids per answer, badly, must not merge calls).
            position = self._by_index.get(index)
        if position is None:
            return None, delta.name
        call = calls[position]
        if call_id is not None and call.id_given and call_id != call.id:
            # Another id at this index: an earlier call continuing (interleaved
            # fragments that all say index 0), else the index reused for a new call.
            known = self._by_id.get(call_id)
            return (known, None) if known is not None else (None, delta.name)
        name = delta.name
        if name:
            if call.name and call.complete():
                if name != call.name or delta.arguments or (call_id and not call.id_given):
                    return None, name
                # A name alone: a new call, or a server repeating the name on a
                # trailing fragment. Only arguments that follow can tell.
                call.held_name = name
        elif call.held_name is not None and delta.arguments and call.complete():
            # More arguments after a whole JSON value cannot belong to it.
            held, call.held_name = call.held_name, None
            return None, held
        return position, None

    def calls(self) -> list[ToolCall]:
        """The calls assembled so far, in order of first appearance.

        A call the upstream never named has the name ``""``.
        """
        return [ToolCall(call.id, call.name or "", "".join(call.arguments)) for call in self._calls]
