"""Switch provhub's JSON events on (to a file) and off inside one benchmark process.

"On" is what an application does: ``provhub.configure_logging(format="json")`` at
INFO, with the handler writing to a file instead of stderr. "Off" undoes it:
structlog back to its unconfigured defaults and the stdlib loggers back to their
initial levels, so provhub's emitter finds no sink, exactly as in a process that
never configured logging. Switching happens between timed blocks, never inside one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO

__all__ = ["Events"]

_HANDLER_NAME = "provhub.configure_logging"


class Events:
    """The process-wide event sink state, toggled by the workloads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._on = False
        self._root_level = logging.getLogger().level
        self._provhub_level = logging.getLogger("provhub").level

    def on(self) -> None:
        """JSON events at INFO, appended to ``path``."""
        if self._on:
            return
        import provhub

        provhub.configure_logging(format="json", level="INFO")
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        for handler in logging.getLogger().handlers:
            if handler.get_name() == _HANDLER_NAME and isinstance(handler, logging.StreamHandler):
                handler.setStream(self._file)
        self._on = True

    def off(self) -> None:
        """No sink: structlog unconfigured, the ``provhub`` logger at its initial level."""
        if not self._on:
            return
        import structlog

        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
            root.removeHandler(handler)
        root.setLevel(self._root_level)
        logging.getLogger("provhub").setLevel(self._provhub_level)
        self._on = False

    def lines(self) -> int:
        """How many event lines the file holds (proves events were really written)."""
        if self._file is not None:
            self._file.flush()
        if not self.path.exists():
            return 0
        with self.path.open(encoding="utf-8") as handle:
            return sum(1 for _ in handle)

    def close(self) -> None:
        """Switch off and close the file."""
        self.off()
        if self._file is not None:
            self._file.close()
            self._file = None
