"""``openai-compatible``: one provider instance per configured endpoint.

Serves OpenAI, OpenRouter, Ollama, a llama.cpp server, vLLM and anything else
speaking the chat-completions wire format. The API key is read from the
environment at call time and never stored on the instance or logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provhub import (
    AbstractProvider,
    Capability,
    CreateResult,
    FailureKind,
    JSONAnswerError,
    Messages,
    ProviderError,
    kind_of_error_code,
    parse_chat_completion,
    parse_chat_stream,
    provider_call,
)

__all__ = ["OpenAICompatible"]

_PASSTHROUGH_SKIP = frozenset({"model", "messages", "stream"})
_RICH = Capability.TOOLS | Capability.VISION | Capability.STRUCTURED_OUTPUT | Capability.REASONING


class OpenAICompatible(AbstractProvider):
    """A chat-completions endpoint at ``base_url`` serving ``models``.

    ``OpenAICompatible(name, base_url, models, api_key_env=None, headers=None,
    capabilities=Capability.NONE, model_capabilities=None)``; in config:
    ``[providers.NAME] type = "openai-compatible"`` with ``capabilities = ["tools",
    "vision"]`` for every model, or ``[providers.NAME.model_capabilities]`` per
    model. ``capabilities`` grants the rich capabilities (tools, vision,
    structured output, reasoning; other bits are ignored, the endpoint always
    streams and takes history and system messages); what the endpoint really
    supports is for the operator to say: provhub does not guess from model names.
    """

    supports_stream = True
    models_path = "/models"
    # All its I/O is stream_sse and fetch_json, whose waits it passes on.
    asyncio_native = True

    def __init__(
        self,
        name: str,
        base_url: str,
        models: Sequence[str],
        *,
        api_key_env: str | None = None,
        headers: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
        default_model: str | None = None,
        capabilities: Capability = Capability.NONE,
        model_capabilities: Mapping[str, Capability] | None = None,
        context_window: int | None = None,
        context_windows: Mapping[str, int] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not models:
            raise ValueError("models must list at least one model id the endpoint serves")
        self.name = name
        self.url = base_url.rstrip("/")
        self.models = tuple(models)
        self.model_aliases = dict(aliases or {})
        self.default_model = default_model or self.models[0]
        self.api_key_env = api_key_env
        self.needs_auth = api_key_env is not None
        self.headers = dict(headers or {})
        self.supports_tools = Capability.TOOLS in capabilities
        self.supports_vision = Capability.VISION in capabilities
        self.supports_structured_output = Capability.STRUCTURED_OUTPUT in capabilities
        self.supports_reasoning = Capability.REASONING in capabilities
        self.model_capabilities = dict(model_capabilities or {})
        windows = dict.fromkeys(self.models, context_window) if context_window else {}
        self.context_windows = {**windows, **(context_windows or {})}

    @classmethod
    def from_config(cls, name: str, table: dict[str, Any]) -> OpenAICompatible:
        """Build an instance from a ``[providers.NAME]`` table (``type = "openai-compatible"``)."""
        table = dict(table)
        url = table.pop("url", None)
        if not url:
            raise ValueError("base_url is required for type 'openai-compatible'")
        models = table.pop("models", None) or []
        instance = cls(
            name,
            url,
            models,
            api_key_env=table.pop("api_key_env", None),
            headers=table.pop("headers", None),
            aliases=table.pop("aliases", None),
            default_model=table.pop("default_model", None),
            capabilities=_capabilities(table.pop("capabilities", []), "capabilities"),
            model_capabilities={
                model: _capabilities(names, f"model_capabilities.{model}")
                for model, names in _mapping(
                    table.pop("model_capabilities", {}), "model_capabilities"
                ).items()
            },
            context_window=(
                None
                if (window := table.pop("context_window", None)) is None
                else _window(window, "context_window")
            ),
            context_windows={
                model: _window(size, f"context_windows.{model}")
                for model, size in _mapping(
                    table.pop("context_windows", {}), "context_windows", "token counts"
                ).items()
            },
        )
        if table:
            raise ValueError(f"unknown key {sorted(table)[0]!r} for type 'openai-compatible'")
        return instance

    def __repr__(self) -> str:
        return (
            f"OpenAICompatible(name={self.name!r}, base_url={self.url!r}, "
            f"models={list(self.models)!r})"
        )

    def create_completion(  # type: ignore[override]
        self, model: str, messages: Messages, stream: bool, **kwargs: Any
    ) -> CreateResult:
        """Yield the answer: text, tool-call fragments, reasoning, refusal, finish, usage."""
        payload: dict[str, Any] = {"model": model, "messages": list(messages), "stream": stream}
        payload.update((k, v) for k, v in kwargs.items() if k not in _PASSTHROUGH_SKIP)
        if stream:
            payload.setdefault("stream_options", {"include_usage": True})
        try:
            with provider_call() as call:
                headers = dict(self.headers)
                key = call.api_key(self.api_key_env)
                if key:
                    headers["authorization"] = f"Bearer {key}"
                url = call.base_url(self.url) + "/chat/completions"
                if stream:
                    events = call.stream_sse(url, payload, headers=headers, provider=self.name)
                    try:
                        yield from parse_chat_stream(events, self.name, markers=call.markers)
                    except JSONAnswerError as exc:
                        # A server that ignored "stream": true sent the whole completion
                        # (or a 200 {"error": ...}) as JSON: it is the answer, parsed as
                        # such. Raised before any event, so nothing was yielded yet.
                        yield from parse_chat_completion(
                            exc.answer, self.name, markers=call.markers
                        )
                    finally:
                        events.close()
                else:
                    answer = yield from call.fetch_json(
                        url, payload, headers=headers, provider=self.name
                    )
                    yield from parse_chat_completion(answer, self.name, markers=call.markers)
        except ProviderError as exc:
            _classify(exc)
            raise


# Kinds that say retrying the same request cannot help.
_FINAL_KINDS = frozenset({FailureKind.CONTEXT_LENGTH, FailureKind.CONTENT_POLICY, FailureKind.AUTH})


def _classify(error: ProviderError) -> None:
    """Set the failure kind from the upstream's error code/type, where it names one."""
    kind = kind_of_error_code(error.code, error.error_type)
    if kind is None:
        return
    error.kind = kind
    if kind in _FINAL_KINDS:
        error.retryable = False


def _mapping(value: Any, key: str, what: str = "capability names") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a table of model id -> {what}")
    return value


def _window(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive number of tokens, got {value!r}")
    return value


def _capabilities(names: Any, key: str) -> Capability:
    """``["tools", "vision"]`` from a config table as a Capability flag."""
    if isinstance(names, str) or not isinstance(names, list):
        raise ValueError(f'{key} must be a list of capability names, e.g. ["tools"]')
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"{key} must hold capability names (strings)")
    capabilities = Capability.parse(",".join(names))
    other = capabilities & ~_RICH
    if other:
        raise ValueError(
            f"{key} may only name {', '.join(_RICH.names())}, not {', '.join(other.names())} "
            "(an openai-compatible endpoint always streams and takes history and system "
            "messages)"
        )
    return capabilities
