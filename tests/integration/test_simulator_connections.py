"""Each connection's faults and the venue's limits, seen by real clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from kairos_core.adapters.inbound.feed_handler import okx_wire
from kairos_core.adapters.inbound.feed_handler.binance_wire import ErrorReply, ServerShutdown, parse_frame
from kairos_core.domain import MarketTick
from kairos_core.simulator.binance import BinanceSimulator
from kairos_core.simulator.okx import PATH, OkxSimulator
from tests.integration.test_simulator_faults import ID_BASE, STREAM, serving


def client(sim: BinanceSimulator | OkxSimulator, path: str = STREAM) -> connect:
    """A client whose own keepalive is off: every message it sends is one the test sends."""
    return connect(f"ws://127.0.0.1:{sim.port}{path}", close_timeout=0.5, ping_interval=None, max_queue=None)


def now() -> float:
    return asyncio.get_running_loop().time()


async def timeline(ws: ClientConnection, parse: Any = parse_frame) -> tuple[list[tuple[float, Any]], float]:
    """Every frame parsed, with the time it came, until the server closes; and the close's time."""
    frames = []
    try:
        async for message in ws:
            frames.append((now(), parse(message)))
    except ConnectionClosed:
        pass
    return frames, now()


async def test_server_shutdown_comes_every_period_and_the_close_after_the_grace() -> None:
    async with serving(shutdown_every=0.4, shutdown_grace=0.3) as sim, client(sim) as ws:
        opened = now()
        frames, closed = await asyncio.wait_for(timeline(ws), 5)
        assert ws.close_code == 1001
        stats = sim.stats()
    notices = [at for at, frame in frames if isinstance(frame, ServerShutdown)]
    assert len(notices) == 1
    assert 0.35 < notices[0] - opened < 0.8
    # The client shares this loop with the simulator: a frame is stamped when it is read, which
    # can be late by a backlog, so the grace is judged from the opening (notice at 0.4 s, close at
    # 0.7 s, less the handshake), and the notice-to-close span only from above.
    assert closed - opened > 0.6, "closed after the grace"
    assert closed - notices[0] < 0.7
    after = [frame for at, frame in frames if at > notices[0]]
    assert len(after) > 20, "trades flow on until the close"
    assert all(isinstance(frame, MarketTick) for frame in after)
    assert (stats["shutdown_notices"], stats["shutdown_closes"], stats["lifetime_closes"]) == (1, 1, 0)


async def test_notices_go_on_until_a_grace_longer_than_the_period_ends() -> None:
    async with (
        serving(shutdown_every=0.2, shutdown_grace=0.5) as sim,
        client(sim, "/ws/btcusdt@aggTrade") as ws,
    ):
        frames, _ = await asyncio.wait_for(timeline(ws), 5)
    notices = [frame for _, frame in frames if isinstance(frame, ServerShutdown)]
    assert len(notices) == 3, "at 0.2, 0.4 and 0.6 s; the close at 0.7 s"
    assert sim.shutdown_notices == 3


async def test_a_raw_stream_gets_the_shutdown_event_alone_and_a_combined_one_wrapped() -> None:
    async with serving(shutdown_every=0.2) as sim:
        for path, expected in (("/ws/btcusdt@aggTrade", None), (STREAM, "!serverShutdown")):
            async with client(sim, path) as ws:
                while True:
                    message = msgspec.json.decode(await asyncio.wait_for(ws.recv(), 2))
                    event = message.get("data", message)
                    if event["e"] == "serverShutdown":
                        break
            assert message.get("stream") == expected
            assert set(event) == {"e", "E"}


async def test_a_connection_is_closed_at_the_end_of_its_lifetime_without_warning() -> None:
    async with serving(lifetime=0.5) as sim, client(sim) as ws:
        opened = now()
        frames, closed = await asyncio.wait_for(timeline(ws), 5)
        assert ws.close_code == 1000
    assert 0.45 < closed - opened < 1.0
    assert frames
    assert all(isinstance(frame, MarketTick) for _, frame in frames), "no notice"
    assert (sim.lifetime_closes, sim.shutdown_notices) == (1, 0)


async def test_a_lifetime_shorter_than_the_shutdown_period_closes_first() -> None:
    async with serving(lifetime=0.3, shutdown_every=0.5) as sim, client(sim) as ws:
        frames, _ = await asyncio.wait_for(timeline(ws), 5)
    assert not any(isinstance(frame, ServerShutdown) for _, frame in frames)
    assert (sim.lifetime_closes, sim.shutdown_closes) == (1, 0)


async def test_a_silent_connection_answers_pings_but_gets_nothing_while_a_new_one_does() -> None:
    async with serving(trades=1_500, rate=1_000, silent_after=0.3) as sim:
        async with client(sim) as first:
            opened = now()
            early = [await asyncio.wait_for(first.recv(), 1)]
            await asyncio.sleep(0.5)  # silent since 0.3 s: nothing more was sent after that
            while True:
                try:
                    early.append(await asyncio.wait_for(first.recv(), 0.05))
                except TimeoutError:
                    break
            async with client(sim) as second:
                later = [await asyncio.wait_for(second.recv(), 1) for _ in range(50)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(first.recv(), 0.2)
            pong = await first.ping()
            await asyncio.wait_for(pong, 1)  # the protocol still answers
            await first.send('{"method":"LIST_SUBSCRIPTIONS","id":1}')
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(first.recv(), 0.2)  # requests are not answered either
            assert first.state is State.OPEN, "the server never closes it"
            assert now() - opened > 0.8
        await asyncio.wait_for(sim.finished.wait(), 5)
        stats = sim.stats()
    early_ticks, later_ticks = ticks(early), ticks(later)
    assert 100 < len(early_ticks) < 600, "about 0.3 s of trades at 1000 a second"
    for symbol in ("BTCUSDT", "ETHUSDT"):
        before = max(t.trade_id for t in early_ticks if t.symbol == symbol)
        after = min(t.trade_id for t in later_ticks if t.symbol == symbol)
        assert after > before + 10, "the second connection gets trades made while the first was silent"
    assert stats["silenced"] == 1, "the second connection left before it went silent"
    assert stats["trades_silenced"] > 0
    assert stats["trades_unsent"] > 0, "while only silent connections listened, trades went nowhere"
    assert stats["trades_made"] == 1_500


async def test_with_silent_every_only_every_nth_connection_goes_silent() -> None:
    async with serving(rate=1_000, silent_after=0.2, silent_every=2) as sim:
        async with client(sim) as first, client(sim) as second, client(sim) as third:
            await asyncio.sleep(0.5)
            with contextlib.suppress(TimeoutError):  # what came before its silence
                while True:
                    await asyncio.wait_for(second.recv(), 0.05)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(second.recv(), 0.3)
            await asyncio.wait_for(first.recv(), 1)  # the 1st and 3rd stream on
            await asyncio.wait_for(third.recv(), 1)
        assert sim.stats()["silenced"] == 1


def ticks(messages: list[str | bytes]) -> list[MarketTick]:
    parsed = [parse_frame(message) for message in messages]
    assert all(isinstance(tick, MarketTick) for tick in parsed), parsed
    return [tick for tick in parsed if isinstance(tick, MarketTick)]


async def test_past_the_connection_budget_handshakes_are_429_until_the_window_moves_on() -> None:
    async with serving(connection_budget=2, budget_window=0.6) as sim:
        async with client(sim), client(sim):
            with pytest.raises(InvalidStatus) as refused:
                async with client(sim):
                    pass
            response = refused.value.response
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "1"
            await asyncio.sleep(0.65)
            async with client(sim) as later:
                assert isinstance(parse_frame(await asyncio.wait_for(later.recv(), 1)), MarketTick)
        assert (sim.handshakes, sim.handshakes_refused) == (4, 1)


async def test_a_subscribe_past_1024_streams_is_refused_whole() -> None:
    streams = [f"btcusdt@kline_{n}" for n in range(1, 1025)]
    async with serving() as sim, client(sim, "/ws") as ws:
        await ws.send(msgspec.json.encode({"method": "SUBSCRIBE", "params": streams, "id": 1}).decode())
        assert msgspec.json.decode(await asyncio.wait_for(ws.recv(), 1)) == {"result": None, "id": 1}
        extra = {"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade", "btcusdt@depth"], "id": 2}
        await ws.send(msgspec.json.encode(extra).decode())
        reply = await asyncio.wait_for(ws.recv(), 1)
        assert list(msgspec.json.decode(reply)) == ["error", "id"]
        refused = parse_frame(reply)
        assert isinstance(refused, ErrorReply)
        assert (refused.request_id, refused.code) == (2, 2)
        assert "at most 1024 streams" in refused.message
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":3}')
        listed = msgspec.json.decode(await asyncio.wait_for(ws.recv(), 1))
        assert listed["result"] == streams, "nothing of the refused request was applied"
    assert sim.streams_refused == 0, "a refused request is an error reply, not a refused handshake"


async def test_a_handshake_asking_for_too_many_streams_is_400() -> None:
    async with serving(streams_per_connection=2) as sim:
        with pytest.raises(InvalidStatus) as refused:
            async with client(sim, "/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade/btcusdt@depth"):
                pass
        assert refused.value.response.status_code == 400
        async with client(sim) as ws:  # two is allowed
            assert isinstance(parse_frame(await asyncio.wait_for(ws.recv(), 1)), MarketTick)
        assert (sim.streams_refused, sim.handshakes) == (1, 1)


async def test_five_messages_a_second_are_answered_and_a_sixth_closes_the_connection() -> None:
    async with serving() as sim, client(sim, "/ws") as ws:
        for n in range(5):
            await ws.send(f'{{"method":"LIST_SUBSCRIPTIONS","id":{n}}}')
            assert msgspec.json.decode(await asyncio.wait_for(ws.recv(), 1))["id"] == n
        await asyncio.sleep(1.05)  # a sliding second: five more fit
        for n in range(5, 10):
            await ws.send(f'{{"method":"LIST_SUBSCRIPTIONS","id":{n}}}')
            assert msgspec.json.decode(await asyncio.wait_for(ws.recv(), 1))["id"] == n
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":10}')
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 1)  # the sixth is not answered: the close comes
        assert (ws.close_code, ws.close_reason) == (1008, "Too many requests")
        assert sim.rate_limited == 1


@pytest.mark.parametrize("frame", ["ping", "pong"])
async def test_ping_and_pong_frames_count_as_messages(frame: str) -> None:
    async with serving() as sim, client(sim, "/ws") as ws:
        for _ in range(6):
            await (ws.ping() if frame == "ping" else ws.pong())
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 1)
        assert ws.close_code == 1008
    assert sim.rate_limited == 1


async def test_okx_sends_notice_64008_every_period_and_closes_after_the_grace() -> None:
    sim = OkxSimulator(("BTC-USDT",), rate=500, seed=1, id_base=ID_BASE, notice_every=0.4, shutdown_grace=0.3)
    await sim.start()
    try:
        async with client(sim, PATH) as ws:
            subscribe = {"op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]}
            await ws.send(msgspec.json.encode(subscribe).decode())
            opened = now()
            frames, closed = await asyncio.wait_for(timeline(ws, okx_wire.parse_frame), 5)
            assert ws.close_code == 1001
    finally:
        await asyncio.wait_for(sim.stop(), 5)
    notices = [(at, frame) for at, frame in frames if isinstance(frame, okx_wire.Notice)]
    assert len(notices) == 1
    at, notice = notices[0]
    assert notice.code == okx_wire.SERVICE_UPGRADE
    assert 0.3 < at - opened < 0.8, "opened is stamped after the subscribe, the notice's clock before"
    # As for Binance above: the grace is judged from the opening, the notice-to-close span from above.
    assert closed - opened > 0.6, "closed after the grace"
    assert closed - at < 0.7
    assert any(isinstance(frame, tuple) and frame for t, frame in frames if t > at), "pushes until the close"
    stats = sim.stats()
    assert (stats["shutdown_notices"], stats["shutdown_closes"]) == (1, 1)


async def test_okx_closes_a_connection_at_the_end_of_its_lifetime() -> None:
    sim = OkxSimulator(("BTC-USDT",), rate=100, seed=1, id_base=ID_BASE, lifetime=0.3)
    await sim.start()
    try:
        async with client(sim, PATH) as ws:
            opened = now()
            frames, closed = await asyncio.wait_for(timeline(ws, okx_wire.parse_frame), 5)
            assert ws.close_code == 1000
    finally:
        await asyncio.wait_for(sim.stop(), 5)
    assert frames == []
    assert 0.25 < closed - opened < 0.8
    assert sim.stats()["lifetime_closes"] == 1


@pytest.mark.parametrize(
    "faults",
    [
        {"shutdown_every": 0.2, "shutdown_grace": 0.1},
        {"lifetime": 0.25},
        {"silent_after": 0.2},
    ],
    ids=["shutdown", "lifetime", "silent"],
)
async def test_a_planned_run_under_connection_faults_still_serves_every_trade(
    faults: dict[str, float],
) -> None:
    """Trades made while a connection is closing, closed or silent are in the plan and the history."""
    async with serving(trades=1_200, rate=1_000, **faults) as sim:
        received: set[tuple[str, int]] = set()
        connections = 0
        while not sim.finished.is_set():
            connections += 1
            async with client(sim) as ws:
                try:
                    while True:
                        tick = parse_frame(await asyncio.wait_for(ws.recv(), 0.3))
                        if isinstance(tick, MarketTick):
                            received.add((tick.symbol, tick.trade_id))
                except (TimeoutError, ConnectionClosed):
                    pass
        stats = sim.stats()
        history = await history_keys(sim)
    planned = {(symbol.upper(), trade_id) for symbol, ids in sim.expected.items() for trade_id in ids}
    assert len(planned) == 1_200
    assert connections >= 2
    assert received <= planned
    assert history == planned
    assert stats["trades_sent"] == len(received)
    if "silent_after" in faults:
        assert stats["trades_silenced"] > 0


async def history_keys(sim: BinanceSimulator) -> set[tuple[str, int]]:
    """Every trade the REST history serves for the planned run."""
    keys = set()
    async with aiohttp.ClientSession() as http:
        for symbol, ids in sim.expected.items():
            params = {"symbol": symbol.upper(), "fromId": str(ids[0]), "limit": "1000"}
            async with http.get(f"http://127.0.0.1:{sim.port}/api/v3/aggTrades", params=params) as response:
                keys |= {(symbol.upper(), trade["a"]) for trade in await response.json()}
    return keys
