"""The Binance feed against a real WebSocket server on 127.0.0.1 (the bundled simulator)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kairos_core.adapters.inbound.feed_handler.aiohttp_client import AiohttpConnector
from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.inbound.feed_handler.connection import HandshakeRejected, WebSocketConnector
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy
from kairos_core.adapters.inbound.feed_handler.websockets_client import WebsocketsConnector
from kairos_core.application.bus import BroadcastBus, Subscription
from kairos_core.application.tick_counter import TickCounter
from kairos_core.domain import ConfigurationError, FeedRefused, MarketTick, RejectReason
from kairos_core.simulator.binance import BinanceSimulator

ID_BASE = 5_000
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "binance"


@pytest.fixture(params=["aiohttp", "websockets"])
def connector(request: pytest.FixtureRequest) -> WebSocketConnector:
    """Every feed test runs over both clients behind the seam."""
    kind = AiohttpConnector if request.param == "aiohttp" else WebsocketsConnector
    return kind(close_timeout=0.2)


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    sim = BinanceSimulator(("btcusdt", "ethusdt"), rate=2_000, seed=7, id_base=ID_BASE)
    await sim.start()
    yield sim
    await sim.stop()


def fast_policy() -> ReconnectPolicy:
    return ReconnectPolicy(initial_delay=0.01, max_delay=0.05)


def feed_for(
    sim: BinanceSimulator,
    sink: TickCounter | BroadcastBus,
    connector: WebSocketConnector,
    symbols: tuple[str, ...] | None = None,
    policy: ReconnectPolicy | None = None,
) -> BinanceFeedHandler:
    return BinanceFeedHandler(
        sink,
        symbols or sim.symbols,
        url=f"ws://127.0.0.1:{sim.port}/stream",
        rest_url=f"http://127.0.0.1:{sim.port}",
        connector=connector,
        policy=policy or fast_policy(),
    )


def bare_feed(port: int, connector: WebSocketConnector, watchdog: float = 60.0) -> BinanceFeedHandler:
    """A btcusdt feed to a hand-made server on ``port``: no REST check, fast reconnects."""
    return BinanceFeedHandler(
        BroadcastBus(),
        ("btcusdt",),
        url=f"ws://127.0.0.1:{port}/stream",
        rest_url=None,
        connector=connector,
        policy=fast_policy(),
        watchdog=watchdog,
    )


async def collect(subscription: Subscription) -> list[MarketTick]:
    return [tick async for tick in subscription]


async def run_until(feed: BinanceFeedHandler, done: asyncio.Event, timeout: float = 20) -> None:
    """Run the feed until ``done`` is set, then stop it and wait for ``start`` to return."""
    task = asyncio.create_task(feed.start())
    waiter = asyncio.create_task(done.wait())
    finished, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    assert waiter in finished, "the feed ended or timed out before the condition was met"
    await feed.stop()
    await asyncio.wait_for(task, 10)


async def eventually(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def assert_gap_free(ticks: list[MarketTick]) -> None:
    """Simulated aggregate ids are consecutive per symbol: any loss or reordering shows."""
    by_symbol: dict[str, list[int]] = {}
    for tick in ticks:
        by_symbol.setdefault(tick.symbol, []).append(tick.trade_id)
    for symbol, ids in by_symbol.items():
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol} ids not consecutive"


async def test_three_subscribers_each_receive_every_tick_in_order(
    simulator: BinanceSimulator, connector: WebSocketConnector
) -> None:
    bus = BroadcastBus()
    counter = TickCounter(bus, limit=600)
    reached = asyncio.Event()
    counter.on_limit = reached.set
    subscribers = [bus.subscribe(name) for name in ("a", "b")] + [bus.subscribe("c", lossless=True)]
    readers = [asyncio.create_task(collect(s)) for s in subscribers]
    feed = feed_for(simulator, counter, connector)

    await run_until(feed, reached)
    bus.close()
    received = await asyncio.gather(*readers)

    assert [len(ticks) for ticks in received] == [600, 600, 600]
    assert received[0] == received[1] == received[2]
    assert_gap_free(received[0])
    assert {t.symbol for t in received[0]} == {"BTCUSDT", "ETHUSDT"}
    assert all(t.trade_id >= ID_BASE for t in received[0])
    assert feed.rejected.total() == 0


async def test_reconnects_after_the_server_drops_the_connection(
    simulator: BinanceSimulator, connector: WebSocketConnector
) -> None:
    bus = BroadcastBus(capacity=100_000)
    subscription = bus.subscribe("all")
    counter = TickCounter(bus)
    feed = feed_for(simulator, counter, connector)
    after_drop = asyncio.Event()

    async def drop_then_wait() -> None:
        await eventually(lambda: counter.total >= 50)
        await simulator.drop_connections()
        dropped_at = counter.total
        await eventually(lambda: simulator.handshakes >= 2 and counter.total >= dropped_at + 50)
        after_drop.set()

    driver = asyncio.create_task(drop_then_wait())
    await run_until(feed, after_drop)
    await driver

    assert feed.reconnects == 1
    assert simulator.handshakes == 2
    bus.close()
    ticks = await collect(subscription)
    assert len(ticks) == counter.total >= 100
    # Trades made while disconnected are missing (gap repair is a later feature), but each
    # connection's share arrives in order: ids only ever rise per symbol.
    for symbol in ("BTCUSDT", "ETHUSDT"):
        ids = [t.trade_id for t in ticks if t.symbol == symbol]
        assert ids == sorted(set(ids))


async def test_garbage_frames_are_counted_and_skipped(
    simulator: BinanceSimulator, connector: WebSocketConnector
) -> None:
    bus = BroadcastBus(capacity=100_000)
    counter = TickCounter(bus)
    feed = feed_for(simulator, counter, connector)
    done = asyncio.Event()

    async def inject() -> None:
        await eventually(lambda: simulator.clients > 0 and counter.total >= 10)
        await simulator.inject(b"this is not json")
        await simulator.inject(b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT"}}')
        await simulator.inject(b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"BTCUSDT"}}')
        await simulator.inject(b'{"result":null,"id":1}')
        before = counter.total
        await eventually(lambda: counter.total >= before + 20)
        done.set()

    driver = asyncio.create_task(inject())
    await run_until(feed, done)
    await driver

    assert feed.rejected == {RejectReason.JSON: 1, RejectReason.UNKNOWN_EVENT: 1, RejectReason.SCHEMA: 1}
    assert feed.reconnects == 0


async def test_server_pings_are_answered(simulator: BinanceSimulator, connector: WebSocketConnector) -> None:
    feed = feed_for(simulator, TickCounter(BroadcastBus(capacity=100_000)), connector)
    done = asyncio.Event()

    async def ping() -> None:
        await eventually(lambda: simulator.clients > 0)
        assert await simulator.ping_clients(timeout=2) == 1
        done.set()

    driver = asyncio.create_task(ping())
    await run_until(feed, done)
    await driver


async def test_an_unknown_symbol_fails_fast_before_streaming(
    simulator: BinanceSimulator, connector: WebSocketConnector
) -> None:
    feed = feed_for(simulator, BroadcastBus(), connector, symbols=("btcusdt", "foousdt"))
    with pytest.raises(ConfigurationError, match="'foousdt' is not listed"):
        await asyncio.wait_for(feed.start(), 5)
    assert simulator.handshakes == 0


@pytest.mark.parametrize(
    "rest_path",
    [
        pytest.param(None, id="unreachable"),  # the discard port: nothing listens
        pytest.param("/prefix", id="path-prefix"),  # asked at <base>/api/v3/...; the simulator 404s
    ],
)
async def test_an_unusable_rest_endpoint_only_warns(
    simulator: BinanceSimulator, connector: WebSocketConnector, rest_path: str | None
) -> None:
    rest_url = "http://127.0.0.1:9" if rest_path is None else f"http://127.0.0.1:{simulator.port}{rest_path}"
    counter = TickCounter(BroadcastBus(capacity=100_000), limit=5)
    reached = asyncio.Event()
    counter.on_limit = reached.set
    feed = BinanceFeedHandler(
        counter,
        ("btcusdt",),
        url=f"ws://127.0.0.1:{simulator.port}/stream",
        rest_url=rest_url,
        connector=connector,
        policy=fast_policy(),
    )
    await run_until(feed, reached)
    assert counter.total == 5


@pytest.mark.parametrize("status", [451, 403])
async def test_a_refusing_handshake_exits_without_retrying(
    status: int, connector: WebSocketConnector
) -> None:
    sim = BinanceSimulator(("btcusdt",), handshake_status=status)
    await sim.start()
    try:
        feed = feed_for(sim, BroadcastBus(), connector)
        with pytest.raises(FeedRefused, match=rf"HTTP {status}.*--binance-url"):
            await asyncio.wait_for(feed.start(), 5)
        assert sim.handshakes == 1
    finally:
        await sim.stop()


async def test_other_client_errors_are_retried_five_times_then_refused(connector: WebSocketConnector) -> None:
    sim = BinanceSimulator(("btcusdt",), handshake_status=400)
    await sim.start()
    try:
        feed = feed_for(sim, BroadcastBus(), connector)
        with pytest.raises(FeedRefused, match="HTTP 400, 5 times"):
            await asyncio.wait_for(feed.start(), 10)
        assert sim.handshakes == 5
    finally:
        await sim.stop()


async def test_a_rate_limited_handshake_is_retried_after_the_longest_backoff(
    connector: WebSocketConnector,
) -> None:
    """429 (too many connections) and 418 (banned for it) are never final: the venue will let
    the client in later, and retrying sooner would prolong a ban."""
    sim = BinanceSimulator(("btcusdt",), handshake_status=429)
    await sim.start()
    try:
        policy = ReconnectPolicy(initial_delay=0.001, max_delay=0.1)
        feed = feed_for(sim, BroadcastBus(), connector, policy=policy)
        running = asyncio.create_task(feed.start())
        await eventually(lambda: sim.handshakes >= 8, timeout=5)  # past five 429s, still retrying
        assert not running.done()
        await feed.stop()
        await running
        delays = [policy.connection_ended(HandshakeRejected(429, "ws://x"), 0.0, "") for _ in range(20)]
        assert all(0.05 <= delay <= 0.1 for delay in delays), "each retry waits half to all of max_delay"
    finally:
        await sim.stop()


async def test_a_silent_connection_is_replaced_by_the_watchdog(connector: WebSocketConnector) -> None:
    """A server that completes the handshake, then neither sends nor answers pings."""
    handshakes = 0
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal handshakes
        writers.append(writer)
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _accept(key) + b"\r\n\r\n"
        )
        await writer.drain()
        handshakes += 1
        await reader.read()  # silent: swallow pings and answer nothing until the client leaves

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    feed = bare_feed(port, connector, watchdog=0.3)
    replaced = asyncio.Event()

    async def watch() -> None:
        await eventually(lambda: handshakes >= 2)
        replaced.set()

    driver = asyncio.create_task(watch())
    try:
        await run_until(feed, replaced, timeout=10)
        await driver
        assert feed.reconnects >= 1
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def _accept(key: bytes) -> bytes:
    import base64
    import hashlib

    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
    return base64.b64encode(hashlib.sha1(key + guid).digest())


@pytest.mark.parametrize(
    ("recording", "symbols", "expected"),
    [
        # Literal counts from shared/data/real/SOURCES.md, not computed by our code.
        (
            "BINANCE-ee25be.0",
            ("btcusdt", "ethusdt", "dotusdt"),
            {"BTCUSDT": 1227, "ETHUSDT": 506, "DOTUSDT": 177},
        ),
    ],
)
async def test_replaying_a_recording_delivers_every_recorded_trade(
    recording: str, symbols: tuple[str, ...], expected: dict[str, int], connector: WebSocketConnector
) -> None:
    sim = BinanceSimulator(rate=20_000, replay=FIXTURES / recording)
    await sim.start()
    try:
        total = sum(expected.values())
        bus = BroadcastBus(capacity=total)
        subscription = bus.subscribe("all")
        counter = TickCounter(bus, limit=total)
        reached = asyncio.Event()
        counter.on_limit = reached.set
        # The simulator starts a replay when the first client connects.
        feed = feed_for(sim, counter, connector, symbols=symbols)
        await run_until(feed, reached)
        bus.close()
        ticks = await collect(subscription)
    finally:
        await sim.stop()
    by_symbol: dict[str, int] = {}
    for tick in ticks:
        by_symbol[tick.symbol] = by_symbol.get(tick.symbol, 0) + 1
    assert by_symbol == expected
    assert_gap_free(ticks)


async def test_stop_ends_a_feed_stuck_in_connect(connector: WebSocketConnector) -> None:
    """A server that accepts TCP and never answers: stop() must not wait out the open timeout."""
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    feed = bare_feed(port, connector)
    task = asyncio.create_task(feed.start())
    try:
        await eventually(lambda: bool(held))
        started = asyncio.get_running_loop().time()
        await feed.stop()
        await asyncio.wait_for(task, 2)
        assert asyncio.get_running_loop().time() - started < 1
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


async def test_a_ping_from_a_closing_server_is_a_disconnect_not_a_crash(
    connector: WebSocketConnector,
) -> None:
    """The server pings and drops the connection at once; answering it must not kill the feed."""
    from websockets.asyncio.server import ServerConnection, serve

    async def ping_and_leave(connection: ServerConnection) -> None:
        await connection.ping()
        connection.transport.close()

    async with serve(ping_and_leave, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        feed = bare_feed(port, connector)
        task = asyncio.create_task(feed.start())
        await eventually(lambda: feed.reconnects >= 5 or task.done())
        assert not task.done(), task.exception()
        await feed.stop()
        await asyncio.wait_for(task, 5)
