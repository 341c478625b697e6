"""``python -m kairos_core simulate``: a local stand-in for one exchange, for demos, tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import structlog

from kairos_core.domain import ConfigurationError, Exchange
from kairos_core.settings import Settings
from kairos_core.simulator.benchmark import BenchmarkServer
from kairos_core.simulator.binance import BinanceSimulator
from kairos_core.simulator.okx import OkxSimulator
from kairos_core.simulator.venue import SimulatedVenue

log = structlog.get_logger(__name__)

_PLANNED_RUN = (
    "trades",
    "expected_file",
    "drop_every",
    "drop_random",
    "withhold_every",
    "garbage_every",
    "oversize_every",
    "duplicate_every",
    "rest_429_every",
)
"""Run options that plan the Binance random walk or put faults in it: ``BinanceSimulator``'s arguments."""
_BINANCE_CONNECTIONS = (
    "shutdown_every",
    "silent_after",
    "silent_every",
    "connection_budget",
    "budget_window",
)
"""What Binance's connections go through (random walk or replay): ``BinanceSimulator``'s arguments."""
_OKX_CONNECTIONS = ("notice_every",)
_BOTH_CONNECTIONS = ("shutdown_grace", "lifetime")
"""Connection faults both simulators take, under the same names."""


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
    counters = simulator.stats() if isinstance(simulator, SimulatedVenue) else {}
    log.info("simulator.stopped", **counters)


def _readable(replay: Path | None) -> Path | None:
    if replay is not None and not replay.is_file():
        raise ConfigurationError(f"--replay {str(replay)!r} is not a readable file: name a recording")
    return replay


def _flags(run: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The flags among ``names`` given on the command line."""
    return [f"--{name.replace('_', '-')}" for name in names if run.get(name) is not None]


def _given(run: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: run[name] for name in names if run.get(name) is not None}


def _check_connection_faults(exchange: Exchange, run: dict[str, Any]) -> None:
    if run["bench"] and (
        connections := _flags(run, _BINANCE_CONNECTIONS + _OKX_CONNECTIONS + _BOTH_CONNECTIONS)
    ):
        raise ConfigurationError(f"{' '.join(connections)}: not for --bench; drop them")
    if exchange is Exchange.OKX and (binance := _flags(run, _BINANCE_CONNECTIONS)):
        raise ConfigurationError(
            f"{' '.join(binance)}: Binance only; drop for --exchange okx (OKX's notice: --notice-every S)"
        )
    if exchange is Exchange.BINANCE and _flags(run, _OKX_CONNECTIONS):
        raise ConfigurationError("--notice-every: OKX only; for Binance use --shutdown-every SECONDS")
    announced = run.get("shutdown_every") or run.get("notice_every")
    if run.get("shutdown_grace") is not None and announced is None:
        raise ConfigurationError(
            "--shutdown-grace needs --shutdown-every SECONDS (Binance) or --notice-every SECONDS (OKX)"
        )
    if run.get("budget_window") is not None and run.get("connection_budget") is None:
        raise ConfigurationError("--budget-window needs --connection-budget N, the connections it allows")


def _simulator(settings: Settings, run: dict[str, Any]) -> BinanceSimulator | OkxSimulator | BenchmarkServer:
    if len(settings.exchanges) != 1:
        raise ConfigurationError("simulate serves one exchange: pass a single --exchange (binance or okx)")
    exchange = settings.exchanges[0]
    symbols = settings.feeds.symbols_by_exchange()[exchange]
    planned = [f"--{name.replace('_', '-')}" for name in _PLANNED_RUN if run.get(name)]
    if planned and (exchange is Exchange.OKX or run["bench"] or run["replay"] is not None):
        raise ConfigurationError(
            f"{' '.join(planned)} shape Binance's random walk: drop --bench, --replay and --exchange okx"
        )
    _check_connection_faults(exchange, run)
    if exchange is Exchange.OKX:
        if run["bench"] or run["replay"] is not None:
            raise ConfigurationError(
                "--bench and --replay serve Binance only: drop them or use --exchange binance"
            )
        return OkxSimulator(
            symbols,
            rate=run["rate"] or 10.0,
            seed=run["seed"],
            id_base=run["id_base"],
            **_given(run, _OKX_CONNECTIONS + _BOTH_CONNECTIONS),
        )
    if run["bench"]:
        return BenchmarkServer(
            symbols,
            count=run["count"],
            rate=run["rate"],
            send_log=run["send_log"],
            seed=run["seed"] if run["seed"] is not None else 1,
            id_base=run["id_base"] if run["id_base"] is not None else 1,
        )
    if run.get("expected_file") is not None and run.get("trades") is None:
        raise ConfigurationError("--expected-file needs a planned run: add --trades N")
    if run.get("drop_random") and run.get("drop_every") is None:
        raise ConfigurationError("--drop-random needs --drop-every SECONDS, the mean time between drops")
    try:
        return BinanceSimulator(
            symbols,
            rate=run["rate"] or 10.0,
            seed=run["seed"],
            id_base=run["id_base"],
            replay=_readable(run["replay"]),
            **_given(run, _PLANNED_RUN + _BINANCE_CONNECTIONS + _BOTH_CONNECTIONS),
        )
    except ValueError as e:
        raise ConfigurationError(f"{e}: replay a Binance recording") from e
