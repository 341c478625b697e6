"""The service with fake feeds and recording consumers; the tick counter; the price monitor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from kairos_core.application.bus import BroadcastBus, Subscription
from kairos_core.application.consumers import Consumer
from kairos_core.application.consumers.price_monitor import PriceMonitor, price_text
from kairos_core.application.service import MarketDataService, RunSummary
from kairos_core.application.tick_counter import TickCounter
from kairos_core.domain import BusClosed, Exchange, FeedRefused, MarketTick, TickSink
from tests.fakes import FakeFeed
from tests.strategies import numbered_tick as tick
from tests.trading import read_to_end

GUARD_SECONDS = 5.0
"""Upper bound for any run in these tests, so a missed wake-up fails instead of hanging."""


def alternating(count: int, exchange: Exchange = Exchange.BINANCE) -> list[MarketTick]:
    """``count`` ticks, BTCUSDT and ETHUSDT in turn, trade ids 0, 1, 2, ..."""
    return [tick(seq, ("BTCUSDT", "ETHUSDT")[seq % 2], exchange) for seq in range(count)]


class RecordingConsumer(Consumer):
    """Keeps every tick it reads; yields to the loop after each, so it is slower than a feed."""

    def __init__(self, name: str, *, lossless: bool = False, delay: float = 0.0) -> None:
        self.name = name
        self.lossless = lossless
        self._delay = delay
        self.ticks: list[MarketTick] = []
        self.max_backlog = 0
        """The most ticks ever waiting for this consumer when it went to read."""
        self.finished = False

    async def run(self, subscription: Subscription) -> None:
        while True:
            self.max_backlog = max(self.max_backlog, subscription.stats().depth)
            try:
                received = await subscription.recv()
            except BusClosed:
                break
            self.ticks.append(received)
            await asyncio.sleep(self._delay)
        self.finished = True

    @property
    def trade_ids(self) -> list[int]:
        return [received.trade_id for received in self.ticks]


def make_service(
    ticks: Sequence[MarketTick],
    consumers: Sequence[Consumer],
    *,
    max_ticks: int | None = None,
    duration: float | None = None,
    capacity: int = 1000,
) -> tuple[MarketDataService, FakeFeed, TickCounter, BroadcastBus]:
    """Wired as the composition root wires it: feed -> counter -> bus -> consumers."""
    bus = BroadcastBus(capacity=capacity)
    counter = TickCounter(bus, limit=max_ticks)
    feed = FakeFeed(counter, ticks)
    return MarketDataService(bus, counter, [feed], consumers, duration=duration), feed, counter, bus


async def run_guarded(service: MarketDataService) -> RunSummary:
    async with asyncio.timeout(GUARD_SECONDS):
        return await service.run()


# --- MarketDataService --------------------------------------------------------------------------


async def test_max_ticks_stops_after_exactly_n_ticks() -> None:
    consumer = RecordingConsumer("recorder")
    service, feed, counter, bus = make_service(alternating(10), [consumer], max_ticks=7)

    summary = await run_guarded(service)

    assert summary == RunSummary(
        ticks={"binance:BTCUSDT": 4, "binance:ETHUSDT": 3},
        total=7,
        stop_reason="max-ticks reached",
        consumers={"recorder": summary.consumers["recorder"]},
    )
    assert (summary.consumers["recorder"].received, summary.consumers["recorder"].lost) == (7, 0)
    assert bus.published == 7
    assert feed.handed_over == 10
    assert counter.refused == 3
    assert consumer.trade_ids == list(range(7))


async def test_every_consumer_drains_every_tick_before_run_returns() -> None:
    consumers = [
        RecordingConsumer("fast"),
        RecordingConsumer("slow", delay=0.0005),
        RecordingConsumer("lossless", lossless=True),
        RecordingConsumer("slow-lossless", lossless=True, delay=0.0005),
    ]
    service, _, _, bus = make_service(alternating(60), consumers, max_ticks=50)

    summary = await run_guarded(service)

    assert summary.total == 50
    assert bus.closed
    for consumer in consumers:
        assert consumer.finished, consumer.name
        assert consumer.trade_ids == list(range(50)), consumer.name


async def test_feed_is_stopped_once_and_before_the_bus_closes() -> None:
    consumer = RecordingConsumer("recorder")
    service, feed, _, bus = make_service(alternating(3), [consumer], max_ticks=3)

    await run_guarded(service)

    assert feed.stop_calls == 1
    assert bus.closed


async def test_duration_stops_the_run() -> None:
    consumer = RecordingConsumer("recorder")
    service, feed, _, _ = make_service(alternating(5), [consumer], duration=0.05)
    started = time.monotonic()

    summary = await run_guarded(service)

    assert time.monotonic() - started >= 0.04
    assert (summary.ticks, summary.total, summary.stop_reason) == (
        {"binance:BTCUSDT": 3, "binance:ETHUSDT": 2},
        5,
        "duration elapsed",
    )
    assert feed.stop_calls == 1
    assert consumer.trade_ids == list(range(5))


async def test_counts_are_kept_per_exchange_and_symbol() -> None:
    bus = BroadcastBus()
    counter = TickCounter(bus)
    feeds = [
        FakeFeed(counter, alternating(3, Exchange.BINANCE), exchange=Exchange.BINANCE),
        FakeFeed(counter, [tick(100, "BTC-USDT", Exchange.OKX)], exchange=Exchange.OKX),
    ]
    consumer = RecordingConsumer("recorder")
    service = MarketDataService(bus, counter, feeds, [consumer], duration=0.02)

    summary = await run_guarded(service)

    assert summary.ticks == {"binance:BTCUSDT": 2, "binance:ETHUSDT": 1, "okx:BTC-USDT": 1}
    assert summary.total == 4
    assert sorted(consumer.trade_ids) == [0, 1, 2, 100]
    assert [feed.stop_calls for feed in feeds] == [1, 1]


async def test_a_feed_that_ends_stops_the_service() -> None:
    bus = BroadcastBus()
    counter = TickCounter(bus)
    feed = FakeFeed(counter, alternating(4), wait_for_stop=False)
    consumer = RecordingConsumer("recorder")

    summary = await run_guarded(MarketDataService(bus, counter, [feed], [consumer]))

    assert summary.stop_reason == "binance feed ended"
    assert summary.total == 4
    assert consumer.trade_ids == [0, 1, 2, 3]


async def test_refused_feed_stops_the_service_and_run_reraises_after_draining() -> None:
    bus = BroadcastBus()
    counter = TickCounter(bus)
    refusal = FeedRefused("handshake answered HTTP 451; use --binance-url for another endpoint")
    failing = FakeFeed(counter, alternating(5), fail_with=refusal)
    healthy = FakeFeed(counter, [tick(100, "BTC-USDT", Exchange.OKX)], exchange=Exchange.OKX)
    consumers = [RecordingConsumer("ordinary", delay=0.0005), RecordingConsumer("lossless", lossless=True)]
    service = MarketDataService(bus, counter, [failing, healthy], consumers)

    with pytest.raises(FeedRefused) as raised:
        await run_guarded(service)

    assert raised.value is refusal
    assert healthy.stop_calls == 1
    assert bus.closed
    for consumer in consumers:
        assert consumer.finished, consumer.name
        assert sorted(consumer.trade_ids) == [0, 1, 2, 3, 4, 100], consumer.name


async def test_refused_feed_is_logged_with_the_stop_reason() -> None:
    bus = BroadcastBus()
    counter = TickCounter(bus)
    feed = FakeFeed(counter, [], fail_with=FeedRefused("HTTP 403"))
    service = MarketDataService(bus, counter, [feed], [])

    with capture_logs() as logs, pytest.raises(FeedRefused):
        await run_guarded(service)

    failed = [entry for entry in logs if entry["event"] == "feed.failed"]
    assert failed == [
        {"event": "feed.failed", "log_level": "error", "exchange": Exchange.BINANCE, "error": "HTTP 403"}
    ]
    stopped = [entry for entry in logs if entry["event"] == "service.stopped"]
    assert stopped[0]["reason"] == "binance feed failed"


async def test_request_stop_is_idempotent() -> None:
    consumer = RecordingConsumer("recorder")
    service, feed, _, _ = make_service(alternating(2), [consumer])

    service.request_stop("operator")
    service.request_stop("again")
    summary = await run_guarded(service)

    assert summary.stop_reason == "operator"
    assert feed.stop_calls == 1
    assert consumer.trade_ids == [0, 1]


async def test_request_stop_while_running_keeps_the_first_reason() -> None:
    consumer = RecordingConsumer("recorder")
    service, feed, _, _ = make_service(alternating(3), [consumer])
    loop = asyncio.get_running_loop()
    loop.call_soon(service.request_stop, "SIGTERM")
    loop.call_soon(service.request_stop, "SIGINT")

    summary = await run_guarded(service)

    assert summary.stop_reason == "SIGTERM"
    assert feed.stop_calls == 1
    assert consumer.finished


async def test_slow_lossless_consumer_holds_the_feed_back_and_loses_nothing() -> None:
    consumer = RecordingConsumer("persistence", lossless=True, delay=0.0002)
    service, feed, _, bus = make_service(alternating(40), [consumer], capacity=4, max_ticks=40)

    summary = await run_guarded(service)

    assert summary.total == 40
    assert feed.handed_over == 40
    assert consumer.trade_ids == list(range(40))
    assert 0 < consumer.max_backlog <= bus.capacity


async def test_service_logs_start_stop_and_summary() -> None:
    service, _, _, _ = make_service(alternating(2), [RecordingConsumer("recorder")], max_ticks=2)

    with capture_logs() as logs:
        await run_guarded(service)

    assert [entry["event"] for entry in logs] == ["service.started", "service.stopping", "service.stopped"]
    assert logs[0]["feeds"] == ["binance"]
    assert logs[0]["consumers"] == 1
    assert logs[2]["ticks_total"] == 2
    assert logs[2]["ticks"] == {"binance:BTCUSDT": 1, "binance:ETHUSDT": 1}


async def test_price_monitor_runs_as_a_consumer_of_the_service() -> None:
    service, _, _, _ = make_service(alternating(6), [PriceMonitor(interval=0)], max_ticks=6)

    with capture_logs() as logs:
        summary = await run_guarded(service)

    updates = [entry for entry in logs if entry["event"] == "price.update"]
    assert summary.total == 6
    assert [entry["price"] for entry in updates] == [f"{58001 + seq}.00" for seq in range(6)]


# --- TickCounter --------------------------------------------------------------------------------


class FakeSink(TickSink):
    def __init__(self) -> None:
        self.published: list[MarketTick] = []
        self.writable_calls = 0

    def publish(self, tick: MarketTick) -> None:
        self.published.append(tick)

    async def writable(self) -> None:
        self.writable_calls += 1


def test_counter_without_limit_forwards_and_counts_everything() -> None:
    sink = FakeSink()
    counter = TickCounter(sink)
    ticks = [*alternating(5), tick(9, "BTCUSDT", Exchange.OKX)]

    for item in ticks:
        counter.publish(item)

    assert sink.published == ticks
    assert counter.total == 6
    assert counter.refused == 0
    assert counter.per_symbol == {
        (Exchange.BINANCE, "BTCUSDT"): 3,
        (Exchange.BINANCE, "ETHUSDT"): 2,
        (Exchange.OKX, "BTCUSDT"): 1,
    }


def test_counter_accepts_exactly_the_limit_and_calls_on_limit_once() -> None:
    sink = FakeSink()
    counter = TickCounter(sink, limit=3)
    calls: list[int] = []
    counter.on_limit = lambda: calls.append(len(sink.published))

    for item in alternating(8):
        counter.publish(item)

    assert [item.trade_id for item in sink.published] == [0, 1, 2]
    assert calls == [3]
    assert counter.total == 3
    assert counter.refused == 5


@pytest.mark.parametrize("limit", [0, -1])
def test_counter_rejects_a_limit_below_one(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TickCounter(FakeSink(), limit=limit)


async def test_counter_writable_asks_the_sink() -> None:
    sink = FakeSink()

    await TickCounter(sink).writable()

    assert sink.writable_calls == 1


# --- price_text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "text"),
    [
        (Decimal("3098.07000000"), "3098.07"),
        (Decimal("58001.00000000"), "58001.00"),
        (Decimal("0.35130000"), "0.3513"),
        (Decimal("1E+2"), "100.00"),
        (Decimal("7"), "7.00"),
        (Decimal("0.1"), "0.10"),
        (Decimal("0.00000010"), "0.0000001"),
        (Decimal("0E-8"), "0.00"),
        (Decimal("12345678901.12345678"), "12345678901.12345678"),
    ],
    ids=str,
)
def test_price_text(price: Decimal, text: str) -> None:
    assert price_text(price) == text


# --- PriceMonitor -------------------------------------------------------------------------------


async def test_price_monitor_logs_the_first_tick_of_each_symbol_then_throttles() -> None:
    ticks = [
        tick(0, "BTCUSDT"),
        tick(1, "BTCUSDT"),
        tick(2, "ETHUSDT"),
        tick(3, "BTCUSDT"),
        tick(4, "ETHUSDT"),
    ]

    logs = await read_to_end(PriceMonitor(interval=3600), ticks)

    assert logs == [
        {
            "event": "price.update",
            "log_level": "info",
            "exchange": Exchange.BINANCE,
            "symbol": "BTCUSDT",
            "price": "58001.00",
            "volume": "0.0220",
            "trade_id": 0,
        },
        {
            "event": "price.update",
            "log_level": "info",
            "exchange": Exchange.BINANCE,
            "symbol": "ETHUSDT",
            "price": "58003.00",
            "volume": "0.0220",
            "trade_id": 2,
        },
    ]


async def test_price_monitor_throttles_each_exchange_apart() -> None:
    ticks = [tick(0, "BTCUSDT", Exchange.BINANCE), tick(1, "BTCUSDT", Exchange.OKX), tick(2, "BTCUSDT")]

    logs = await read_to_end(PriceMonitor(interval=3600), ticks)

    assert [(entry["exchange"], entry["price"]) for entry in logs] == [
        (Exchange.BINANCE, "58001.00"),
        (Exchange.OKX, "58002.00"),
    ]


async def test_price_monitor_with_zero_interval_logs_every_tick() -> None:
    logs = await read_to_end(PriceMonitor(interval=0), alternating(5))

    assert [entry["price"] for entry in logs] == [f"{58001 + seq}.00" for seq in range(5)]


async def test_price_monitor_logs_again_once_the_interval_has_passed() -> None:
    bus = BroadcastBus()
    monitor = PriceMonitor(interval=0.01)
    subscription = bus.subscribe(monitor.name)
    with capture_logs() as logs:
        async with asyncio.timeout(GUARD_SECONDS):
            task = asyncio.create_task(monitor.run(subscription))
            bus.publish(tick(0))
            while not logs:
                await asyncio.sleep(0)
            await asyncio.sleep(0.02)  # the interval passes after the first tick was logged
            bus.publish(tick(1))
            bus.close()
            await task

    assert [entry["price"] for entry in logs] == ["58001.00", "58002.00"]


async def test_price_monitor_warns_when_it_lags_and_goes_on() -> None:
    logs = await read_to_end(PriceMonitor(interval=3600), [tick(seq) for seq in range(5)], capacity=2)

    assert logs == [
        {"event": "consumer.lagged", "log_level": "warning", "consumer": "price_monitor", "missed": 3},
        {
            "event": "price.update",
            "log_level": "info",
            "exchange": Exchange.BINANCE,
            "symbol": "BTCUSDT",
            "price": "58004.00",
            "volume": "0.0220",
            "trade_id": 3,
        },
    ]


def test_price_monitor_is_an_ordinary_consumer() -> None:
    monitor = PriceMonitor()

    assert monitor.name == "price_monitor"
    assert monitor.lossless is False


async def test_a_crashing_feed_still_drains_then_raises() -> None:
    consumer = RecordingConsumer("recorder", lossless=True)
    bus = BroadcastBus()
    counter = TickCounter(bus)
    feed = FakeFeed(counter, alternating(5), fail_with=RuntimeError("bug"))
    service = MarketDataService(bus, counter, [feed], [consumer])

    with capture_logs() as logs, pytest.raises(RuntimeError, match="bug"):
        await run_guarded(service)

    assert consumer.trade_ids == [0, 1, 2, 3, 4]
    assert consumer.finished
    stopped = [entry for entry in logs if entry["event"] == "service.stopped"]
    assert stopped[0]["reason"] == "binance feed crashed"


class QuittingConsumer(Consumer):
    """A lossless consumer that reads one tick and returns without closing its subscription."""

    name = "quitter"
    lossless = True

    async def run(self, subscription: Subscription) -> None:
        await subscription.recv()


async def test_a_lossless_consumer_that_returns_early_does_not_hold_the_feed_back() -> None:
    service, feed, _, _ = make_service(alternating(50), [QuittingConsumer()], capacity=4)

    service_task = asyncio.create_task(run_guarded(service))
    async with asyncio.timeout(GUARD_SECONDS):
        while feed.handed_over < 50:
            await asyncio.sleep(0.001)
    service.request_stop("test")
    summary = await service_task

    assert summary.total == 50


class CrashingConsumer(Consumer):
    """Raises on the tick numbers in ``crash_on`` (once each), keeping what it read on the object."""

    def __init__(self, crash_on: set[int], *, lossless: bool = True, always: bool = False) -> None:
        self.name = "crashy"
        self.lossless = lossless
        self.crash_on = set(crash_on)
        self.always = always
        self.trade_ids: list[int] = []
        self.runs = 0

    async def run(self, subscription: Subscription) -> None:
        self.runs += 1
        if self.always and subscription._bus.closed:  # a bug that survives every restart
            raise RuntimeError("still broken")
        async for received in subscription:
            if received.trade_id in self.crash_on:
                self.crash_on.discard(received.trade_id)
                raise RuntimeError(f"bug on tick {received.trade_id}")
            self.trade_ids.append(received.trade_id)


async def test_a_crashing_consumer_is_logged_and_restarted_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kairos_core.application.service.CONSUMER_RESTART_INITIAL", 0.001)
    crashy = CrashingConsumer({3, 7})
    steady = RecordingConsumer("steady", lossless=True)
    service, feed, _, _ = make_service(alternating(20), [crashy, steady], max_ticks=20)

    with capture_logs() as logs:
        summary = await run_guarded(service)

    assert summary.total == 20
    assert steady.trade_ids == list(range(20))
    # The tick a consumer crashed on is the one it was handling; it goes on from the next.
    assert crashy.trade_ids == [n for n in range(20) if n not in (3, 7)]
    assert crashy.runs == 3
    crashes = [entry for entry in logs if entry["event"] == "consumer.crashed"]
    assert [entry["consumer"] for entry in crashes] == ["crashy", "crashy"]
    assert all(entry["exc_info"] for entry in crashes)
    assert feed.stop_calls == 1


async def test_a_consumer_that_keeps_crashing_after_close_does_not_hold_the_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kairos_core.application.service.CONSUMER_RESTART_INITIAL", 0.001)
    crashy = CrashingConsumer({4}, always=True)
    service, _, _, _ = make_service(alternating(10), [crashy], max_ticks=10)

    with capture_logs() as logs:
        summary = await run_guarded(service)

    assert summary.total == 10
    assert "consumer.abandoned" in [entry["event"] for entry in logs]
