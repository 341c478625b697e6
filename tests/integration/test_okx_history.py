"""The OKX REST backfill client against the OKX simulator's trade history on 127.0.0.1."""

from __future__ import annotations

import asyncio
import bisect
import socket
import time
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect

from kairos_core.adapters.inbound.feed_handler.okx_history import PATH, OkxTradeHistory
from kairos_core.adapters.inbound.feed_handler.okx_history_wire import encode_history_trades
from kairos_core.adapters.inbound.feed_handler.okx_wire import parse_frame, subscribe_requests
from kairos_core.domain import (
    Exchange,
    HistoryUnavailable,
    MarketTick,
    Side,
    TickSource,
    TradeHistoryPort,
)
from kairos_core.simulator.okx import PATH as WS_PATH
from kairos_core.simulator.okx import OkxSimulator
from tests.wire_checks import assert_identical

ID_BASE = 70_000
RATE = 2_000  # pushes a second, all of one instrument: some 5,000 fills a second
INST_ID = "BTC-USDT"


@pytest.fixture
async def simulator() -> AsyncIterator[OkxSimulator]:
    sim = OkxSimulator((INST_ID,), rate=RATE, seed=5, id_base=ID_BASE)
    await sim.start()
    yield sim
    await asyncio.wait_for(sim.stop(), 5)


@pytest.fixture
async def history(simulator: OkxSimulator) -> AsyncIterator[OkxTradeHistory]:
    async with OkxTradeHistory(rest_url(simulator)) as client:
        yield client


def rest_url(sim: OkxSimulator) -> str:
    return f"http://127.0.0.1:{sim.port}"


async def produced(sim: OkxSimulator, seconds: float = 0.1) -> None:
    """Let the simulator trade for ``seconds``, then stop it trading."""
    await asyncio.sleep(seconds)
    await sim.halt()


async def rest_get(sim: OkxSimulator, **params: Any) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{rest_url(sim)}{PATH}", params=params) as answer,
    ):
        return answer.status, dict(answer.headers), msgspec.json.decode(await answer.read())


async def newest_after(sim: OkxSimulator, seconds: float) -> int:
    """The id of the newest fill once the simulator has traded ``seconds`` and stopped."""
    await produced(sim, seconds)
    _, _, body = await rest_get(sim, instId=INST_ID, limit=1)
    return int(body["data"][0]["tradeId"])


async def fetch(
    port: TradeHistoryPort, symbol: str, from_id: int, to_id: int | None
) -> list[list[MarketTick]]:
    return [page async for page in port.trades(symbol, from_id, to_id)]


async def fetch_into(
    pages: list[list[MarketTick]], port: TradeHistoryPort, symbol: str, from_id: int, to_id: int | None
) -> None:
    """Append each page to ``pages`` as it comes: what came before an error stays there."""
    async for page in port.trades(symbol, from_id, to_id):
        pages.append(page)


def ids(pages: list[list[MarketTick]]) -> list[int]:
    return [tick.trade_id for page in pages for tick in page]


async def live_ticks(sim: OkxSimulator, fills: int) -> list[MarketTick]:
    """What the live mapping made of the pushes of the first ``fills`` fills a subscriber saw."""
    async with connect(f"ws://127.0.0.1:{sim.port}{WS_PATH}", max_queue=None, close_timeout=1) as ws:
        (subscribe,) = subscribe_requests([INST_ID])
        await ws.send(subscribe)
        ticks: list[MarketTick] = []
        while not ticks or ticks[-1].trade_id - ticks[0].first_trade_id + 1 < fills:
            ticks += await pushed(ws)
    return ticks


async def pushed(ws: ClientConnection) -> tuple[MarketTick, ...]:
    item = parse_frame(await asyncio.wait_for(ws.recv(decode=False), 2))
    return item if isinstance(item, tuple) else ()  # the subscribe acknowledgement: no ticks


async def live_and_fetched(
    sim: OkxSimulator, history: OkxTradeHistory
) -> tuple[list[MarketTick], list[list[MarketTick]]]:
    live = await live_ticks(sim, 450)
    return live, await fetch(history, INST_ID, live[0].first_trade_id, live[-1].trade_id)


def fetched_by_id(pages: list[list[MarketTick]]) -> dict[int, MarketTick]:
    return {tick.trade_id: tick for page in pages for tick in page}


# The range, as the stream mapped it ------------------------------------------------------------


async def test_a_range_of_several_pages_comes_back_ascending_as_the_stream_mapped_it(
    simulator: OkxSimulator, history: OkxTradeHistory
) -> None:
    live, pages = await live_and_fetched(simulator, history)
    first, last = live[0].first_trade_id, live[-1].trade_id

    assert ids(pages) == list(range(first, last + 1))
    assert all(len(page) == 100 for page in pages[:-1])
    assert history.requests == len(pages) == simulator.rest_requests >= 5
    fetched = fetched_by_id(pages)
    singles = [tick for tick in live if tick.first_trade_id == tick.trade_id]  # count 1
    assert len(singles) > 100
    for tick in singles:
        got = fetched[tick.trade_id]
        assert_identical(got, tick._replace(source=TickSource.BACKFILL, received_at_ns=got.received_at_ns))
    assert all(tick.source is TickSource.BACKFILL and tick.event_time_ms is None for tick in fetched.values())


async def test_the_fills_of_an_aggregated_trade_come_back_one_by_one(
    simulator: OkxSimulator, history: OkxTradeHistory
) -> None:
    live, pages = await live_and_fetched(simulator, history)
    fetched = fetched_by_id(pages)

    aggregated = [tick for tick in live if tick.first_trade_id < tick.trade_id]  # count 2 or 3
    assert len(aggregated) > 20
    for tick in aggregated:
        fills = [fetched[trade_id] for trade_id in range(tick.first_trade_id, tick.trade_id + 1)]
        for fill in fills:
            assert fill.first_trade_id == fill.last_trade_id == fill.trade_id
            assert (fill.symbol, fill.price, fill.side, fill.timestamp_ms) == (
                tick.symbol,
                tick.price,
                tick.side,
                tick.timestamp_ms,
            )
        assert sum((fill.volume for fill in fills), Decimal(0)) == tick.volume


async def test_without_an_end_it_pages_to_the_newest_fill_and_stops(
    simulator: OkxSimulator, history: OkxTradeHistory
) -> None:
    newest = await newest_after(simulator, 0.2)

    pages = await fetch(history, INST_ID.lower(), newest - 250, None)

    assert [len(page) for page in pages] == [100, 100, 51]  # the short page says there is no more
    assert ids(pages) == list(range(newest - 250, newest + 1))
    assert history.requests == 3


async def test_ids_not_yet_traded_are_not_returned(simulator: OkxSimulator, history: OkxTradeHistory) -> None:
    newest = await newest_after(simulator, 0.1)

    assert ids(await fetch(history, INST_ID, newest - 4, newest + 100)) == list(range(newest - 4, newest + 1))
    assert await fetch(history, INST_ID, newest + 1, newest + 100) == []
    assert await fetch(history, INST_ID, newest + 1, None) == []


async def test_ids_older_than_the_simulator_keeps_are_unavailable_not_skipped() -> None:
    sim = OkxSimulator((INST_ID,), rate=RATE, seed=5, id_base=ID_BASE, history=100)
    await sim.start()
    try:
        await produced(sim, 0.1)
        async with OkxTradeHistory(rest_url(sim)) as history:
            with pytest.raises(HistoryUnavailable, match=f"no longer serves ids {ID_BASE}\\.\\."):
                await fetch(history, INST_ID, ID_BASE, ID_BASE + 500)
    finally:
        await sim.stop()


async def test_an_unknown_instrument_is_unavailable_with_okxs_message(history: OkxTradeHistory) -> None:
    with pytest.raises(
        HistoryUnavailable,
        match=r"OKX refused DOGE-USDT trade ids 1\.\.10: HTTP 200: Instrument ID, Instrument ID code or "
        r"Spread ID doesn't exist\. \(code 51001\): use OKX's instrument id, e\.g\. BTC-USDT",
    ):
        await fetch(history, "doge-usdt", 1, 10)


def test_it_is_okxs_history_of_single_fills() -> None:
    history = OkxTradeHistory()
    assert history.exchange is Exchange.OKX
    assert history.spans_fills is True


# Rate limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 200])  # OKX's two forms of code 50011
async def test_a_throttled_request_waits_its_retry_after_then_succeeds(
    simulator: OkxSimulator, history: OkxTradeHistory, status: int
) -> None:
    await produced(simulator)
    simulator.refuse_rest(1, status=status, retry_after=1)

    with capture_logs() as logs:
        started = time.monotonic()
        pages = await fetch(history, INST_ID, ID_BASE, ID_BASE + 9)
        waited = time.monotonic() - started

    assert waited >= 1.0
    assert ids(pages) == list(range(ID_BASE, ID_BASE + 10))
    assert simulator.rest_refused == 1
    assert history.requests == 2
    throttled = [entry for entry in logs if entry["event"] == "backfill.throttled"]
    assert [
        (entry["log_level"], entry["status"], entry["retry_after"], entry["announced"]) for entry in throttled
    ] == [("warning", status, 1.0, True)]


async def test_without_retry_after_it_backs_off_a_rate_window_doubling(simulator: OkxSimulator) -> None:
    await produced(simulator)
    simulator.refuse_rest(2, retry_after=None)  # as OKX answers: no Retry-After
    async with OkxTradeHistory(rest_url(simulator), rate_window=0.2) as history:
        with capture_logs() as logs:
            started = time.monotonic()
            pages = await fetch(history, INST_ID, ID_BASE, ID_BASE + 9)
            waited = time.monotonic() - started

    assert waited >= 0.2 + 0.4
    assert ids(pages) == list(range(ID_BASE, ID_BASE + 10))
    throttled = [entry for entry in logs if entry["event"] == "backfill.throttled"]
    assert [(entry["retry_after"], entry["announced"]) for entry in throttled] == [(0.2, False), (0.4, False)]


async def test_a_wait_beyond_the_limit_gives_up_at_once(simulator: OkxSimulator) -> None:
    await produced(simulator)
    simulator.refuse_rest(1, retry_after=3_600)
    async with OkxTradeHistory(rest_url(simulator), max_retry_after=60) as history:
        started = time.monotonic()
        with pytest.raises(
            HistoryUnavailable, match=r"HTTP 429: Too Many Requests \(code 50011\), Retry-After 3600 s"
        ):
            await fetch(history, INST_ID, ID_BASE, ID_BASE + 9)
    assert time.monotonic() - started < 1


async def test_throttled_again_and_again_it_gives_up(
    simulator: OkxSimulator, history: OkxTradeHistory
) -> None:
    await produced(simulator)
    simulator.refuse_rest(50, retry_after=0)
    with pytest.raises(HistoryUnavailable, match=r"answer 11 in a row"):
        await fetch(history, INST_ID, ID_BASE, ID_BASE + 9)
    assert simulator.rest_refused == 11


async def test_the_client_keeps_to_20_requests_in_any_2_seconds(simulator: OkxSimulator) -> None:
    await produced(simulator, 0.2)
    async with OkxTradeHistory(rest_url(simulator), limit=10) as history:  # 41 pages of 10
        with capture_logs() as logs:
            started = time.monotonic()
            pages = await fetch(history, INST_ID, ID_BASE, ID_BASE + 409)
            took = time.monotonic() - started

    assert ids(pages) == list(range(ID_BASE, ID_BASE + 410))
    arrivals = simulator.rest_arrivals
    assert len(arrivals) == 41
    assert max(bisect.bisect_left(arrivals, t + 2.0) - i for i, t in enumerate(arrivals)) == 20
    assert simulator.rest_refused == 0, "the limiter kept it under OKX's limit"
    assert took >= 4.0  # 41 requests at 20 per 2 s span two waits
    waits = [
        entry for entry in logs if entry["event"] == "backfill.throttled" and entry["log_level"] == "info"
    ]
    assert [entry["reason"] for entry in waits] == ["rate", "rate"]


async def test_the_simulator_throttles_past_okxs_limit_as_okx_does() -> None:
    sim = OkxSimulator((INST_ID,), rest_rate_limit=3, rest_rate_window=3_600)
    await sim.start()
    try:
        answers = [await rest_get(sim, instId=INST_ID, limit=1) for _ in range(4)]
    finally:
        await sim.stop()
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    _, headers, body = answers[3]
    assert body == {"code": "50011", "msg": "Too Many Requests", "data": []}
    assert "Retry-After" not in headers  # OKX sends none
    assert (sim.rest_requests, sim.rest_refused) == (4, 1)


# The simulator's endpoint -------------------------------------------------------------------------


async def test_the_simulator_pages_by_trade_id_as_okx_documents(simulator: OkxSimulator) -> None:
    newest = await newest_after(simulator, 0.1)

    def trade_ids(body: Any) -> list[int]:
        return [int(item["tradeId"]) for item in body["data"]]

    _, _, older = await rest_get(simulator, instId=INST_ID, type=1, after=ID_BASE + 50, limit=5)
    _, _, between = await rest_get(simulator, instId=INST_ID, after=ID_BASE + 50, before=ID_BASE + 46)
    _, _, latest = await rest_get(simulator, instId=INST_ID, before=ID_BASE)
    _, _, capped = await rest_get(simulator, instId=INST_ID, limit=500)
    assert trade_ids(older) == [ID_BASE + 49, ID_BASE + 48, ID_BASE + 47, ID_BASE + 46, ID_BASE + 45]
    assert trade_ids(between) == [ID_BASE + 49, ID_BASE + 48, ID_BASE + 47]
    assert trade_ids(latest) == trade_ids(capped) == list(range(newest, newest - 100, -1))
    item = older["data"][0]
    assert list(item) == ["instId", "side", "sz", "source", "px", "tradeId", "ts"]  # OKX's order
    assert (item["instId"], item["source"], item["side"] in ("buy", "sell")) == (INST_ID, "0", True)


@pytest.mark.parametrize(
    ("params", "status", "code", "message"),
    [
        ({}, 400, "50014", "Parameter instId can not be empty."),
        ({"instId": INST_ID, "after": "1e5"}, 400, "51000", "Parameter after error"),
        ({"instId": INST_ID, "type": "2"}, 400, "51000", "Parameter type error"),
    ],
)
async def test_the_simulator_refuses_a_bad_request_as_okx_does(
    simulator: OkxSimulator, params: dict[str, str], status: int, code: str, message: str
) -> None:
    answered, _, body = await rest_get(simulator, **params)
    assert (answered, body) == (status, {"code": code, "msg": message, "data": []})


# Holes and failures, from a scripted OKX on 127.0.0.1 ---------------------------------------------


def fill(trade_id: int) -> MarketTick:
    return MarketTick(
        symbol=INST_ID,
        exchange=Exchange.OKX,
        price=Decimal("30243.5"),
        volume=Decimal("0.0002"),
        side=Side.BUY,
        trade_id=trade_id,
        first_trade_id=trade_id,
        last_trade_id=trade_id,
        timestamp_ms=1652459226050,
        event_time_ms=None,
        received_at_ns=0,
    )


class ScriptedOkx:
    """An HTTP server with the history of ``trade_ids``; ``failures`` are answered first, in order."""

    def __init__(self, trade_ids: Iterable[int], failures: Iterable[tuple[int, bytes]] = ()) -> None:
        self.trade_ids = sorted(trade_ids, reverse=True)
        self.failures = list(failures)
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> ScriptedOkx:
        app = web.Application()
        app.router.add_get(PATH, self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.failures:
            status, body = self.failures.pop(0)
            return web.Response(status=status, body=body, content_type="application/json")
        after, limit = int(request.query.get("after", 2**63)), int(request.query["limit"])
        older = [trade_id for trade_id in self.trade_ids if trade_id < after][:limit]
        body = encode_history_trades(fill(trade_id) for trade_id in older)
        return web.Response(body=body, content_type="application/json")


@pytest.mark.parametrize(
    ("missing", "got"),
    [
        (range(250, 253), list(range(100, 250))),  # inside a page: the page up to it is yielded
        (range(200, 206), list(range(100, 200))),  # at a page's start
        (range(200, 300), list(range(100, 200))),  # a whole page: OKX's newest fill tells
    ],
)
async def test_ids_missing_inside_the_range_end_it_after_the_good_pages(
    missing: range, got: list[int]
) -> None:
    async with ScriptedOkx(set(range(100, 400)) - set(missing)) as okx, OkxTradeHistory(okx.url) as history:
        pages: list[list[MarketTick]] = []
        with pytest.raises(
            HistoryUnavailable, match=f"ids {missing[0]}\\.\\.{missing[-1]} are missing from OKX's history"
        ):
            await fetch_into(pages, history, INST_ID, 100, 399)
    assert ids(pages) == got


async def test_a_server_error_and_a_transient_code_are_retried() -> None:
    failures = [
        (502, b"<html>502 Bad Gateway</html>"),
        (500, b'{"code":"50026","msg":"System error","data":[]}'),
    ]
    async with (
        ScriptedOkx(range(1, 51), failures) as okx,
        OkxTradeHistory(okx.url, initial_backoff=0.01) as history,
    ):
        with capture_logs() as logs:
            pages = await fetch(history, INST_ID, 1, 50)
    assert ids(pages) == list(range(1, 51))
    retried = [entry["error"] for entry in logs if entry["event"] == "backfill.retrying"]
    assert retried == ["HTTP 502: '<html>502 Bad Gateway</html>'", "HTTP 500: System error (code 50026)"]


async def test_an_answer_out_of_order_is_unavailable() -> None:
    body = encode_history_trades([fill(5), fill(7)])
    async with ScriptedOkx([], [(200, body)]) as okx, OkxTradeHistory(okx.url) as history:
        with pytest.raises(HistoryUnavailable, match="not newest first"):
            await fetch(history, INST_ID, 1, 10)


async def test_an_unreachable_venue_is_retried_then_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    async with OkxTradeHistory(f"http://127.0.0.1:{port}", max_attempts=3, initial_backoff=0.01) as history:
        with (
            capture_logs() as logs,
            pytest.raises(HistoryUnavailable, match="in 3 attempts: ClientConnectorError"),
        ):
            await fetch(history, INST_ID, 1, 10)
    assert [entry["event"] for entry in logs] == ["backfill.retrying", "backfill.retrying"]
