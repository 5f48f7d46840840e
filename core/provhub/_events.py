"""Structured events (SPEC §7): emission, redaction and ``configure_logging``.

The library only *emits*. When the host has configured structlog, events go
through the host's structlog pipeline under the logger name ``provhub``. When it
has not, they go to the standard-library logger ``provhub`` (which carries a
``NullHandler``, the stdlib convention for libraries), so nothing is printed
unless the host's logging asks for it. Nothing here configures anything on import.

structlog is looked up in ``sys.modules`` instead of imported: a host that never
imported structlog cannot have configured it or bound context with it, and such
hosts then do not pay its import time (about 60 ms, half of requests').
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from provhub._redact import REDACTED, redact, redact_into

__all__ = ["REDACTED", "EventEmitter", "Subscriber", "configure_logging", "redact"]

LOGGER_NAME = "provhub"
_stdlib_logger = logging.getLogger(LOGGER_NAME)
# The one stdlib convention for libraries: a NullHandler on our own logger, so
# Python's "last resort" handler never prints our warnings unasked.
_stdlib_logger.addHandler(logging.NullHandler())

Subscriber = Callable[[Mapping[str, Any]], None]
"""An in-process event callback: receives each event as a read-only dict."""

DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR
_LEVEL_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error"}


def _structlog() -> Any:
    """The structlog module if the host imported it, else None."""
    return sys.modules.get("structlog")


def _host_context() -> dict[str, Any]:
    contextvars = sys.modules.get("structlog.contextvars")
    return contextvars.get_contextvars() if contextvars is not None else {}


def _configured_structlog() -> Any:
    structlog = _structlog()
    return structlog if structlog is not None and structlog.is_configured() else None


class EventEmitter:
    """Emits provhub events to structlog/stdlib logging and to subscribers.

    Owned by one :class:`~provhub.Hub`; thread-safe.
    """

    __slots__ = ("_lock", "_log_content", "_logger", "_subscribers")

    def __init__(self, *, log_content: bool = False) -> None:
        self._log_content = log_content
        self._subscribers: tuple[Subscriber, ...] = ()
        self._lock = threading.Lock()
        # One structlog proxy per emitter: with the host's
        # ``cache_logger_on_first_use`` it binds once instead of on every event.
        self._logger: Any = None

    @property
    def log_content(self) -> bool:
        """Whether message content may appear in events (host opt-in)."""
        return self._log_content

    def _structlog_logger(self, structlog: Any) -> Any:
        logger = self._logger
        if logger is None:
            logger = self._logger = structlog.get_logger(LOGGER_NAME)
        return logger

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Add ``callback``; returns a function that removes it again."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    def enabled_for(self, level: int) -> bool:
        """Whether an event at ``level`` would reach any sink (checked once per stream)."""
        if self._subscribers and level >= INFO:
            return True
        structlog = _configured_structlog()
        if structlog is not None:
            check = getattr(self._structlog_logger(structlog).bind(), "is_enabled_for", None)
            return bool(check(level)) if check is not None else True
        return _stdlib_logger.isEnabledFor(level)

    @staticmethod
    def _deliver(subscribers: tuple[Subscriber, ...], record: dict[str, Any]) -> None:
        for callback in subscribers:
            try:
                callback(record)
            except Exception:  # a host callback must not break a request
                _stdlib_logger.exception("provhub subscriber %r raised", callback)

    def emit(self, level: int, event: str, fields: Mapping[str, Any]) -> None:
        """Emit ``event`` with ``fields`` (redacted) at ``level``.

        A subscriber that raises is isolated: its error never reaches the
        request that emitted the event.
        """
        subscribers = self._subscribers
        structlog = _configured_structlog()
        if structlog is None and not _stdlib_logger.isEnabledFor(level):
            # No logger takes it. The common cases are logging off altogether, and
            # the DEBUG steps of a request under INFO logging.
            if subscribers:
                # Subscribers only (an OpenTelemetry bridge, a metrics sink): the
                # record is built in one redacting pass, with no second copy.
                head = {**_host_context(), "event": event, "level": _LEVEL_NAMES[level]}
                self._deliver(subscribers, redact_into(head, fields, log_content=self._log_content))
            return
        if not subscribers and level < INFO and not self.enabled_for(level):
            return
        data = redact(fields, log_content=self._log_content)
        if subscribers:
            self._deliver(
                subscribers,
                {**_host_context(), "event": event, "level": _LEVEL_NAMES[level], **data},
            )
        if structlog is not None:
            self._structlog_logger(structlog).log(level, event, **data)
        elif _stdlib_logger.isEnabledFor(level):
            context = _host_context()
            merged = {**context, **data} if context else data
            text = " ".join(f"{k}={v!r}" for k, v in merged.items())
            _stdlib_logger.log(
                level,
                "%s %s",
                event,
                text,
                extra={"provhub_event": event, "provhub_fields": merged},
            )


_HANDLER_NAME = "provhub.configure_logging"


def configure_logging(format: str = "console", level: int | str = "INFO") -> None:
    """Configure structlog and stdlib logging for an application or the CLI.

    Renders provhub's events (and the host's own structlog events) as ``console``
    text or ``json`` lines on stderr through the standard ``logging`` module, so
    other handlers a host installs receive them too. Never called by the library
    itself; calling it twice replaces the previous handler.

    Raises ``ValueError`` for an unknown format or level.
    """
    import structlog
    import structlog.contextvars
    import structlog.processors as processors
    import structlog.stdlib as stdlib

    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r} (use debug, info, warning, error)")
        level = numeric
    renderer: Any
    if format == "json":
        renderer = processors.JSONRenderer()
    elif format == "console":
        import structlog.dev as dev

        renderer = dev.ConsoleRenderer(colors=False)
    else:
        raise ValueError(f"unknown log format {format!r} (use 'console' or 'json')")

    # Events are rendered at the end of structlog's chain and handed to stdlib
    # logging as finished lines: one LogRecord and a plain formatter, about 10 us
    # an event cheaper than re-processing every record in a ProcessorFormatter.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            processors.add_log_level,
            processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        logger_factory=stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(root.level or level, level))
    _stdlib_logger.setLevel(level)
