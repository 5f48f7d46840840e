"""Lockchat: the reference provider, faithful to the seed (SPEC §10).

Fixes the seed's defects: the "model does not exist" retry really re-sends the
request (bounded, its tokens reach the caller once), ``temperature`` is no
longer passed twice, and no call is made without a timeout.
"""

from __future__ import annotations

from typing import Any

from provhub import (
    AbstractProvider,
    CreateResult,
    Messages,
    ProviderError,
    parse_chat_stream,
    provider_call,
)

__all__ = ["Lockchat"]

USER_AGENT = "ChatX/39 CFNetwork/1408.0.4 Darwin/22.5.0"
URL_ENV = "PROVHUB_LOCKCHAT_URL"
# The upstream's known quirk: it sometimes answers a valid gpt-4 request with
# this line; re-sending the same request succeeds.
MODEL_MISSING = b"The model: `gpt-4` does not exist"
MODEL_MISSING_RETRIES = 3


class Lockchat(AbstractProvider):
    """Lockchat's OpenAI-style streaming endpoint."""

    url = "http://supertest.lockchat.app"
    url_env = URL_ENV
    models_path = "/v1/models"
    supports_stream = True
    supports_gpt_35_turbo = True
    # All its I/O is stream_sse, and parse_chat_stream passes suspensions on.
    asyncio_native = True
    supports_gpt_4 = True

    @staticmethod
    def create_completion(
        model: str, messages: Messages, stream: bool, **kwargs: Any
    ) -> CreateResult:
        """Stream the answer's tokens (the endpoint always streams).

        Raises ``requests.HTTPError`` (a :class:`provhub.UpstreamHTTPError`) on an
        HTTP error status, and :class:`provhub.ProviderError` when the upstream
        keeps claiming the model does not exist.
        """
        temperature = float(kwargs.get("temperature", 0.7))
        payload = {
            "temperature": temperature,
            "messages": list(messages),
            "model": model,
            "stream": True,
        }
        headers = {"user-agent": USER_AGENT}
        with provider_call() as call:
            url = call.base_url(Lockchat.url, Lockchat.url_env) + "/v1/chat/completions"
            for _ in range(MODEL_MISSING_RETRIES + 1):
                events = call.stream_sse(url, payload, headers=headers, provider="Lockchat")
                try:
                    first = next(events, None)
                    while first is not None and not isinstance(first, bytes):
                        yield first  # the event loop's wait, passed on
                        first = next(events, None)
                    if first is not None and MODEL_MISSING in first:
                        continue  # re-send; nothing of this answer reached the caller
                    if first is not None:
                        yield from parse_chat_stream(
                            _chain(first, events), "Lockchat", markers=call.markers
                        )
                    return
                finally:
                    events.close()
        raise ProviderError(
            f"upstream kept answering that model {model!r} does not exist "
            f"after {MODEL_MISSING_RETRIES} retries",
            provider="Lockchat",
            retryable=False,
        )


def _chain(first: bytes, rest: Any) -> Any:
    yield first
    yield from rest
