"""The Binance simulator's planned run and its faults, seen by real clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from kairos_core.adapters.inbound.feed_handler.binance_wire import parse_frame
from kairos_core.domain import FrameRejected, MarketTick, RejectReason
from kairos_core.simulator.binance import BinanceSimulator
from kairos_core.simulator.faults import drop_intervals

SYMBOLS = ("btcusdt", "ethusdt")
STREAM = "/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade"
ID_BASE = 1_000


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[BinanceSimulator]:
    options = {"rate": 5_000, "seed": 4, "id_base": ID_BASE, "ping_interval": None, **options}
    sim = BinanceSimulator(SYMBOLS, **options)
    await sim.start()
    try:
        yield sim
    finally:
        await asyncio.wait_for(sim.stop(), 5)


def client(sim: BinanceSimulator, **kwargs: Any) -> connect:
    return connect(f"ws://127.0.0.1:{sim.port}{STREAM}", max_queue=None, close_timeout=0.5, **kwargs)


async def frames_until_quiet(
    ws: ClientConnection, sim: BinanceSimulator, quiet: float = 0.3
) -> list[str | bytes]:
    """Every frame of ``sim``'s planned run: read until it has made its last trade (a pause of this
    process is no end of the stream), then until none came for ``quiet`` seconds."""
    frames: list[str | bytes] = []
    while not sim.finished.is_set():
        with contextlib.suppress(TimeoutError):  # recv() may be cancelled: nothing is lost
            frames.append(await asyncio.wait_for(ws.recv(), 0.05))
    await read_into(frames, ws, quiet)
    return frames


async def read_into(frames: list[str | bytes], ws: ClientConnection, quiet: float = 0.3) -> None:
    """Append every frame to ``frames`` until none came for ``quiet`` seconds (or it closes)."""
    while True:
        try:
            frames.append(await asyncio.wait_for(ws.recv(), quiet))
        except TimeoutError:
            return


async def read_all(ws: ClientConnection) -> None:
    """Read until the connection closes; ``ConnectionClosedError`` if it did not close cleanly."""
    async for frame in ws:
        ids_of([frame])


def ids_of(frames: list[str | bytes]) -> list[tuple[str, int]]:
    keys = []
    for frame in frames:
        tick = parse_frame(frame)
        assert isinstance(tick, MarketTick), tick
        keys.append((tick.symbol, tick.trade_id))
    return keys


def planned_keys(sim: BinanceSimulator) -> set[tuple[str, int]]:
    return {(symbol.upper(), trade_id) for symbol, ids in sim.expected.items() for trade_id in ids}


async def rest_ids(sim: BinanceSimulator, symbol: str) -> list[int]:
    """Every id the history serves for ``symbol``, page by page."""
    ids: list[int] = []
    url = f"http://127.0.0.1:{sim.port}/api/v3/aggTrades"
    async with aiohttp.ClientSession() as http:
        while True:
            from_id = ids[-1] + 1 if ids else ID_BASE
            params = {"symbol": symbol.upper(), "fromId": str(from_id), "limit": "1000"}
            async with http.get(url, params=params) as response:
                assert response.status == 200
                page = [trade["a"] for trade in await response.json()]
            if not page:
                return ids
            ids.extend(page)


async def test_a_planned_run_writes_its_trades_first_then_makes_exactly_those(tmp_path: Path) -> None:
    expected_file = tmp_path / "expected.csv"
    sim = BinanceSimulator(
        SYMBOLS, rate=5_000, seed=4, id_base=ID_BASE, trades=600, expected_file=expected_file
    )
    assert not expected_file.exists()
    await sim.start()
    try:
        lines = expected_file.read_text().splitlines()
        assert len(lines) == 600
        assert {tuple(line.split(",")) for line in lines} == {
            ("binance", symbol, str(trade_id)) for symbol, trade_id in planned_keys(sim)
        }
        assert list(tmp_path.iterdir()) == [expected_file], "the temporary file was renamed"  # noqa: ASYNC240
        await asyncio.sleep(0.2)
        assert sim.trades_made == 0, "a planned run waits for its first client"
        async with client(sim) as ws:
            received = ids_of(await frames_until_quiet(ws, sim))
        assert sim.finished.is_set()
        assert len(received) == 600
        assert set(received) == planned_keys(sim)
        for symbol, ids in sim.expected.items():
            assert await rest_ids(sim, symbol) == list(ids), "the history serves the whole run"
    finally:
        await asyncio.wait_for(sim.stop(), 5)
    assert sim.stats()["trades_made"] == sim.stats()["trades_sent"] == 600


def test_faults_do_not_change_the_trades_planned() -> None:
    plain = BinanceSimulator(SYMBOLS, seed=9, id_base=ID_BASE, trades=1_000)
    faulty = BinanceSimulator(
        SYMBOLS, seed=9, id_base=ID_BASE, trades=1_000, drop_every=1, drop_random=True, withhold_every=3
    )
    assert plain.expected == faulty.expected
    assert sum(len(ids) for ids in plain.expected.values()) == 1_000


async def test_the_history_holds_a_planned_run_longer_than_history() -> None:
    async with serving(trades=400, history=10) as sim:
        async with client(sim) as ws:
            await frames_until_quiet(ws, sim)
        for symbol, ids in sim.expected.items():
            assert await rest_ids(sim, symbol) == list(ids)


async def test_drops_cut_every_client_and_what_is_made_meanwhile_goes_out_on_no_socket() -> None:
    async with serving(trades=3_000, rate=3_000, drop_every=0.2) as sim:
        frames: list[str | bytes] = []
        closes = 0
        while not sim.finished.is_set():
            async with client(sim) as ws:
                try:
                    await read_into(frames, ws)
                except ConnectionClosedError:
                    closes += 1
            await asyncio.sleep(0.1)  # the reconnect window
        received = ids_of(frames)
        stats = sim.stats()
        for symbol, ids in sim.expected.items():
            assert await rest_ids(sim, symbol) == list(ids)
    assert stats["drops"] >= 3
    assert closes >= 3
    assert stats["trades_unsent"] > 0
    assert len(received) == len(set(received)) == stats["trades_sent"]
    assert stats["trades_sent"] + stats["trades_unsent"] == 3_000
    assert set(received) < planned_keys(sim)


def test_random_drops_come_at_intervals_of_the_mean_given() -> None:
    intervals = [
        pause
        for pause, _ in zip(
            drop_intervals(2.0, at_random=True, rng=random.Random(1)), range(2_000), strict=False
        )
    ]
    assert 1.8 < statistics.mean(intervals) < 2.2
    assert min(intervals) < 0.5 < 4.0 < max(intervals)
    fixed = drop_intervals(2.0, at_random=False, rng=random.Random(1))
    assert [next(fixed) for _ in range(3)] == [2.0, 2.0, 2.0]


async def test_garbage_frames_take_turns_and_each_is_rejected() -> None:
    async with serving(trades=10, garbage_every=1) as sim, client(sim) as ws:
        frames = await frames_until_quiet(ws, sim)
    assert len(frames) == 20
    trades, garbage = frames[0::2], frames[1::2]
    assert len(ids_of(trades)) == 10
    reasons = []
    for frame in garbage:
        with pytest.raises(FrameRejected) as rejected:
            parse_frame(frame)
        reasons.append(rejected.value.reason)
    kinds = [
        RejectReason.JSON,
        RejectReason.UNKNOWN_EVENT,
        RejectReason.TYPE,
        RejectReason.JSON,
        RejectReason.VALUE,
    ]
    assert reasons == kinds * 2
    assert [type(frame) for frame in garbage[:5]] == [str, str, str, bytes, str], "bad UTF-8 goes out binary"
    assert sim.garbage_sent == 10


async def test_an_oversize_frame_closes_a_client_with_a_1_mib_limit_with_1009() -> None:
    async with serving(trades=1_000, oversize_every=100) as sim:
        async with client(sim, max_size=1 << 20) as ws:
            with pytest.raises(ConnectionClosedError) as closed:
                await read_all(ws)
        assert closed.value.sent is not None
        assert closed.value.sent.code == 1009
        assert sim.oversize_sent == 1


async def test_a_client_without_a_limit_reads_the_oversize_frame_and_rejects_it() -> None:
    async with (
        serving(trades=150, oversize_every=100, oversize_bytes=1_500_000) as sim,
        client(sim, max_size=None) as ws,
    ):
        frames = await frames_until_quiet(ws, sim)
    oversize = [frame for frame in frames if len(frame) > 1_000]
    assert [len(frame) for frame in oversize] == [1_500_000]
    with pytest.raises(FrameRejected) as rejected:
        parse_frame(oversize[0])
    assert rejected.value.reason is RejectReason.UNKNOWN_EVENT
    assert len(frames) == 151


async def test_a_bad_frame_due_on_a_trade_nobody_got_follows_the_next_trade_sent() -> None:
    """Due on withheld trades, they go out after the next trade sent, those due meanwhile merged."""
    options = {"garbage_every": 20, "oversize_every": 20, "oversize_bytes": 5_000}
    async with (
        serving(trades=200, withhold_every=1, **options) as sim,
        client(sim, max_size=None) as ws,
    ):
        frames = await frames_until_quiet(ws, sim)
    assert sim.trades_sent == 2, "only the last trade of each symbol went out"
    first_trade, garbage, oversize = frames[:3]
    assert len(ids_of([first_trade])) == 1
    with pytest.raises(FrameRejected):
        parse_frame(garbage)
    assert len(oversize) == 5_000
    # Ten of each fell due (every 20th of 200 trades): those before the last trade of one symbol
    # after it, then the one due on the 200th, the other symbol's last trade, after that.
    assert len(frames) == 2 + 2 + 2
    assert sim.garbage_sent == sim.oversize_sent == 2
    assert [len(frame) for frame in frames].count(5_000) == 2


async def test_every_kth_trade_is_sent_twice() -> None:
    async with serving(trades=50, duplicate_every=5) as sim, client(sim) as ws:
        received = ids_of(await frames_until_quiet(ws, sim))
    assert len(received) == 60
    twice = [key for i, key in enumerate(received[1:], 1) if key == received[i - 1]]
    assert len(twice) == 10
    assert sim.duplicates_sent == 10
    assert sim.trades_sent == 50


async def test_every_kth_rest_request_is_answered_429_with_retry_after_1() -> None:
    async with serving(rest_429_every=3) as sim, aiohttp.ClientSession() as http:
        answers = []
        for _ in range(7):
            async with http.get(
                f"http://127.0.0.1:{sim.port}/api/v3/aggTrades", params={"symbol": "BTCUSDT"}
            ) as response:
                answers.append((response.status, response.headers.get("Retry-After")))
        assert sim.rest_refused == 2
    assert answers == [
        (200, None),
        (200, None),
        (429, "1"),
        (200, None),
        (200, None),
        (429, "1"),
        (200, None),
    ]


async def test_the_last_planned_trade_of_each_symbol_is_never_withheld() -> None:
    async with serving(trades=200, withhold_every=1) as sim, client(sim) as ws:
        received = ids_of(await frames_until_quiet(ws, sim))
    assert sorted(received) == sorted((symbol.upper(), ids[-1]) for symbol, ids in sim.expected.items())
    assert sim.trades_withheld == 198


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"expected_file": Path("x")}, "expected_file needs a planned run"),
        ({"trades": 0}, "trades must be positive"),
        ({"garbage_every": 0}, "garbage_every must be positive"),
        ({"drop_every": -1.0}, "drop_every must be positive"),
    ],
)
def test_settings_that_cannot_work_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BinanceSimulator(SYMBOLS, **options)


def test_a_replay_cannot_be_planned(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plan a random walk, not a replay"):
        BinanceSimulator(replay=tmp_path / "any", trades=5)


async def test_a_client_closed_by_a_drop_is_not_sent_to_again() -> None:
    async with serving(trades=2_000, rate=2_000, drop_every=0.3) as sim:
        async with client(sim) as ws:
            with pytest.raises(ConnectionClosed):
                await read_all(ws)
        await asyncio.sleep(0.2)
        assert sim.clients == 0
        assert sim.trades_unsent > 0


async def test_after_a_drop_the_next_one_comes_its_interval_after_a_client_is_back() -> None:
    """Cut at 1 s; back at 2.4 s, it is cut at 3.4 s (not at 3 s, nor at once for the cut that
    would have fallen at 2 s on nobody): every reconnect gets its interval, and no cut is lost."""
    async with serving(rate=100, drop_every=1.0) as sim:
        async with client(sim) as ws:
            with pytest.raises(ConnectionClosed):
                await read_all(ws)
        await asyncio.sleep(1.4)
        async with client(sim) as ws:
            connected = asyncio.get_running_loop().time()
            with pytest.raises(ConnectionClosed):
                await read_all(ws)
            lived = asyncio.get_running_loop().time() - connected
        assert sim.drops == 2
    assert 0.9 < lived < 1.5, "cut an interval after it came back"
