"""The provider spec: what a plugin author writes (SPEC §2).

A provider is either a class with static/class-method ``create_completion`` (g4f
style) or an instance of a configurable class. Both are described to the rest of
provhub by an immutable :class:`ProviderInfo`.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GPT_4",
    "GPT_35_TURBO",
    "RICH_CAPABILITIES",
    "AbstractProvider",
    "Capability",
    "CreateResult",
    "FinishReason",
    "Messages",
    "ProviderInfo",
    "Reasoning",
    "Refusal",
    "StreamItem",
    "ToolCallDelta",
    "Usage",
]

GPT_35_TURBO = "gpt-3.5-turbo"
GPT_4 = "gpt-4"

Messages = Sequence[Mapping[str, Any]]
"""A chat history: ``[{"role": "user", "content": "hi"}, ...]``."""


@dataclass(frozen=True, slots=True)
class FinishReason:
    """Stream marker: why the upstream stopped (``"stop"``, ``"length"``, ``"tool_calls"``...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Stream marker: token accounting reported by the upstream.

    ``cached_tokens`` (prompt tokens served from a cache) and ``reasoning_tokens``
    (completion tokens spent on reasoning) are reported by some upstreams;
    ``cost`` is filled by the hub when ``[prices]`` knows the model.
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: float | None = None

    def as_dict(self) -> dict[str, int | float | None]:
        """The counts as a plain dict (for events and JSON output).

        The three classic counts are always there; ``cached_tokens``,
        ``reasoning_tokens`` and ``cost`` only when known.
        """
        data: dict[str, int | float | None] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        for key in ("cached_tokens", "reasoning_tokens", "cost"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """Stream item: a fragment of one tool call (OpenAI style, SPEC §11).

    ``index`` identifies the call within the answer (``None`` when the upstream
    did not say; the hub then assigns one); ``id`` and ``name`` arrive once, on
    the call's first fragment; ``arguments`` is a fragment of the JSON text of the
    call's arguments. The hub yields fragments with ``index`` always set.
    """

    index: int | None
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Stream item: a fragment of the model's reasoning ("thinking") text."""

    text: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Stream item: a fragment of a refusal message (the model declined to answer)."""

    text: str


StreamItem = str | FinishReason | Usage | ToolCallDelta | Reasoning | Refusal
"""Anything a provider may yield: text, or one of the item values."""

CreateResult = Iterator[StreamItem]
"""What ``create_completion`` returns: ``str`` tokens, optionally with the other items."""

ITEM_TYPES: tuple[type, ...] = (FinishReason, Usage, ToolCallDelta, Reasoning, Refusal)
"""The non-text item types, for checks of what a provider yielded."""


class Capability(enum.Flag):
    """What a provider can do, and what a request needs."""

    NONE = 0
    STREAM = enum.auto()
    MESSAGE_HISTORY = enum.auto()
    SYSTEM_MESSAGE = enum.auto()
    AUTH = enum.auto()
    TOOLS = enum.auto()
    VISION = enum.auto()
    STRUCTURED_OUTPUT = enum.auto()
    REASONING = enum.auto()

    @classmethod
    def parse(cls, text: str) -> Capability:
        """Parse ``"stream,system_message"`` (case-insensitive) into a flag.

        Raises ``ValueError`` naming the unknown word and the known ones.
        """
        result = cls.NONE
        for word in filter(None, (w.strip() for w in text.replace("|", ",").split(","))):
            member = cls.__members__.get(word.upper())
            if member is None or member is cls.NONE:
                known = ", ".join(m.lower() for m in cls.__members__ if m != "NONE")
                raise ValueError(f"unknown capability {word!r} (known: {known})")
            result |= member
        return result

    def names(self) -> list[str]:
        """Lower-case names of the members set in this flag."""
        return [m.name.lower() for m in Capability if m.name and m in self and m.value]


RICH_CAPABILITIES = (
    Capability.TOOLS | Capability.VISION | Capability.STRUCTURED_OUTPUT | Capability.REASONING
)
"""The capabilities that may differ between the models of one provider."""


class AbstractProvider(ABC):
    """Base class of every provider.

    Subclass it and set the class attributes that describe the upstream; implement
    ``create_completion`` as a generator of ``str`` tokens (a ``@staticmethod`` or
    ``@classmethod`` in g4f style, or a plain method for configurable instances).

    ``model_capabilities`` declares, per model id, exactly which of the rich
    capabilities (tools, vision, structured output, reasoning) that model has; for
    a model it names, the ``supports_tools``/``supports_vision``/... flags do not
    apply. ``config_keys`` names the extra keys the provider accepts in its
    ``[providers.NAME]`` table (read back from ``provider_call().settings.extra``).

    ``url_env`` names the environment variable that overrides ``url`` (Lockchat:
    ``PROVHUB_LOCKCHAT_URL``), so error messages and ``provhub check`` can say
    where a URL comes from and how to change it; pass the same name to
    ``provider_call().base_url(url, url_env)``. ``models_path`` is the path,
    relative to the base URL, of an OpenAI-style model listing
    (``"/v1/models"``), which ``provhub check`` uses as a free live probe.

    ``context_windows`` maps model ids to their context window in tokens (prompt
    and answer together); the router never falls back to a smaller window than a
    request needs (SPEC §14). A model it does not name has an unknown window.

    ``asyncio_native = True`` lets ``Hub.astream``/``Hub.acomplete`` drive the
    provider on their event loop instead of a worker thread. Declare it only
    when ``create_completion`` does all its I/O through
    ``provider_call().stream_sse(...)``, passing every object that iterator
    yields besides ``bytes`` on unchanged (``parse_chat_stream`` does), and
    ``answer = yield from provider_call().fetch_json(...)``: those are the
    points where the loop waits.
    """

    name: str = "AbstractProvider"
    url: str | None = None
    working: bool = True
    needs_auth: bool = False
    supports_stream: bool = False
    supports_message_history: bool = True
    supports_system_message: bool = True
    supports_gpt_35_turbo: bool = False
    supports_gpt_4: bool = False
    supports_tools: bool = False
    supports_vision: bool = False
    supports_structured_output: bool = False
    supports_reasoning: bool = False
    models: Sequence[str] = ()
    model_aliases: Mapping[str, str] = {}
    model_capabilities: Mapping[str, Capability] = {}
    default_model: str | None = None
    config_keys: Sequence[str] = ()
    context_windows: Mapping[str, int] = {}
    url_env: str | None = None
    models_path: str | None = None
    asyncio_native: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # SPEC §2: ``name`` defaults to the class name. Set once at class creation,
        # never mutated afterwards.
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    @staticmethod
    @abstractmethod
    def create_completion(
        model: str, messages: Messages, stream: bool, **kwargs: Any
    ) -> CreateResult:
        """Yield the answer's tokens (``str``), optionally other items (SPEC §11)."""
        raise NotImplementedError


FLAG_NAMES: tuple[str, ...] = (
    "working",
    "needs_auth",
    "supports_stream",
    "supports_message_history",
    "supports_system_message",
    "supports_gpt_35_turbo",
    "supports_gpt_4",
    "supports_tools",
    "supports_vision",
    "supports_structured_output",
    "supports_reasoning",
)
"""The boolean flags of the spec, in the order the CLI shows them."""

FLAG_CAPABILITIES: Mapping[str, Capability] = {
    "supports_stream": Capability.STREAM,
    "supports_message_history": Capability.MESSAGE_HISTORY,
    "supports_system_message": Capability.SYSTEM_MESSAGE,
    "needs_auth": Capability.AUTH,
    "supports_tools": Capability.TOOLS,
    "supports_vision": Capability.VISION,
    "supports_structured_output": Capability.STRUCTURED_OUTPUT,
    "supports_reasoning": Capability.REASONING,
}
"""The flag that grants each capability."""


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """Read-only description of a registered provider.

    ``models`` holds every model id served (including ``gpt-3.5-turbo``/``gpt-4``
    from the flags); ``aliases`` maps alias to model id; ``capabilities`` are the
    provider-wide ones (from the flags) and ``model_capabilities`` the per-model
    declarations (see :meth:`capabilities_for`); ``context_windows`` maps model
    ids to context windows in tokens; ``source`` is the plugin (entry-point name)
    or ``"programmatic"``; ``url_env`` and ``models_path`` as declared by the
    provider (see :class:`AbstractProvider`).
    """

    name: str
    url: str | None
    flags: Mapping[str, bool]
    capabilities: Capability
    models: tuple[str, ...]
    aliases: Mapping[str, str]
    default_model: str | None
    source: str
    provider: Any = field(repr=False, compare=False)
    model_capabilities: Mapping[str, Capability] = field(default_factory=dict)
    config_keys: tuple[str, ...] = ()
    context_windows: Mapping[str, int] = field(default_factory=dict)
    url_env: str | None = None
    models_path: str | None = None

    @property
    def working(self) -> bool:
        """Whether the provider declares itself working."""
        return self.flags["working"]

    @property
    def needs_auth(self) -> bool:
        """Whether the provider needs credentials."""
        return self.flags["needs_auth"]

    def serves(self, model: str) -> bool:
        """True when ``model`` is one of its ids or aliases."""
        return model in self.models or model in self.aliases

    def capabilities_for(self, model: str) -> Capability:
        """What the provider can do for ``model`` (an id or an alias).

        A model named in ``model_capabilities`` has exactly the rich capabilities
        declared there; any other model has the provider-wide ones.
        """
        declared = self.model_capabilities.get(self.aliases.get(model, model))
        if declared is None:
            return self.capabilities
        return (self.capabilities & ~RICH_CAPABILITIES) | (declared & RICH_CAPABILITIES)

    def context_window_for(self, model: str) -> int | None:
        """The context window of ``model`` (an id or an alias) in tokens, or None."""
        return self.context_windows.get(self.aliases.get(model, model))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by ``provhub providers --json``)."""
        return {
            "name": self.name,
            "url": self.url,
            "flags": dict(self.flags),
            "capabilities": self.capabilities.names(),
            "models": list(self.models),
            "aliases": dict(self.aliases),
            "model_capabilities": {m: c.names() for m, c in self.model_capabilities.items()},
            "context_windows": dict(self.context_windows),
            "default_model": self.default_model,
            "source": self.source,
            "url_env": self.url_env,
            "models_path": self.models_path,
        }
