"""Gap repair: keeps one exchange's trade ids continuous per symbol, in front of the counter.

A venue's trade ids run without gaps per symbol. ``ContinuityGuard`` is a ``TickSink`` between a
feed and the ``TickCounter``: it remembers the last id of every symbol; a live tick whose ids are
at or below it is a duplicate (dropped and counted, as a reconnect re-sends), one that starts past
``last + 1`` reveals a gap. The live tick is published at once; the missing ids are fetched from
the venue's ``TradeHistoryPort`` by a task of the symbol's own and published as ``BACKFILL``
ticks, waiting for ``writable`` like a feed does. Every gap is announced on the bus
(``GapDetected``, just before the tick that revealed it) and closed there exactly once
(``GapRepaired`` or ``GapUnrecoverable``), so consumers such as risk know when data has a hole.

A gap shows only when a later trade arrives, so a quiet symbol could hide one for hours after a
reconnect. ``connected`` (called by the feed after every connect) therefore also asks the venue
for everything newer than the last id of each symbol that stayed silent for ``follow_delay``
seconds afterwards (a "follow-up"); a symbol that spoke meanwhile has shown any gap itself.
Seeded with storage's last ticks (``resume_from``), the first connect after a restart recovers the
downtime the same way, unless the last stored trade is older than ``max_backfill_age``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from itertools import islice

import structlog

from kairos_core.domain import (
    BusClosed,
    Exchange,
    GapDetected,
    GapEvent,
    GapRepaired,
    GapUnrecoverable,
    HistoryUnavailable,
    MarketDataSink,
    MarketTick,
    TickRepository,
    TickSink,
    TickSource,
    TradeHistoryPort,
)

log = structlog.get_logger(__name__)

DEFAULT_MAX_BACKFILL = 1_000_000
"""Ids; a larger gap is not fetched (it would take the venue's weight for minutes)."""
DEFAULT_MAX_BACKFILL_AGE = 86_400.0
"""Seconds; after a longer downtime a restart does not fetch what it missed."""
SHORT_RETRIES = 3
"""Times a history that ends before the gap does (the venue lags its stream) is asked again."""
SHORT_RETRY_DELAY = 0.5
"""Seconds before the first such retry; doubled each time."""
FOLLOW_DELAY = 1.0
"""Seconds after a connect before quiet symbols are followed up: a busy one shows its gap sooner."""
CLOSE_TIMEOUT = 10.0
"""Seconds ``close`` lets running repairs finish before it cancels them."""


@dataclass(slots=True)
class ContinuityStats:
    """One symbol's counters, for logs and metrics."""

    duplicates: int = 0
    """Live ticks dropped because their ids were already seen."""
    gaps: int = 0
    """Gaps detected."""
    backfilled: int = 0
    """Ticks published from the venue's history."""
    unrecoverable: int = 0
    """Gaps (or their remainders) given up on: too large, too old, or the venue could not serve them."""
    unrecovered_ids: int = 0
    """Ids in those gaps that were never published."""
    repair_seconds_max: float = 0.0
    """The longest time from a gap's detection to its repair."""


@dataclass(slots=True)
class _Gap:
    first: int
    last: int
    next: int
    """The lowest id not yet handled by the repair: ids below it are published or given up."""
    detected_at: float
    ahead: set[int] = field(default_factory=set)
    """Ids at or above ``next`` that arrived live meanwhile; the repair skips them."""

    def missing(self, first: int, last: int) -> bool:
        """Whether a live tick covering ids ``first``..``last`` belongs in this gap, unseen."""
        return self.next <= first and last <= self.last and first not in self.ahead

    def left(self) -> int:
        """Ids from ``next`` on still unpublished."""
        return self.last - self.next + 1 - sum(1 for trade_id in self.ahead if trade_id >= self.next)


@dataclass(slots=True)
class _FollowUp:
    """Everything newer than the last id seen, asked for after a connect (see the module)."""

    queued_at: float
    first: int | None = None
    """The first id found missing, once one was (the follow-up has then announced a gap)."""
    next: int = 0
    published: int = 0


@dataclass(slots=True)
class _StaleResume:
    """A stored last trade too old to fetch from: the first live tick reports the hole instead."""

    last_id: int
    age: float


class ContinuityGuard(TickSink):
    """A ``TickSink`` for one exchange's feed: drops duplicates, repairs gaps from the history.

    Ticks of other exchanges and ticks that are not live pass through untouched. ``publish``
    never waits and never holds a live tick back for a repair. ``close`` (after the feed has
    stopped, before the bus closes) lets running repairs finish for up to ``close_timeout``
    seconds, then cancels them and reports what stayed open, then awaits ``on_close`` (e.g.
    closing the history's HTTP session). ``symbols``: the venue's form of the symbols
    ``resume_from`` seeds by default.
    """

    def __init__(
        self,
        sink: MarketDataSink,
        history: TradeHistoryPort,
        *,
        max_backfill: int = DEFAULT_MAX_BACKFILL,
        max_backfill_age: float = DEFAULT_MAX_BACKFILL_AGE,
        short_retries: int = SHORT_RETRIES,
        short_retry_delay: float = SHORT_RETRY_DELAY,
        follow_delay: float = FOLLOW_DELAY,
        close_timeout: float = CLOSE_TIMEOUT,
        symbols: Iterable[str] = (),
        on_close: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_backfill < 0:
            raise ValueError(f"max_backfill must be at least 0, got {max_backfill}")
        if max_backfill_age <= 0:
            raise ValueError(f"max_backfill_age must be positive, got {max_backfill_age}")
        self._sink = sink
        self._history = history
        self._exchange = history.exchange
        self._spans_fills = history.spans_fills
        self._max_backfill = max_backfill
        self._max_backfill_age = max_backfill_age
        self._short_retries = short_retries
        self._short_retry_delay = short_retry_delay
        self._follow_delay = follow_delay
        self._close_timeout = close_timeout
        self._symbols = tuple(symbols)
        self._on_close = on_close
        self._clock = clock
        self._last: dict[str, int] = {}
        self._stale: dict[str, _StaleResume] = {}
        self._queues: dict[str, deque[_Gap | _FollowUp]] = {}
        self._open: dict[str, int] = {}
        """Gaps announced on the bus and not yet closed, per symbol."""
        self._repairs: dict[str, asyncio.Task[None]] = {}
        self._following: asyncio.Task[None] | None = None
        self.stats: dict[str, ContinuityStats] = {}

    @property
    def exchange(self) -> Exchange:
        return self._exchange

    @property
    def max_backfill(self) -> int:
        return self._max_backfill

    @property
    def repairing(self) -> bool:
        """Whether any gap is still being fetched or a follow-up is still due."""
        due = self._following is not None and not self._following.done()
        return due or any(not task.done() for task in self._repairs.values())

    def seed(self, last_ids: dict[str, int]) -> None:
        """Start from these last ids per symbol (the venue's form), e.g. what storage holds."""
        for symbol, trade_id in last_ids.items():
            self._last[symbol] = trade_id

    async def resume_from(self, repository: TickRepository, symbols: Iterable[str] | None = None) -> None:
        """Seed each symbol (default: the ``symbols`` given) from its last stored tick, so the first
        connect fetches what was missed while down; symbols with nothing stored start fresh, and
        one whose last stored trade is older than ``max_backfill_age`` is not fetched: its first
        live tick reports the hole as unrecoverable."""
        for symbol in self._symbols if symbols is None else symbols:
            tick = await repository.latest_tick(self._exchange, symbol)
            if tick is None:
                continue
            age = self._clock() - tick.timestamp_ms / 1000
            fields = {"exchange": self._exchange, "symbol": symbol, "last_trade_id": tick.trade_id}
            if age > self._max_backfill_age:
                self._stale[symbol] = _StaleResume(tick.trade_id, age)
                log.warning("gap.resume_too_old", **fields, age_s=round(age), limit_s=self._max_backfill_age)
            else:
                self._last[symbol] = tick.trade_id
                log.info("gap.resume", **fields, age_s=round(age, 3))

    def connected(self) -> None:
        """The feed has (re)connected: follow up quiet symbols after ``follow_delay`` seconds."""
        if self._following is not None:
            self._following.cancel()
        self._following = asyncio.get_running_loop().create_task(
            self._follow_quiet(dict(self._last)), name=f"gap-follow-up:{self._exchange}"
        )

    def publish(self, tick: MarketTick) -> None:
        if tick.source is not TickSource.LIVE or tick.exchange is not self._exchange:
            self._sink.publish(tick)
            return
        symbol = tick.symbol
        trade_id = tick.trade_id
        first = tick.first_trade_id if self._spans_fills else trade_id
        last = self._last.get(symbol)
        if last is not None and first == last + 1:
            self._last[symbol] = trade_id
            self._sink.publish(tick)
            return
        if last is None:
            self._last[symbol] = trade_id
            if symbol in self._stale:
                self._report_stale(symbol, first)
            self._sink.publish(tick)
            return
        if trade_id > last:
            self._last[symbol] = trade_id
            if first > last + 1:
                self._gap(symbol, last + 1, first - 1)
            self._sink.publish(tick)  # first <= last: it overlaps ids seen, and brings new ones
            return
        for item in self._queues.get(symbol, ()):
            if isinstance(item, _Gap) and item.missing(first, trade_id):
                item.ahead.update(range(first, trade_id + 1))
                self._sink.publish(tick)
                return
        self._stats(symbol).duplicates += 1

    async def writable(self) -> None:
        await self._sink.writable()

    async def close(self) -> None:
        """Let running repairs finish for up to ``close_timeout`` seconds, then cancel the rest."""
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        tasks = [task for task in self._repairs.values() if not task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for symbol, queue in self._queues.items():
            for item in queue:
                if isinstance(item, _Gap):
                    self._give_up(symbol, item, "the service stopped before the repair finished")
                else:
                    self._end_follow_up(symbol, item, "the service stopped before the follow-up finished")
            queue.clear()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            await on_close()

    def _stats(self, symbol: str) -> ContinuityStats:
        stats = self.stats.get(symbol)
        if stats is None:
            stats = self.stats[symbol] = ContinuityStats()
        return stats

    def _announce(self, symbol: str, first: int, last: int | None) -> None:
        self._stats(symbol).gaps += 1
        opened = self._open[symbol] = self._open.get(symbol, 0) + 1
        self._emit(
            GapDetected(exchange=self._exchange, symbol=symbol, from_id=first, to_id=last, open_gaps=opened)
        )

    def _emit(self, event: GapEvent) -> None:
        with contextlib.suppress(BusClosed):  # the service is past its orderly stop: the log keeps it
            self._sink.publish_event(event)

    def _closed(self, symbol: str) -> int:
        """One announced gap of ``symbol`` is closed: how many stay open."""
        left = self._open[symbol] = self._open[symbol] - 1
        return left

    def _gap(self, symbol: str, first: int, last: int) -> None:
        size = last - first + 1
        log.warning(
            "gap.detected", exchange=self._exchange, symbol=symbol, from_id=first, to_id=last, missing=size
        )
        self._announce(symbol, first, last)
        gap = _Gap(first, last, first, time.monotonic())
        if size > self._max_backfill:
            self._give_up(symbol, gap, f"{size} ids missing, more than the {self._max_backfill} to backfill")
            return
        self._enqueue(symbol, gap)

    def _enqueue(self, symbol: str, item: _Gap | _FollowUp) -> None:
        self._queues.setdefault(symbol, deque()).append(item)
        task = self._repairs.get(symbol)
        if task is None or task.done():
            self._repairs[symbol] = asyncio.get_running_loop().create_task(
                self._repair(symbol), name=f"gap-repair:{self._exchange}:{symbol}"
            )

    def _report_stale(self, symbol: str, first: int) -> None:
        """The first live tick after a resume from a stored trade too old to fetch from."""
        stale = self._stale.pop(symbol)
        if first <= stale.last_id + 1:
            return  # nothing was missed after all
        self._announce(symbol, stale.last_id + 1, first - 1)
        gap = _Gap(stale.last_id + 1, first - 1, stale.last_id + 1, time.monotonic())
        reason = (
            f"the last stored trade is {stale.age / 3600:.1f} h old, beyond the "
            f"{self._max_backfill_age / 3600:g} h a restart backfills (KAIROS_BACKFILL_MAX_AGE)"
        )
        self._give_up(symbol, gap, reason)

    def _give_up(self, symbol: str, gap: _Gap, reason: str) -> None:
        left = gap.left()
        if left <= 0:  # every id arrived live after all
            self._repaired(symbol, gap, 0)
            return
        stats = self._stats(symbol)
        stats.unrecoverable += 1
        stats.unrecovered_ids += left
        self._close_with(
            GapUnrecoverable(
                exchange=self._exchange,
                symbol=symbol,
                from_id=gap.next,
                to_id=gap.last,
                missing=left,
                reason=reason,
                open_gaps=self._closed(symbol),
            )
        )

    def _repaired(self, symbol: str, gap: _Gap, backfilled: int) -> None:
        seconds = round(time.monotonic() - gap.detected_at, 3)
        stats = self._stats(symbol)
        stats.repair_seconds_max = max(stats.repair_seconds_max, seconds)
        self._close_with(
            GapRepaired(
                exchange=self._exchange,
                symbol=symbol,
                from_id=gap.first,
                to_id=gap.last,
                backfilled=backfilled,
                seconds=seconds,
                open_gaps=self._closed(symbol),
            )
        )

    def _close_with(self, event: GapRepaired | GapUnrecoverable) -> None:
        """Log the gap's end with the event's own fields, then put the event on the bus."""
        if isinstance(event, GapRepaired):
            log.info("gap.repaired", **asdict(event))
        else:
            log.error("gap.unrecoverable", **asdict(event))
        self._emit(event)

    async def _follow_quiet(self, at_connect: dict[str, int]) -> None:
        await asyncio.sleep(self._follow_delay)
        for symbol, last in at_connect.items():
            if self._last.get(symbol) != last:
                continue  # it spoke since the connect: a gap it had is already known
            waiting = islice(self._queues.get(symbol, ()), 1, None)  # the first is under way
            if any(isinstance(item, _FollowUp) for item in waiting):
                continue  # one is already waiting its turn
            self._enqueue(symbol, _FollowUp(time.monotonic()))

    async def _repair(self, symbol: str) -> None:
        """Work through the symbol's gaps and follow-ups in the order they came, until none is left."""
        queue = self._queues[symbol]
        while queue:
            item = queue[0]
            try:
                if isinstance(item, _Gap):
                    await self._fill(symbol, item)
                else:
                    await self._follow(symbol, item)
            except BusClosed:
                return  # the service is gone; close() reports what is left
            except Exception as e:  # HistoryUnavailable, or a bug: the live stream goes on regardless
                if not isinstance(e, HistoryUnavailable):
                    log.exception("gap.repair_crashed", exchange=self._exchange, symbol=symbol)
                reason = str(e) if isinstance(e, HistoryUnavailable) else f"{type(e).__name__}: {e}"
                if isinstance(item, _Gap):
                    self._give_up(symbol, item, reason)
                else:
                    self._end_follow_up(symbol, item, reason)
            queue.popleft()

    async def _fill(self, symbol: str, gap: _Gap) -> None:
        stats = self._stats(symbol)
        published = 0
        delay = self._short_retry_delay
        for attempt in range(self._short_retries + 1):
            if gap.left() <= 0:
                break  # the rest arrived live: nothing to ask for
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
            if gap.left() <= 0 or attempt == self._short_retries:
                break
            await asyncio.sleep(delay)  # the venue's history lags its stream: ask again shortly
            delay *= 2
        if gap.left() > 0:
            raise HistoryUnavailable(
                f"{symbol} ids {gap.next}..{gap.last} are still not in the venue's history "
                f"after {self._short_retries + 1} requests"
            )
        self._repaired(symbol, gap, published)

    async def _follow(self, symbol: str, follow_up: _FollowUp) -> None:
        """Publish what the venue has beyond the last id seen, until the live stream overtakes it.

        An id at or below the last seen is live data or inside a gap queued after this one, so
        the follow-up stops there; past ``max_backfill`` ids it stops too and leaves the rest to
        the gap the next live tick reveals, which is sized and bounded like any other.
        """
        stats = self._stats(symbol)
        follow_up.next = self._last[symbol] + 1
        async for page in self._history.trades(symbol, follow_up.next, None):
            for tick in page:
                if tick.trade_id < follow_up.next:
                    continue
                await self._sink.writable()
                if tick.trade_id <= self._last[symbol]:
                    self._end_follow_up(symbol, follow_up)
                    return
                if follow_up.first is None:
                    follow_up.first = tick.trade_id
                    log.warning(
                        "gap.detected",
                        exchange=self._exchange,
                        symbol=symbol,
                        from_id=tick.trade_id,
                        to_id=None,
                        found_by="follow-up after connect",
                    )
                    self._announce(symbol, tick.trade_id, None)
                self._last[symbol] = tick.trade_id
                self._sink.publish(tick)
                follow_up.published += 1
                stats.backfilled += 1
                follow_up.next = tick.trade_id + 1
                if follow_up.published >= self._max_backfill:
                    self._end_follow_up(symbol, follow_up, f"stopped after {self._max_backfill} ids")
                    return
        self._end_follow_up(symbol, follow_up)

    def _end_follow_up(self, symbol: str, follow_up: _FollowUp, stopped: str | None = None) -> None:
        """Close the gap the follow-up announced, if it found one: what it published is repaired.

        Anything it could not reach (``stopped`` says why) is still missing from the stream, and
        the next live tick of the symbol reveals it as an ordinary gap, with its exact size.
        """
        if stopped is not None:
            log.warning("gap.follow_up_stopped", exchange=self._exchange, symbol=symbol, reason=stopped)
        if follow_up.first is None:
            return
        gap = _Gap(follow_up.first, follow_up.next - 1, follow_up.next, follow_up.queued_at)
        self._repaired(symbol, gap, follow_up.published)
        follow_up.first = None
