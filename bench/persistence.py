"""Persistence benchmark: ticks through ``PostgresTickRepository`` into a table of 1,000,000 rows, and
the whole pipeline from the benchmark simulator into PostgreSQL.

The server is ``KAIROS_BENCH_DATABASE_URL`` (a URL of any database on it), else whatever listens on
127.0.0.1:5432 (as postgres), else an embedded server in a temporary directory. The benchmark makes
its own database there, migrated to head, and drops it at the end. It sets nothing on the server
or the session: durability is the server's default (fsync and synchronous_commit as configured,
on unless someone turned them off, which is printed).

Repository: 1,000,000 rows preloaded by COPY (10 symbols, ids consecutive per symbol, inserted in
stream order as a live table grows), then 1,000,000 prebuilt ticks through ``add_many`` in the
consumer's batches of 1,000: 900 new ticks each and 100 re-sent ticks of rows already stored, at
random places in the batch. Twice, each time into its own copy of the preloaded database: one call
at a time (a caller that waits for each batch, like the persist role's ``StreamPersister``), then
with the next call made while one is in flight, as ``PersistenceConsumer`` writes. Pipeline: the
benchmark simulator (``simulate --bench``, core 0) -> ``BinanceFeedHandler`` -> ``BroadcastBus`` ->
``PersistenceConsumer`` -> the repository, in a client process on core 1, into the table of the
second repository run; timed from the first tick received to the last one stored.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import io
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from e2e import CLIENT_CORE, SIM_CORE, SYMBOLS, Simulator, simulator
from host_speed import host_speed
from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.outbound.postgres import (
    PostgresTickRepository,
    create_engine,
    normalised_url,
    upgrade_to_head,
)
from kairos_core.adapters.outbound.postgres.embedded import EmbeddedPostgres
from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer
from kairos_core.bootstrap.logging import configure_logging
from kairos_core.bootstrap.runtime import tune_garbage_collector
from kairos_core.domain import Exchange, MarketTick, Side, TickSource
from kairos_core.settings import LogFormat, LogLevel

STREAM_SYMBOLS = [symbol.upper() for symbol in SYMBOLS.split(",")]
PRELOAD = 1_000_000
YARDSTICK_ROWS = 100_000  # the yardstick: a bare asyncpg COPY of 100,000 rows took ~0.3 s here
TICKS = 1_000_000
BATCH = 1_000
RESENT_PER_BATCH = 100  # 10 %
REPOSITORY_TARGET = 150_000
PIPELINE_TICKS = 500_000
PIPELINE_TARGET = 100_000
PIPELINE_TIMEOUT = 300.0
PIPELINE_ID_BASE = 1_000_000_000  # far above the repository part's ids: every pipeline tick is new
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# The synthetic stream: tick ``i`` is the (i // 10 + 1)-th trade of symbol i % 10, ten trades a
# millisecond overall; prices move within ±10 around a level per symbol, with Binance's 8 decimals.
def price_cents(i: int) -> int:
    return 100 * (1_000 * (i % 10 + 1)) + (i * 7_919) % 2_001 - 1_000


def volume_units(i: int) -> int:
    return (i * 104_729) % 9_973 + 1


class Stream:
    """Ticks and COPY lines of the synthetic stream, sharing equal Decimals as a parser would not
    (so a million prebuilt ticks fit in a few hundred MB)."""

    def __init__(self) -> None:
        self._prices: dict[int, Decimal] = {}
        self._volumes: dict[int, Decimal] = {}
        self._seconds: dict[int, str] = {}

    def tick(self, i: int) -> MarketTick:
        trade_id = i // 10 + 1
        ms = T0_MS + i // 10
        cents, units = price_cents(i), volume_units(i)
        price = self._prices.get(cents)
        if price is None:
            price = self._prices[cents] = Decimal(f"{cents // 100}.{cents % 100:02d}000000")
        volume = self._volumes.get(units)
        if volume is None:
            volume = self._volumes[units] = Decimal(f"0.{units:08d}")
        return MarketTick(
            STREAM_SYMBOLS[i % 10],
            Exchange.BINANCE,
            price,
            volume,
            Side.BUY if i & 1 else Side.SELL,
            trade_id,
            trade_id * 4,
            trade_id * 4 + i % 3,
            ms,
            ms + 1,
            ms * 1_000_000 + 2_345_678,
            TickSource.LIVE,
        )

    def copy_line(self, i: int) -> str:
        """Tick ``i`` as a text COPY line in ``market_ticks``'s column order (as the repository stores it)."""
        tick = self.tick(i)
        received_us = tick.received_at_ns // 1000
        return (
            f"{tick.exchange}\t{tick.symbol}\t{tick.trade_id}\t{tick.first_trade_id}\t{tick.last_trade_id}\t"
            f"{tick.price}\t{tick.volume}\t{tick.side}\t{self._stamp(tick.timestamp_ms, 1000, 3)}\t"
            f"{self._stamp(tick.timestamp_ms + 1, 1000, 3)}\t{self._stamp(received_us, 1_000_000, 6)}\t"
            f"{tick.source}\n"
        )

    def _stamp(self, value: int, per_second: int, digits: int) -> str:
        second, fraction = divmod(value, per_second)
        text = self._seconds.get(second)
        if text is None:
            text = self._seconds[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%d %H:%M:%S")
        return f"{text}.{fraction:0{digits}d}+00"


def repository_batches(stream: Stream) -> list[list[MarketTick]]:
    """``TICKS`` ticks in batches of ``BATCH``: the stream's next new ticks, and ``RESENT_PER_BATCH``
    ticks of rows already stored (drawn from the preload) at random places."""
    rng = random.Random(5)
    batches = []
    next_new = PRELOAD
    for _ in range(TICKS // BATCH):
        batch = [stream.tick(i) for i in range(next_new, next_new + BATCH - RESENT_PER_BATCH)]
        next_new += BATCH - RESENT_PER_BATCH
        for i in rng.sample(range(PRELOAD), RESENT_PER_BATCH):
            batch.insert(rng.randrange(len(batch) + 1), stream.tick(i))
        batches.append(batch)
    return batches


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def server() -> Iterator[tuple[str, str]]:
    """A URL of some database on the server to use, and how to name that server in the output."""
    if url := os.environ.get("KAIROS_BENCH_DATABASE_URL"):
        yield url, "KAIROS_BENCH_DATABASE_URL"
    elif listening("127.0.0.1", 5432):
        yield LOCAL_SERVER, "127.0.0.1:5432"
    else:
        with tempfile.TemporaryDirectory(prefix="kairos-bench-") as scratch:
            embedded = EmbeddedPostgres(Path(scratch) / "data", database="postgres")
            url = embedded.start()
            try:
                yield url, f"embedded server in {scratch}"
            finally:
                embedded.stop()


def database_on(url: str, name: str) -> str:
    return normalised_url(url).set(database=name).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def driver_connection(url: str) -> AsyncIterator[Any]:
    """An asyncpg connection to ``url`` (any URL the service takes), outside any transaction."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            yield (await connection.get_raw_connection()).driver_connection
    finally:
        await engine.dispose()


async def create_database(server_url: str) -> str:
    """A new database on the server, migrated to head; returns its name."""
    name = f"kairos_bench_{secrets.token_hex(4)}"  # generated here, safe to spell into DDL
    async with driver_connection(server_url) as driver:
        await driver.execute(f'CREATE DATABASE "{name}"')
    await upgrade_to_head(database_on(server_url, name))
    return name


async def copy_database(server_url: str, template: str) -> str:
    """A new database on the server copied from ``template`` (nobody connected to it); returns its name."""
    name = f"kairos_bench_{secrets.token_hex(4)}"
    async with driver_connection(server_url) as driver:
        # FILE_COPY (PostgreSQL 15 and later; earlier versions only copy files) keeps the copy out of
        # the WAL, which would otherwise take 250 MB of it and a checkpoint into the run.
        strategy = " STRATEGY FILE_COPY" if driver.get_server_version().major >= 15 else ""
        await driver.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
    return name


async def drop_database(server_url: str, name: str) -> None:
    async with driver_connection(server_url) as driver:
        await driver.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine_busy_seconds() -> float:
    """CPU time all processes of this machine have used (user, system, interrupts), from /proc/stat."""
    fields = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / CLOCK_TICKS


def others_text(busy: float, ours: float, wall: float) -> str:
    """How many cores processes other than the benchmark's used meanwhile: on a shared machine, a
    run where they took a core measured the neighbours as much as the code."""
    return f"; other processes {max(0.0, busy - ours) / wall:.2f} cores"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a local postgres process, or None (a server on another machine)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if not stat.split("(", 1)[1].startswith("postgres"):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def service_backends(driver: Any) -> list[int]:
    """The backends our engines opened on this database (``create_engine`` names them)."""
    rows = await driver.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'kairos-core'"
    )
    return [row["pid"] for row in rows]


def backends_cpu(pids: list[int]) -> float | None:
    taken = [cpu_seconds(pid) for pid in pids]
    return None if not taken or None in taken else sum(t for t in taken if t is not None)


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def verdict(rate: float, target: int) -> str:
    return f"target ≥ {target:,}/s {'PASS' if rate >= target else 'MISS'}"


async def describe_server(connection: Any) -> str:
    version = await connection.fetchval("SHOW server_version")
    settings = dict(
        await connection.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('fsync', 'synchronous_commit', 'shared_buffers', 'wal_level', 'full_page_writes')"
        )
    )
    shared_mb = int(settings["shared_buffers"]) * 8 // 1024
    return (
        f"PostgreSQL {version.split()[0]}; fsync {settings['fsync']}, synchronous_commit "
        f"{settings['synchronous_commit']}, wal_level {settings['wal_level']}, full_page_writes "
        f"{settings['full_page_writes']}, shared_buffers {shared_mb} MB"
    )


async def yardstick(url: str, stream: Stream) -> None:
    """A bare asyncpg binary COPY of ``YARDSTICK_ROWS`` ticks into the empty table (emptied again after),
    printed: how fast this host runs the server right now, in the issue's own terms, beside the
    figures below (the host's speed has moved them by 2-3 times between hours)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    records = []
    for i in range(YARDSTICK_ROWS):
        tick = stream.tick(i)
        trade_time = epoch + timedelta(milliseconds=tick.timestamp_ms)
        records.append(
            (
                tick.exchange.value,
                tick.symbol,
                tick.trade_id,
                tick.first_trade_id,
                tick.last_trade_id,
                tick.price,
                tick.volume,
                tick.side.value,
                trade_time,
                trade_time + timedelta(milliseconds=1),
                epoch + timedelta(microseconds=tick.received_at_ns // 1000),
                tick.source.value,
            )
        )
    async with driver_connection(url) as connection:
        started = time.perf_counter()
        await connection.copy_records_to_table("market_ticks", records=records)
        elapsed = time.perf_counter() - started
        await connection.execute("TRUNCATE market_ticks")
    print(
        f"  yardstick: a bare asyncpg COPY of {YARDSTICK_ROWS:,} rows into the empty table in {elapsed:.2f} s"
        " (about 0.3 s when the issue set the targets)"
    )


async def preload(url: str, stream: Stream) -> None:
    started = time.perf_counter()
    async with driver_connection(url) as connection:
        chunk = 100_000
        for first in range(0, PRELOAD, chunk):
            data = "".join(stream.copy_line(i) for i in range(first, first + chunk)).encode()
            await connection.copy_to_table("market_ticks", source=io.BytesIO(data))
        # What autovacuum would have done by now on a live table; then a clean start for WAL.
        await connection.execute("VACUUM (ANALYZE) market_ticks")
        await connection.execute("CHECKPOINT")
        sizes = await connection.fetchrow(
            "SELECT pg_table_size('market_ticks') AS heap, pg_indexes_size('market_ticks') AS indexes"
        )
    print(
        f"  preload: {PRELOAD:,} rows by COPY in {time.perf_counter() - started:.1f} s; table "
        f"{sizes['heap'] >> 20} MB, indexes {sizes['indexes'] >> 20} MB"
    )


async def repository_run(
    url: str, batches: list[list[MarketTick]], warm_up: list[MarketTick], *, in_flight: int
) -> None:
    engine = create_engine(url)
    repository = PostgresTickRepository(engine)
    threshold = gc.get_threshold()
    try:
        # Stored ticks, on as many connections as the run uses: staging tables and statements, no new row.
        await asyncio.gather(*(repository.add_many(warm_up) for _ in range(in_flight)))
        async with engine.connect() as connection:
            backends = await service_backends((await connection.get_raw_connection()).driver_connection)
        gc.collect()
        tune_garbage_collector()  # as the service does once started; it freezes the prebuilt ticks too
        server_before = backends_cpu(backends)
        busy_before = machine_busy_seconds()
        cpu_before, started = time.process_time(), time.perf_counter()
        stored, latencies = await write_all(repository, batches, in_flight)
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_before
        server_after = backends_cpu(backends)
        busy = machine_busy_seconds() - busy_before
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        await engine.dispose()
    offered = sum(map(len, batches))
    rate = offered / elapsed
    latencies.sort()
    server_cpu = None if server_before is None or server_after is None else server_after - server_before
    server = "" if server_cpu is None else f", server backends {server_cpu / len(batches) * 1e3:.2f} ms"
    others = "" if server_cpu is None else others_text(busy, client_cpu + server_cpu, elapsed)
    how = "one call at a time" if in_flight == 1 else f"{in_flight} calls in flight, as PersistenceConsumer"
    print(
        f"  repository, {how}: {offered:,} ticks ({len(batches) * RESENT_PER_BATCH:,} already stored) in "
        f"{len(batches):,} batches of {BATCH:,} through add_many, into {PRELOAD:,} rows"
    )
    print(
        f"    {rate:,.0f} ticks/s ({elapsed:.1f} s); batch p50 {percentile(latencies, 0.5) * 1e3:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms; "
        f"{stored:,} new rows stored"
    )
    print(
        f"    CPU per batch: client {client_cpu / len(batches) * 1e3:.2f} ms{server}{others}; "
        f"{verdict(rate, REPOSITORY_TARGET)}"
    )
    expected = len(batches) * (BATCH - RESENT_PER_BATCH)
    if stored != expected:
        raise RuntimeError(f"add_many reported {stored:,} new rows, expected {expected:,}")


async def write_all(
    repository: PostgresTickRepository, batches: list[list[MarketTick]], in_flight: int
) -> tuple[int, list[float]]:
    """Every batch through ``add_many``, the next call made while ``in_flight - 1`` are pending; rows
    stored, and each batch's time (from its call, or from the end of the one before it if later)."""
    pending: collections.deque[tuple[float, asyncio.Task[int]]] = collections.deque()
    latencies: list[float] = []
    stored = 0
    last_end = 0.0

    async def finish_oldest() -> None:
        nonlocal stored, last_end
        called, write = pending.popleft()
        stored += await write
        end = time.perf_counter()
        latencies.append(end - max(called, last_end))
        last_end = end

    for batch in batches:
        if len(pending) == in_flight:
            await finish_oldest()
        pending.append((time.perf_counter(), asyncio.ensure_future(repository.add_many(batch))))
    while pending:
        await finish_oldest()
    return stored, latencies


def pipeline_run(url: str) -> None:
    with simulator("--count", str(PIPELINE_TICKS), "--id-base", str(PIPELINE_ID_BASE)) as sim:
        result = pipeline_client_run(sim, url)
    stored = asyncio.run(count_rows(url))
    rate = PIPELINE_TICKS / result["wall_s"]
    server = result.get("server_cpu_s")
    server_text = f", server backends {server / PIPELINE_TICKS * 1e6:.2f}" if server is not None else ""
    ours = result["cpu_s"] + result["sim_share"] * result["wall_s"] + (server or 0.0)
    others = "" if server is None else others_text(result["busy_s"], ours, result["wall_s"])
    print(
        f"  pipeline: simulator (core {SIM_CORE}) -> BinanceFeedHandler -> BroadcastBus -> "
        f"PersistenceConsumer -> PostgreSQL (client on core {CLIENT_CORE}), {PIPELINE_TICKS:,} ticks, "
        f"{len(STREAM_SYMBOLS)} symbols"
    )
    print(
        f"    {rate:,.0f} ticks/s, first tick received -> last stored in {result['wall_s']:.1f} s; "
        f"{stored:,} rows counted, in {result['batches']:,} batches"
    )
    print(
        f"    all received after {result['received_s']:.1f} s, {result['stored_by_then']:,} stored by then; "
        f"largest backlog {result['backlog']:,} ticks"
    )
    print(
        f"    CPU µs per tick: client {result['cpu_s'] / PIPELINE_TICKS * 1e6:.2f}{server_text}; "
        f"simulator CPU {result['sim_share']:.0%}{others}; {verdict(rate, PIPELINE_TARGET)}"
    )
    if stored != PIPELINE_TICKS:
        raise RuntimeError(f"{stored:,} pipeline rows stored, expected {PIPELINE_TICKS:,}")


def pipeline_client_run(sim: Simulator, url: str) -> dict[str, Any]:
    command = ["taskset", "-c", CLIENT_CORE, sys.executable, __file__, "--pipeline-client"]
    command += ["--port", str(sim.port), "--count", str(PIPELINE_TICKS)]
    before = sim.cpu_seconds()
    environment = {**os.environ, "KAIROS_BENCH_CLIENT_URL": url}  # kept off the command line
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the pipeline client failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["sim_share"] = (sim.cpu_seconds() - before) / result["wall_s"]
    return result


async def count_rows(url: str) -> int:
    async with driver_connection(url) as driver:
        count: int = await driver.fetchval(
            "SELECT count(*) FROM market_ticks WHERE trade_id >= $1", PIPELINE_ID_BASE
        )
    return count


async def pipeline_client(port: int, count: int, url: str) -> dict[str, Any]:
    """The service's write path as it runs: feed -> bus -> persistence consumer -> PostgreSQL."""
    engine = create_engine(url)
    bus = BroadcastBus()
    consumer = PersistenceConsumer(PostgresTickRepository(engine))
    persisting = bus.subscribe(consumer.name, lossless=consumer.lossless)
    first = bus.subscribe("first-tick")  # stamps the first arrival, then leaves the bus
    feed = BinanceFeedHandler(bus, STREAM_SYMBOLS, url=f"ws://127.0.0.1:{port}/stream", rest_url=None)
    tune_garbage_collector()  # as the service does once started
    writer = asyncio.create_task(consumer.run(persisting))
    feed_task = asyncio.create_task(feed.start())
    await first.recv()
    busy_before = machine_busy_seconds()
    cpu_before, started = time.process_time(), time.perf_counter()
    first.close()
    backlog = 0
    received = None
    stored_by_then = count
    stats = consumer.stats
    async with asyncio.timeout(PIPELINE_TIMEOUT):
        while stats.stored + stats.duplicates < count:
            backlog = max(backlog, consumer.buffered)
            if received is None and bus.published >= count:
                received = time.perf_counter() - started
                stored_by_then = stats.stored
            await asyncio.sleep(0.005)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    busy = machine_busy_seconds() - busy_before
    # The consumer's backend(s) connected with its first batch: their whole CPU is the run's.
    async with engine.connect() as connection:
        server_cpu = backends_cpu(
            await service_backends((await connection.get_raw_connection()).driver_connection)
        )
    await feed.stop()
    await feed_task
    bus.close()
    await writer
    await engine.dispose()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "busy_s": busy,
        "server_cpu_s": server_cpu,
        "received_s": wall if received is None else received,
        "stored_by_then": stored_by_then,
        "batches": stats.batches,
        "backlog": backlog,
    }


def client_main(args: argparse.Namespace) -> None:
    configure_logging(LogFormat.JSON, LogLevel.WARNING, stream=sys.stderr)  # stdout carries the result
    result = asyncio.run(pipeline_client(args.port, args.count, os.environ["KAIROS_BENCH_CLIENT_URL"]))
    json.dump(result, sys.stdout)


async def repository_part(server_url: str, template: str, stream: Stream, copies: list[str]) -> None:
    """Both repository runs, each on a copy of ``template`` appended to ``copies`` (the first is dropped
    once used; the second is left for the pipeline)."""
    url = database_on(server_url, template)
    async with driver_connection(url) as driver:
        print(f"  {await describe_server(driver)}")
    await yardstick(url, stream)
    await preload(url, stream)
    started = time.perf_counter()
    batches = repository_batches(stream)
    print(f"  {TICKS:,} ticks prebuilt in {time.perf_counter() - started:.1f} s")
    warm_up = [stream.tick(i) for i in range(BATCH)]
    for in_flight in (1, 2):
        if copies:
            await drop_database(server_url, copies.pop())
        copies.append(await copy_database(server_url, template))
        await repository_run(database_on(server_url, copies[-1]), batches, warm_up, in_flight=in_flight)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline-client", action="store_true", help="internal: the pipeline's client")
    parser.add_argument("--port", type=int)
    parser.add_argument("--count", type=int)
    args = parser.parse_args()
    if args.pipeline_client:
        client_main(args)
        return
    with server() as (server_url, where):
        name = asyncio.run(create_database(server_url))
        copies: list[str] = []
        try:
            print(f"\nPersistence: PostgreSQL at {where}, database {name} and copies of it (dropped after)")
            print(f"  {host_speed()}")
            asyncio.run(repository_part(server_url, name, Stream(), copies))
            pipeline_run(database_on(server_url, copies[-1]))
        finally:
            for database in (*copies, name):
                asyncio.run(drop_database(server_url, database))


if __name__ == "__main__":
    main()
