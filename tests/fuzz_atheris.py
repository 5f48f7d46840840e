"""Coverage-guided fuzzing (atheris/libFuzzer) of the SSE decoder, chunk parser and validation.

Not collected by pytest and not run in CI: it runs until stopped or until a libFuzzer limit.
atheris is not a dev dependency (it ships binary wheels for a few CPython versions only)::

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz_atheris.py --target=sse -max_total_time=300 /tmp/sse-corpus
    .venv/bin/python tests/fuzz_atheris.py --target=messages -max_total_time=300

``--target=sse`` (default): bytes split into arbitrary reads go through ``SSEDecoder`` and must
give exactly the events of the WHATWG reference algorithm in tests/test_fuzz.py, or both must
refuse an over-long line; the events then go through ``parse_chat_stream``, which may raise
only ``ProviderError``. ``--target=messages``: a message list built from the input (JSON types and
others: bytes, tuples, NaN, lone surrogates, int keys) must be refused with
``InvalidRequestError`` or be encodable exactly as the transport encodes it.
Any other exception is a finding: libFuzzer stops and writes the input to ``crash-*``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports():
    from provhub import InvalidRequestError, ProviderError, parse_chat_stream
    from provhub._request import validate_messages
    from provhub._sse import SSEDecodeError, SSEDecoder

# The oracle lives with the tests, so both fuzzers check the same thing.
from test_fuzz import reference_events


def _decode(body: bytes, cuts: list[int], max_line: int) -> list[bytes] | None:
    decoder = SSEDecoder(max_line)
    events: list[bytes] = []
    previous = 0
    try:
        for cut in sorted({min(c, len(body)) for c in cuts}):
            events.extend(decoder.feed(body[previous:cut]))
            previous = cut
        events.extend(decoder.feed(body[previous:]))
        events.extend(decoder.close())
    except SSEDecodeError:
        return None
    return events


def fuzz_sse(data: bytes) -> None:
    """One input: decoder vs reference, then the chunk parser over the events."""
    fdp = atheris.FuzzedDataProvider(data)
    max_line = fdp.ConsumeIntInRange(1, 512)
    cuts = [fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    got = _decode(body, cuts, max_line)
    try:
        expected: list[bytes] | None = reference_events(body, max_line)
    except SSEDecodeError:
        expected = None
    if got != expected:
        raise AssertionError(f"decoder {got!r} != reference {expected!r}")
    if got:
        try:
            for _ in parse_chat_stream(iter(got), "fuzzed"):
                pass
        except ProviderError:
            pass


_ROLES = ("system", "user", "assistant", "tool", "bot", "")


def _value(fdp: atheris.FuzzedDataProvider, depth: int) -> Any:
    """An arbitrary Python value: JSON types, and some that JSON cannot carry."""
    kind = fdp.ConsumeIntInRange(0, 10 if depth < 40 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(9)
    if kind == 3:
        return fdp.ConsumeFloat()  # NaN and infinities included
    if kind == 4:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 16))  # surrogates included
    if kind == 5:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4))
    size = fdp.ConsumeIntInRange(0, 3)
    if kind == 6:
        return [_value(fdp, depth + 1) for _ in range(size)]
    if kind == 7:
        return tuple(_value(fdp, depth + 1) for _ in range(size))
    if kind == 8:
        return {fdp.ConsumeUnicode(4): _value(fdp, depth + 1) for _ in range(size)}
    if kind == 9:
        return {fdp.ConsumeInt(1): _value(fdp, depth + 1) for _ in range(size)}
    return {"type": fdp.ConsumeUnicode(5), "text": _value(fdp, depth + 1)}


def _message(fdp: atheris.FuzzedDataProvider) -> Any:
    if fdp.ConsumeIntInRange(0, 7) == 0:
        return _value(fdp, 0)
    message: dict[Any, Any] = {"role": _ROLES[fdp.ConsumeIntInRange(0, len(_ROLES) - 1)]}
    if fdp.ConsumeBool():
        message["content"] = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 32))
    else:
        message["content"] = _value(fdp, 0)
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        message[fdp.ConsumeUnicode(4)] = _value(fdp, 0)
    return message


def fuzz_messages(data: bytes) -> None:
    """One input: a built message list; refused cleanly or sendable as the transport sends."""
    fdp = atheris.FuzzedDataProvider(data)
    messages = [_message(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    try:
        checked = validate_messages(messages)
    except InvalidRequestError:
        return
    payload = {"model": "gpt-4", "messages": checked, "stream": True}
    json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


TARGETS: dict[str, Callable[[bytes], None]] = {"sse": fuzz_sse, "messages": fuzz_messages}


def main() -> None:
    """Pick the target from ``--target=NAME``; every other argument goes to libFuzzer."""
    target = "sse"
    argv = [sys.argv[0]]
    for arg in sys.argv[1:]:
        if arg.startswith("--target="):
            target = arg.split("=", 1)[1]
        else:
            argv.append(arg)
    if target not in TARGETS:
        sys.exit(f"unknown --target {target!r} (use {', '.join(TARGETS)})")
    atheris.Setup(argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
