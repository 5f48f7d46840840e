"""Cost from ``[prices]`` (SPEC §14): plain arithmetic over :class:`Usage` values.

Prices are per million tokens. A model is looked up as ``provider/model`` first
(the same model may cost differently at two providers), then as the model id
sent, then as the model the request named (an alias or a group name).
"""

from __future__ import annotations

from collections.abc import Mapping

from provhub._config import Price
from provhub._spec import Usage

__all__ = ["cost_of", "estimated_usage", "price_for"]

_PER = 1_000_000


def price_for(
    prices: Mapping[str, Price], provider: str, model: str, requested: str
) -> Price | None:
    """The price of ``model`` at ``provider``, or None when ``[prices]`` has none."""
    if not prices:
        return None
    return prices.get(f"{provider}/{model}") or prices.get(model) or prices.get(requested)


def cost_of(usage: Usage, price: Price) -> float | None:
    """What ``usage`` costs at ``price``; None when the usage has no token counts.

    Cached prompt tokens (``usage.cached_tokens``, part of ``prompt_tokens``)
    cost ``price.cached_input`` when set. Reasoning tokens are part of
    ``completion_tokens``, as upstreams report them.
    """
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    if prompt is None and completion is None:
        return None
    prompt = prompt or 0
    cached = min(usage.cached_tokens or 0, prompt)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    total = (
        (prompt - cached) * price.input + cached * cached_rate + (completion or 0) * price.output
    )
    # Rounded to a millionth of a cent: float noise would otherwise show in sums.
    return round(total / _PER, 8)


def estimated_usage(prompt_tokens: int, completion_chars: int) -> Usage:
    """A usage estimate for an answer whose upstream reported none.

    The prompt as estimated before the call, the answer at four characters a
    token (the same rate as :mod:`provhub._limits`).
    """
    completion = -(-completion_chars // 4)
    return Usage(prompt_tokens, completion, prompt_tokens + completion)
