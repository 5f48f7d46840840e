"""The OpenTelemetry GenAI semantic-convention names provhub emits, in one place.

Followed: the GenAI conventions of OpenTelemetry semantic conventions **v1.41.0**,
the last release before they moved to the ``semantic-conventions-genai``
repository (whose v0.1.0 renames the inference span and metrics; the
conventions' own transition rule is that an instrumentation keeps the version it
emits until the host opts in). Status: development. Names outside the
conventions carry the ``provhub.`` prefix.
"""

from __future__ import annotations

__all__ = [
    "DURATION_BUCKETS",
    "SCHEMA_URL",
    "TOKEN_BUCKETS",
    "provider_name",
]

SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"
SEMCONV_VERSION = "1.41.0"

OPERATION = "chat"

# Attributes (registry names).
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_STREAM = "gen_ai.request.stream"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TTFC = "gen_ai.response.time_to_first_chunk"
USAGE_INPUT = "gen_ai.usage.input_tokens"
USAGE_OUTPUT = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
USAGE_REASONING = "gen_ai.usage.reasoning.output_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"
TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"
HTTP_STATUS = "http.response.status_code"

# Metrics.
METRIC_DURATION = "gen_ai.client.operation.duration"
METRIC_TTFC = "gen_ai.client.operation.time_to_first_chunk"
METRIC_TOKENS = "gen_ai.client.token.usage"

# The bucket boundaries the conventions specify (seconds; tokens).
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TOKEN_BUCKETS = tuple(float(4**n) for n in range(14))  # 1, 4, 16 ... 67108864

# ``gen_ai.provider.name`` well-known values: "if one applies, it MUST be used".
_WELL_KNOWN_PROVIDERS = frozenset(
    {
        "anthropic",
        "aws.bedrock",
        "azure.ai.inference",
        "azure.ai.openai",
        "cohere",
        "deepseek",
        "gcp.gemini",
        "gcp.gen_ai",
        "gcp.vertex_ai",
        "groq",
        "ibm.watsonx.ai",
        "mistral_ai",
        "openai",
        "perplexity",
        "x_ai",
    }
)


def provider_name(name: str) -> str:
    """``gen_ai.provider.name`` for a provhub provider: the well-known value its name
    spells (case-insensitively, ``OpenAI`` -> ``openai``), else the name as registered."""
    lowered = name.lower()
    return lowered if lowered in _WELL_KNOWN_PROVIDERS else name
