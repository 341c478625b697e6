"""Two connections on the same symbols, one bus, one store: each trade is stored once, as it was sent.

Against the simulator, which sends both connections the same trades from the moment each
subscribed, and, where a venue has them, against two connections recorded at once (OKX's
OKEX.ws.1.0 and OKEX.ws.2.0 carry the same 36 trades), replayed byte for byte. The rows are read
back with plain SQL (``tests/sql.py``) into the recording's own strings and numbers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kairos_core.adapters.inbound.feed_handler.connection import WebSocketConnector
from kairos_core.adapters.outbound.postgres import PostgresTickRepository
from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer, PersistencePolicy
from kairos_core.simulator.venue import SimulatedVenue
from tests.contract.cases import ExchangeCase, ExpectedTrade
from tests.contract.harness import FeedRun, Tape, eventually, everything_sent_arrived, fast_policy, streaming
from tests.contract.recordings import ReplayServer, read_recording
from tests.sql import fetch_async

STORED = """
    SELECT exchange, symbol, trade_id, first_trade_id, last_trade_id, price::text AS price,
        volume::text AS volume, side, (extract(epoch FROM trade_time) * 1000)::bigint AS trade_time_ms
    FROM market_ticks
"""


class Store:
    """A bus whose ticks a ``PersistenceConsumer`` stores through the repository under test."""

    def __init__(self, repository: PostgresTickRepository) -> None:
        self.bus = BroadcastBus()
        self.tape = Tape(self.bus)
        self.consumer = PersistenceConsumer(repository, PersistencePolicy(flush_interval=0.02))
        self._storing = asyncio.create_task(
            self.consumer.run(self.bus.subscribe("persistence", lossless=True))
        )

    async def close(self) -> None:
        """Close the bus; return once everything on it is stored."""
        await self.tape.close()
        await asyncio.wait_for(self._storing, 10)


async def stored_rows(database_url: str, case: ExchangeCase) -> list[ExpectedTrade]:
    rows = await fetch_async(database_url, STORED)
    assert {row["exchange"] for row in rows} <= {case.exchange.value}
    return [
        ExpectedTrade(
            row["symbol"],
            row["trade_id"],
            row["first_trade_id"],
            row["last_trade_id"],
            row["price"],
            row["volume"],
            row["side"],
            row["trade_time_ms"],
        )
        for row in rows
    ]


async def test_two_connections_on_the_same_symbols_store_each_trade_once(
    case: ExchangeCase,
    simulator: SimulatedVenue[Any],
    connector: WebSocketConnector,
    repository: PostgresTickRepository,
    database_url: str,
) -> None:
    store = Store(repository)
    runs = [
        FeedRun(
            case.feed(
                store.bus,
                simulator.port,
                case.symbols,
                connector=connector,
                policy=fast_policy(),
                replay=False,
            )
        )
        for _ in range(2)
    ]
    await eventually(lambda: simulator.clients == 2, "two connections")
    await streaming(store.tape, case, at_least=100)
    await everything_sent_arrived(simulator, store.tape)
    for run in runs:
        await run.stop()
    await store.close()

    ticks = store.tape.ticks
    assert len(ticks) == simulator.trades_sent
    distinct = {ExpectedTrade.of(tick) for tick in ticks}
    assert len(distinct) < len(ticks), "the two connections carried some of the same trades"
    assert {(trade.symbol, trade.trade_id) for trade in distinct} == {(t.symbol, t.trade_id) for t in ticks}
    rows = await stored_rows(database_url, case)
    assert len(rows) == len(distinct)
    assert set(rows) == distinct
    assert store.consumer.stats.stored == len(distinct)
    assert store.consumer.stats.duplicates == len(ticks) - len(distinct)


async def test_two_recorded_connections_with_the_same_trades_store_each_once(
    case: ExchangeCase,
    parallel: tuple[Path, Path],
    connector: WebSocketConnector,
    repository: PostgresTickRepository,
    database_url: str,
) -> None:
    recordings = [read_recording(path) for path in parallel]
    expected = [case.read(recording) for recording in recordings]
    trades = set(expected[0].trades)
    assert len(trades) == len(expected[0].trades), "no trade twice within one recording"
    assert set(expected[1].trades) == trades, "both recordings carry the same trades"
    store = Store(repository)
    async with (
        ReplayServer(recordings[0], after_request=case.subscribes_by_request) as first,
        ReplayServer(recordings[1], after_request=case.subscribes_by_request) as second,
    ):
        runs = [
            FeedRun(
                case.feed(
                    store.bus, server.port, e.symbols, connector=connector, policy=fast_policy(), replay=True
                )
            )
            for server, e in zip((first, second), expected, strict=True)
        ]
        await eventually(
            lambda: first.replayed == second.replayed == 1 and len(store.tape.ticks) == 2 * len(trades),
            "both recordings replayed onto the bus",
        )
        for run in runs:
            await run.stop()
    await store.close()

    rows = await stored_rows(database_url, case)
    assert len(rows) == len(trades)
    assert set(rows) == trades
    assert store.consumer.stats.stored == len(trades)
    assert store.consumer.stats.duplicates == len(trades)
