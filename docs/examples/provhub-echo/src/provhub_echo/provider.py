"""Echo Chat: an OpenAI-style streaming chat API, as a provhub provider."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provhub import AbstractProvider, CreateResult, Messages, parse_chat_stream, provider_call

# Options the Echo Chat API understands; anything else a caller passes is ignored.
PARAMETERS = (
    "temperature",
    "max_tokens",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_effort",
)


class Echo(AbstractProvider):
    """Echo Chat's streaming chat-completions endpoint.

    The base URL comes from ``url`` in ``[providers.Echo]``, else
    ``$PROVHUB_ECHO_URL``, else ``Echo.url``; an API key, when the variable named
    by ``api_key_env`` (default ``ECHO_API_KEY``) is set, is sent as a bearer token.
    """

    url = "https://api.echo-chat.example"
    supports_stream = True
    supports_system_message = True
    supports_message_history = True
    # Echo Chat takes OpenAI-style tools and streams reasoning: the hub routes
    # requests with `tools` or `reasoning_effort` here, and nowhere that lacks them.
    supports_tools = True
    supports_reasoning = True
    models: Sequence[str] = ("echo-1", "echo-1-mini")
    model_aliases: Mapping[str, str] = {"echo": "echo-1"}
    default_model = "echo-1"

    @staticmethod
    def create_completion(
        model: str, messages: Messages, stream: bool, **kwargs: Any
    ) -> CreateResult:
        """Yield the answer's tokens as they arrive (the endpoint always streams).

        Raises ``requests.HTTPError`` (a :class:`provhub.ProviderError` too) on an
        HTTP error status and :class:`provhub.ProviderError` on other failures.
        """
        payload: dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
        payload.update((k, v) for k, v in kwargs.items() if k in PARAMETERS)
        # Everything before the first `yield` runs when the hub starts the call;
        # provider_call() hands us its pooled connections, timeouts and settings.
        with provider_call() as call:
            url = call.base_url(Echo.url, "PROVHUB_ECHO_URL") + "/v1/chat/completions"
            headers = {"user-agent": "provhub-echo/0.1.0"}
            key = call.api_key("ECHO_API_KEY")
            if key:
                headers["authorization"] = f"Bearer {key}"
            events = call.stream_sse(url, payload, headers=headers, provider="Echo")
            try:
                # markers: tool-call fragments, reasoning, FinishReason and Usage for a
                # hub (which assembles the calls); plain callers want str only.
                yield from parse_chat_stream(events, "Echo", markers=call.markers)
            finally:
                events.close()  # stopping early must close the connection at once
