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
    "AbstractProvider",
    "Capability",
    "CreateResult",
    "FinishReason",
    "Messages",
    "ProviderInfo",
    "Usage",
]

GPT_35_TURBO = "gpt-3.5-turbo"
GPT_4 = "gpt-4"

Messages = Sequence[Mapping[str, Any]]
"""A chat history: ``[{"role": "user", "content": "hi"}, ...]``."""


@dataclass(frozen=True, slots=True)
class FinishReason:
    """Stream marker: why the upstream stopped (``"stop"``, ``"length"``, ...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Stream marker: token accounting reported by the upstream."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


CreateResult = Iterator[str | FinishReason | Usage]
"""What ``create_completion`` returns: ``str`` tokens, optionally with markers."""


class Capability(enum.Flag):
    """What a provider can do, and what a request needs."""

    NONE = 0
    STREAM = enum.auto()
    MESSAGE_HISTORY = enum.auto()
    SYSTEM_MESSAGE = enum.auto()
    AUTH = enum.auto()

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


class AbstractProvider(ABC):
    """Base class of every provider.

    Subclass it and set the class attributes that describe the upstream; implement
    ``create_completion`` as a generator of ``str`` tokens (a ``@staticmethod`` or
    ``@classmethod`` in g4f style, or a plain method for configurable instances).
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
    models: Sequence[str] = ()
    model_aliases: Mapping[str, str] = {}
    default_model: str | None = None

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
        """Yield the answer's tokens (``str``), optionally ``FinishReason``/``Usage``."""
        raise NotImplementedError


FLAG_NAMES: tuple[str, ...] = (
    "working",
    "needs_auth",
    "supports_stream",
    "supports_message_history",
    "supports_system_message",
    "supports_gpt_35_turbo",
    "supports_gpt_4",
)
"""The boolean flags of the spec, in the order the CLI shows them."""


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """Read-only description of a registered provider.

    ``models`` holds every model id served (including ``gpt-3.5-turbo``/``gpt-4``
    from the flags); ``aliases`` maps alias to model id; ``source`` is the plugin
    (entry-point name) or ``"programmatic"``.
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

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by ``provhub providers --json``)."""
        return {
            "name": self.name,
            "url": self.url,
            "flags": dict(self.flags),
            "capabilities": self.capabilities.names(),
            "models": list(self.models),
            "aliases": dict(self.aliases),
            "default_model": self.default_model,
            "source": self.source,
        }
