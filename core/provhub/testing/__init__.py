"""Test utilities for provhub and for authors of provider plugins.

``FakeUpstream`` is a real OpenAI-compatible HTTP server on loopback whose answers and failures
are scripted with ``Behaviour`` and ``Fault`` values (tool calls framed by ``ToolCallQuirk``
flags); see ``provhub.testing.upstream``.
"""

from __future__ import annotations

from provhub.testing.upstream import (
    Behaviour,
    FakeUpstream,
    Fault,
    RecordedRequest,
    ToolCallQuirk,
    unused_port_url,
)

__all__ = [
    "Behaviour",
    "FakeUpstream",
    "Fault",
    "RecordedRequest",
    "ToolCallQuirk",
    "unused_port_url",
]
