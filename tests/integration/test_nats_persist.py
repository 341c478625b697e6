"""Persist nodes against real NATS and PostgreSQL: one killed between fetch and ack loses nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import nats
from sqlalchemy.ext.asyncio import AsyncEngine

from kairos_core.adapters.outbound.nats import NatsTickPublisher, StreamSpec, ensure_stream
from tests.nats_server import NatsNames
from tests.proof.compare_stored import asyncpg_url
from tests.strategies import numbered_tick

TICKS = 3_000
ACK_WAIT = 2.0


async def persist_node(names: NatsNames, database_url: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "kairos_core", "persist", *names.flags(), "--database-url", database_url),
            *("--no-migrate", "--nats-ack-wait", str(ACK_WAIT), "--persist-batch-size", "500"),
            *("--log-format", "json"),
            stdout=out,
            stderr=out,
            env={"PATH": "/usr/bin:/bin", "HOME": str(log.parent)},
        )


async def publish(names: NatsNames, count: int) -> None:
    client = await nats.connect(names.url)
    try:
        await ensure_stream(client, StreamSpec(name=names.stream, subject_prefix=names.subject_prefix))
        publisher = NatsTickPublisher(client, subject_prefix=names.subject_prefix)
        await publisher.start()
        symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
        await publisher.send([numbered_tick(i, symbols[i % 3]) for i in range(count)])
        await publisher.flush()
        await publisher.aclose()
    finally:
        await client.close()


async def consumer_state(names: NatsNames) -> tuple[int, int, int]:
    """(ack pending, pending, deliveries) of the persist nodes' durable consumer."""
    client = await nats.connect(names.url)
    try:
        info = await client.jetstream().consumer_info(names.stream, names.durable)
        return info.num_ack_pending or 0, info.num_pending or 0, info.delivered.consumer_seq or 0
    finally:
        await client.close()


async def until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_node_killed_between_fetch_and_ack_loses_nothing(
    nats_names: NatsNames, database_url: str, database_engine: AsyncEngine, tmp_path: Path
) -> None:
    await publish(nats_names, TICKS)
    database = await asyncpg.connect(asyncpg_url(database_url))
    locker = database.transaction()
    await locker.start()
    await database.execute("LOCK TABLE market_ticks IN ACCESS EXCLUSIVE MODE")  # every commit waits
    first = await persist_node(nats_names, database_url, tmp_path / "first.log")
    second = None
    try:
        await until(lambda: _fetched(nats_names), 20, "the first node to take a batch")
        first.send_signal(signal.SIGKILL)  # it has fetched and not acknowledged: its commit waits
        await first.wait()
        await locker.rollback()
        second = await persist_node(nats_names, database_url, tmp_path / "second.log")
        await until(lambda: _stored(database, TICKS), 30, f"{TICKS} rows")
        await until(lambda: _settled(nats_names), 10, "every message acknowledged")
        rows, keys = await database.fetchrow(
            "SELECT count(*), count(DISTINCT (symbol, trade_id)) FROM market_ticks"
        )
        assert (rows, keys) == (TICKS, TICKS)
        stored = await database.fetch("SELECT trade_id FROM market_ticks ORDER BY trade_id")
        assert [row["trade_id"] for row in stored] == list(range(TICKS))
        assert (await consumer_state(nats_names))[2] > TICKS, "the dead node's batch was delivered again"
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 15) == 0
        summary = json_events(tmp_path / "second.log", "persist.stopped")[-1]
        assert summary["stored"] == TICKS, "the other node stored all of it, the dead node's batch too"
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        await database.close()


def json_events(log: Path, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [event for event in lines if event.get("event") == name]


async def _fetched(names: NatsNames) -> bool:
    try:
        return (await consumer_state(names))[0] > 0
    except nats.js.errors.NotFoundError:  # the node has not made the consumer yet
        return False


async def _stored(database: asyncpg.Connection, count: int) -> bool:
    return int(await database.fetchval("SELECT count(*) FROM market_ticks")) >= count


async def _settled(names: NatsNames) -> bool:
    ack_pending, pending, _ = await consumer_state(names)
    return ack_pending == 0 and pending == 0
