"""ContinuityGuard: duplicates dropped, gaps repaired from a fake history, live ticks never held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer, PersistencePolicy
from kairos_core.application.continuity import ContinuityGuard
from kairos_core.application.service import MarketDataService
from kairos_core.application.tick_counter import TickCounter
from kairos_core.bootstrap.container import Container
from kairos_core.domain import (
    BusItem,
    Exchange,
    GapDetected,
    GapEvent,
    GapRepaired,
    GapUnrecoverable,
    HistoryUnavailable,
    MarketTick,
    Side,
    TickSource,
    TradeHistoryPort,
)
from kairos_core.settings import Settings
from tests.fakes import FakeFeed, InMemoryTickRepository

SYMBOL = "BTCUSDT"
NOW = 1_700_000_100.0
"""The guards' clock in these tests: 100 s after the trade times of ``tick``."""


def tick(
    trade_id: int,
    *,
    symbol: str = SYMBOL,
    source: TickSource = TickSource.LIVE,
    exchange: Exchange = Exchange.BINANCE,
) -> MarketTick:
    return MarketTick(
        symbol=symbol,
        exchange=exchange,
        price=Decimal("100.5"),
        volume=Decimal("0.25"),
        side=Side.BUY,
        trade_id=trade_id,
        first_trade_id=trade_id,
        last_trade_id=trade_id,
        timestamp_ms=1_700_000_000_000 + trade_id,
        event_time_ms=None if source is TickSource.BACKFILL else 1_700_000_000_000 + trade_id,
        received_at_ns=0,
        source=source,
    )


class RecordingSink:
    """Records ticks and events apart, and both in their bus order in ``items``."""

    def __init__(self) -> None:
        self.ticks: list[MarketTick] = []
        self.events: list[GapEvent] = []
        self.items: list[BusItem] = []

    def publish(self, item: MarketTick) -> None:
        self.ticks.append(item)
        self.items.append(item)

    def publish_event(self, event: GapEvent) -> None:
        self.events.append(event)
        self.items.append(event)

    async def writable(self) -> None:
        await asyncio.sleep(0)

    def ids(self, source: TickSource | None = None) -> list[int]:
        return [t.trade_id for t in self.ticks if source is None or t.source is source]


class FakeHistory(TradeHistoryPort):
    """Serves ids up to ``newest`` of every symbol in pages of ``page``; no I/O.

    ``gate``: each page waits for it. ``fail``: raised after the first page.
    """

    def __init__(self, newest: int, *, page: int = 3, spans_fills: bool = False) -> None:
        self.newest = newest
        self._spans_fills = spans_fills
        self.page = page
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.calls: list[tuple[str, int, int | None]] = []

    @property
    def exchange(self) -> Exchange:
        return Exchange.BINANCE

    @property
    def spans_fills(self) -> bool:
        return self._spans_fills

    async def trades(
        self, symbol: str, from_id: int, to_id: int | None = None
    ) -> AsyncIterator[list[MarketTick]]:
        self.calls.append((symbol, from_id, to_id))
        end = self.newest if to_id is None else min(to_id, self.newest)
        for start in range(from_id, end + 1, self.page):
            if self.gate is not None:
                await self.gate.wait()
            yield [
                tick(i, symbol=symbol, source=TickSource.BACKFILL)
                for i in range(start, min(start + self.page, end + 1))
            ]
            if self.fail is not None:
                raise self.fail


def guard_for(history: FakeHistory, **options: float) -> tuple[ContinuityGuard, RecordingSink]:
    sink = RecordingSink()
    defaults: dict[str, float] = {
        "short_retries": 2,
        "short_retry_delay": 0.001,
        "close_timeout": 1.0,
        "follow_delay": 0.001,
        "max_backfill_age": 3600.0,
    }
    defaults.update(options)
    return ContinuityGuard(
        sink,
        history,
        max_backfill=int(defaults.pop("max_backfill", 1_000)),
        max_backfill_age=defaults["max_backfill_age"],
        short_retries=int(defaults["short_retries"]),
        short_retry_delay=defaults["short_retry_delay"],
        follow_delay=defaults["follow_delay"],
        close_timeout=defaults["close_timeout"],
        clock=lambda: NOW,
    ), sink


async def settle(guard: ContinuityGuard) -> None:
    for _ in range(1000):
        if not guard.repairing:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("repair did not finish")


async def test_consecutive_ticks_pass_through_untouched() -> None:
    guard, sink = guard_for(FakeHistory(100))
    for i in range(10, 20):
        guard.publish(tick(i))
    assert sink.ids() == list(range(10, 20))
    assert guard.stats == {}


async def test_a_gap_is_backfilled_with_exactly_the_missing_ids_as_backfill() -> None:
    history = FakeHistory(100)
    guard, sink = guard_for(history)
    with capture_logs() as logs:
        guard.publish(tick(10))
        guard.publish(tick(18))
        await settle(guard)
    assert sink.ids(TickSource.LIVE) == [10, 18]
    assert sink.ids(TickSource.BACKFILL) == list(range(11, 18))
    assert history.calls == [(SYMBOL, 11, 17)]
    stats = guard.stats[SYMBOL]
    assert (stats.gaps, stats.backfilled, stats.duplicates, stats.unrecoverable) == (1, 7, 0, 0)
    events = {entry["event"]: entry for entry in logs}
    assert events["gap.detected"]["log_level"] == "warning"
    assert (events["gap.detected"]["from_id"], events["gap.detected"]["to_id"]) == (11, 17)
    assert events["gap.repaired"]["log_level"] == "info"
    assert events["gap.repaired"]["backfilled"] == 7


async def test_live_ticks_are_not_held_back_by_a_repair() -> None:
    history = FakeHistory(100)
    history.gate = asyncio.Event()
    guard, sink = guard_for(history)
    guard.publish(tick(1))
    guard.publish(tick(10))
    for i in range(11, 15):
        guard.publish(tick(i))
    await asyncio.sleep(0.01)
    assert sink.ids() == [1, 10, 11, 12, 13, 14]
    assert guard.repairing
    history.gate.set()
    await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == list(range(2, 10))


async def test_duplicates_are_dropped_and_counted() -> None:
    guard, sink = guard_for(FakeHistory(100))
    for i in (5, 6, 7, 6, 7, 5, 8):
        guard.publish(tick(i))
    assert sink.ids() == [5, 6, 7, 8]
    assert guard.stats[SYMBOL].duplicates == 3
    assert guard.stats[SYMBOL].gaps == 0


async def test_a_live_duplicate_of_a_backfilled_id_is_dropped() -> None:
    guard, sink = guard_for(FakeHistory(100))
    guard.publish(tick(1))
    guard.publish(tick(5))
    await settle(guard)
    guard.publish(tick(3))  # e.g. re-sent after a reconnect
    assert sorted(sink.ids()) == [1, 2, 3, 4, 5]
    assert guard.stats[SYMBOL].duplicates == 1


async def test_a_missing_id_that_arrives_live_during_the_repair_is_not_published_twice() -> None:
    history = FakeHistory(100)
    history.gate = asyncio.Event()
    guard, sink = guard_for(history)
    guard.publish(tick(1))
    guard.publish(tick(6))
    guard.publish(tick(4))  # still missing: published live, and the repair skips it
    guard.publish(tick(4))  # now a duplicate
    history.gate.set()
    await settle(guard)
    assert sorted(sink.ids()) == [1, 2, 3, 4, 5, 6]
    assert sink.ids(TickSource.BACKFILL) == [2, 3, 5]
    assert guard.stats[SYMBOL].duplicates == 1


async def test_gaps_found_during_a_repair_are_repaired_after_it() -> None:
    history = FakeHistory(100)
    history.gate = asyncio.Event()
    guard, sink = guard_for(history)
    guard.publish(tick(1))
    guard.publish(tick(5))
    guard.publish(tick(9))
    history.gate.set()
    await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == [2, 3, 4, 6, 7, 8]
    assert guard.stats[SYMBOL].gaps == 2


async def test_symbols_are_tracked_apart() -> None:
    guard, sink = guard_for(FakeHistory(100))
    guard.publish(tick(10, symbol="BTCUSDT"))
    guard.publish(tick(10, symbol="ETHUSDT"))
    guard.publish(tick(11, symbol="ETHUSDT"))
    guard.publish(tick(13, symbol="BTCUSDT"))
    await settle(guard)
    assert [(t.symbol, t.trade_id) for t in sink.ticks if t.source is TickSource.BACKFILL] == [
        ("BTCUSDT", 11),
        ("BTCUSDT", 12),
    ]
    assert "ETHUSDT" not in guard.stats


async def test_ticks_that_are_not_live_or_of_another_exchange_pass_through() -> None:
    guard, sink = guard_for(FakeHistory(100))
    guard.publish(tick(10))
    guard.publish(tick(3, source=TickSource.BACKFILL))
    guard.publish(tick(3, source=TickSource.REPLAY))
    guard.publish(tick(99, exchange=Exchange.OKX))
    guard.publish(tick(11))
    assert sink.ids() == [10, 3, 3, 99, 11]
    assert guard.stats == {}


async def test_an_unavailable_history_is_an_unrecoverable_gap() -> None:
    history = FakeHistory(100, page=2)
    history.fail = HistoryUnavailable("Binance no longer serves ids")
    guard, sink = guard_for(history)
    with capture_logs() as logs:
        guard.publish(tick(1))
        guard.publish(tick(8))
        await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == [2, 3]  # the good page before the failure
    stats = guard.stats[SYMBOL]
    assert (stats.unrecoverable, stats.unrecovered_ids) == (1, 4)
    (event,) = [entry for entry in logs if entry["event"] == "gap.unrecoverable"]
    assert event["log_level"] == "error"
    assert (event["from_id"], event["to_id"], event["missing"]) == (4, 7, 4)
    assert "no longer serves" in event["reason"]


async def test_a_history_that_lags_is_asked_again_then_given_up() -> None:
    history = FakeHistory(5)
    guard, sink = guard_for(history, short_retries=2)
    with capture_logs() as logs:
        guard.publish(tick(1))
        guard.publish(tick(10))
        await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == [2, 3, 4, 5]
    assert [call[1] for call in history.calls] == [2, 6, 6]
    assert guard.stats[SYMBOL].unrecovered_ids == 4
    assert [entry["event"] for entry in logs].count("gap.unrecoverable") == 1


async def test_a_history_that_catches_up_repairs_the_gap() -> None:
    history = FakeHistory(5)
    guard, sink = guard_for(history, short_retries=3, short_retry_delay=0.01)
    guard.publish(tick(1))
    guard.publish(tick(10))
    await asyncio.sleep(0)
    history.newest = 100
    await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == list(range(2, 10))
    assert guard.stats[SYMBOL].unrecoverable == 0


async def test_a_gap_larger_than_the_maximum_is_not_fetched() -> None:
    history = FakeHistory(10_000)
    guard, sink = guard_for(history, max_backfill=100)
    with capture_logs() as logs:
        guard.publish(tick(1))
        guard.publish(tick(1_000))
    assert not guard.repairing
    assert history.calls == []
    assert sink.ids() == [1, 1_000]
    (event,) = [entry for entry in logs if entry["event"] == "gap.unrecoverable"]
    assert event["missing"] == 998
    assert guard.stats[SYMBOL].unrecovered_ids == 998


async def test_resume_from_the_repository_backfills_the_downtime() -> None:
    repository = InMemoryTickRepository()
    await repository.add_many([tick(i) for i in range(40, 51)])
    guard, sink = guard_for(FakeHistory(100))
    await guard.resume_from(repository, [SYMBOL, "ETHUSDT"])
    guard.publish(tick(48))  # already stored: a duplicate
    guard.publish(tick(55))
    guard.publish(tick(7, symbol="ETHUSDT"))  # nothing stored: starts fresh
    await settle(guard)
    assert sink.ids(TickSource.LIVE) == [55, 7]
    assert sink.ids(TickSource.BACKFILL) == [51, 52, 53, 54]
    assert guard.stats[SYMBOL].duplicates == 1


async def test_seed_sets_the_last_ids() -> None:
    guard, sink = guard_for(FakeHistory(100))
    guard.seed({SYMBOL: 20})
    guard.publish(tick(20))
    guard.publish(tick(23))
    await settle(guard)
    assert sink.ids() == [23, 21, 22]


async def test_close_cancels_a_repair_that_does_not_finish_and_reports_it() -> None:
    history = FakeHistory(100)
    history.gate = asyncio.Event()  # never set
    guard, sink = guard_for(history, close_timeout=0.01)
    guard.publish(tick(1))
    guard.publish(tick(5))
    with capture_logs() as logs:
        await guard.close()
    assert not guard.repairing
    assert sink.ids() == [1, 5]
    (event,) = [entry for entry in logs if entry["event"] == "gap.unrecoverable"]
    assert (event["from_id"], event["to_id"]) == (2, 4)


async def test_close_lets_a_running_repair_finish() -> None:
    history = FakeHistory(100)
    history.gate = asyncio.Event()
    guard, sink = guard_for(history)
    guard.publish(tick(1))
    guard.publish(tick(5))
    asyncio.get_running_loop().call_later(0.01, history.gate.set)
    await guard.close()
    assert sink.ids(TickSource.BACKFILL) == [2, 3, 4]


def test_a_negative_maximum_is_refused() -> None:
    with pytest.raises(ValueError, match="max_backfill"):
        ContinuityGuard(RecordingSink(), FakeHistory(1), max_backfill=-1)


async def test_the_service_resumes_the_guard_and_lets_its_repairs_finish_before_the_bus_closes() -> None:
    repository = InMemoryTickRepository()
    await repository.add_many([tick(i) for i in range(1, 11)])
    history = FakeHistory(100)
    history.gate = asyncio.Event()
    closed: list[bool] = []

    async def on_close() -> None:
        closed.append(True)

    bus = BroadcastBus()
    counter = TickCounter(bus)
    guard = ContinuityGuard(counter, history, symbols=[SYMBOL], on_close=on_close, clock=lambda: NOW)
    feed = FakeFeed(guard, [tick(16), tick(17)], wait_for_stop=False)  # ends at once: the service stops
    persistence = PersistenceConsumer(repository, PersistencePolicy(flush_interval=0.01))
    service = MarketDataService(bus, counter, [feed], [persistence], guards=[guard], repository=repository)
    asyncio.get_running_loop().call_later(0.05, history.gate.set)

    summary = await asyncio.wait_for(service.run(), 5)

    assert summary.stop_reason == "binance feed ended"
    assert sorted(trade_id for (_, _, trade_id) in repository.rows) == list(range(1, 18))
    assert [repository.rows[(Exchange.BINANCE, SYMBOL, i)].source for i in range(11, 16)] == [
        TickSource.BACKFILL
    ] * 5
    assert closed == [True]


async def test_the_service_streams_on_when_resuming_fails() -> None:
    repository = InMemoryTickRepository()

    async def down(exchange: Exchange, symbol: str) -> MarketTick | None:
        raise ConnectionError("database unavailable (fake)")

    repository.latest_tick = down  # type: ignore[method-assign]
    bus = BroadcastBus()
    counter = TickCounter(bus)
    guard = ContinuityGuard(counter, FakeHistory(100), symbols=[SYMBOL])
    feed = FakeFeed(guard, [tick(16)], wait_for_stop=False)
    service = MarketDataService(bus, counter, [feed], [], guards=[guard], repository=repository)
    with capture_logs() as logs:
        summary = await asyncio.wait_for(service.run(), 5)
    assert summary.total == 1
    assert "gap.resume_failed" in [entry["event"] for entry in logs]


def test_the_container_puts_a_guard_with_the_configured_maximum_before_every_feed() -> None:
    container = Container(settings=Settings(backfill_max=5))
    (guard,) = container.guards()
    assert (guard.exchange, guard.max_backfill) == (Exchange.BINANCE, 5)
    both = Container(
        settings=Settings(
            exchanges=(Exchange.BINANCE, Exchange.OKX), symbols=("binance:btcusdt", "okx:btc-usdt")
        )
    )
    guards = both.guards()
    assert [guard.exchange for guard in guards] == [Exchange.BINANCE, Exchange.OKX]
    feeds = both.feeds()
    assert [feed.on_connected for feed in feeds] == [guard.connected for guard in guards]


async def test_a_crashing_history_gives_the_gap_up_and_later_gaps_are_still_repaired() -> None:
    history = FakeHistory(100)
    history.fail = RuntimeError("bug")
    guard, sink = guard_for(history)
    with capture_logs() as logs:
        guard.publish(tick(1))
        guard.publish(tick(5))
        await settle(guard)
        history.fail = None
        guard.publish(tick(8))
        await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == [2, 3, 4, 6, 7]
    assert [entry["event"] for entry in logs].count("gap.repair_crashed") == 1
    assert guard.stats[SYMBOL].unrecoverable == 0


def spanned(first: int, last: int) -> MarketTick:
    """An OKX-style live tick: one push covering the history's fills ``first``..``last``."""
    return tick(last)._replace(first_trade_id=first)


def event_kinds(sink: RecordingSink) -> list[tuple[str, int, int | None, int]]:
    return [(type(e).__name__, e.from_id, e.to_id, e.open_gaps) for e in sink.events]


async def test_a_gap_is_announced_on_the_bus_before_the_tick_that_revealed_it_and_closed_once() -> None:
    guard, sink = guard_for(FakeHistory(100))
    guard.publish(tick(10))
    guard.publish(tick(14))
    guard.publish(tick(20))
    detected, revealing = sink.items[1:3]
    assert detected == GapDetected(
        exchange=Exchange.BINANCE, symbol=SYMBOL, from_id=11, to_id=13, open_gaps=1
    )
    assert revealing == tick(14)
    await settle(guard)
    assert event_kinds(sink) == [
        ("GapDetected", 11, 13, 1),
        ("GapDetected", 15, 19, 2),
        ("GapRepaired", 11, 13, 1),
        ("GapRepaired", 15, 19, 0),
    ]
    repaired = sink.events[2]
    assert isinstance(repaired, GapRepaired)
    assert repaired.backfilled == 3
    assert guard.stats[SYMBOL].repair_seconds_max >= 0


async def test_an_unrecoverable_gap_closes_with_its_own_event() -> None:
    guard, sink = guard_for(FakeHistory(10_000), max_backfill=5)
    guard.publish(tick(1))
    guard.publish(tick(100))
    assert event_kinds(sink) == [("GapDetected", 2, 99, 1), ("GapUnrecoverable", 2, 99, 0)]
    closing = sink.events[1]
    assert isinstance(closing, GapUnrecoverable)
    assert closing.missing == 98
    assert "more than the 5" in closing.reason


async def test_a_gap_whose_ids_all_arrive_live_is_repaired_without_a_request() -> None:
    history = FakeHistory(100)
    history.gate = asyncio.Event()
    guard, sink = guard_for(history)
    guard.publish(tick(1))
    guard.publish(tick(4))
    guard.publish(tick(2))
    guard.publish(tick(3))
    history.gate.set()
    await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == []
    assert event_kinds(sink) == [("GapDetected", 2, 3, 1), ("GapRepaired", 2, 3, 0)]


async def test_after_a_connect_a_quiet_symbol_is_followed_up_from_its_last_id() -> None:
    history = FakeHistory(25, page=4)
    guard, sink = guard_for(history)
    guard.seed({SYMBOL: 10, "ETHUSDT": 25})
    with capture_logs() as logs:
        guard.connected()
        await asyncio.sleep(0.01)
        await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == [*range(11, 26)]
    assert (SYMBOL, 11, None) in history.calls
    assert [(t.symbol, t.trade_id) for t in sink.ticks if t.symbol == "ETHUSDT"] == []
    assert event_kinds(sink) == [("GapDetected", 11, None, 1), ("GapRepaired", 11, 25, 0)]
    assert "found_by" in next(entry for entry in logs if entry["event"] == "gap.detected")
    guard.publish(tick(20))  # the live stream re-sends one the follow-up published
    guard.publish(tick(26))
    assert guard.stats[SYMBOL].duplicates == 1
    assert sink.ids(TickSource.LIVE) == [26]


async def test_a_symbol_that_speaks_after_the_connect_is_not_followed_up() -> None:
    history = FakeHistory(100)
    guard, sink = guard_for(history, follow_delay=0.02)
    guard.seed({SYMBOL: 10})
    guard.connected()
    guard.publish(tick(11))
    await asyncio.sleep(0.05)
    await settle(guard)
    assert history.calls == []
    assert sink.events == []


async def test_a_follow_up_with_nothing_new_announces_nothing() -> None:
    history = FakeHistory(10)
    guard, sink = guard_for(history)
    guard.seed({SYMBOL: 10})
    guard.connected()
    await asyncio.sleep(0.01)
    await settle(guard)
    assert history.calls == [(SYMBOL, 11, None)]
    assert sink.ticks == []
    assert sink.events == []


async def test_a_follow_up_stops_where_the_live_stream_overtook_it() -> None:
    history = FakeHistory(100, page=2)
    history.gate = asyncio.Event()
    guard, sink = guard_for(history)
    guard.seed({SYMBOL: 10})
    guard.connected()
    await asyncio.sleep(0.01)
    assert guard.repairing
    guard.publish(tick(15))  # reveals 11..14 while the follow-up waits for the venue
    history.gate.set()
    await settle(guard)
    assert sorted(sink.ids()) == list(range(11, 16))
    assert sink.ids(TickSource.BACKFILL) == [11, 12, 13, 14]
    assert sink.events[-1].open_gaps == 0
    assert all(call[1] <= 15 for call in history.calls)


async def test_a_follow_up_past_the_maximum_leaves_the_rest_to_the_next_live_gap() -> None:
    history = FakeHistory(100, page=10)
    guard, sink = guard_for(history, max_backfill=20)
    guard.seed({SYMBOL: 10})
    with capture_logs() as logs:
        guard.connected()
        await asyncio.sleep(0.01)
        await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == list(range(11, 31))
    assert "gap.follow_up_stopped" in [entry["event"] for entry in logs]
    assert event_kinds(sink)[-1] == ("GapRepaired", 11, 30, 0)
    guard.publish(tick(101))
    await settle(guard)
    assert event_kinds(sink)[-2:] == [("GapDetected", 31, 100, 1), ("GapUnrecoverable", 31, 100, 0)]


async def test_a_restart_after_a_downtime_older_than_the_limit_reports_it_unrecoverable() -> None:
    repository = InMemoryTickRepository()
    await repository.add_many([tick(i) for i in range(40, 51)])
    history = FakeHistory(1000)
    guard, sink = guard_for(history, max_backfill_age=50.0)  # the stored trades are 100 s old
    with capture_logs() as logs:
        await guard.resume_from(repository, [SYMBOL])
        guard.connected()
        await asyncio.sleep(0.01)
        guard.publish(tick(60))
    assert history.calls == []
    assert sink.ids() == [60]
    assert event_kinds(sink) == [("GapDetected", 51, 59, 1), ("GapUnrecoverable", 51, 59, 0)]
    (unrecoverable,) = [entry for entry in logs if entry["event"] == "gap.unrecoverable"]
    assert "KAIROS_BACKFILL_MAX_AGE" in unrecoverable["reason"]
    assert "gap.resume_too_old" in [entry["event"] for entry in logs]


async def test_a_restart_within_the_age_limit_follows_up_a_quiet_symbol() -> None:
    repository = InMemoryTickRepository()
    await repository.add_many([tick(i) for i in range(40, 51)])
    guard, sink = guard_for(FakeHistory(55))
    await guard.resume_from(repository, [SYMBOL])
    guard.connected()
    await asyncio.sleep(0.01)
    await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == [51, 52, 53, 54, 55]


async def test_with_fills_spanned_a_tick_continues_from_the_end_of_the_previous_one() -> None:
    history = FakeHistory(100, spans_fills=True)
    guard, sink = guard_for(history)
    guard.publish(spanned(1, 3))
    guard.publish(spanned(4, 4))
    guard.publish(spanned(5, 9))
    assert sink.events == []
    guard.publish(spanned(13, 14))  # fills 10..12 missing
    guard.publish(spanned(5, 9))  # a re-sent push
    await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == [10, 11, 12]
    assert event_kinds(sink) == [("GapDetected", 10, 12, 1), ("GapRepaired", 10, 12, 0)]
    assert guard.stats[SYMBOL].duplicates == 1


async def test_with_fills_spanned_a_push_arriving_inside_a_gap_is_not_fetched_again() -> None:
    history = FakeHistory(100, spans_fills=True)
    history.gate = asyncio.Event()
    guard, sink = guard_for(history)
    guard.publish(spanned(1, 1))
    guard.publish(spanned(10, 10))
    guard.publish(spanned(4, 6))  # late, inside the gap 2..9
    history.gate.set()
    await settle(guard)
    assert sink.ids(TickSource.BACKFILL) == [2, 3, 7, 8, 9]


ACTIONS = st.lists(
    st.sampled_from(["send", "send", "send", "send", "drop", "resend", "late", "yield", "reconnect"]),
    min_size=1,
    max_size=80,
)
"""Per produced trade: sent live, never sent, sent twice, sent after the next one; or a pause in
which repairs run, or a reconnect (a follow-up is due)."""


async def _replay_with_faults(
    actions: list[str], push_sizes: list[int], spans_fills: bool
) -> tuple[RecordingSink, int]:
    """Returns what the guard published and the newest trade id produced."""
    history = FakeHistory(0, page=4, spans_fills=spans_fills)
    guard, sink = guard_for(history, follow_delay=0.0005)
    newest = 0
    late: list[MarketTick] = []
    sizes = iter(push_sizes)
    for action in actions:
        if action == "yield":
            await asyncio.sleep(0.001)
            continue
        if action == "reconnect":
            guard.connected()
            continue
        size = next(sizes, 1) if spans_fills else 1
        first, newest = newest + 1, newest + size
        history.newest = newest  # a trade is in the venue's history once it happened
        push = spanned(first, newest) if spans_fills else tick(newest)
        pending, late = late, []
        if action in ("send", "resend", "late"):
            (late if action == "late" else pending).append(push)
        if action == "resend":
            pending.append(push)
        for live in pending:
            guard.publish(live)
    for live in late:
        guard.publish(live)
    guard.connected()  # trailing trades that were never sent come back by the follow-up
    await asyncio.sleep(0.005)
    await settle(guard)
    await guard.close()
    return sink, newest


@given(actions=ACTIONS, push_sizes=st.lists(st.integers(1, 4), max_size=80), spans_fills=st.booleans())
def test_every_trade_after_the_first_received_is_published_exactly_once_and_every_gap_closes(
    actions: list[str], push_sizes: list[int], spans_fills: bool
) -> None:
    sink, newest = asyncio.run(_replay_with_faults(actions, push_sizes, spans_fills))
    covered = sorted(i for t in sink.ticks for i in range(t.first_trade_id, t.trade_id + 1))
    if sink.ticks:
        assert covered == list(range(sink.ticks[0].first_trade_id, newest + 1))
    detected = [e for e in sink.events if isinstance(e, GapDetected)]
    closed = [e for e in sink.events if not isinstance(e, GapDetected)]
    assert len(detected) == len(closed)
    assert not any(isinstance(e, GapUnrecoverable) for e in sink.events)
    assert all(e.open_gaps >= 0 for e in sink.events)
    if sink.events:
        assert sink.events[-1].open_gaps == 0
