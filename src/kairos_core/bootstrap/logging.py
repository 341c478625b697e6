"""structlog, configured once: JSON lines for machines, a coloured console for people."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from kairos_core.settings import LogFormat, LogLevel

_LEVEL_COLOURS = {"debug": "\x1b[2m", "info": "\x1b[32m", "warning": "\x1b[33m", "error": "\x1b[31m"}
_RESET = "\x1b[0m"


def choose_format(requested: LogFormat | None, stream: TextIO) -> LogFormat:
    """The requested format, else console on a terminal and JSON everywhere else."""
    if requested is not None:
        return requested
    return LogFormat.CONSOLE if stream.isatty() else LogFormat.JSON


def configure_logging(log_format: LogFormat | None, level: LogLevel, stream: TextIO | None = None) -> None:
    """structlog for our events, and the standard library's records (asyncio, alembic, aiohttp, the
    embedded server's manager) rendered by the same processors into the same stream."""
    out = stream if stream is not None else sys.stderr
    chosen = choose_format(log_format, out)
    renderer: Any = (
        structlog.processors.JSONRenderer() if chosen is LogFormat.JSON else ConsoleLine(colours=out.isatty())
    )
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="%Y-%m-%dT%H:%M:%S.%fZ", utc=True),
        _milliseconds,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)


def _milliseconds(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """ISO timestamps to the millisecond, as exchanges report them."""
    stamp = event.get("timestamp")
    if isinstance(stamp, str) and len(stamp) == 27:
        event["timestamp"] = stamp[:23] + "Z"
    return event


class ConsoleLine:
    """``2026-01-19T15:00:00.066Z INFO event key=value ...``; a price update reads like the seed's

    ``2026-01-19T15:00:00.066Z INFO 📊 ETHUSDT | $3098.07 | Vol: 0.0220``.
    """

    def __init__(self, *, colours: bool) -> None:
        self._colours = colours

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> str:
        event = dict(event)
        stamp = event.pop("timestamp", "")
        level = str(event.pop("level", "info"))
        name = str(event.pop("event", ""))
        exception = event.pop("exception", None)
        if name == "price.update" and {"symbol", "price", "volume"} <= event.keys():
            event.pop("exchange", None)
            event.pop("trade_id", None)
            message = f"📊 {event.pop('symbol')} | ${event.pop('price')} | Vol: {event.pop('volume')}"
        else:
            message = name
        fields = " ".join(f"{key}={value}" for key, value in event.items())
        shown_level = level.upper()
        if self._colours:
            shown_level = f"{_LEVEL_COLOURS.get(level, '')}{shown_level}{_RESET}"
        line = " ".join(part for part in (stamp, shown_level, message, fields) if part)
        return f"{line}\n{exception}" if exception else line
