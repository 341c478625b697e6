"""``python -m kairos_core simulate``: a local stand-in for one exchange, for demos, tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from kairos_core.domain import ConfigurationError, Exchange
from kairos_core.settings import Settings
from kairos_core.simulator.benchmark import BenchmarkServer
from kairos_core.simulator.binance import BinanceSimulator
from kairos_core.simulator.okx import OkxSimulator


async def simulate(settings: Settings, run: dict[str, Any]) -> None:
    """Serve until SIGINT/SIGTERM or ``--duration``."""
    simulator = _simulator(settings, run)
    try:
        await simulator.start(run["host"], run["port"])
    except OSError as e:
        raise ConfigurationError(
            f"cannot listen on {run['host']}:{run['port']}: {e.strerror or e}: choose another --port"
        ) from e
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), run.get("duration"))
    await simulator.stop()


def _readable(replay: Path | None) -> Path | None:
    if replay is not None and not replay.is_file():
        raise ConfigurationError(f"--replay {str(replay)!r} is not a readable file: name a recording")
    return replay


def _simulator(settings: Settings, run: dict[str, Any]) -> BinanceSimulator | OkxSimulator | BenchmarkServer:
    if len(settings.exchanges) != 1:
        raise ConfigurationError("simulate serves one exchange: pass a single --exchange (binance or okx)")
    exchange = settings.exchanges[0]
    symbols = settings.feeds.symbols_by_exchange()[exchange]
    if exchange is Exchange.OKX:
        if run["bench"] or run["replay"] is not None:
            raise ConfigurationError(
                "--bench and --replay serve Binance only: drop them or use --exchange binance"
            )
        return OkxSimulator(symbols, rate=run["rate"] or 10.0, seed=run["seed"], id_base=run["id_base"])
    if run["bench"]:
        return BenchmarkServer(
            symbols,
            count=run["count"],
            rate=run["rate"],
            send_log=run["send_log"],
            seed=run["seed"] if run["seed"] is not None else 1,
            id_base=run["id_base"] if run["id_base"] is not None else 1,
        )
    try:
        return BinanceSimulator(
            symbols,
            rate=run["rate"] or 10.0,
            seed=run["seed"],
            id_base=run["id_base"],
            replay=_readable(run["replay"]),
        )
    except ValueError as e:
        raise ConfigurationError(f"{e}: replay a Binance recording") from e
