"""Counts the ticks feeds hand over, per symbol, and enforces ``--max-ticks``."""

from __future__ import annotations

from collections.abc import Callable

from kairos_core.application.latency import TRADE_TO_RECEIPT_BOUNDS, LatencyHistogram, sample_mask
from kairos_core.domain import Exchange, GapEvent, MarketDataSink, MarketTick, TickSource

_BACKFILL = TickSource.BACKFILL


class SymbolCount:
    """One symbol's ticks accepted so far and its last tick that was not backfilled (or None)."""

    __slots__ = ("count", "last")

    def __init__(self) -> None:
        self.count = 0
        self.last: MarketTick | None = None


class TickCounter(MarketDataSink):
    """A sink in front of the bus: counts every tick and forwards it (events pass uncounted).

    With a ``limit``, exactly ``limit`` ticks are accepted; ``on_limit`` is called once when the
    last one passes, and ticks a feed hands over after that are not accepted (counted apart as
    ``refused``), so a run stopped by the limit has published precisely ``limit`` ticks.

    For metrics it keeps each symbol's last live tick (its price and receipt time) beside its
    count, in one slot object per symbol (one dict lookup a tick: measured cheaper than the plain
    count dict alone), and with ``sample_every`` N (a power of two; 0 is off) puts every N-th
    tick of a symbol's trade time to receipt into ``trade_to_receipt``; the count decides, so the
    other N - 1 cost one AND.
    """

    def __init__(self, sink: MarketDataSink, limit: int | None = None, *, sample_every: int = 0) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"tick limit must be at least 1, got {limit}")
        self._sink = sink
        self._remaining = limit
        self._mask = sample_mask(sample_every)
        self.symbols: dict[tuple[Exchange, str], SymbolCount] = {}
        self.trade_to_receipt: dict[Exchange, LatencyHistogram] = {}
        self.refused = 0
        self.on_limit: Callable[[], None] | None = None

    @property
    def per_symbol(self) -> dict[tuple[Exchange, str], int]:
        """Ticks accepted per symbol."""
        return {key: symbol.count for key, symbol in self.symbols.items()}

    @property
    def total(self) -> int:
        return sum(symbol.count for symbol in self.symbols.values())

    def publish(self, tick: MarketTick) -> None:
        remaining = self._remaining
        if remaining is not None:
            if remaining == 0:
                self.refused += 1
                return
            self._remaining = remaining - 1
        self._sink.publish(tick)
        key = (tick.exchange, tick.symbol)
        symbol = self.symbols.get(key)
        if symbol is None:
            symbol = self.symbols[key] = SymbolCount()
        count = symbol.count = symbol.count + 1
        if tick.source is not _BACKFILL:
            symbol.last = tick
            if not count & self._mask:
                self._sample(tick)
        if remaining == 1 and self.on_limit is not None:
            self.on_limit()

    def _sample(self, tick: MarketTick) -> None:
        histogram = self.trade_to_receipt.get(tick.exchange)
        if histogram is None:
            histogram = self.trade_to_receipt[tick.exchange] = LatencyHistogram(TRADE_TO_RECEIPT_BOUNDS)
        histogram.observe_ns(tick.received_at_ns - tick.timestamp_ms * 1_000_000)

    def publish_event(self, event: GapEvent) -> None:
        self._sink.publish_event(event)

    async def writable(self) -> None:
        await self._sink.writable()
