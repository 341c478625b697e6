"""Test doubles for the ports: fakes with real behaviour, no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from kairos_core.domain import Exchange, MarketFeedPort, MarketTick, TickRepository, TickSink


class FakeFeed(MarketFeedPort):
    """Publishes its ticks into the sink (awaiting ``writable`` before each), then waits for stop."""

    def __init__(
        self,
        sink: TickSink,
        ticks: Sequence[MarketTick],
        *,
        exchange: Exchange = Exchange.BINANCE,
        fail_with: Exception | None = None,
        wait_for_stop: bool = True,
    ) -> None:
        self._sink = sink
        self._ticks = ticks
        self._exchange = exchange
        self._fail_with = fail_with
        self._wait_for_stop = wait_for_stop
        self._stopped = asyncio.Event()
        self.handed_over = 0
        self.stop_calls = 0

    @property
    def exchange(self) -> Exchange:
        return self._exchange

    async def start(self) -> None:
        for item in self._ticks:
            await self._sink.writable()
            self._sink.publish(item)
            self.handed_over += 1
        if self._fail_with is not None:
            raise self._fail_with
        if self._wait_for_stop:
            await self._stopped.wait()

    async def stop(self) -> None:
        self.stop_calls += 1
        self._stopped.set()


class InMemoryTickRepository(TickRepository):
    """Idempotent on (exchange, symbol, trade_id) like the real one; ``fail_next`` simulates an outage."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Exchange, str, int], MarketTick] = {}
        self.calls: list[int] = []
        """The size of every batch ``add_many`` was given, failed ones included."""
        self.failures_left = 0
        self.down = False

    def fail_next(self, count: int) -> None:
        self.failures_left = count

    async def add_many(self, ticks: Sequence[MarketTick]) -> int:
        self.calls.append(len(ticks))
        await asyncio.sleep(0)
        if self.down or self.failures_left:
            self.failures_left = max(0, self.failures_left - 1)
            raise ConnectionError("database unavailable (fake)")
        new = 0
        for tick in ticks:
            key = (tick.exchange, tick.symbol, tick.trade_id)
            if key not in self.rows:
                self.rows[key] = tick
                new += 1
        return new

    async def last_trade_id(self, exchange: Exchange, symbol: str) -> int | None:
        ids = [trade_id for (ex, sym, trade_id) in self.rows if ex == exchange and sym == symbol]
        return max(ids, default=None)

    async def latest_tick(self, exchange: Exchange, symbol: str) -> MarketTick | None:
        ticks = [tick for (ex, sym, _), tick in self.rows.items() if ex == exchange and sym == symbol]
        return max(ticks, key=lambda tick: tick.trade_id, default=None)

    async def ticks_between(
        self, exchange: Exchange, symbol: str, start: datetime, end: datetime
    ) -> list[MarketTick]:
        return sorted(
            (
                tick
                for (ex, sym, _), tick in self.rows.items()
                if ex == exchange and sym == symbol and start <= tick.timestamp < end
            ),
            key=lambda tick: tick.trade_id,
        )
