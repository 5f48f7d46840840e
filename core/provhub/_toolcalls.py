"""Tool calls: the assembled value, and the assembler that builds it from fragments.

Upstreams stream a tool call as fragments (SPEC §11): the first carries the call's
``id`` and function ``name``, the rest carry pieces of the ``arguments`` JSON text,
and ``index`` says which call a fragment belongs to. Real servers bend this
(LiteLLM's, llm's and aisuite's trackers hold the bug reports); the assembler
resolves each case the same way for every provider:

- ``index`` missing: a fragment with a new ``id`` starts a new call, any other
  continues the latest call;
- ``index=0`` repeated for distinct calls: a fragment whose ``id`` differs from
  the id of the call at that index starts a new call;
- the whole call in one fragment: just a call with one fragment;
- ``id``/``name`` repeated on every fragment: kept once (an OpenAI client that
  concatenates names would otherwise read ``get_weatherget_weather``);
- no ``id`` at all: the hub gives the call one (``call_`` + 24 hex digits), as
  a caller needs it to answer with a ``tool`` message.

Every fragment costs O(1): arguments are joined once, when the calls are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from provhub._errors import UpstreamProtocolError
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
        when a stream broke inside them or a model wrote invalid JSON.
        """
        if not self.arguments.strip():
            return {}
        try:
            return json.loads(self.arguments)
        except (ValueError, RecursionError) as exc:
            raise UpstreamProtocolError(
                f"tool call {self.id} ({self.name!r}) has arguments that are not JSON "
                f"({len(self.arguments)} characters); the stream may have broken inside them"
            ) from exc

    def as_dict(self) -> dict[str, Any]:
        """The call in OpenAI's message format (``{"id", "type", "function"}``)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


class _Call:
    __slots__ = ("arguments", "id", "id_given", "name")

    def __init__(self, call_id: str | None, name: str | None) -> None:
        self.id = call_id or "call_" + os.urandom(12).hex()
        self.id_given = call_id is not None
        self.name = name
        self.arguments: list[str] = []


class ToolCallAssembler:
    """Collects :class:`ToolCallDelta` fragments into :class:`ToolCall` values.

    :meth:`add` returns the fragment as the hub passes it on: ``index`` set to the
    call's position (0, 1, ... in order of first appearance), ``id`` and ``name``
    only on a call's first fragment.
    """

    __slots__ = ("_by_index", "_calls")

    def __init__(self) -> None:
        self._calls: list[_Call] = []
        # The upstream's index -> position in _calls (remapped when a server
        # reuses an index for a distinct call).
        self._by_index: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, delta: ToolCallDelta) -> ToolCallDelta:
        """Take one fragment; return it normalized."""
        calls = self._calls
        position = self._position(delta)
        if position is None:
            position = len(calls)
            call = _Call(delta.id, delta.name)
            calls.append(call)
            if delta.index is not None:
                self._by_index[delta.index] = position
            if delta.arguments:
                call.arguments.append(delta.arguments)
            return ToolCallDelta(position, call.id, call.name, delta.arguments)
        call = calls[position]
        name = None
        if call.name is None and delta.name:
            call.name = name = delta.name  # the name is news to the caller
        if delta.arguments:
            call.arguments.append(delta.arguments)
        return ToolCallDelta(position, None, name, delta.arguments)

    def _position(self, delta: ToolCallDelta) -> int | None:
        """Where ``delta`` belongs, or None when it starts a new call."""
        calls = self._calls
        if delta.index is None:
            if not calls:
                return None
            latest = calls[-1]
            if delta.id is not None and latest.id_given and delta.id != latest.id:
                return None
            if delta.name and latest.name and delta.name != latest.name and latest.arguments:
                return None
            return len(calls) - 1
        position = self._by_index.get(delta.index)
        if position is None:
            return None
        existing = calls[position]
        if delta.id is not None and existing.id_given and delta.id != existing.id:
            return None  # the same index reused for a distinct call
        return position

    def calls(self) -> list[ToolCall]:
        """The calls assembled so far, in order of first appearance."""
        return [ToolCall(call.id, call.name or "", "".join(call.arguments)) for call in self._calls]
