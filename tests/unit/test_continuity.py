"""ContinuityGuard: duplicates dropped, gaps repaired from a fake history, live ticks never held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer, PersistencePolicy
from kairos_core.application.continuity import ContinuityGuard
from kairos_core.application.service import MarketDataService
from kairos_core.application.tick_counter import TickCounter
from kairos_core.bootstrap.container import Container
from kairos_core.domain import (
    Exchange,
    HistoryUnavailable,
    MarketTick,
    Side,
    TickSource,
    TradeHistoryPort,
)
from kairos_core.settings import Settings
from tests.fakes import FakeFeed, InMemoryTickRepository

SYMBOL = "BTCUSDT"


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
    def __init__(self) -> None:
        self.ticks: list[MarketTick] = []

    def publish(self, item: MarketTick) -> None:
        self.ticks.append(item)

    async def writable(self) -> None:
        await asyncio.sleep(0)

    def ids(self, source: TickSource | None = None) -> list[int]:
        return [t.trade_id for t in self.ticks if source is None or t.source is source]


class FakeHistory(TradeHistoryPort):
    """Serves ids up to ``newest`` of every symbol in pages of ``page``; no I/O.

    ``gate``: each page waits for it. ``fail``: raised after the first page.
    """

    def __init__(self, newest: int, *, page: int = 3) -> None:
        self.newest = newest
        self.page = page
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.calls: list[tuple[str, int, int | None]] = []

    @property
    def exchange(self) -> Exchange:
        return Exchange.BINANCE

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
    defaults: dict[str, float] = {"short_retries": 2, "short_retry_delay": 0.001, "close_timeout": 1.0}
    defaults.update(options)
    return ContinuityGuard(
        sink,
        history,
        max_backfill=int(defaults.pop("max_backfill", 1_000)),
        short_retries=int(defaults["short_retries"]),
        short_retry_delay=defaults["short_retry_delay"],
        close_timeout=defaults["close_timeout"],
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
    guard = ContinuityGuard(counter, history, symbols=[SYMBOL], on_close=on_close)
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

    async def down(exchange: Exchange, symbol: str) -> int | None:
        raise ConnectionError("database unavailable (fake)")

    repository.last_trade_id = down  # type: ignore[method-assign]
    bus = BroadcastBus()
    counter = TickCounter(bus)
    guard = ContinuityGuard(counter, FakeHistory(100), symbols=[SYMBOL])
    feed = FakeFeed(guard, [tick(16)], wait_for_stop=False)
    service = MarketDataService(bus, counter, [feed], [], guards=[guard], repository=repository)
    with capture_logs() as logs:
        summary = await asyncio.wait_for(service.run(), 5)
    assert summary.total == 1
    assert "gap.resume_failed" in [entry["event"] for entry in logs]


def test_the_container_puts_a_guard_with_the_configured_maximum_before_binance_only() -> None:
    container = Container(settings=Settings(backfill_max=5))
    (guard,) = container.guards()
    assert (guard.exchange, guard.max_backfill) == (Exchange.BINANCE, 5)
    okx = Container(settings=Settings(exchanges=(Exchange.OKX,), symbols=("BTC-USDT",)))
    assert okx.guards() == []


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
