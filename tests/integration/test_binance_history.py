"""The REST backfill client against the simulator's aggTrades history on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect

from kairos_core.adapters.inbound.feed_handler.binance_history import BinanceTradeHistory
from kairos_core.adapters.inbound.feed_handler.binance_wire import parse_frame
from kairos_core.domain import HistoryUnavailable, MarketTick, TickSource, TradeHistoryPort
from kairos_core.simulator.binance import BinanceSimulator

ID_BASE = 70_000
RATE = 5_000  # trades a second, all of one symbol


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    sim = BinanceSimulator(("btcusdt",), rate=RATE, seed=5, id_base=ID_BASE, ping_interval=None)
    await sim.start()
    yield sim
    await asyncio.wait_for(sim.stop(), 5)


@pytest.fixture
async def history(simulator: BinanceSimulator) -> AsyncIterator[BinanceTradeHistory]:
    async with BinanceTradeHistory(rest_url(simulator)) as client:
        yield client


def rest_url(sim: BinanceSimulator) -> str:
    return f"http://127.0.0.1:{sim.port}"


async def produced(sim: BinanceSimulator, trades: int) -> None:
    """Let the simulator make at least ``trades`` trades, then stop it making more."""
    await asyncio.sleep(trades / RATE + 0.1)
    await sim.halt()


def stream(sim: BinanceSimulator) -> connect:
    """A raw btcusdt stream. It reads on while closing (no queue limit), so frames still coming in
    cannot hide the server's close reply and hold the close for its whole timeout."""
    return connect(f"ws://127.0.0.1:{sim.port}/ws/btcusdt@aggTrade", max_queue=None, close_timeout=1)


async def newest_after(sim: BinanceSimulator, trades: int) -> int:
    """The id of the newest trade once the simulator has made ``trades`` and stopped."""
    await produced(sim, trades)
    _, _, (newest,) = await rest_get(sim, "/api/v3/aggTrades", symbol="BTCUSDT", limit=1)
    return int(newest["a"])


async def fetch(
    port: TradeHistoryPort, symbol: str, from_id: int, to_id: int | None
) -> list[list[MarketTick]]:
    return [page async for page in port.trades(symbol, from_id, to_id)]


def ids(pages: list[list[MarketTick]]) -> list[int]:
    return [tick.trade_id for page in pages for tick in page]


async def received(ws: ClientConnection, count: int) -> list[MarketTick]:
    ticks: list[MarketTick] = []
    while len(ticks) < count:
        tick = parse_frame(await asyncio.wait_for(ws.recv(decode=False), 2))
        assert isinstance(tick, MarketTick)
        ticks.append(tick)
    return ticks


async def rest_get(sim: BinanceSimulator, path: str, **params: Any) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{rest_url(sim)}{path}", params=params) as answer,
    ):
        return answer.status, dict(answer.headers), await answer.json()


async def test_pages_hold_exactly_the_ids_asked_with_the_streams_fields(
    simulator: BinanceSimulator, history: BinanceTradeHistory
) -> None:
    async with stream(simulator) as ws:
        live = await received(ws, 2_600)
    first = live[50].trade_id
    last = first + 2_499

    pages = await fetch(history, "btcusdt", first, last)

    assert [len(page) for page in pages] == [1000, 1000, 500]
    assert ids(pages) == list(range(first, last + 1))
    sent = {tick.trade_id: tick for tick in live}
    for tick in (tick for page in pages for tick in page):
        assert tick.source is TickSource.BACKFILL
        assert tick.event_time_ms is None  # a REST answer has no event time
        assert tick == sent[tick.trade_id]._replace(
            source=TickSource.BACKFILL, event_time_ms=None, received_at_ns=tick.received_at_ns
        )
    assert history.requests == 3


async def test_without_an_end_it_pages_to_the_newest_trade_and_stops(
    simulator: BinanceSimulator, history: BinanceTradeHistory
) -> None:
    newest = await newest_after(simulator, 1_600)

    pages = await fetch(history, "BTCUSDT", newest - 1_500, None)

    assert [len(page) for page in pages] == [1000, 501]  # the short page says there is no more
    assert ids(pages)[-1] == newest
    assert history.requests == 2


async def test_ids_not_yet_traded_are_not_returned(
    simulator: BinanceSimulator, history: BinanceTradeHistory
) -> None:
    last = await newest_after(simulator, 200)

    assert ids(await fetch(history, "btcusdt", last - 4, last + 100)) == list(range(last - 4, last + 1))
    assert await fetch(history, "btcusdt", last + 1, last + 100) == []
    assert await fetch(history, "btcusdt", last + 1, None) == []


@pytest.mark.parametrize(("status", "reason"), [(429, "rate limit"), (418, "IP banned")])
async def test_a_throttled_request_waits_its_retry_after_then_succeeds(
    simulator: BinanceSimulator, history: BinanceTradeHistory, status: int, reason: str
) -> None:
    await produced(simulator, 50)
    simulator.refuse_rest(1, status=status, retry_after=1)

    with capture_logs() as logs:
        started = time.monotonic()
        pages = await fetch(history, "btcusdt", ID_BASE, ID_BASE + 9)
        waited = time.monotonic() - started

    assert waited >= 1.0
    assert ids(pages) == list(range(ID_BASE, ID_BASE + 10))
    assert simulator.rest_refused == 1
    assert history.requests == 2
    throttled = [entry for entry in logs if entry["event"] == "backfill.throttled"]
    assert [
        (entry["log_level"], entry["status"], entry["reason"], entry["retry_after"]) for entry in throttled
    ] == [("warning", status, reason, 1.0)]


async def test_a_ban_longer_than_allowed_gives_up_at_once(simulator: BinanceSimulator) -> None:
    await produced(simulator, 50)
    simulator.refuse_rest(1, status=418, retry_after=3_600)
    async with BinanceTradeHistory(rest_url(simulator), max_retry_after=60) as history:
        started = time.monotonic()
        with pytest.raises(HistoryUnavailable, match=r"HTTP 418 \(IP banned\), Retry-After 3600 s"):
            await fetch(history, "btcusdt", ID_BASE, ID_BASE + 9)
    assert time.monotonic() - started < 1


async def test_an_unknown_symbol_is_unavailable_with_binances_message(history: BinanceTradeHistory) -> None:
    with pytest.raises(HistoryUnavailable, match=r"HTTP 400: Invalid symbol\. \(code -1121\)"):
        await fetch(history, "dogeusdt", 1, 10)


async def test_ids_older_than_the_venue_keeps_are_unavailable_not_skipped() -> None:
    sim = BinanceSimulator(("btcusdt",), rate=RATE, seed=5, id_base=ID_BASE, ping_interval=None, history=100)
    await sim.start()
    try:
        await produced(sim, 300)
        async with BinanceTradeHistory(rest_url(sim)) as history:
            with pytest.raises(HistoryUnavailable, match=f"no longer serves ids {ID_BASE}\\.\\."):
                await fetch(history, "btcusdt", ID_BASE, ID_BASE + 500)
    finally:
        await sim.stop()


async def test_the_used_weight_is_read_from_binances_header() -> None:
    hour = 3_600.0  # no weight window ends between the requests below
    sim = BinanceSimulator(("btcusdt",), rate=RATE, id_base=ID_BASE, ping_interval=None, weight_window=hour)
    await sim.start()
    try:
        await produced(sim, 50)
        status, headers, _ = await rest_get(sim, "/api/v3/exchangeInfo")  # weight 20, another client
        async with BinanceTradeHistory(rest_url(sim), weight_window=hour) as history:
            await fetch(history, "btcusdt", ID_BASE, ID_BASE + 9)
    finally:
        await sim.stop()
    assert (status, headers["X-MBX-USED-WEIGHT-1M"]) == (200, "20")
    assert history.used_weight == sim.used_weight == 20 + 4  # the IP's weight, not just its own 4


async def test_it_slows_down_before_the_weight_limit_instead_of_hitting_it() -> None:
    window = 0.5
    sim = BinanceSimulator(
        ("btcusdt",),
        rate=RATE,
        seed=5,
        id_base=ID_BASE,
        ping_interval=None,
        weight_limit=24,
        weight_window=window,
    )
    await sim.start()
    try:
        await produced(sim, 1_000)
        async with BinanceTradeHistory(
            rest_url(sim), limit=100, weight_budget=16, weight_window=window
        ) as history:
            with capture_logs() as logs:
                started = time.monotonic()
                pages = await fetch(history, "btcusdt", ID_BASE, ID_BASE + 999)
                took = time.monotonic() - started
    finally:
        await sim.stop()

    assert ids(pages) == list(range(ID_BASE, ID_BASE + 1_000))
    assert sim.rest_refused == 0, "the budget kept it under Binance's limit"
    assert took >= window  # ten requests at four a window span at least three windows
    assert any(entry["event"] == "backfill.throttled" and entry["reason"] == "weight" for entry in logs)


async def test_the_simulator_answers_429_past_its_weight_limit() -> None:
    sim = BinanceSimulator(("btcusdt",), rate=RATE, ping_interval=None, weight_limit=8, weight_window=3_600)
    await sim.start()
    try:
        answers = [await rest_get(sim, "/api/v3/aggTrades", symbol="BTCUSDT", limit=1) for _ in range(3)]
    finally:
        await sim.stop()
    assert [(status, headers["X-MBX-USED-WEIGHT-1M"]) for status, headers, _ in answers] == [
        (200, "4"),
        (200, "8"),
        (429, "12"),
    ]
    _, headers, body = answers[2]
    assert 1 <= int(headers["Retry-After"]) <= 3_600
    assert body["code"] == -1003
    assert body["msg"].startswith("Too much request weight used; current limit is 8 request weight")


async def test_withheld_trades_are_missing_from_the_socket_but_not_from_the_history(
    simulator: BinanceSimulator, history: BinanceTradeHistory
) -> None:
    simulator.withhold_every = 5  # from the next trade made, before any could queue up unwithheld
    async with stream(simulator) as ws:
        live = await received(ws, 400)
    sent = [tick.trade_id for tick in live]
    first, last = sent[0], sent[-1]

    fetched = ids(await fetch(history, "btcusdt", first, last))

    assert fetched == list(range(first, last + 1))
    missing = sorted(set(fetched) - set(sent))
    assert 99 <= len(missing) <= 100  # four sent between two withheld: 400 sent, ~100 withheld
    assert all(later - earlier == 5 for earlier, later in itertools.pairwise(missing))
    assert simulator.trades_withheld >= len(missing)


async def test_an_unreachable_venue_is_retried_then_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    async with BinanceTradeHistory(
        f"http://127.0.0.1:{port}", max_attempts=3, initial_backoff=0.01
    ) as history:
        with (
            capture_logs() as logs,
            pytest.raises(HistoryUnavailable, match="in 3 attempts: ClientConnectorError"),
        ):
            await fetch(history, "btcusdt", 1, 10)
    assert [entry["event"] for entry in logs] == ["backfill.retrying", "backfill.retrying"]


async def test_a_venue_that_never_answers_times_out_and_is_unavailable() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # take the request, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with BinanceTradeHistory(
            f"http://127.0.0.1:{port}", timeout=0.2, max_attempts=2, initial_backoff=0.01
        ) as history:
            with pytest.raises(HistoryUnavailable, match=r"in 2 attempts: .*Timeout"):
                await fetch(history, "btcusdt", 1, 10)
    finally:
        server.close()
        for writer in connections:
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()
    assert len(connections) == 2
