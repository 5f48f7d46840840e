"""Test utilities for provhub and for authors of provider plugins.

``FakeUpstream`` is a real OpenAI-compatible HTTP server on loopback whose answers and failures
are scripted with ``Behaviour`` and ``Fault`` values; see ``provhub.testing.upstream``.
"""

from __future__ import annotations

from provhub.testing.upstream import (
    Behaviour,
    FakeUpstream,
    Fault,
    RecordedRequest,
    unused_port_url,
)

__all__ = [
    "Behaviour",
    "FakeUpstream",
    "Fault",
    "RecordedRequest",
    "unused_port_url",
]
