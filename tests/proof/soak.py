"""The soak: the service against the simulator with every fault on at once and a database outage.

    python -m tests.proof.soak [--trades 1000000] [--symbols 20] [--rate 3000] [--outage 5]   (make soak)

The simulator (``python -m kairos_core simulate``) plans ``--trades`` trades over ``--symbols``
symbols, writes every one to an expected file before it listens, and makes them at ``--rate`` a
second with every fault of ``Faults`` on. The service (``python -m kairos_core``, told the
simulator's connection lifetime and given a short watchdog) stores them into a fresh database,
which refuses every connection for ``--outage`` seconds once a third of the trades are stored.
When the table holds every planned trade, or after a timeout proportional to the trades, both are
stopped with SIGTERM and ``compare_stored`` reads the expected file and the table. One line::

    sent N stored N missing 0 duplicated 0 backfilled B reconnects R rotations T max_gap_repair_s S

Exit code 0 only when stored == sent, nothing is missing, duplicated or unexpected, no gap was
unrecoverable and both programs exited 0; otherwise the reasons follow on stderr and the logs are
kept. The database is made on ``--database-url``'s server, else ``KAIROS_TEST_DATABASE_URL``'s,
else 127.0.0.1:5432's, else an embedded server's, and dropped at the end (``--keep-database``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from tests.database import LOCAL_SERVER, create_database, database_on, drop_database
from tests.proof.compare_stored import Comparison, compare
from tests.proof.harness import Program, ProofRun, stored_rows
from tests.sql import fetch_async

SYMBOLS = (
    *("btcusdt", "ethusdt", "bnbusdt", "solusdt", "xrpusdt", "adausdt", "dogeusdt", "trxusdt"),
    *("linkusdt", "dotusdt", "ltcusdt", "bchusdt", "avaxusdt", "xlmusdt", "uniusdt", "atomusdt"),
    *("etcusdt", "filusdt", "nearusdt", "aptusdt"),
)
OUTAGE_AT = 1 / 3
"""The outage begins once this share of the planned trades is stored."""
BACKFILLED = "SELECT count(*) AS n FROM market_ticks WHERE source = 'backfill'"
_COUNTED = ("feed.rotation_failed", "gap.repaired", "gap.unrecoverable", "persistence.write_failed")
"""Service log events whose number the details show."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """Every fault ``simulate`` has, on at once, and what the service is told of the venue.

    Every connection lives through the same schedule (``simulator/faults.py``), and a service that
    rotates in time meets only its first event; so the events race. The service's rotation, due at
    93.75-97.5 % of ``lifetime``, and the ``serverShutdown`` at ``shutdown_every`` each win about
    half the time. Every ``silent_every``-th connection instead goes silent at ``silent_after``,
    well before either, while still answering pings: the watchdog finds it and the service
    rotates it (reason ``silent``), and the follow-up after the rotation fetches what it kept back.
    Drops (random), oversize frames (by trade count) and refused handshakes cut connections
    besides.
    """

    lifetime: float = 32.0
    """Seconds the simulator keeps a connection (``--lifetime``), and what the service is told
    (``--binance-connection-lifetime``). Over 30 s: a rotation after less than the reconnect
    policy's 30 s of uptime counts as quick, and quick ones in a row are spaced out."""
    shutdown_every: float = 30.6
    shutdown_grace: float = 1.0
    silent_after: float = 20.0
    silent_every: int = 3
    watchdog: float = 2.0
    """``--binance-watchdog``: seconds without a frame before the service probes and replaces."""
    drop_every: float = 75.0
    drop_random: bool = True
    withhold_every: int = 2000
    garbage_every: int = 5000
    oversizes: int = 3
    """Oversize frames over the run, evenly spaced by trade count."""
    duplicate_every: int = 1000
    rest_429_every: int = 50
    connection_budget: int = 4
    budget_window: float = 60.0

    def simulator_flags(self, trades: int) -> list[str]:
        flags = [] if not self.drop_random else ["--drop-random"]
        for name in (f.name for f in fields(self)):
            if name not in {"drop_random", "oversizes", "watchdog"}:
                flags += [f"--{name.replace('_', '-')}", str(getattr(self, name))]
        return [*flags, "--oversize-every", str(trades // (self.oversizes + 1) + 1)]

    def service_flags(self) -> list[str]:
        return ["--binance-connection-lifetime", str(self.lifetime), "--binance-watchdog", str(self.watchdog)]


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakConfig:
    trades: int = 1_000_000
    symbols: int = 20
    rate: float = 3_000.0
    """Trades a second over all symbols."""
    outage: float = 5.0
    """Seconds the database refuses every connection."""
    faults: Faults = field(default_factory=Faults)
    seed: int = 9

    @property
    def timeout(self) -> float:
        """Seconds the service may take, from its start, to store every planned trade."""
        return 60.0 + 2 * self.trades / self.rate + self.outage


def symbols(count: int) -> tuple[str, ...]:
    """``count`` symbols: Binance's names, then made-up ones."""
    return SYMBOLS[:count] + tuple(f"coin{n}usdt" for n in range(len(SYMBOLS), count))


@dataclass(slots=True)
class SoakResult:
    """What the run did, read from the table and both programs' logs."""

    comparison: Comparison
    backfilled: int
    converged: bool
    seconds: float
    exit_codes: dict[str, int | None]
    simulator: dict[str, Any]
    """The simulator's counters (its ``simulator.stopped`` line)."""
    service: list[dict[str, Any]] = field(repr=False)
    """The service's log lines."""

    def named(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.service if line.get("event") == event]

    @property
    def missing(self) -> int:
        return sum(len(ids) for ids in self.comparison.missing.values())

    @property
    def reconnects(self) -> Counter[str]:
        """Reconnects by the first words of their reason (``connection closed``, ``handshake``)."""
        return Counter(line["reason"].split(":")[0][:40] for line in self.named("feed.reconnecting"))

    @property
    def rotations(self) -> Counter[str]:
        """Rotations by reason (``lifetime``, ``announced``, ``silent``)."""
        return Counter(line["reason"] for line in self.named("feed.rotated"))

    @property
    def max_gap_repair(self) -> float:
        return max((float(line["seconds"]) for line in self.named("gap.repaired")), default=0.0)

    @property
    def line(self) -> str:
        c = self.comparison
        return (
            f"sent {c.expected} stored {c.stored} missing {self.missing} duplicated {c.duplicated} "
            f"backfilled {self.backfilled} reconnects {self.reconnects.total()} "
            f"rotations {self.rotations.total()} max_gap_repair_s {self.max_gap_repair:.3f}"
        )

    def failures(self) -> list[str]:
        """Why the run failed; empty for a clean one."""
        c = self.comparison
        problems = [] if self.converged else ["the table did not hold every planned trade in time"]
        if c.stored != c.expected or not c.clean:
            problems += [c.line, *c.details()]
        if self.simulator.get("trades_made") != c.expected:
            problems.append(f"the simulator made {self.simulator.get('trades_made')} of {c.expected} trades")
        if unrecoverable := self.named("gap.unrecoverable"):
            problems.append(f"{len(unrecoverable)} gap.unrecoverable in the service's log")
        return problems + [f"{name} exited {code}" for name, code in self.exit_codes.items() if code != 0]

    def details(self) -> list[str]:
        """The figures behind the line: what fired, and how the service answered."""
        counters = " ".join(f"{k} {v}" for k, v in self.simulator.items() if isinstance(v, int))
        count = {name: len(self.named(name)) for name in _COUNTED}
        return [
            f"simulator: {counters}",
            f"service: rotations {dict(self.rotations)} reconnects {dict(self.reconnects)} "
            + " ".join(f"{name} {n}" for name, n in count.items()),
            f"seconds {self.seconds:.1f} from the service's start to the last trade stored",
        ]


Note = Callable[[str], None]


async def soak(
    config: SoakConfig, *, database_url: str, server_url: str, workdir: Path, note: Note | None = None
) -> SoakResult:
    """The whole soak on the fresh database ``database_url`` of ``server_url``."""
    say = note or (lambda _: None)
    run = ProofRun(
        workdir,
        database_url,
        symbols(config.symbols),
        trades=config.trades,
        rate=config.rate,
        faults=config.faults.simulator_flags(config.trades),
        seed=config.seed,
    )
    run.service.args += config.faults.service_flags()
    try:
        await run.start_simulator()
        await run.service.start()
        started = time.monotonic()
        deadline = started + config.timeout
        say(f"{config.trades} trades planned over {config.symbols} symbols at {config.rate:g}/s")
        converged = await _wait_stored(run, int(config.trades * OUTAGE_AT), deadline)
        if converged:
            say(f"database down for {config.outage:g} s at {await stored_rows(database_url)} rows stored")
            async with _outage(server_url, database_url):
                await asyncio.sleep(config.outage)
            say("database back")
            converged = await _wait_stored(run, config.trades, deadline)
        seconds = time.monotonic() - started
        say("every planned trade stored; stopping" if converged else "timed out; stopping")
        exit_codes = {program.name: await _stop(program) for program in (run.service, run.simulator)}
    finally:
        await run.close()
    stopped = [line for line in run.simulator.events() if line.get("event") == "simulator.stopped"]
    return SoakResult(
        comparison=await compare(run.expected_file, database_url),
        backfilled=int((await fetch_async(database_url, BACKFILLED))[0]["n"]),
        converged=converged,
        seconds=seconds,
        exit_codes=exit_codes,
        simulator=stopped[-1] if stopped else {},
        service=run.service.events(),
    )


async def _wait_stored(run: ProofRun, count: int, deadline: float) -> bool:
    """Poll until the table holds ``count`` rows; False if the service exits or the deadline passes."""
    while await stored_rows(run.database_url) < count:
        if not run.service.running or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def _stop(program: Program) -> int | None:
    """SIGTERM and the exit code; None if it had to be killed."""
    with contextlib.suppress(AssertionError):
        return await program.stop()
    return None


@contextlib.asynccontextmanager
async def _outage(server_url: str, database_url: str) -> AsyncIterator[None]:
    """The database refuses new connections and every open one is cut; allowed again after."""
    name = make_url(database_url).database
    await fetch_async(server_url, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    try:
        await fetch_async(
            server_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        yield
    finally:
        await fetch_async(server_url, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


@contextlib.contextmanager
def _server(configured: str | None, scratch: Path) -> Iterator[str]:
    """A PostgreSQL server to make the soak's database on, found as ``tests.database`` finds one."""
    url = configured or os.environ.get("KAIROS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5432)) == 0:
            yield LOCAL_SERVER
            return
    from kairos_core.adapters.outbound.postgres.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(scratch / "postgres")
    try:
        yield server.start()
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    default = SoakConfig()
    add("--trades", type=int, default=default.trades, help="planned trades over all symbols")
    add("--symbols", type=int, default=default.symbols, help="how many symbols")
    add("--rate", type=float, default=default.rate, help="trades a second over all symbols")
    add("--outage", type=float, default=default.outage, help="seconds the database is down")
    add("--database-url", default=None, help="a PostgreSQL server to make the soak's database on")
    add("--keep-database", action="store_true", help="do not drop the soak's database at the end")
    add("--keep-logs", action="store_true", help="keep the logs and expected file of a clean run too")
    arguments = parser.parse_args(argv)
    config = SoakConfig(
        trades=arguments.trades, symbols=arguments.symbols, rate=arguments.rate, outage=arguments.outage
    )
    began = time.monotonic()

    def note(line: str) -> None:
        print(f"[{time.monotonic() - began:7.1f} s] {line}", file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="kairos-soak-"))
    with _server(arguments.database_url, workdir) as server_url:
        name = create_database(server_url)
        try:
            url = database_on(server_url, name)
            result = asyncio.run(
                soak(config, database_url=url, server_url=server_url, workdir=workdir, note=note)
            )
        except BaseException:
            note(f"the soak broke off; logs in {workdir}")
            raise
        finally:
            if arguments.keep_database:
                note(f"database {name} kept")
            else:
                drop_database(server_url, name)
    print(result.line, flush=True)
    for line in result.details():
        note(line)
    problems = result.failures()
    for line in problems:
        print(line, file=sys.stderr)
    if problems or arguments.keep_logs:
        note(f"logs and the expected file are in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
