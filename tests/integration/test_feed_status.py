"""A feed's connection status and reconnect reasons, against real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kairos_core.adapters.inbound.feed_handler.aiohttp_client import AiohttpConnector
from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy, ReconnectReason
from kairos_core.application.bus import BroadcastBus
from kairos_core.simulator.binance import BinanceSimulator
from tests.integration.test_binance_feed import eventually


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    sim = BinanceSimulator(("btcusdt",), rate=500, seed=3)
    await sim.start()
    yield sim
    await sim.stop()


def feed_to(port: int, watchdog: float = 60.0) -> BinanceFeedHandler:
    return BinanceFeedHandler(
        BroadcastBus(capacity=100_000),
        ("btcusdt",),
        url=f"ws://127.0.0.1:{port}/stream",
        rest_url=None,
        connector=AiohttpConnector(close_timeout=0.2),
        policy=ReconnectPolicy(initial_delay=0.01, max_delay=0.05),
        watchdog=watchdog,
    )


async def test_the_status_follows_the_connection_and_counts_each_reconnect_by_reason(
    simulator: BinanceSimulator,
) -> None:
    feed = feed_to(simulator.port)
    assert not feed.status().connections[0].up
    running = asyncio.create_task(feed.start())
    try:
        await eventually(lambda: feed.status().connections[0].up)
        connection = feed.status().connections[0]
        assert connection.name == f"127.0.0.1:{simulator.port}"
        assert connection.silent_seconds < 1.0

        await simulator.drop_connections()
        await eventually(lambda: feed.reconnect_reasons[ReconnectReason.DROPPED] == 1)
        await eventually(lambda: feed.status().connections[0].up)

        port = simulator.port
        await simulator.stop()
        await eventually(lambda: feed.reconnect_reasons[ReconnectReason.CONNECT] >= 2)
        down = feed.status().connections[0]
        assert not down.up
        assert down.state_seconds > 0
        await simulator.start(port=port)
        await eventually(lambda: feed.status().connections[0].up)
        assert feed.status().reconnects.keys() == {"dropped", "connect"}
    finally:
        await feed.stop()
        await running


async def test_a_connection_that_sends_nothing_shows_its_silence(simulator: BinanceSimulator) -> None:
    feed = feed_to(simulator.port)
    running = asyncio.create_task(feed.start())
    try:
        await eventually(lambda: feed.status().connections[0].up)
        assert feed.status().connections[0].silent_seconds < 0.2
        await simulator.halt()  # the connection stays open, and quiet
        await asyncio.sleep(0.2)  # frames already on their way over the socket arrive
        feed.status()  # the last frames are seen here; silence counts from this look on
        await asyncio.sleep(0.5)
        connection = feed.status().connections[0]
        assert connection.up
        assert 0.4 <= connection.silent_seconds < 2.0
        simulator.resume()
        await eventually(lambda: feed.status().connections[0].silent_seconds < 0.2)
    finally:
        await feed.stop()
        await running
