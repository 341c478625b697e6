"""The benchmark simulator speaks enough of Binance for other libraries' clients: paths and requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from kairos_core.simulator.benchmark import BenchmarkServer

SYMBOLS = ("btcusdt", "ethusdt", "bnbusdt")
COUNT = 60


@pytest.fixture
async def server() -> AsyncIterator[int]:
    bench = BenchmarkServer(SYMBOLS, count=COUNT)
    port = await bench.start()
    yield port
    await bench.stop()


async def frames(ws: ClientConnection, count: int) -> list[dict[str, object]]:
    return [msgspec.json.decode(await asyncio.wait_for(ws.recv(), 5)) for _ in range(count)]


def ids_per_symbol(trades: list[dict[str, object]]) -> dict[str, list[object]]:
    ids: dict[str, list[object]] = {}
    for trade in trades:
        ids.setdefault(str(trade["s"]), []).append(trade["a"])
    return ids


async def test_a_combined_stream_url_gets_every_frame_wrapped(server: int) -> None:
    streams = "/".join(f"{s}@aggTrade" for s in SYMBOLS)
    async with connect(f"ws://127.0.0.1:{server}/stream?streams={streams}") as ws:
        received = await frames(ws, COUNT)
    assert {frame["stream"] for frame in received} == {f"{s}@aggTrade" for s in SYMBOLS}
    ids = ids_per_symbol([frame["data"] for frame in received])  # type: ignore[misc]
    assert sum(map(len, ids.values())) == COUNT
    assert all(i == list(range(i[0], i[0] + len(i))) for i in ids.values())  # type: ignore[operator]


async def test_a_bare_raw_connection_streams_once_its_subscriptions_cover_every_symbol(server: int) -> None:
    async with connect(f"ws://127.0.0.1:{server}/ws") as ws:
        await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1}')
        assert msgspec.json.decode(await ws.recv()) == {"result": None, "id": 1}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)  # two symbols are still missing: nothing yet
        await ws.send('{"method":"SUBSCRIBE","params":["ethusdt@aggTrade","bnbusdt@aggTrade"],"id":2}')
        assert msgspec.json.decode(await ws.recv()) == {"result": None, "id": 2}
        received = await frames(ws, COUNT)
    assert all("e" in frame and "stream" not in frame for frame in received)  # the data object alone
    assert sum(map(len, ids_per_symbol(received).values())) == COUNT


async def test_requests_while_streaming_are_answered_between_frames() -> None:
    bench = BenchmarkServer(SYMBOLS, count=COUNT, rate=100)
    port = await bench.start()
    try:
        async with connect(f"ws://127.0.0.1:{port}/stream") as ws:
            streams = [f"{s}@aggTrade" for s in SYMBOLS]
            await ws.send(msgspec.json.encode({"method": "SUBSCRIBE", "params": streams, "id": 7}))
            assert msgspec.json.decode(await ws.recv()) == {"result": None, "id": 7}
            await frames(ws, 3)
            await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":8}')
            replies = [m for m in await frames(ws, 10) if "id" in m]
        assert replies == [{"result": streams, "id": 8}]
    finally:
        await bench.stop()
