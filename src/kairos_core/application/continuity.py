"""Gap repair: keeps one exchange's trade ids continuous per symbol, in front of the counter.

A venue's trade ids run without gaps per symbol. ``ContinuityGuard`` is a ``TickSink`` between a
feed and the ``TickCounter``: it remembers the last id of every symbol; a live tick whose id is
at or below it is a duplicate (dropped and counted, as a reconnect re-sends), one that jumps past
``last + 1`` reveals a gap. The live tick is published at once; the missing ids are fetched from
the venue's ``TradeHistoryPort`` by a task of the symbol's own and published as ``BACKFILL``
ticks, waiting for ``writable`` like a feed does. Seeded with the stored last ids
(``resume_from``), the first live tick after a restart reveals what was missed while down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import structlog

from kairos_core.domain import (
    BusClosed,
    Exchange,
    HistoryUnavailable,
    MarketTick,
    TickRepository,
    TickSink,
    TickSource,
    TradeHistoryPort,
)

log = structlog.get_logger(__name__)

DEFAULT_MAX_BACKFILL = 1_000_000
"""Ids; a larger gap is not fetched (it would take the venue's weight for minutes)."""
SHORT_RETRIES = 3
"""Times a history that ends before the gap does (the venue lags its stream) is asked again."""
SHORT_RETRY_DELAY = 0.5
"""Seconds before the first such retry; doubled each time."""
CLOSE_TIMEOUT = 10.0
"""Seconds ``close`` lets running repairs finish before it cancels them."""


@dataclass(slots=True)
class ContinuityStats:
    """One symbol's counters, for logs and metrics."""

    duplicates: int = 0
    """Live ticks dropped because their id was already seen."""
    gaps: int = 0
    """Gaps detected."""
    backfilled: int = 0
    """Ticks published from the venue's history."""
    unrecoverable: int = 0
    """Gaps (or their remainders) given up on: too large, or the venue could not serve them."""
    unrecovered_ids: int = 0
    """Ids in those gaps that were never published."""


@dataclass(slots=True)
class _Gap:
    first: int
    last: int
    next: int
    """The lowest id not yet handled by the repair: ids below it are published or given up."""
    detected_at: float
    ahead: set[int] = field(default_factory=set)
    """Ids at or above ``next`` that arrived live meanwhile; the repair skips them."""

    def missing(self, trade_id: int) -> bool:
        return self.next <= trade_id <= self.last and trade_id not in self.ahead


class ContinuityGuard(TickSink):
    """A ``TickSink`` for one exchange's feed: drops duplicates, repairs gaps from the history.

    Ticks of other exchanges and ticks that are not live pass through untouched. ``publish``
    never waits and never holds a live tick back for a repair. ``close`` (after the feed has
    stopped, before the bus closes) lets running repairs finish for up to ``close_timeout``
    seconds, then cancels them, then awaits ``on_close`` (e.g. closing the history's HTTP
    session). ``symbols``: the venue's form of the symbols ``resume_from`` seeds by default.
    """

    def __init__(
        self,
        sink: TickSink,
        history: TradeHistoryPort,
        *,
        max_backfill: int = DEFAULT_MAX_BACKFILL,
        short_retries: int = SHORT_RETRIES,
        short_retry_delay: float = SHORT_RETRY_DELAY,
        close_timeout: float = CLOSE_TIMEOUT,
        symbols: Iterable[str] = (),
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if max_backfill < 0:
            raise ValueError(f"max_backfill must be at least 0, got {max_backfill}")
        self._sink = sink
        self._history = history
        self._exchange = history.exchange
        self._max_backfill = max_backfill
        self._short_retries = short_retries
        self._short_retry_delay = short_retry_delay
        self._close_timeout = close_timeout
        self._symbols = tuple(symbols)
        self._on_close = on_close
        self._last: dict[str, int] = {}
        self._gaps: dict[str, deque[_Gap]] = {}
        self._repairs: dict[str, asyncio.Task[None]] = {}
        self.stats: dict[str, ContinuityStats] = {}

    @property
    def exchange(self) -> Exchange:
        return self._exchange

    @property
    def max_backfill(self) -> int:
        return self._max_backfill

    @property
    def repairing(self) -> bool:
        """Whether any gap is still being fetched."""
        return any(not task.done() for task in self._repairs.values())

    def seed(self, last_ids: dict[str, int]) -> None:
        """Start from these last ids per symbol (the venue's form), e.g. what storage holds."""
        for symbol, trade_id in last_ids.items():
            self._last[symbol] = trade_id

    async def resume_from(self, repository: TickRepository, symbols: Iterable[str] | None = None) -> None:
        """Seed each symbol's last id (default: the ``symbols`` given) from ``repository``, so the
        first live tick reveals what was missed while down; symbols with nothing stored start fresh."""
        for symbol in self._symbols if symbols is None else symbols:
            trade_id = await repository.last_trade_id(self._exchange, symbol)
            if trade_id is not None:
                self._last[symbol] = trade_id
                log.info("gap.resume", exchange=self._exchange, symbol=symbol, last_trade_id=trade_id)

    def publish(self, tick: MarketTick) -> None:
        if tick.source is not TickSource.LIVE or tick.exchange is not self._exchange:
            self._sink.publish(tick)
            return
        symbol = tick.symbol
        trade_id = tick.trade_id
        last = self._last.get(symbol)
        if last is None or trade_id == last + 1:
            self._last[symbol] = trade_id
            self._sink.publish(tick)
            return
        if trade_id > last:
            self._last[symbol] = trade_id
            self._sink.publish(tick)
            self._gap(symbol, last + 1, trade_id - 1)
            return
        for gap in self._gaps.get(symbol, ()):
            if gap.missing(trade_id):
                gap.ahead.add(trade_id)
                self._sink.publish(tick)
                return
        self._stats(symbol).duplicates += 1

    async def writable(self) -> None:
        await self._sink.writable()

    async def close(self) -> None:
        """Let running repairs finish for up to ``close_timeout`` seconds, then cancel the rest."""
        tasks = [task for task in self._repairs.values() if not task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for symbol, gaps in self._gaps.items():
            for gap in gaps:
                self._give_up(symbol, gap, "the service stopped before the repair finished")
            gaps.clear()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            await on_close()

    def _stats(self, symbol: str) -> ContinuityStats:
        stats = self.stats.get(symbol)
        if stats is None:
            stats = self.stats[symbol] = ContinuityStats()
        return stats

    def _gap(self, symbol: str, first: int, last: int) -> None:
        stats = self._stats(symbol)
        stats.gaps += 1
        size = last - first + 1
        log.warning(
            "gap.detected", exchange=self._exchange, symbol=symbol, from_id=first, to_id=last, missing=size
        )
        gap = _Gap(first, last, first, time.monotonic())
        if size > self._max_backfill:
            self._give_up(symbol, gap, f"{size} ids missing, more than the {self._max_backfill} to backfill")
            return
        self._gaps.setdefault(symbol, deque()).append(gap)
        task = self._repairs.get(symbol)
        if task is None or task.done():
            self._repairs[symbol] = asyncio.get_running_loop().create_task(
                self._repair(symbol), name=f"gap-repair:{self._exchange}:{symbol}"
            )

    def _give_up(self, symbol: str, gap: _Gap, reason: str) -> None:
        left = gap.last - gap.next + 1 - sum(1 for trade_id in gap.ahead if trade_id >= gap.next)
        if left <= 0:
            return  # every id arrived after all
        stats = self._stats(symbol)
        stats.unrecoverable += 1
        stats.unrecovered_ids += left
        log.error(
            "gap.unrecoverable",
            exchange=self._exchange,
            symbol=symbol,
            from_id=gap.next,
            to_id=gap.last,
            missing=left,
            reason=reason,
        )

    async def _repair(self, symbol: str) -> None:
        """Fill the symbol's gaps in the order they were found, until none is left."""
        gaps = self._gaps[symbol]
        while gaps:
            gap = gaps[0]
            try:
                await self._fill(symbol, gap)
            except HistoryUnavailable as e:
                self._give_up(symbol, gap, str(e))
            except BusClosed:
                return  # the service is gone; close() reports what is left
            except Exception as e:  # a bug: the live stream goes on, this gap is given up
                log.exception("gap.repair_crashed", exchange=self._exchange, symbol=symbol)
                self._give_up(symbol, gap, f"{type(e).__name__}: {e}")
            gaps.popleft()

    async def _fill(self, symbol: str, gap: _Gap) -> None:
        stats = self._stats(symbol)
        published = 0
        delay = self._short_retry_delay
        for attempt in range(self._short_retries + 1):
            async for page in self._history.trades(symbol, gap.next, gap.last):
                for tick in page:
                    trade_id = tick.trade_id
                    if trade_id < gap.next:
                        continue
                    await self._sink.writable()
                    if trade_id in gap.ahead:
                        gap.ahead.discard(trade_id)
                    else:
                        self._sink.publish(tick)
                        published += 1
                        stats.backfilled += 1
                    gap.next = trade_id + 1
            if gap.next > gap.last or attempt == self._short_retries:
                break
            await asyncio.sleep(delay)  # the venue's history lags its stream: ask again shortly
            delay *= 2
        if gap.next <= gap.last:
            raise HistoryUnavailable(
                f"{symbol} ids {gap.next}..{gap.last} are still not in the venue's history "
                f"after {self._short_retries + 1} requests"
            )
        log.info(
            "gap.repaired",
            exchange=self._exchange,
            symbol=symbol,
            from_id=gap.first,
            to_id=gap.last,
            backfilled=published,
            seconds=round(time.monotonic() - gap.detected_at, 3),
        )
