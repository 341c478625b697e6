"""The proof's processes: the simulator and the service, each run as a user runs it, and the wait
until the table holds every planned trade.

Plain asyncio, no pytest: the proof tests use it, and so can a soak run. Nothing here imports
``kairos_core``; both programs run in subprocesses (``python -m kairos_core ...``) with a bare
environment and a working directory of their own, so no ``.env`` or ``KAIROS_*`` reaches them
(``PYTHONPATH`` does, so a proof can run against another checkout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.proof.compare_stored import asyncpg_url, compare

STOP_TIMEOUT = 30.0
"""Seconds a SIGTERM'd process may take to drain and exit."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(slots=True)
class Program:
    """``python -m kairos_core <args>`` in a subprocess, its output (JSON log lines) in ``log``."""

    name: str
    args: list[str]
    workdir: Path
    process: asyncio.subprocess.Process | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / f"{self.name}.log"

    async def start(self) -> None:
        with self.log.open("ab") as out:  # a restart appends
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kairos_core",
                *self.args,
                stdout=out,
                stderr=out,
                cwd=self.workdir,
                env=_bare_environment(self.workdir),
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then the exit code (killed after ``timeout`` seconds: an error in itself)."""
        process = self.process
        assert process is not None, f"{self.name} was never started"
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
                raise AssertionError(f"{self.name} did not exit within {timeout} s of SIGTERM") from None
        assert process.returncode is not None
        return process.returncode

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    events.append(json.loads(line))
        return events

    def last(self, event: str) -> dict[str, Any]:
        found = [e for e in self.events() if e.get("event") == event]
        assert found, f"{self.name} logged no {event} (see {self.log})"
        return found[-1]


@dataclass(slots=True)
class ProofRun:
    """A planned simulator run with faults, and the service storing it into ``database_url``."""

    workdir: Path
    database_url: str
    symbols: Sequence[str]
    trades: int
    rate: float
    faults: Sequence[str] = ()
    """``simulate`` fault flags, e.g. ``("--withhold-every", "50")``."""
    seed: int = 8
    id_base: int = 1_000_000
    port: int = field(default_factory=free_port)
    simulator: Program = field(init=False)
    service: Program = field(init=False)

    def __post_init__(self) -> None:
        self.simulator = Program(
            "simulator",
            [
                "simulate",
                "--port",
                str(self.port),
                "--symbols",
                ",".join(self.symbols),
                "--rate",
                str(self.rate),
                "--seed",
                str(self.seed),
                "--id-base",
                str(self.id_base),
                "--trades",
                str(self.trades),
                "--expected-file",
                str(self.expected_file),
                "--log-format",
                "json",
                *self.faults,
            ],
            self.workdir,
        )
        self.service = Program(
            "service",
            [
                "--symbols",
                ",".join(self.symbols),
                "--binance-url",
                f"ws://127.0.0.1:{self.port}/stream",
                "--binance-rest-url",
                f"http://127.0.0.1:{self.port}",
                "--database-url",
                self.database_url,
                "--log-format",
                "json",
            ],
            self.workdir,
        )

    @property
    def expected_file(self) -> Path:
        return self.workdir / "expected.csv"

    async def start_simulator(self, timeout: float = 30.0) -> None:
        """Start the simulator; return once it listens, its expected file written before that."""
        await self.simulator.start()
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            assert self.simulator.running, f"the simulator exited (see {self.simulator.log})"
            assert time.monotonic() < deadline, f"the simulator did not listen within {timeout} s"
            await asyncio.sleep(0.05)

    async def wait_until_stored(self, count: int, timeout: float) -> float:
        """Poll the table until it holds ``count`` rows; the seconds that took."""
        started = time.monotonic()
        while (stored := await stored_rows(self.database_url)) < count:
            assert self.service.running, f"the service exited early (see {self.service.log})"
            if time.monotonic() - started > timeout:
                comparison = await compare(self.expected_file, self.database_url)
                details = "; ".join(comparison.details())
                raise AssertionError(
                    f"{stored} of {count} rows stored after {timeout} s: {comparison.line}: {details}"
                )
            await asyncio.sleep(0.2)
        return time.monotonic() - started

    async def close(self) -> None:
        """Kill whatever still runs (a failed test); a passing test stops both itself."""
        await self.service.kill()
        await self.simulator.kill()


def _bare_environment(home: Path) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def stored_rows(database_url: str, symbols: Sequence[str] | None = None) -> int:
    """Rows in ``market_ticks`` (of ``symbols`` only, if given); 0 before the service has created it."""
    connection = await asyncpg.connect(asyncpg_url(database_url))
    try:
        if symbols is None:
            return int(await connection.fetchval("SELECT count(*) FROM market_ticks"))
        wanted = [symbol.upper() for symbol in symbols]
        query = "SELECT count(*) FROM market_ticks WHERE symbol = any($1::text[])"
        return int(await connection.fetchval(query, wanted))
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await connection.close()
