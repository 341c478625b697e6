"""The counters behind metrics and health: sampling, the status reader, readiness."""

from __future__ import annotations

import asyncio
import time

import pytest

from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer, PersistencePolicy
from kairos_core.application.latency import LatencyHistogram, sample_mask
from kairos_core.application.status import HealthPolicy, ServiceStatusReader, Trading
from kairos_core.application.tick_counter import TickCounter
from kairos_core.domain import Exchange, RiskRejection, Side, TickSource
from kairos_core.domain.status import ConnectionStatus, FeedStatus, FeedStatusPort
from tests.fakes import InMemoryTickRepository
from tests.strategies import numbered_tick
from tests.trading import GUARD_SECONDS, ScriptedStrategy, pipeline, ticks_at

NOW_NS = 1_700_000_000_000_000_000


class FakeFeedStatus(FeedStatusPort):
    """One connection whose state the test sets."""

    def __init__(self, *, up: bool = True, state_seconds: float = 1.0, silent_seconds: float = 0.0) -> None:
        self.up, self.state_seconds, self.silent_seconds = up, state_seconds, silent_seconds

    def status(self) -> FeedStatus:
        connection = ConnectionStatus(
            exchange=Exchange.BINANCE,
            name="127.0.0.1:9443",
            up=self.up,
            state_seconds=self.state_seconds,
            silent_seconds=self.silent_seconds,
            watchdog_seconds=60.0,
        )
        return FeedStatus(
            exchange=Exchange.BINANCE, connections=(connection,), reconnects={"dropped": 2}, rejected={}
        )


def reader(counter: TickCounter, bus: BroadcastBus, **parts: object) -> ServiceStatusReader:
    return ServiceStatusReader(bus=bus, counter=counter, clock=lambda: NOW_NS, **parts)  # type: ignore[arg-type]


def test_a_histogram_counts_each_observation_in_the_first_bucket_at_or_above_it() -> None:
    histogram = LatencyHistogram((0.001, 0.01))

    for nanoseconds in (0, 1_000_000, 1_000_001, 10_000_000, 20_000_000, -5):
        histogram.observe_ns(nanoseconds)

    snapshot = histogram.snapshot()
    assert snapshot.counts == (3, 2, 1)  # -5 counts as 0: another host's clock may run ahead
    assert snapshot.count == 6
    assert snapshot.total == pytest.approx(0.032000001)


@pytest.mark.parametrize("every", [3, -1, 100])
def test_sampling_needs_a_power_of_two(every: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        sample_mask(every)


def test_the_counter_times_every_nth_live_tick_of_a_symbol_and_keeps_its_last_live_one() -> None:
    bus = BroadcastBus(capacity=100)
    counter = TickCounter(bus, sample_every=4)
    for seq in range(1, 10):
        counter.publish(numbered_tick(seq))
    backfilled = numbered_tick(3)._replace(source=TickSource.BACKFILL)
    counter.publish(backfilled)

    histogram = counter.trade_to_receipt[Exchange.BINANCE].snapshot()
    assert histogram.count == 2  # ticks 4 and 8 of BTCUSDT
    symbol = counter.symbols[Exchange.BINANCE, "BTCUSDT"]
    assert symbol.count == 10
    assert symbol.last == numbered_tick(9)  # a backfilled tick is history, not the last price
    assert counter.per_symbol == {(Exchange.BINANCE, "BTCUSDT"): 10}


def test_without_sampling_nothing_is_timed() -> None:
    bus = BroadcastBus()
    counter = TickCounter(bus)
    subscription = bus.subscribe("reader")
    for seq in range(200):
        counter.publish(numbered_tick(seq))
    while subscription.try_recv() is not None:
        pass

    assert counter.trade_to_receipt == {}
    assert bus.latency() == {}


def test_each_subscriber_times_every_nth_item_it_reads() -> None:
    bus = BroadcastBus(capacity=100, sample_every=2)
    ordinary, lossless = bus.subscribe("ordinary"), bus.subscribe("lossless", lossless=True)
    now = time.time_ns()
    for seq in range(10):
        bus.publish(numbered_tick(seq)._replace(received_at_ns=now))
    for subscription in (ordinary, lossless):
        while subscription.try_recv() is not None:
            pass

    latency = bus.latency()
    assert {name: histogram.snapshot().count for name, histogram in latency.items()} == {
        "ordinary": 5,
        "lossless": 5,
    }
    assert latency["ordinary"].snapshot().total < 10.0


def test_the_snapshot_reports_every_configured_symbol_and_flags_stale_ones() -> None:
    bus = BroadcastBus()
    counter = TickCounter(bus)
    now = [0]
    status = ServiceStatusReader(
        bus=bus,
        counter=counter,
        symbols=[(Exchange.BINANCE, "BTCUSDT"), (Exchange.BINANCE, "SOLUSDT")],
        feeds=[FakeFeedStatus()],
        policy=HealthPolicy(stale_after=300),
        clock=lambda: now[0],
    )
    counter.publish(numbered_tick(1))
    status.snapshot()  # a look sees BTCUSDT's tick at 0 s
    counter.publish(numbered_tick(2, "ETHUSDT"))
    now[0] = 400 * 10**9

    snapshot = status.snapshot()

    by_symbol = {symbol.symbol: symbol for symbol in snapshot.symbols}
    assert set(by_symbol) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert by_symbol["BTCUSDT"].stale
    assert by_symbol["BTCUSDT"].seconds_since_last_tick == pytest.approx(400)
    assert not by_symbol["ETHUSDT"].stale
    assert by_symbol["SOLUSDT"].stale, "a configured symbol that never traded is silent since the start"
    assert by_symbol["SOLUSDT"].ticks == 0
    assert by_symbol["SOLUSDT"].last_price is None
    assert snapshot.readiness.ready, "a stale symbol is reported, not a reason to be unready"


@pytest.mark.parametrize(
    ("feed", "ready", "problem"),
    [
        (FakeFeedStatus(up=False, state_seconds=3.0), True, None),
        (
            FakeFeedStatus(up=False, state_seconds=6.0),
            False,
            "binance connection 127.0.0.1:9443 down for 6 s",
        ),
        (FakeFeedStatus(silent_seconds=59.0), True, None),
        (FakeFeedStatus(silent_seconds=61.0), False, "silent for 61 s (watchdog 60 s)"),
    ],
)
def test_a_feed_connection_down_past_the_grace_or_silent_past_its_watchdog_is_unready(
    feed: FakeFeedStatus, ready: bool, problem: str | None
) -> None:
    bus = BroadcastBus()
    readiness = reader(TickCounter(bus), bus, feeds=[feed]).snapshot().readiness

    assert readiness.ready is ready
    if problem is not None:
        assert problem in readiness.problems[0]


async def test_failing_writes_make_it_unready_only_once_the_buffer_is_half_full() -> None:
    bus = BroadcastBus(capacity=1_000)
    repository = InMemoryTickRepository()
    repository.down = True
    persistence = PersistenceConsumer(
        repository, PersistencePolicy(batch_size=10, buffer_limit=100, retry_max=0.1)
    )
    status = reader(TickCounter(bus), bus, persistence=persistence)
    running = asyncio.create_task(persistence.run(bus.subscribe("persistence", lossless=True)))

    for seq in range(20):
        bus.publish(numbered_tick(seq))
    await wait_for(lambda: persistence.stats.failing)
    assert status.snapshot().readiness.ready  # failing, but 20 of 100 buffered

    for seq in range(20, 60):
        bus.publish(numbered_tick(seq))
    await wait_for(lambda: persistence.buffered >= 50)
    readiness = status.snapshot().readiness
    assert not readiness.ready
    assert "database writes failing" in readiness.problems[0]

    repository.down = False
    await wait_for(lambda: persistence.buffered == 0)
    after = status.snapshot()
    assert after.readiness.ready
    assert after.persistence is not None
    assert after.persistence.stored == 60
    assert not after.persistence.failing
    assert after.persistence.retries >= 1
    assert after.persistence.batch_seconds.count == after.persistence.batches
    bus.close()
    await asyncio.wait_for(running, GUARD_SECONDS)


async def test_trading_counts_intents_approvals_rejections_and_fills() -> None:
    strategy = ScriptedStrategy(
        {1: {"side": Side.BUY}, 2: {"side": Side.BUY, "quantity": "5"}, 3: {"side": Side.SELL}}
    )
    trading = pipeline(strategy)
    bus = BroadcastBus()
    status = reader(
        TickCounter(bus),
        bus,
        trading=Trading(strategy=trading.strategies, risk=trading.risk_consumer, book=trading.broker),
    )
    runs = [asyncio.create_task(c.run(bus.subscribe(c.name))) for c in trading.consumers()]
    for tick in ticks_at([100, 101, 102, 103]):
        bus.publish(tick)
    bus.close()
    await asyncio.wait_for(asyncio.gather(*runs), GUARD_SECONDS)

    snapshot = status.snapshot().trading
    assert snapshot is not None
    assert (snapshot.intents, snapshot.approved, snapshot.fills) == (3, 2, 2)
    assert snapshot.rejected == {str(RiskRejection.POSITION_LIMIT): 1}
    assert [str(position.quantity) for position in snapshot.positions] == ["0.00"]


async def wait_for(condition: object, timeout: float = GUARD_SECONDS) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
