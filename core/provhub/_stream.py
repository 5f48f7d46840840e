"""The ``Stream`` a caller iterates, and the ``Completion`` a whole answer becomes.

``for token in stream`` yields ``str`` text only, so g4f-style callers never
change; ``stream.items()`` yields every item (SPEC §11). Both run the same
:class:`~provhub._run.Run`; the metadata (provider, attempts, finish reason,
usage, tool calls...) reads the run's records.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from provhub._attempt import Attempt
from provhub._cancel import CancelToken
from provhub._router import RoutePlan
from provhub._spec import StreamItem, Usage
from provhub._toolcalls import ToolCall

if TYPE_CHECKING:
    from provhub._run import Run

__all__ = ["Completion", "Stream"]


@dataclass(frozen=True, slots=True)
class Completion:
    """The result of ``Hub.complete``: the whole answer and how it was produced.

    ``tool_calls`` are the calls the model asked for (empty when none);
    ``reasoning`` and ``refusal`` are None when the upstream sent none; ``cost``
    is what the attempts cost per ``[prices]`` (None without a price).
    """

    text: str
    provider: str
    model: str
    request_id: str
    finish_reason: str | None
    usage: Usage | None
    attempts: tuple[Attempt, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    refusal: str | None = None
    items: tuple[StreamItem, ...] = field(default=(), repr=False)
    cost: float | None = None

    def __str__(self) -> str:
        return self.text

    @classmethod
    def of(cls, run: Run) -> Completion:
        """The completion a finished run produced."""
        return cls(
            text=run.text,
            provider=run.provider or "",
            model=run.model,
            request_id=run.request_id,
            finish_reason=run.finish_reason,
            usage=run.usage,
            attempts=tuple(run.attempts),
            tool_calls=tuple(run.tool_calls),
            reasoning=run.reasoning,
            refusal=run.refusal,
            items=tuple(run.items),
            cost=run.cost,
        )


class Stream:
    """A streamed answer: iterate it for ``str`` tokens, or :meth:`items` for all items.

    Metadata is live during iteration and final after it: ``provider`` (of the
    current or final attempt), ``request_id``, ``attempts``, ``finish_reason``,
    ``usage``, ``text``, ``tool_calls``, ``reasoning``, ``refusal``. Use it as a
    context manager, or call :meth:`close`, to release the upstream connection
    when you stop early; a stream dropped unfinished releases it as soon as it is
    garbage.
    """

    __slots__ = ("_gen", "_run", "_text_only")

    def __init__(self, run: Run) -> None:
        self._run = run
        self._gen: Generator[StreamItem, None, None] | None = None
        self._text_only = True

    def _start(self, text_only: bool) -> Generator[StreamItem, None, None]:
        gen = self._gen
        if gen is None:
            # The generator refers to the run, never to this object: no reference
            # cycle, so dropping an unfinished stream closes its connection at once
            # instead of at the next cyclic garbage collection.
            gen = self._gen = self._run.execute(text_only=text_only)
            self._text_only = text_only
        elif self._text_only != text_only:
            how = "items()" if text_only is False else "for token in stream"
            raise RuntimeError(
                f"this stream is already being read the other way; choose {how} or the "
                "other before the first item, not both"
            )
        return gen

    def __iter__(self) -> Iterator[str]:
        # Hand out the generator itself: no extra Python frame per token.
        return cast(Iterator[str], self._start(True))

    def __next__(self) -> str:
        return cast(str, next(self._gen or self._start(True)))

    def items(self) -> Iterator[StreamItem]:
        """Every item in arrival order: text, tool-call fragments, reasoning, refusal,
        finish reason and usage (SPEC §11). Tool-call fragments come normalized:
        ``index`` always set, ``id`` and ``name`` only on a call's first fragment."""
        return self._start(False)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Stream request_id={self.request_id} model={self.model!r} "
            f"provider={self.provider!r} attempts={len(self.attempts)}>"
        )

    @property
    def request_id(self) -> str:
        """The request's id, as on its events."""
        return self._run.request_id

    @property
    def model(self) -> str:
        """The model asked for."""
        return self._run.model

    @property
    def provider(self) -> str | None:
        """Provider of the current or final attempt (None before the first)."""
        return self._run.provider

    @property
    def attempts(self) -> list[Attempt]:
        """Attempts so far, in order (the successful one included)."""
        return self._run.attempts

    @property
    def finish_reason(self) -> str | None:
        """Why the upstream stopped, when it said so."""
        return self._run.finish_reason

    @property
    def usage(self) -> Usage | None:
        """Token usage, when the upstream reported it."""
        return self._run.usage

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Tool calls assembled so far (complete once the stream ended)."""
        return self._run.tool_calls

    @property
    def reasoning(self) -> str | None:
        """Reasoning text delivered so far, or None."""
        return self._run.reasoning

    @property
    def refusal(self) -> str | None:
        """Refusal text delivered so far, or None."""
        return self._run.refusal

    @property
    def cost(self) -> float | None:
        """What the attempts so far cost per ``[prices]`` (None without a price)."""
        return self._run.cost

    @property
    def plan(self) -> RoutePlan:
        """The route plan this request follows."""
        return self._run.plan

    @property
    def cancel_token(self) -> CancelToken:
        """Aborts the network call from another thread (used by ``astream``)."""
        return self._run.cancel_token

    @property
    def text(self) -> str:
        """The text delivered so far."""
        return self._run.text

    def close(self) -> None:
        """Stop the stream and close the upstream connection (idempotent)."""
        gen = self._gen
        if gen is None:
            # Never started: make sure it never will, and give its admission back.
            gen = self._gen = self._run.execute(text_only=self._text_only)
            self._run.abandon()
        gen.close()

    def complete(self) -> Completion:
        """Read the stream to its end and return the whole :class:`Completion`."""
        for _ in self._start(self._text_only):
            pass
        return Completion.of(self._run)
