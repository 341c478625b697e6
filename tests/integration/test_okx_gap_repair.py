"""OKX gap repair end to end: pushes lost to dropped connections come back from the history as fills.

OkxSimulator (several fills per push; every connection cut twice, the second time just before the
market goes quiet) -> OkxFeedHandler -> ContinuityGuard(OkxTradeHistory) -> TickCounter ->
BroadcastBus -> PersistenceConsumer -> PostgreSQL. Live rows cover a push's fills
``first_trade_id..last_trade_id``, backfilled rows one fill each: afterwards the rows of each
instrument tile its fill ids from the first received to the venue's newest, with no overlap.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
from structlog.testing import capture_logs

from kairos_core.adapters.inbound.feed_handler.okx import OkxFeedHandler
from kairos_core.adapters.inbound.feed_handler.okx_history import OkxTradeHistory
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy
from kairos_core.adapters.outbound.postgres import PostgresTickRepository
from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer, PersistencePolicy
from kairos_core.application.continuity import ContinuityGuard
from kairos_core.application.service import MarketDataService
from kairos_core.application.tick_counter import TickCounter
from kairos_core.simulator.okx import PATH, OkxSimulator
from tests.integration.test_gap_repair import eventually
from tests.sql import fetch_async

SYMBOLS = ("BTC-USDT", "ETH-USDT")
ROWS = (
    "SELECT symbol, source, first_trade_id, last_trade_id FROM market_ticks ORDER BY symbol, first_trade_id"
)


async def newest_fill(port: int, inst_id: str) -> int:
    url = f"http://127.0.0.1:{port}/api/v5/market/history-trades"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params={"instId": inst_id, "limit": 1}) as reply,
    ):
        return int((await reply.json())["data"][0]["tradeId"])


async def test_lost_pushes_come_back_as_fills_and_the_rows_tile_every_fill_once(
    repository: PostgresTickRepository, database_url: str
) -> None:
    simulator = OkxSimulator(SYMBOLS, rate=300, seed=11, id_base=90_000)
    port = await simulator.start()
    try:
        async with OkxTradeHistory(f"http://127.0.0.1:{port}") as history:
            bus = BroadcastBus()
            counter = TickCounter(bus)
            guard = ContinuityGuard(counter, history, follow_delay=0.2, short_retry_delay=0.2)
            feed = OkxFeedHandler(
                guard,
                SYMBOLS,
                url=f"ws://127.0.0.1:{port}{PATH}",
                policy=ReconnectPolicy(initial_delay=0.4, max_delay=0.4, rng=random.Random(3)),
            )
            feed.on_connected = guard.connected
            persistence = PersistenceConsumer(repository, PersistencePolicy(flush_interval=0.05))
            service = MarketDataService(bus, counter, [feed], [persistence], guards=[guard])
            with capture_logs() as logs:
                run: asyncio.Task[object] = asyncio.create_task(service.run())
                await eventually(lambda: counter.total > 100, 10, "the first ticks")
                await simulator.drop_connections()  # the next live push reveals this one
                await eventually(lambda: simulator.handshakes >= 2, 10, "the first reconnect")
                await asyncio.sleep(0.5)
                await simulator.drop_connections()
                await asyncio.sleep(0.2)
                await simulator.halt()  # quiet before the reconnect: only the follow-up finds these
                await eventually(lambda: simulator.handshakes >= 3, 10, "the second reconnect")
                await asyncio.sleep(0.3)
                await eventually(lambda: not guard.repairing, 20, "the repairs")
                service.request_stop("test done")
                await asyncio.wait_for(run, 30)
            newest = {symbol: await newest_fill(port, symbol) for symbol in SYMBOLS}
    finally:
        await simulator.stop()

    rows = await fetch_async(database_url, ROWS)
    for symbol in SYMBOLS:
        spans = [(row["first_trade_id"], row["last_trade_id"]) for row in rows if row["symbol"] == symbol]
        assert spans, symbol
        expected_next = spans[0][0]
        for first, last in spans:
            assert first == expected_next, (
                f"{symbol}: fills {expected_next}..{first - 1} missing or overlapping"
            )
            expected_next = last + 1
        assert expected_next - 1 == newest[symbol], f"{symbol}: the fills before the quiet were not recovered"
        sources = {row["source"] for row in rows if row["symbol"] == symbol}
        assert sources == {"live", "backfill"}, symbol
    detected = [entry for entry in logs if entry["event"] == "gap.detected"]
    assert {entry["symbol"] for entry in detected if "found_by" in entry} == set(SYMBOLS)
    assert not [entry for entry in logs if entry["event"] == "gap.unrecoverable"]
