"""Gap repair end to end: withheld trades and a dropped connection, repaired from the REST history.

Simulator (every 7th trade kept off the socket, every connection cut once mid-stream) ->
BinanceFeedHandler -> ContinuityGuard(BinanceTradeHistory on the simulator's REST) -> TickCounter
-> BroadcastBus -> PersistenceConsumer -> PostgreSQL. Afterwards every id from the first live one
to the last of each symbol is stored once, the ones the socket never sent as ``backfill``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import aiohttp
from structlog.testing import capture_logs

from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.inbound.feed_handler.binance_history import BinanceTradeHistory
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy
from kairos_core.adapters.outbound.postgres import PostgresTickRepository
from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer, PersistencePolicy
from kairos_core.application.continuity import ContinuityGuard
from kairos_core.application.service import MarketDataService
from kairos_core.application.tick_counter import TickCounter
from kairos_core.simulator.binance import BinanceSimulator
from tests.sql import fetch_async

SYMBOLS = ("btcusdt", "ethusdt")
RATE = 2_000  # trades a second over both symbols
WITHHOLD_EVERY = 7

PER_SOURCE = """
    SELECT symbol, source, count(*) AS rows, min(trade_id) AS first, max(trade_id) AS last
    FROM market_ticks GROUP BY symbol, source ORDER BY symbol, source
"""
DUPLICATED = (
    "SELECT count(*) AS n FROM (SELECT 1 FROM market_ticks GROUP BY symbol, trade_id HAVING count(*) > 1) d"
)


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_withheld_and_disconnected_trades_are_backfilled_once(
    repository: PostgresTickRepository, database_url: str
) -> None:
    simulator = BinanceSimulator(
        SYMBOLS, rate=RATE, seed=3, id_base=500_000, ping_interval=None, withhold_every=WITHHOLD_EVERY
    )
    port = await simulator.start()
    try:
        async with BinanceTradeHistory(f"http://127.0.0.1:{port}") as history:
            bus = BroadcastBus()
            counter = TickCounter(bus)
            guard = ContinuityGuard(counter, history, short_retry_delay=0.2)
            feed = BinanceFeedHandler(
                guard,
                SYMBOLS,
                url=f"ws://127.0.0.1:{port}/stream",
                rest_url=f"http://127.0.0.1:{port}",
                policy=ReconnectPolicy(initial_delay=0.2, max_delay=0.5, rng=random.Random(1)),
            )
            persistence = PersistenceConsumer(repository, PersistencePolicy(flush_interval=0.05))
            service = MarketDataService(bus, counter, [feed], [persistence], guards=[guard])
            with capture_logs() as logs:
                run: asyncio.Task[object] = asyncio.create_task(service.run())

                await eventually(lambda: counter.total > 200, 10, "the first ticks")
                await asyncio.sleep(1.0)
                await simulator.drop_connections()
                await eventually(lambda: simulator.handshakes >= 2, 10, "the reconnect")
                await asyncio.sleep(1.0)
                await simulator.halt()
                await asyncio.sleep(0.3)  # the frames already sent arrive
                await eventually(lambda: not guard.repairing, 20, "the repairs")
                service.request_stop("test done")
                await asyncio.wait_for(run, 30)
    finally:
        await simulator.stop()

    rows = await fetch_async(database_url, PER_SOURCE)
    by_symbol: dict[str, dict[str, tuple[int, int, int]]] = {}
    for row in rows:
        by_symbol.setdefault(row["symbol"], {})[row["source"]] = (row["rows"], row["first"], row["last"])
    assert set(by_symbol) == {symbol.upper() for symbol in SYMBOLS}
    stored_total = 0
    for symbol, sources in by_symbol.items():
        live_rows, first, last = sources["live"]
        backfill_rows, backfill_first, backfill_last = sources["backfill"]
        assert first < backfill_first <= backfill_last < last, symbol
        assert live_rows + backfill_rows == last - first + 1, f"{symbol}: an id is missing"
        span = last - first + 1
        assert backfill_rows >= span // WITHHOLD_EVERY - 1, f"{symbol}: withheld ids not all backfilled"
        stats = guard.stats[symbol]
        assert stats.unrecoverable == 0
        assert stats.backfilled == backfill_rows
        stored_total += live_rows + backfill_rows
    assert (await fetch_async(database_url, DUPLICATED))[0]["n"] == 0
    assert counter.total == stored_total, "nothing was published twice"
    assert simulator.trades_withheld > 0
    reconnect_gaps = {
        entry["symbol"] for entry in logs if entry["event"] == "gap.detected" and entry["missing"] > 1
    }
    assert reconnect_gaps == {symbol.upper() for symbol in SYMBOLS}, "the dropped connection left a gap"


async def newest_id(port: int, symbol: str) -> int:
    """The venue's newest trade id of ``symbol``, asked the way a client would."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}/api/v3/aggTrades", params={"symbol": symbol, "limit": 1}
        ) as reply,
    ):
        (trade,) = await reply.json()
        return int(trade["a"])


async def test_trades_made_while_disconnected_are_recovered_even_if_the_market_then_goes_quiet(
    repository: PostgresTickRepository, database_url: str
) -> None:
    """No live trade follows the reconnect, so no gap ever shows on the stream: only the follow-up
    after the connect can find the trades of the reconnect window."""
    simulator = BinanceSimulator(SYMBOLS, rate=400, seed=5, id_base=700_000, ping_interval=None)
    port = await simulator.start()
    try:
        async with BinanceTradeHistory(f"http://127.0.0.1:{port}") as history:
            bus = BroadcastBus()
            counter = TickCounter(bus)
            guard = ContinuityGuard(counter, history, follow_delay=0.2)
            feed = BinanceFeedHandler(
                guard,
                SYMBOLS,
                url=f"ws://127.0.0.1:{port}/stream",
                rest_url=f"http://127.0.0.1:{port}",
                policy=ReconnectPolicy(initial_delay=0.5, max_delay=0.5, rng=random.Random(2)),
            )
            feed.on_connected = guard.connected
            persistence = PersistenceConsumer(repository, PersistencePolicy(flush_interval=0.05))
            service = MarketDataService(bus, counter, [feed], [persistence], guards=[guard])
            with capture_logs() as logs:
                run: asyncio.Task[object] = asyncio.create_task(service.run())
                await eventually(lambda: counter.total > 100, 10, "the first ticks")
                await simulator.drop_connections()
                await asyncio.sleep(0.3)  # trades go on while nobody is connected
                await simulator.halt()  # then the market goes quiet, before the reconnect
                await eventually(lambda: simulator.handshakes >= 2, 10, "the reconnect")
                await asyncio.sleep(0.3)
                await eventually(lambda: not guard.repairing, 20, "the follow-up")
                service.request_stop("test done")
                await asyncio.wait_for(run, 30)
            newest = {symbol.upper(): await newest_id(port, symbol.upper()) for symbol in SYMBOLS}
    finally:
        await simulator.stop()

    rows = await fetch_async(database_url, PER_SOURCE)
    span: dict[str, tuple[int, int, int]] = {}
    for row in rows:
        rows_, first, last = span.get(row["symbol"], (0, row["first"], row["last"]))
        span[row["symbol"]] = (rows_ + row["rows"], min(first, row["first"]), max(last, row["last"]))
    backfilled = {row["symbol"] for row in rows if row["source"] == "backfill"}
    assert backfilled == set(newest), "the reconnect window came back from REST"
    for symbol, (stored, first, last) in span.items():
        assert last == newest[symbol], f"{symbol}: the last trades before the quiet were not recovered"
        assert stored == last - first + 1, f"{symbol}: an id is missing"
    assert (await fetch_async(database_url, DUPLICATED))[0]["n"] == 0
    follow_ups = [entry for entry in logs if entry["event"] == "gap.detected" and "found_by" in entry]
    assert {entry["symbol"] for entry in follow_ups} == set(newest)
