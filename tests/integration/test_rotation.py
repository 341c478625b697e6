"""Make-before-break rotation, sharding and the venue's limits, against the real simulator.

The feed streams into the real ``ContinuityGuard`` whose REST history points at a port where
nothing listens: any trade a rotation lost would show as a ``GapDetected`` that can never be
repaired. So these tests prove that a rotation loses nothing without REST's help.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace

from structlog.testing import capture_logs

from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.inbound.feed_handler.binance_history import BinanceTradeHistory
from kairos_core.adapters.inbound.feed_handler.link import RotationReason
from kairos_core.adapters.inbound.feed_handler.planner import BINANCE_LIMITS, ConnectionPlanner, VenueLimits
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy
from kairos_core.application.continuity import ContinuityGuard
from kairos_core.domain import GapEvent, MarketTick
from kairos_core.simulator.binance import BinanceSimulator

SHUTDOWN = '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1700000000000}}'
PAIR = ("btcusdt", "ethusdt")
NOWHERE = "http://127.0.0.1:9"  # REST history that never answers


class Collected:
    """The guard's sink: every tick and gap event it let through, in order."""

    def __init__(self) -> None:
        self.ticks: list[MarketTick] = []
        self.events: list[GapEvent] = []

    def publish(self, tick: MarketTick) -> None:
        self.ticks.append(tick)

    def publish_event(self, event: GapEvent) -> None:
        self.events.append(event)

    async def writable(self) -> None:
        return None

    def ids(self) -> dict[str, list[int]]:
        """Aggregate trade ids per symbol, in the order they came (Binance's ids run without gaps)."""
        ids: dict[str, list[int]] = {}
        for tick in self.ticks:
            ids.setdefault(tick.symbol, []).append(tick.trade_id)
        return ids


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def assert_each_id_once(collected: Collected) -> None:
    assert collected.events == [], "a gap showed: a rotation lost trades"
    for symbol, ids in collected.ids().items():
        assert ids == list(range(ids[0], ids[-1] + 1)), f"{symbol}: ids missing or repeated past the guard"


@contextmanager
def no_task_left() -> Iterator[None]:
    before = asyncio.all_tasks()
    yield
    left = {task for task in asyncio.all_tasks() - before if not task.done()}
    assert not left, left


async def run_feed(
    simulator: BinanceSimulator,
    limits: VenueLimits,
    until: Callable[[BinanceFeedHandler, Collected], bool],
    *,
    symbols: tuple[str, ...] | None = None,
    during: Callable[[], object] | None = None,
    watchdog: float = 60.0,
) -> tuple[BinanceFeedHandler, Collected]:
    collected = Collected()
    async with BinanceTradeHistory(NOWHERE) as history:
        guard = ContinuityGuard(collected, history, follow_delay=3600)
        feed = BinanceFeedHandler(
            guard,
            symbols or simulator.symbols,
            url=f"ws://127.0.0.1:{simulator.port}/stream",
            rest_url=None,
            policy=ReconnectPolicy(initial_delay=0.05, max_delay=0.2),
            planner=ConnectionPlanner(limits),
            watchdog=watchdog,
        )
        running = asyncio.create_task(feed.start())
        try:
            await eventually(lambda: len(collected.ticks) > 50, "the first ticks")
            if during is not None:
                result = during()
                if asyncio.iscoroutine(result):
                    await result
            await eventually(lambda: until(feed, collected), "the condition", timeout=20)
            await eventually(lambda: len(collected.ticks) > 50 + len(collected.ticks) // 2, "more ticks")
        finally:
            await feed.stop()
            await running
            await guard.close()
    return feed, collected


async def test_connections_are_rotated_before_their_lifetime_ends_and_lose_nothing() -> None:
    simulator = BinanceSimulator(
        ("btcusdt", "ethusdt"), rate=2_000, seed=11, id_base=1_000, ping_interval=None
    )
    await simulator.start()
    try:
        with capture_logs() as logs, no_task_left():
            limits = replace(BINANCE_LIMITS, lifetime=1.0)
            feed, collected = await run_feed(
                simulator, limits, lambda feed, _: feed.rotations[RotationReason.LIFETIME] >= 3
            )
    finally:
        await simulator.stop()

    assert feed.reconnects == 0
    assert_each_id_once(collected)
    rotated = [entry for entry in logs if entry["event"] == "feed.rotated"]
    assert len(rotated) >= 3
    assert all(entry["reason"] == "lifetime" for entry in rotated)
    assert sum(entry["held_frames"] for entry in rotated) > 0, "the overlap was held back, then let through"


async def test_a_server_shutdown_event_rotates_the_connection_at_once_and_loses_nothing() -> None:
    simulator = BinanceSimulator(
        ("btcusdt", "ethusdt"), rate=2_000, seed=12, id_base=5_000, ping_interval=None
    )
    await simulator.start()
    try:
        with capture_logs() as logs:
            feed, collected = await run_feed(
                simulator,
                BINANCE_LIMITS,
                lambda feed, _: feed.rotations[RotationReason.ANNOUNCED] == 1,
                during=lambda: simulator.inject(SHUTDOWN),
            )
    finally:
        await simulator.stop()

    assert simulator.handshakes == 2
    assert feed.reconnects == 0
    assert_each_id_once(collected)
    assert [entry["reason"] for entry in logs if entry["event"] == "feed.rotated"] == ["announced"]


async def test_symbols_beyond_a_connections_limit_are_sharded_and_every_shard_streams() -> None:
    symbols = tuple(f"sym{index:03d}usdt" for index in range(7))
    simulator = BinanceSimulator(symbols, rate=1_000, seed=13, id_base=9_000, ping_interval=None)
    await simulator.start()
    try:
        limits = replace(BINANCE_LIMITS, streams_per_connection=3)
        feed, collected = await run_feed(
            simulator, limits, lambda _, collected: len(collected.ids()) == 7, symbols=symbols
        )
    finally:
        await simulator.stop()

    assert [len(link.shard) for link in feed.links] == [3, 2, 2]
    assert simulator.handshakes == 3
    assert set(collected.ids()) == {symbol.upper() for symbol in symbols}
    assert_each_id_once(collected)
    assert [connection.up for connection in feed.status().connections] == [False, False, False]


async def test_a_shard_too_long_for_the_url_subscribes_by_request_at_the_venues_pace() -> None:
    symbols = tuple(f"s{index:04d}usdt" for index in range(450))  # 450 streams: 3 requests of up to 200
    simulator = BinanceSimulator(symbols, rate=2_000, seed=14, id_base=20_000, ping_interval=None)
    await simulator.start()
    try:
        limits = replace(BINANCE_LIMITS, sends_per_window=2, reserved_sends=1)  # 1 request a second
        started = time.monotonic()
        feed, collected = await run_feed(
            simulator, limits, lambda _, collected: len(collected.ids()) == len(symbols), symbols=symbols
        )
        took = time.monotonic() - started
    finally:
        await simulator.stop()

    assert len(feed.links) == 1
    assert took >= 2.0, "three requests at one a second take two seconds at least"
    assert set(collected.ids()) == {symbol.upper() for symbol in symbols}
    assert_each_id_once(collected)


async def test_new_connections_wait_for_the_connection_budget() -> None:
    symbols = ("aaausdt", "bbbusdt", "cccusdt")
    simulator = BinanceSimulator(symbols, rate=600, seed=15, id_base=30_000, ping_interval=None)
    await simulator.start()
    try:
        limits = replace(
            BINANCE_LIMITS, streams_per_connection=1, connections_per_window=2, connection_window=1.0
        )
        with capture_logs() as logs:
            feed, collected = await run_feed(
                simulator, limits, lambda feed, _: all(link.current for link in feed.links), symbols=symbols
            )
    finally:
        await simulator.stop()

    assert feed.planner.connection_waits == 1
    (waited,) = [entry for entry in logs if entry["event"] == "feed.connection_budget"]
    assert 0 < waited["wait_seconds"] <= 1.0
    assert_each_id_once(collected)


@asynccontextmanager
async def silent_run(
    simulator: BinanceSimulator, *, watchdog: float, follow_delay: float
) -> AsyncIterator[tuple[BinanceFeedHandler, ContinuityGuard, Collected]]:
    """The feed streaming through a guard whose history is the simulator's own REST, until the
    block ends (the simulator is stopped after)."""
    port = await simulator.start()
    collected = Collected()
    try:
        async with BinanceTradeHistory(f"http://127.0.0.1:{port}") as history:
            guard = ContinuityGuard(collected, history, follow_delay=follow_delay)
            feed = BinanceFeedHandler(
                guard,
                PAIR,
                url=f"ws://127.0.0.1:{port}/stream",
                rest_url=None,
                policy=ReconnectPolicy(initial_delay=0.05, max_delay=0.2),
                watchdog=watchdog,
            )
            feed.on_connected = guard.connected
            running = asyncio.create_task(feed.start())
            try:
                yield feed, guard, collected
            finally:
                await feed.stop()
                await running
                await guard.close()
    finally:
        await simulator.stop()


async def test_a_connection_gone_silent_that_still_answers_pings_is_rotated_and_its_gap_repaired() -> None:
    """The simulator stops sending on each connection a second after it opened but answers its
    pings: the watchdog's probe succeeds, so the connection is rotated rather than dropped, and
    what the silence kept back comes from REST."""
    simulator = BinanceSimulator(
        PAIR, rate=1_000, seed=16, id_base=40_000, ping_interval=None, silent_after=1.0
    )
    async with silent_run(simulator, watchdog=0.3, follow_delay=0.2) as (feed, guard, collected):
        await eventually(lambda: feed.rotations[RotationReason.SILENT] >= 2, "two silent rotations")
        await eventually(lambda: not guard.repairing, "the repairs")

    assert feed.reconnects == 0, "a connection that answers pings is rotated, not dropped"
    assert simulator.stats()["silenced"] >= 2
    detected = [event for event in collected.events if type(event).__name__ == "GapDetected"]
    repaired = [event for event in collected.events if type(event).__name__ == "GapRepaired"]
    assert detected, "the silence left a gap"
    assert len(repaired) == len(detected), "and every one was repaired"
    for symbol, ids in collected.ids().items():
        assert sorted(ids) == list(range(min(ids), max(ids) + 1)), f"{symbol}: an id is missing or repeated"


async def test_trades_a_silent_connection_kept_back_are_recovered_though_the_market_then_goes_quiet() -> None:
    """The plan ends while the connection is silent: no later live trade reveals the gap, so only
    the follow-up after the rotation can find the silenced trades."""
    simulator = BinanceSimulator(
        PAIR, rate=1_000, seed=17, id_base=50_000, ping_interval=None, silent_after=1.0, trades=1_400
    )
    planned = sum(len(ids) for ids in simulator.expected.values())
    async with silent_run(simulator, watchdog=0.5, follow_delay=0.2) as (feed, _, collected):
        await eventually(lambda: len(collected.ticks) >= planned, "every planned trade", timeout=15)

    assert feed.rotations[RotationReason.SILENT] >= 1
    assert simulator.stats()["trades_silenced"] > 0
    assert {symbol: sorted(ids) for symbol, ids in collected.ids().items()} == {
        symbol.upper(): list(ids) for symbol, ids in simulator.expected.items()
    }
