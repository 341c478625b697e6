"""Logs the latest price per symbol, at most once per interval so a busy market stays readable,
and a per-symbol summary of each longer period."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from math import inf

import structlog

from kairos_core.application.bus import Subscription
from kairos_core.domain import Exchange, Lagged, MarketTick, TickSource

log = structlog.get_logger(__name__)


def price_text(price: Decimal) -> str:
    """Every significant digit, and at least two decimals: ``3098.07``, ``0.3513``, ``58001.00``."""
    plain = format(price.normalize(), "f")
    whole, _, fraction = plain.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


@dataclass(slots=True)
class _Period:
    """One symbol's trades since the last summary."""

    last: Decimal
    high: Decimal
    low: Decimal
    ticks: int = 0


class PriceMonitor:
    """The seed's price monitor: ``📊 ETHUSDT | $3098.07 | Vol: 0.0220``.

    A symbol's price is logged when it first trades and then at most once per ``interval``
    seconds (0 logs every tick); lost ticks are logged as a warning, never silently.

    Every ``summary_interval`` seconds (None: never) each symbol seen so far gets one
    ``price.summary`` line: last price, the period's high and low, and its ticks per second. A
    symbol that did not trade in the period shows 0 ticks and its last price as high and low.
    The summary is due on the first tick after the period ends, not on a timer: the hot path
    stays one comparison, and a bus with no tick at all has nothing to summarise (the feed's
    watchdog speaks for a silent socket). Backfilled ticks are history, not news, and are not
    shown. ``clock`` is monotonic seconds.
    """

    lossless = False

    def __init__(
        self,
        interval: float = 1.0,
        name: str = "price_monitor",
        *,
        summary_interval: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if summary_interval is not None and not summary_interval > 0:
            raise ValueError(f"price summary interval must be positive, got {summary_interval}")
        self.name = name
        self._interval = interval
        self._summary_interval = summary_interval
        self._clock = clock
        self._next_log: dict[tuple[str, str], float] = {}
        self._periods: dict[tuple[Exchange, str], _Period] = {}
        self._period_start = clock()
        self._next_summary = inf if summary_interval is None else self._period_start + summary_interval

    def summarise(self, now: float | None = None) -> None:
        """Log the period that ends ``now`` (default: the clock) and start the next one."""
        now = self._clock() if now is None else now
        elapsed = now - self._period_start
        self._period_start = now
        if self._summary_interval is not None:
            self._next_summary = now + self._summary_interval
        for (exchange, symbol), period in self._periods.items():
            log.info(
                "price.summary",
                exchange=exchange,
                symbol=symbol,
                last=price_text(period.last),
                high=price_text(period.high),
                low=price_text(period.low),
                ticks=period.ticks,
                ticks_per_s=round(period.ticks / elapsed, 2) if elapsed > 0 else None,
            )
            period.ticks = 0

    async def run(self, subscription: Subscription) -> None:
        while True:
            try:
                async for item in subscription:
                    if isinstance(item, MarketTick) and item.source is not TickSource.BACKFILL:
                        self._on_tick(item)
                return
            except Lagged as e:
                log.warning("consumer.lagged", consumer=self.name, missed=e.missed)

    def _on_tick(self, tick: MarketTick) -> None:
        now = self._clock()
        if now >= self._next_summary:
            self.summarise(now)
        key = (tick.exchange, tick.symbol)
        price = tick.price
        period = self._periods.get(key)
        if period is None:
            period = self._periods[key] = _Period(price, price, price)
        elif not period.ticks:  # the first trade of a period sets its range afresh
            period.last = period.high = period.low = price
        else:
            period.last = price
            if price > period.high:
                period.high = price
            elif price < period.low:
                period.low = price
        period.ticks += 1
        if now >= self._next_log.get(key, 0.0):
            self._next_log[key] = now + self._interval
            log.info(
                "price.update",
                exchange=tick.exchange,
                symbol=tick.symbol,
                price=price_text(price),
                volume=f"{tick.volume:.4f}",
                trade_id=tick.trade_id,
            )
