"""The simulator speaks Binance's market-stream protocol to real WebSocket clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from kairos_core.adapters.inbound.feed_handler.binance_wire import parse_frame
from kairos_core.domain import MarketTick
from kairos_core.simulator.binance import BinanceSimulator

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "binance"
TIMEOUT = 1.0  # for any single await on the socket
QUIET = 0.3  # how long "no frame of that symbol" is watched for: ~300 frames at the fixture's rate


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    sim = BinanceSimulator(("btcusdt", "ethusdt"), rate=2_000, seed=11, id_base=1_000)
    await sim.start()
    yield sim
    await asyncio.wait_for(sim.stop(), 5)


def client(sim: BinanceSimulator, path: str, **kwargs: Any) -> connect:
    return connect(f"ws://127.0.0.1:{sim.port}{path}", open_timeout=TIMEOUT, close_timeout=0.5, **kwargs)


async def receive(ws: ClientConnection) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(message, str), "Binance sends text frames"
    frame = msgspec.json.decode(message)
    assert isinstance(frame, dict)
    return frame


def is_reply(frame: dict[str, Any]) -> bool:
    return "id" in frame and ("result" in frame or "code" in frame or "error" in frame)


async def request(ws: ClientConnection, payload: dict[str, Any] | str) -> dict[str, Any]:
    """Send one request; its reply, skipping the market frames that arrive before it."""
    await asyncio.wait_for(
        ws.send(payload if isinstance(payload, str) else msgspec.json.encode(payload).decode()), TIMEOUT
    )
    while not is_reply(frame := await receive(ws)):
        pass
    return frame


async def ticks_for(ws: ClientConnection, seconds: float) -> list[MarketTick]:
    """Every frame received in the next ``seconds``, parsed; fails on anything but a tick."""
    ticks = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            message = await asyncio.wait_for(ws.recv(decode=False), left)
        except TimeoutError:
            break
        tick = parse_frame(message)
        assert isinstance(tick, MarketTick), tick
        ticks.append(tick)
    return ticks


async def test_a_raw_stream_sends_the_data_object_alone(simulator: BinanceSimulator) -> None:
    async with client(simulator, "/ws/btcusdt@aggTrade") as ws:
        frames = [await receive(ws) for _ in range(30)]
    assert all("stream" not in f and f["e"] == "aggTrade" for f in frames)
    ticks = [parse_frame(msgspec.json.encode(f)) for f in frames]
    assert {t.symbol for t in ticks if isinstance(t, MarketTick)} == {"BTCUSDT"}
    ids = [t.trade_id for t in ticks if isinstance(t, MarketTick)]
    assert ids == list(range(ids[0], ids[0] + 30)), "every BTCUSDT trade, in order"


async def test_a_bare_connection_receives_nothing_until_it_subscribes(simulator: BinanceSimulator) -> None:
    async with client(simulator, "/ws") as ws:
        assert await ticks_for(ws, 0.1) == []
        await asyncio.wait_for(
            ws.send('{"method":"SUBSCRIBE","params":["ethusdt@aggTrade"],"id":1}'), TIMEOUT
        )
        assert await receive(ws) == {"result": None, "id": 1}  # the reply comes before any frame
        ticks = await ticks_for(ws, 0.1)
    assert ticks
    assert {t.symbol for t in ticks} == {"ETHUSDT"}


async def test_list_subscriptions_lists_exactly_what_is_subscribed(simulator: BinanceSimulator) -> None:
    async with client(simulator, "/ws/btcusdt@aggTrade") as ws:
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3}) == {
            "result": ["btcusdt@aggTrade"],
            "id": 3,
        }
        subscribe = {"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade", "btcusdt@depth"], "id": 4}
        assert await request(ws, subscribe) == {"result": None, "id": 4}
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": "list-2"}) == {
            "result": ["btcusdt@aggTrade", "ethusdt@aggTrade", "btcusdt@depth"],
            "id": "list-2",  # a string id is echoed as it came
        }
        unsubscribe = {"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade", "btcusdt@depth"], "id": 5}
        assert await request(ws, unsubscribe) == {"result": None, "id": 5}
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "params": [], "id": 6}) == {
            "result": ["ethusdt@aggTrade"],
            "id": 6,
        }


async def test_unsubscribing_stops_that_symbols_frames(simulator: BinanceSimulator) -> None:
    async with client(simulator, "/ws/btcusdt@aggTrade") as ws:
        await request(ws, {"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade"], "id": 1})
        assert {t.symbol for t in await ticks_for(ws, 0.1)} == {"BTCUSDT", "ETHUSDT"}
        await request(ws, {"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 312})
        after = await ticks_for(ws, QUIET)
    assert len(after) > 50
    assert {t.symbol for t in after} == {"ETHUSDT"}


async def test_a_stream_other_than_agg_trade_is_accepted_but_silent(simulator: BinanceSimulator) -> None:
    async with client(simulator, "/ws") as ws:
        subscribe = {"method": "SUBSCRIBE", "params": ["btcusdt@depth", "ethusdt@kline_1m"], "id": 9}
        assert await request(ws, subscribe) == {"result": None, "id": 9}
        assert await ticks_for(ws, 0.1) == []


@pytest.mark.parametrize(
    ("message", "code", "msg", "request_id"),
    [
        (
            '{"method":"SUBSCRIBED","params":["btcusdt@aggTrade"],"id":4}',
            2,
            "Invalid request: unknown variant",
            4,
        ),
        ('{"params":["btcusdt@aggTrade"],"id":4}', 2, "Invalid request: missing field `method`", 4),
        ('{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"}', 3, "Invalid JSON: ", None),
        ("not json", 3, "Invalid JSON: ", None),
        ('["SUBSCRIBE"]', 2, "Invalid request: ", None),
        (
            '{"method":"SUBSCRIBE","params":"btcusdt@aggTrade","id":5}',
            2,
            "Invalid request: params must be",
            5,
        ),
        ('{"method":"SUBSCRIBE","params":[7],"id":5}', 2, "Invalid request: params must be", 5),
        (
            '{"method":"SUBSCRIBE","params":["foousdt@aggTrade"],"id":6}',
            2,
            "Invalid request: symbol 'foousdt'",
            6,
        ),
        # one bad symbol refuses the whole request: nothing of it is applied (LIST below stays empty)
        ('{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","x@y"],"id":8}', 2, "Invalid request: ", 8),
        (
            '{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":9223372036854775808}',
            2,
            "Invalid request: request ID",
            None,
        ),
        (
            '{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":"a b"}',
            2,
            "Invalid request: request ID",
            None,
        ),
        (
            '{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":"' + "a" * 37 + '"}',
            2,
            "Invalid request: request ID",
            None,
        ),
        (
            '{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1.5}',
            2,
            "Invalid request: request ID",
            None,
        ),
        ('{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"]}', 2, "Invalid request: request ID", None),
        (
            '{"method":"LIST_SUBSCRIPTIONS","params":["x"],"id":2}',
            2,
            "Invalid request: too many parameters",
            2,
        ),
        ('{"method":"SET_PROPERTY","params":["compressed",true],"id":10}', 0, "Unknown property", 10),
        (
            '{"method":"SET_PROPERTY","params":["combined","yes"],"id":11}',
            1,
            "Invalid value type: expected Boolean",
            11,
        ),
        ('{"method":"GET_PROPERTY","params":[1],"id":12}', 2, "Invalid request: property name must be", 12),
    ],
)
async def test_a_bad_request_gets_binances_error_reply(
    simulator: BinanceSimulator, message: str, code: int, msg: str, request_id: int | None
) -> None:
    async with client(simulator, "/ws") as ws:
        reply = await request(ws, message)
        assert list(reply) == ["code", "msg", "id"]
        assert (reply["code"], reply["id"]) == (code, request_id)
        assert reply["msg"].startswith(msg), reply["msg"]
        # the connection stays open and unchanged
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 99}) == {"result": [], "id": 99}


@pytest.mark.parametrize(
    "message",
    [
        '{"method":"SUBSCRIBE","params":["BTCUSDT@aggTrade"],"id":7}',
        '{"method":"SUBSCRIBE","params":["btcusdt"],"id":7}',
        '{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt"],"id":7}',
    ],
)
async def test_an_invalid_stream_name_is_refused_nested_as_the_live_server_does(
    simulator: BinanceSimulator, message: str
) -> None:
    async with client(simulator, "/ws") as ws:
        reply = await request(ws, message)
        assert list(reply) == ["error", "id"]
        assert (list(reply["error"]), reply["error"]["code"], reply["id"]) == (["code", "msg"], 2, 7)
        assert reply["error"]["msg"].startswith("Invalid request: invalid stream"), reply
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 99}) == {"result": [], "id": 99}


@pytest.mark.parametrize(
    "request_id", [-(2**63), 2**63 - 1, 0, "abc123", "7d3b9b46-5f4f-4c8b-9a2d-0a8f9a4a0f5b", None]
)
async def test_every_request_id_binance_accepts_is_echoed(
    simulator: BinanceSimulator, request_id: object
) -> None:
    async with client(simulator, "/ws") as ws:
        reply = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": request_id})
        assert reply == {"result": [], "id": request_id}


async def test_a_bare_combined_connection_subscribes_later(simulator: BinanceSimulator) -> None:
    async with client(simulator, "/stream") as ws:
        subscribe = {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1}
        assert await request(ws, subscribe) == {"result": None, "id": 1}
        frames = [await receive(ws) for _ in range(10)]
    assert all(list(f) == ["stream", "data"] and f["stream"] == "btcusdt@aggTrade" for f in frames)
    ticks = [parse_frame(msgspec.json.encode(f)) for f in frames]
    assert all(isinstance(t, MarketTick) and t.symbol == "BTCUSDT" for t in ticks)


async def test_the_combined_property_switches_the_framing(simulator: BinanceSimulator) -> None:
    async with client(simulator, "/ws/btcusdt@aggTrade") as ws:
        assert await request(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 1}) == {
            "result": False,
            "id": 1,
        }
        set_combined = {"method": "SET_PROPERTY", "params": ["combined", True], "id": 2}
        assert await request(ws, set_combined) == {"result": None, "id": 2}
        frame = await receive(ws)
        assert frame["stream"] == "btcusdt@aggTrade"
        assert await request(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 3}) == {
            "result": True,
            "id": 3,
        }


async def test_a_replayed_recording_is_served_raw() -> None:
    sim = BinanceSimulator(rate=20_000, replay=FIXTURES / "BINANCE-ee25be.0")
    await sim.start()
    try:
        async with client(sim, "/ws/ethusdt@aggTrade") as ws:
            frames = [await receive(ws) for _ in range(20)]
    finally:
        await asyncio.wait_for(sim.stop(), 5)
    assert all("stream" not in f for f in frames)
    ticks = [parse_frame(msgspec.json.encode(f)) for f in frames]
    assert all(isinstance(t, MarketTick) and t.symbol == "ETHUSDT" for t in ticks)


@pytest.mark.parametrize("path", ["/", "/ws/btcusdt@aggTrade/ethusdt@aggTrade", "/streams"])
async def test_other_paths_are_not_found(simulator: BinanceSimulator, path: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with client(simulator, path):
            pass
    assert refused.value.response.status_code == 404
    assert simulator.handshakes == 0


class PingCountingConnection(ClientConnection):
    """A client connection that counts the pings it receives (websockets answers them itself)."""

    pings = 0

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
        super().process_event(event)


async def test_the_server_pings_every_ping_interval() -> None:
    # Pongs count against Binance's 5 messages a second: ten pings a second would get it closed.
    sim = BinanceSimulator(("btcusdt",), ping_interval=0.1, messages_per_second=None)
    await sim.start()
    try:
        # the client's own keepalive is off: a ping here can only have come from the server
        async with client(sim, "/ws", ping_interval=None, create_connection=PingCountingConnection) as ws:
            assert isinstance(ws, PingCountingConnection)
            deadline = asyncio.get_running_loop().time() + 1.5
            while ws.pings < 3:
                assert asyncio.get_running_loop().time() < deadline, f"{ws.pings} pings in 1.5 s"
                await asyncio.sleep(0.01)
            # answered by websockets with pongs: the server keeps the connection
            assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {"result": [], "id": 1}
    finally:
        await asyncio.wait_for(sim.stop(), 5)


async def test_no_pings_when_ping_interval_is_none() -> None:
    sim = BinanceSimulator(("btcusdt",), ping_interval=None)
    await sim.start()
    try:
        async with client(sim, "/ws", ping_interval=None, create_connection=PingCountingConnection) as ws:
            assert isinstance(ws, PingCountingConnection)
            await asyncio.sleep(0.3)
            assert ws.pings == 0
    finally:
        await asyncio.wait_for(sim.stop(), 5)
