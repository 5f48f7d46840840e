"""``--profile``: pyinstrument profiles of the hub's hot paths, written next to the results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from provhub import Config, Hub
from provhub_providers import OpenAICompatible

from .baseline import MESSAGES, RawClient
from .events import Events
from .server import Upstreams

__all__ = ["profile_all"]


def _profile(name: str, work: Callable[[], None], out: Path) -> str:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002)
    profiler.start()
    work()
    profiler.stop()
    path = out / f"profile-{name}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False), encoding="utf-8")
    return str(path)


def profile_all(upstreams: Upstreams, events: Events, out: Path) -> dict[str, Any]:
    """Profile hub streams, hub.complete (events off and on) and the raw loops."""
    out.mkdir(parents=True, exist_ok=True)
    stream_hub = Hub(Config(), load_plugins=False)
    stream_hub.register(OpenAICompatible("bench", upstreams.stream_url, ["gpt-4"]))
    short_hub = Hub(Config(), load_plugins=False)
    short_hub.register(OpenAICompatible("bench", upstreams.short_url, ["gpt-4"]))
    raw_stream = RawClient(upstreams.stream_url)
    raw_short = RawClient(upstreams.short_url)

    def streams() -> None:
        for _ in range(5):
            for _token in stream_hub.stream("gpt-4", MESSAGES):
                pass

    def raw_streams() -> None:
        for _ in range(5):
            for _token in raw_stream.stream("gpt-4", MESSAGES):
                pass

    def completes() -> None:
        for _ in range(1000):
            short_hub.complete("gpt-4", MESSAGES)

    def raw_completes() -> None:
        for _ in range(1000):
            raw_short.complete("gpt-4", MESSAGES)

    streams()  # warm-up
    completes()
    paths = {"hub_stream": _profile("hub-stream", streams, out)}
    paths["raw_stream"] = _profile("raw-stream", raw_streams, out)
    paths["hub_complete_events_off"] = _profile("hub-complete-events-off", completes, out)
    events.on()
    paths["hub_complete_events_on"] = _profile("hub-complete-events-on", completes, out)
    events.off()
    paths["raw_complete"] = _profile("raw-complete", raw_completes, out)
    for closable in (stream_hub, short_hub, raw_stream, raw_short):
        closable.close()
    return paths
