"""A symbol the simulator stops trading goes stale after its own short threshold, and fresh again.

The service is the container's, configured as an operator would (``--metrics-stale-after-symbols``),
streaming from the real simulator over a real socket; only the database is in memory. The
staleness watch runs with the metrics resource, so the log says it without anyone scraping.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from dependency_injector import providers
from structlog.testing import capture_logs

from kairos_core.adapters.inbound.feed_handler.binance_wire import encode_agg_trade
from kairos_core.bootstrap.container import Container
from kairos_core.domain import Exchange
from kairos_core.settings import Settings
from kairos_core.simulator.binance import BinanceSimulator
from tests.e2e.conftest import free_port
from tests.fakes import InMemoryTickRepository
from tests.integration.test_binance_feed import eventually
from tests.strategies import numbered_tick

T = TypeVar("T")


@pytest.fixture(autouse=True)
def no_machine_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KAIROS_* variable of the machine and no ``.env`` of the working directory leak in."""
    for name in list(os.environ):
        if name.upper().startswith("KAIROS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    sim = BinanceSimulator(("btcusdt", "ethusdt"), rate=200, seed=11)
    await sim.start()
    yield sim
    await sim.stop()


def eth_trade(trade_id: int) -> bytes:
    now_ms = time.time_ns() // 1_000_000
    tick = numbered_tick(trade_id, "ETHUSDT")._replace(
        price=Decimal("3000.5"), timestamp_ms=now_ms, event_time_ms=now_ms
    )
    return encode_agg_trade(tick)


async def readyz(port: int) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as answer:
        body: dict[str, object] = await answer.json()
        body["status"] = answer.status
        return body


async def test_a_symbol_the_simulator_stops_trading_goes_stale_after_its_threshold(
    simulator: BinanceSimulator,
) -> None:
    metrics_port = free_port()
    settings = Settings(
        symbols=("btcusdt", "ethusdt"),
        binance_ws_url=f"ws://127.0.0.1:{simulator.port}/stream",
        binance_rest_url=f"http://127.0.0.1:{simulator.port}",
        metrics_port=metrics_port,
        metrics_stale_after_symbols=("BTCUSDT=1", "ETHUSDT=1"),
    )
    container = Container(settings=settings)
    container.repository.override(providers.Object(InMemoryTickRepository()))
    with capture_logs() as logs:
        service = await resolved(container.service())
        await resolved(container.metrics())
        running = asyncio.create_task(service.run())
        counter = container.counter()
        try:
            await eventually(lambda: {key[1] for key in counter.symbols} == {"BTCUSDT", "ETHUSDT"})
            await simulator.halt()  # no more trades of either symbol from the random walk,
            await asyncio.sleep(0.1)  # (what it sent is read) but ETHUSDT trades on
            last_eth = counter.symbols[Exchange.BINANCE, "ETHUSDT"].last
            assert last_eth is not None
            feeding_eth = asyncio.create_task(keep_trading_eth(simulator, last_eth.trade_id + 1))
            try:
                await eventually(lambda: stale_events(logs) == [("symbol.stale", "BTCUSDT")], timeout=5)
                body = await readyz(metrics_port)
                simulator.resume()
                await eventually(lambda: len(stale_events(logs)) == 2, timeout=5)
            finally:
                feeding_eth.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeding_eth
        finally:
            service.request_stop("test over")
            await asyncio.wait_for(running, 10)
            await resolved(container.shutdown_resources())

    assert stale_events(logs) == [("symbol.stale", "BTCUSDT"), ("symbol.fresh", "BTCUSDT")]
    stale = next(log for log in logs if log["event"] == "symbol.stale")
    assert stale["stale_after_s"] == 1.0
    assert 1.0 <= stale["age_s"] <= 1.3, "the watch looks every quarter of the shortest threshold"
    assert body["status"] == 200, "a quiet symbol is not an outage"
    symbols = {entry["symbol"]: entry for entry in body["symbols"]}  # type: ignore[attr-defined]
    assert symbols["BTCUSDT"]["stale"] is True
    assert symbols["BTCUSDT"]["stale_after_seconds"] == 1.0
    assert symbols["ETHUSDT"]["stale"] is False
    assert symbols["ETHUSDT"]["seconds_since_last_tick"] < 1.0
    assert [entry["symbol"] for entry in body["stale_symbols"]] == ["BTCUSDT"]  # type: ignore[attr-defined]


async def resolved(value: T | Awaitable[T]) -> T:
    """The container hands out awaitables for what is built on an async resource."""
    return await value if inspect.isawaitable(value) else value


async def keep_trading_eth(simulator: BinanceSimulator, first_id: int) -> None:
    for trade_id in range(first_id, first_id + 10_000):
        await simulator.inject(eth_trade(trade_id))
        await asyncio.sleep(0.1)


def stale_events(logs: Sequence[Mapping[str, object]]) -> list[tuple[object, object]]:
    return [(log["event"], log["symbol"]) for log in logs if log["event"] in ("symbol.stale", "symbol.fresh")]
