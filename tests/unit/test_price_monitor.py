"""The price monitor's periodic summary, its restart and its indifference to backfilled ticks.

Its per-tick line and throttling are pinned in test_service.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from kairos_core.application.consumers.price_monitor import PriceMonitor
from kairos_core.domain import Exchange, MarketTick, TickSource
from tests.trading import priced, read_to_end


def trade(price: int | str, symbol: str = "BTCUSDT", source: TickSource = TickSource.LIVE) -> MarketTick:
    return priced(price, 0, symbol, source=source)


def readings(*times: float) -> Callable[[], float]:
    """A clock that reads ``times`` in turn: the first when the monitor is made, then one a tick."""
    remaining = list(times)
    return lambda: remaining.pop(0)


def summaries(logs: Sequence[MutableMapping[str, Any]]) -> list[tuple[str, str, str, str, int, float | None]]:
    return [
        (entry["symbol"], entry["last"], entry["high"], entry["low"], entry["ticks"], entry["ticks_per_s"])
        for entry in logs
        if entry["event"] == "price.summary"
    ]


async def test_a_summary_per_symbol_is_logged_once_the_period_is_over() -> None:
    monitor = PriceMonitor(interval=3600, summary_interval=10, clock=readings(0, 1, 2, 3, 4, 11))
    ticks = [trade(100), trade(105), trade("99.5", "ETHUSDT"), trade(101), trade(90)]

    logs = await read_to_end(monitor, ticks)

    assert summaries(logs) == [
        ("BTCUSDT", "101.00", "105.00", "100.00", 3, 0.27),
        ("ETHUSDT", "99.50", "99.50", "99.50", 1, 0.09),
    ]
    summary = next(entry for entry in logs if entry["event"] == "price.summary")
    assert summary["exchange"] == Exchange.BINANCE
    assert events_before_summary(logs) == ["price.update", "price.update"]


def events_before_summary(logs: Sequence[MutableMapping[str, Any]]) -> list[str]:
    events = [entry["event"] for entry in logs]
    return events[: events.index("price.summary")]


async def test_the_next_period_starts_afresh_and_a_quiet_symbol_shows_no_ticks() -> None:
    monitor = PriceMonitor(interval=3600, summary_interval=10, clock=readings(0, 1, 2, 11, 12, 20))
    await read_to_end(monitor, [trade(100), trade(10, "ETHUSDT"), trade(90), trade(95)])

    with capture_logs() as logs:
        monitor.summarise()

    assert summaries(logs) == [
        ("BTCUSDT", "95.00", "95.00", "90.00", 2, 0.22),
        ("ETHUSDT", "10.00", "10.00", "10.00", 0, 0.0),
    ]


async def test_backfilled_ticks_are_neither_shown_nor_counted() -> None:
    monitor = PriceMonitor(interval=0, summary_interval=10, clock=readings(0, 1, 2))
    ticks = [trade(100), trade(500, source=TickSource.BACKFILL), trade(101)]

    logs = await read_to_end(monitor, ticks)
    with capture_logs() as summary:
        monitor.summarise(now=10)

    assert [entry["price"] for entry in logs] == ["100.00", "101.00"]
    assert summaries(summary) == [("BTCUSDT", "101.00", "101.00", "100.00", 2, 0.2)]


async def test_without_a_summary_interval_there_is_no_summary() -> None:
    monitor = PriceMonitor(interval=1e12, summary_interval=None, clock=readings(0, 1, 1e9))

    logs = await read_to_end(monitor, [trade(100), trade(101)])

    assert [entry["event"] for entry in logs] == ["price.update"]


async def test_a_restarted_monitor_keeps_its_throttle_and_its_period() -> None:
    monitor = PriceMonitor(interval=3600, summary_interval=10, clock=readings(0, 1, 2, 11))

    first = await read_to_end(monitor, [trade(100)])
    second = await read_to_end(monitor, [trade(101), trade(102)])

    assert [entry["event"] for entry in first] == ["price.update"]
    assert summaries(second) == [("BTCUSDT", "101.00", "101.00", "100.00", 2, 0.18)]


@pytest.mark.parametrize("interval", [0, -1.0])
def test_a_summary_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        PriceMonitor(summary_interval=interval)


@given(prices=st.lists(st.integers(1, 1_000), min_size=1, max_size=50))
def test_a_summary_spans_exactly_the_period_s_trades(prices: list[int]) -> None:
    monitor = PriceMonitor(interval=3600, summary_interval=1e9, clock=lambda: 0.0)

    with capture_logs():
        asyncio.run(read_to_end(monitor, [trade(price) for price in prices]))
    with capture_logs() as logs:
        monitor.summarise(now=len(prices))

    text = f"{prices[-1]}.00", f"{max(prices)}.00", f"{min(prices)}.00"
    assert summaries(logs) == [("BTCUSDT", *text, len(prices), 1.0)]
