"""Logging setup: JSON lines for machines, one readable console line per event for people."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from kairos_core.bootstrap.logging import ConsoleLine, choose_format, configure_logging
from kairos_core.settings import LogFormat, LogLevel

ISO_MS_UTC = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z"


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# --- choose_format ------------------------------------------------------------------------------


def test_choose_format_picks_console_for_a_terminal() -> None:
    assert choose_format(None, FakeTerminal()) is LogFormat.CONSOLE


def test_choose_format_picks_json_for_anything_else() -> None:
    assert choose_format(None, io.StringIO()) is LogFormat.JSON


@pytest.mark.parametrize("requested", list(LogFormat))
@pytest.mark.parametrize("stream_type", [FakeTerminal, io.StringIO])
def test_choose_format_keeps_a_requested_format(requested: LogFormat, stream_type: type[io.StringIO]) -> None:
    assert choose_format(requested, stream_type()) is requested


# --- JSON ---------------------------------------------------------------------------------------


def test_json_line_has_utc_millisecond_timestamp_level_event_and_fields() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream=stream)
    before = datetime.now(UTC)

    structlog.get_logger().info("tick.received", symbol="BTCUSDT")

    after = datetime.now(UTC)
    (line,) = lines_of(stream)
    record = json.loads(line)
    assert record.keys() == {"timestamp", "level", "event", "symbol"}
    assert record["event"] == "tick.received"
    assert record["level"] == "info"
    assert record["symbol"] == "BTCUSDT"
    assert re.fullmatch(ISO_MS_UTC, record["timestamp"]), record["timestamp"]
    stamp = datetime.fromisoformat(record["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    # truncated to the millisecond, so it may read up to 1 ms before ``before``
    assert before - timedelta(milliseconds=1) <= stamp <= after


def test_no_colour_codes_in_json_even_on_a_terminal() -> None:
    stream = FakeTerminal()
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream=stream)

    structlog.get_logger().warning("feed.reconnecting", delay=0.5)

    (line,) = lines_of(stream)
    assert "\x1b[" not in line
    assert json.loads(line)["level"] == "warning"


def test_format_chosen_from_the_stream_when_not_requested() -> None:
    stream = io.StringIO()
    configure_logging(None, LogLevel.INFO, stream=stream)

    structlog.get_logger().info("tick.received", symbol="BTCUSDT")

    (line,) = lines_of(stream)
    assert json.loads(line)["event"] == "tick.received"


def test_debug_is_filtered_at_info() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream=stream)
    log = structlog.get_logger()

    log.debug("feed.reply", request_id=1)
    log.info("feed.connected")

    assert [json.loads(line)["event"] for line in lines_of(stream)] == ["feed.connected"]


def test_debug_is_shown_at_debug() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.DEBUG, stream=stream)

    structlog.get_logger().debug("feed.reply", request_id=1)

    assert json.loads(stream.getvalue())["level"] == "debug"


def test_warning_level_filters_info() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.WARNING, stream=stream)
    log = structlog.get_logger()

    log.info("feed.connected")
    log.warning("consumer.lagged", missed=3)
    log.error("feed.failed")

    assert [json.loads(line)["level"] for line in lines_of(stream)] == ["warning", "error"]


def test_exception_is_rendered_into_the_json_line() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream=stream)

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("feed.crashed")

    record = json.loads(stream.getvalue())
    assert record["level"] == "error"
    assert "RuntimeError: boom" in record["exception"]


# --- console ------------------------------------------------------------------------------------


def test_console_renders_a_price_update_like_the_seed() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.CONSOLE, LogLevel.INFO, stream=stream)

    structlog.get_logger().info(
        "price.update", exchange="binance", symbol="ETHUSDT", price="3098.07", volume="0.0220"
    )

    (line,) = lines_of(stream)
    assert re.fullmatch(ISO_MS_UTC + r" INFO 📊 ETHUSDT \| \$3098\.07 \| Vol: 0\.0220", line), line


def test_console_renders_other_events_as_key_values() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.CONSOLE, LogLevel.INFO, stream=stream)

    structlog.get_logger().warning("feed.reconnecting", exchange="binance", delay=0.5)

    (line,) = lines_of(stream)
    assert re.fullmatch(ISO_MS_UTC + r" WARNING feed\.reconnecting exchange=binance delay=0\.5", line), line


def test_console_price_update_without_volume_is_an_ordinary_event() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.CONSOLE, LogLevel.INFO, stream=stream)

    structlog.get_logger().info("price.update", symbol="ETHUSDT", price="3098.07")

    (line,) = lines_of(stream)
    assert re.fullmatch(ISO_MS_UTC + r" INFO price\.update symbol=ETHUSDT price=3098\.07", line), line


def test_console_colours_the_level_on_a_terminal() -> None:
    stream = FakeTerminal()
    configure_logging(LogFormat.CONSOLE, LogLevel.INFO, stream=stream)

    structlog.get_logger().error("feed.failed", exchange="binance")

    (line,) = lines_of(stream)
    assert re.fullmatch(ISO_MS_UTC + r" \x1b\[31mERROR\x1b\[0m feed\.failed exchange=binance", line), line


def test_console_is_chosen_for_a_terminal_when_not_requested() -> None:
    stream = FakeTerminal()
    configure_logging(None, LogLevel.INFO, stream=stream)

    structlog.get_logger().info("service.started")

    (line,) = lines_of(stream)
    assert re.fullmatch(ISO_MS_UTC + r" \x1b\[32mINFO\x1b\[0m service\.started", line), line


def test_console_line_appends_the_exception_below() -> None:
    render = ConsoleLine(colours=False)

    text = render(
        None,
        "error",
        {"timestamp": "2026-01-19T15:00:00.066Z", "level": "error", "event": "x", "exception": "Trace"},
    )

    assert text == "2026-01-19T15:00:00.066Z ERROR x\nTrace"


def test_standard_library_records_come_out_as_the_same_json_lines() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream)
    logging.getLogger("alembic.runtime.migration").info("Running upgrade %s -> %s", "base", "0001")
    logging.getLogger("some.library").debug("not shown at info")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "Running upgrade base -> 0001"
    assert lines[0]["logger"] == "alembic.runtime.migration"
    assert lines[0]["level"] == "info"
    assert lines[0]["timestamp"].endswith("Z")
