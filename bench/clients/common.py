"""What every benchmark client shares: the command line, the tally of trades and the JSON result.

A client reads aggTrade trades from the benchmark simulator through its library and hands each
one to ``Tally.record`` with the symbol and aggregate trade id the library gave it. The tally
counts an id skipped within a symbol as lost (the simulator's ids are consecutive per symbol), so
a library that drops trades shows it; a run that stalls reports what never came as lost too.

CPU and wall time run from the first trade to the one that completes the count (to the last one
received, in a run that stalls). Not from the connect: some libraries wait seconds before they
subscribe (a pause per request, a timeout they sit out), which says nothing of their throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Options:
    port: int
    count: int
    symbols: list[str]  # lower case, as in stream names: btcusdt
    recv_log: Path | None

    def stream_names(self) -> list[str]:
        return [f"{s}@aggTrade" for s in self.symbols]


def options() -> Options:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--symbols", required=True, help="comma-separated, lower case")
    parser.add_argument("--recv-log", type=Path, help="write symbol,trade_id,arrival_ns per trade here")
    args = parser.parse_args()
    return Options(args.port, args.count, args.symbols.lower().split(","), args.recv_log)


class Tally:
    """Counts trades by symbol and id; ``done`` once ``count`` trades were received or lost."""

    def __init__(self, count: int, *, keep_arrivals: bool) -> None:
        self.count = count
        self.received = 0
        self.lost = 0
        self.done = False
        self._last_id: dict[str, int] = {}
        self._arrivals: list[tuple[str, int, int]] | None = [] if keep_arrivals else None
        self._cpu0 = self._wall0 = self._last_wall = 0.0
        self._cpu_s = self._wall_s = 0.0
        self.on_done: Callable[[], object] = lambda: None

    def record(self, symbol: str, trade_id: int) -> None:
        if self.done:
            return
        self._last_wall = time.perf_counter()
        if not self.received:
            self._cpu0, self._wall0 = time.process_time(), self._last_wall
        symbol = symbol.upper()
        last = self._last_id.get(symbol)
        if last is not None and trade_id > last + 1:
            self.lost += trade_id - last - 1
        self._last_id[symbol] = trade_id
        self.received += 1
        if self._arrivals is not None:
            self._arrivals.append((symbol, trade_id, time.time_ns()))
        if self.received + self.lost >= self.count:
            self._finish()

    def stalled(self) -> None:
        """The library delivered nothing more: what never came is lost, the time waited is not counted."""
        if not self.done:
            self.lost = self.count - self.received
            self._finish()

    def _finish(self) -> None:
        if self.received:
            self._cpu_s = time.process_time() - self._cpu0
            self._wall_s = self._last_wall - self._wall0
        self.done = True
        self.on_done()

    def report(self, recv_log: Path | None) -> None:
        """The result on stdout as the harness reads it; the arrivals to ``recv_log``."""
        if recv_log is not None and self._arrivals is not None:
            recv_log.write_text("".join(f"{s},{i},{ns}\n" for s, i, ns in self._arrivals))
        result = {"cpu_s": self._cpu_s, "wall_s": self._wall_s, "received": self.received, "lost": self.lost}
        json.dump(result, sys.stdout)


STALL_SECONDS = 5.0


async def watch_for_stall(tally: Tally, on_stall: Callable[[], object] = lambda: None) -> None:
    """Until the tally is done: once no trade has come for ``STALL_SECONDS``, ``tally.stalled()``
    and ``on_stall()`` (e.g. cancel the task that waits on the library)."""
    loop = asyncio.get_running_loop()
    seen, since = tally.received, loop.time()
    while not tally.done:
        await asyncio.sleep(0.25)
        if tally.received != seen:
            seen, since = tally.received, loop.time()
        elif loop.time() - since >= STALL_SECONDS:
            tally.stalled()
            on_stall()
