"""provhub: one interface to many LLM chat-completion providers.

The public API lives here. Heavy modules (requests, structlog, pluggy) are
imported on first use of the name that needs them, so ``import provhub`` stays
cheap for processes that only define providers or read the spec.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from provhub._spec import (
    GPT_4,
    GPT_35_TURBO,
    AbstractProvider,
    Capability,
    CreateResult,
    FinishReason,
    Messages,
    ProviderInfo,
    Reasoning,
    Refusal,
    StreamItem,
    ToolCallDelta,
    Usage,
)

if TYPE_CHECKING:
    from provhub._aio import AsyncStream
    from provhub._attempt import Attempt
    from provhub._cancel import CancelToken
    from provhub._config import (
        Config,
        ConfigOrigin,
        ConfigSource,
        GroupConfig,
        GroupMember,
        Limits,
        Price,
        ProviderConfig,
        RouterConfig,
        ServerConfig,
        StateBackend,
        StateConfig,
        Strategy,
        TelemetryConfig,
        Timeouts,
        load_config,
    )
    from provhub._context import CallContext, provider_call
    from provhub._errors import (
        AllProvidersFailedError,
        ConfigError,
        FailureKind,
        InvalidRequestError,
        JSONAnswerError,
        ModelNotFoundError,
        NoProviderError,
        PluginLoadError,
        ProvhubError,
        ProviderError,
        ProviderSpecError,
        RateLimitedError,
        RequestTooLargeError,
        StreamInterruptedError,
        UpstreamConnectionError,
        UpstreamHTTPError,
        UpstreamProtocolError,
        UpstreamTimeoutError,
    )
    from provhub._events import configure_logging
    from provhub._facade import ChatCompletion
    from provhub._hub import Hub
    from provhub._openai import kind_of_error_code, parse_chat_completion, parse_chat_stream
    from provhub._plugins import PluginRecord, PluginStatus, Registrar, hookimpl, hookspec
    from provhub._router import Candidate, RoutePlan
    from provhub._state import MemoryStateStore, StateStore
    from provhub._state_redis import RedisStateStore
    from provhub._stream import Completion, Stream
    from provhub._toolcalls import ToolCall
    from provhub._transport import Transport

__version__ = "0.1.0"

_LAZY = {
    "AsyncStream": "provhub._aio",
    "Attempt": "provhub._attempt",
    "CancelToken": "provhub._cancel",
    "Config": "provhub._config",
    "GroupConfig": "provhub._config",
    "GroupMember": "provhub._config",
    "ConfigOrigin": "provhub._config",
    "ConfigSource": "provhub._config",
    "Limits": "provhub._config",
    "Price": "provhub._config",
    "StateBackend": "provhub._config",
    "StateConfig": "provhub._config",
    "ProviderConfig": "provhub._config",
    "RouterConfig": "provhub._config",
    "ServerConfig": "provhub._config",
    "Strategy": "provhub._config",
    "TelemetryConfig": "provhub._config",
    "Timeouts": "provhub._config",
    "load_config": "provhub._config",
    "CallContext": "provhub._context",
    "provider_call": "provhub._context",
    "configure_logging": "provhub._events",
    "ChatCompletion": "provhub._facade",
    "Hub": "provhub._hub",
    "kind_of_error_code": "provhub._openai",
    "parse_chat_completion": "provhub._openai",
    "parse_chat_stream": "provhub._openai",
    "PluginRecord": "provhub._plugins",
    "PluginStatus": "provhub._plugins",
    "Registrar": "provhub._plugins",
    "hookimpl": "provhub._plugins",
    "hookspec": "provhub._plugins",
    "Candidate": "provhub._router",
    "RoutePlan": "provhub._router",
    "MemoryStateStore": "provhub._state",
    "StateStore": "provhub._state",
    "RedisStateStore": "provhub._state_redis",
    "Completion": "provhub._stream",
    "Stream": "provhub._stream",
    "ToolCall": "provhub._toolcalls",
    "Transport": "provhub._transport",
    "AllProvidersFailedError": "provhub._errors",
    "ConfigError": "provhub._errors",
    "FailureKind": "provhub._errors",
    "InvalidRequestError": "provhub._errors",
    "JSONAnswerError": "provhub._errors",
    "ModelNotFoundError": "provhub._errors",
    "NoProviderError": "provhub._errors",
    "PluginLoadError": "provhub._errors",
    "ProvhubError": "provhub._errors",
    "ProviderError": "provhub._errors",
    "ProviderSpecError": "provhub._errors",
    "RateLimitedError": "provhub._errors",
    "RequestTooLargeError": "provhub._errors",
    "StreamInterruptedError": "provhub._errors",
    "UpstreamConnectionError": "provhub._errors",
    "UpstreamHTTPError": "provhub._errors",
    "UpstreamProtocolError": "provhub._errors",
    "UpstreamTimeoutError": "provhub._errors",
}


def __getattr__(name: str) -> Any:
    # PEP 562: import the module behind a public name on first access.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'provhub' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "GPT_4",
    "GPT_35_TURBO",
    "AbstractProvider",
    "AllProvidersFailedError",
    "AsyncStream",
    "Attempt",
    "CallContext",
    "CancelToken",
    "Candidate",
    "Capability",
    "ChatCompletion",
    "Completion",
    "Config",
    "ConfigError",
    "ConfigOrigin",
    "ConfigSource",
    "CreateResult",
    "FailureKind",
    "FinishReason",
    "GroupConfig",
    "GroupMember",
    "Hub",
    "InvalidRequestError",
    "JSONAnswerError",
    "Limits",
    "MemoryStateStore",
    "Messages",
    "ModelNotFoundError",
    "NoProviderError",
    "PluginLoadError",
    "PluginRecord",
    "PluginStatus",
    "Price",
    "ProvhubError",
    "ProviderConfig",
    "ProviderError",
    "ProviderInfo",
    "ProviderSpecError",
    "RateLimitedError",
    "Reasoning",
    "RedisStateStore",
    "Refusal",
    "Registrar",
    "RequestTooLargeError",
    "RoutePlan",
    "RouterConfig",
    "ServerConfig",
    "StateBackend",
    "StateConfig",
    "StateStore",
    "Strategy",
    "Stream",
    "StreamInterruptedError",
    "StreamItem",
    "TelemetryConfig",
    "Timeouts",
    "ToolCall",
    "ToolCallDelta",
    "Transport",
    "UpstreamConnectionError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamTimeoutError",
    "Usage",
    "__version__",
    "configure_logging",
    "hookimpl",
    "hookspec",
    "kind_of_error_code",
    "load_config",
    "parse_chat_completion",
    "parse_chat_stream",
    "provider_call",
]
