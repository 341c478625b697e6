"""One benchmark client process: reads ``--count`` frames from a simulator and reports as JSON.

``--mode kairos``: the real pipeline (BinanceFeedHandler -> BroadcastBus -> a counting subscriber),
on the event loop the service would run (``--busy-poll-us`` as the service's).
``--mode bare``: the floor, a bare ``websockets`` client that only decodes each frame with orjson.
``--mode bare-aiohttp``: the same over aiohttp, the transport the pipeline uses.
CPU and wall time run from the first frame (tick) to the last, as for the other libraries'
clients (``bench/clients/common.py``): a connection's setup is not what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from functools import partial
from pathlib import Path

import aiohttp
import orjson
from websockets.asyncio.client import connect

from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.application.bus import BroadcastBus, Subscription
from kairos_core.bootstrap.event_loop import new_event_loop
from kairos_core.bootstrap.logging import configure_logging
from kairos_core.bootstrap.runtime import tune_garbage_collector
from kairos_core.domain import Lagged
from kairos_core.settings import LogFormat, LogLevel


class Clock:
    """Process CPU and wall time between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.start()  # a run that never starts (no tick came) measures from here

    def start(self) -> None:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()

    def stop(self) -> dict[str, float]:
        return {"cpu_s": time.process_time() - self.cpu0, "wall_s": time.perf_counter() - self.wall0}


async def bare(url: str, count: int, recv_log: Path | None) -> dict[str, float]:
    """The floor; with ``recv_log``, each frame's arrival after its decode is written there."""
    clock = Clock()
    arrivals: list[tuple[str, int, int]] = []
    async with connect(url, compression=None, max_queue=None) as websocket:
        recv, loads = websocket.recv, orjson.loads
        loads(first := await recv(decode=False))
        clock.start()
        if recv_log is None:
            for _ in range(count - 1):
                loads(await recv(decode=False))
        else:
            data = loads(first)["data"]
            arrivals.append((data["s"], data["a"], time.time_ns()))
            for _ in range(count - 1):
                data = loads(await recv(decode=False))["data"]
                arrivals.append((data["s"], data["a"], time.time_ns()))
        result = clock.stop()
    await write_arrivals(recv_log, arrivals)
    return result | {"received": count, "lost": 0}


async def write_arrivals(recv_log: Path | None, arrivals: list[tuple[str, int, int]]) -> None:
    if recv_log is not None:
        await asyncio.to_thread(recv_log.write_text, "".join(f"{s},{i},{ns}\n" for s, i, ns in arrivals))


async def bare_aiohttp(url: str, count: int) -> dict[str, float]:
    """aiohttp's floor: what the pipeline's transport costs before any work of ours."""
    clock = Clock()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, autoclose=False, autoping=False, decode_text=False) as websocket,
    ):
        receive, loads = websocket.receive, orjson.loads
        loads((await receive()).data)
        clock.start()
        for _ in range(count - 1):
            loads((await receive()).data)
        result = clock.stop()
    return result | {"received": count, "lost": 0}


async def kairos(url: str, count: int, symbols: list[str], recv_log: Path | None) -> dict[str, float]:
    """The pipeline; with ``recv_log``, each tick's arrival at the subscriber is written there."""
    bus = BroadcastBus()
    subscription = bus.subscribe("counter")
    feed = BinanceFeedHandler(bus, symbols, url=url, rest_url=None)
    clock = Clock()
    tune_garbage_collector()  # as the service does once started
    feed_task = asyncio.create_task(feed.start())
    tally = Tally(keep_arrivals=recv_log is not None)
    counting = asyncio.create_task(count_ticks(subscription, count, clock, tally))
    if not await watch(counting, tally):
        # A rate over the wait would be wrong by orders of magnitude: the run failed, say so.
        raise SystemExit(
            f"stalled: {tally.received:,} of {count:,} ticks received, then none for {STALL_SECONDS:.0f} s"
        )
    result = clock.stop()
    await feed.stop()
    await feed_task
    await write_arrivals(recv_log, tally.arrivals)
    # Every trade the simulator sent and the subscriber did not get is lost (to lag: a run in which
    # ticks went missing anywhere else stalls, above).
    return result | {
        "received": tally.received,
        "lost": count - tally.received,
        "misordered": tally.misordered,
    }


class Tally:
    """What the counting subscriber saw. The simulator's ids are consecutive per symbol, so a tick
    whose id is not its symbol's last + 1 is a gap, a repeat or a reordering: ``misordered``."""

    def __init__(self, *, keep_arrivals: bool) -> None:
        self.received = self.lagged = self.misordered = 0
        self.last_ids: dict[str, int] = {}
        self.arrivals: list[tuple[str, int, int]] = []
        self.keep_arrivals = keep_arrivals


async def count_ticks(subscription: Subscription, count: int, clock: Clock, tally: Tally) -> None:
    """The counting subscriber: reads until ``count`` ticks arrived or were lost to lag; starts
    ``clock`` at the first."""
    last_ids, arrivals = tally.last_ids, tally.arrivals
    while tally.received + tally.lagged < count:
        try:
            tick = await subscription.recv()
        except Lagged as e:
            tally.lagged += e.missed
            continue
        if not tally.received:
            clock.start()
        tally.received += 1
        symbol, trade_id = tick.symbol, tick.trade_id
        if last_ids.get(symbol, trade_id - 1) != trade_id - 1:
            tally.misordered += 1
        last_ids[symbol] = trade_id
        if tally.keep_arrivals:
            arrivals.append((symbol, trade_id, time.time_ns()))


STALL_SECONDS = 5.0


async def watch(counting: asyncio.Task[None], tally: Tally) -> bool:
    """Waits for ``counting``; ends it once no tick has come for ``STALL_SECONDS`` (ticks lost before
    the bus would otherwise keep the run waiting for ever). False: it stalled."""
    seen = -1
    while not counting.done():
        if tally.received == seen:
            counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await counting
            return False
        seen = tally.received
        await asyncio.wait({counting}, timeout=STALL_SECONDS)
    await counting
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["bare", "bare-aiohttp", "kairos"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--symbols", required=True)
    parser.add_argument("--recv-log", type=Path)
    parser.add_argument("--busy-poll-us", type=int, default=0, help="kairos: the service's --busy-poll-us")
    args = parser.parse_args()
    configure_logging(LogFormat.JSON, LogLevel.WARNING, stream=sys.stderr)  # stdout carries the result
    symbols = args.symbols.split(",")
    url = f"ws://127.0.0.1:{args.port}/stream?streams=" + "/".join(f"{s}@aggTrade" for s in symbols)
    if args.mode == "bare":
        result = asyncio.run(bare(url, args.count, args.recv_log))
    elif args.mode == "bare-aiohttp":
        result = asyncio.run(bare_aiohttp(url, args.count))
    else:
        base = f"ws://127.0.0.1:{args.port}/stream"
        with asyncio.Runner(loop_factory=partial(new_event_loop, args.busy_poll_us)) as runner:
            result = runner.run(kairos(base, args.count, symbols, args.recv_log))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
