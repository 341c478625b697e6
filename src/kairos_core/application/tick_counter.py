"""Counts the ticks feeds hand over, per symbol, and enforces ``--max-ticks``."""

from __future__ import annotations

from collections.abc import Callable

from kairos_core.domain import Exchange, MarketTick, TickSink


class TickCounter(TickSink):
    """A ``TickSink`` in front of the bus: counts every tick and forwards it.

    With a ``limit``, exactly ``limit`` ticks are accepted; ``on_limit`` is called once when the
    last one passes, and ticks a feed hands over after that are not accepted (counted apart as
    ``refused``), so a run stopped by the limit has published precisely ``limit`` ticks.
    """

    def __init__(self, sink: TickSink, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"tick limit must be at least 1, got {limit}")
        self._sink = sink
        self._remaining = limit
        self.per_symbol: dict[tuple[Exchange, str], int] = {}
        self.refused = 0
        self.on_limit: Callable[[], None] | None = None

    @property
    def total(self) -> int:
        return sum(self.per_symbol.values())

    def publish(self, tick: MarketTick) -> None:
        remaining = self._remaining
        if remaining is not None:
            if remaining == 0:
                self.refused += 1
                return
            self._remaining = remaining - 1
        self._sink.publish(tick)
        key = (tick.exchange, tick.symbol)
        self.per_symbol[key] = self.per_symbol.get(key, 0) + 1  # a plain dict: Counter's += costs 2x
        if remaining == 1 and self.on_limit is not None:
            self.on_limit()

    async def writable(self) -> None:
        await self._sink.writable()
