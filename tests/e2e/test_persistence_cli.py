"""``python -m kairos_core`` storing into PostgreSQL: exact counts, the embedded default, migrate."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from pathlib import Path

import asyncpg
import pytest

from kairos_core.adapters.outbound.postgres.migrations import MIGRATION_LOCK_KEY
from tests.e2e.conftest import Kairos, json_lines
from tests.sql import STORED_PER_SYMBOL, asyncpg_dsn, fetch, fetch_async


def stream_options(port: int) -> list[str]:
    return [
        "--binance-url",
        f"ws://127.0.0.1:{port}/stream",
        "--binance-rest-url",
        f"http://127.0.0.1:{port}",
    ]


# The whole service (feeds, bus, asyncpg, the flush at the end) on either event loop.
@pytest.mark.parametrize("busy_poll_us", [0, 2_000], ids=["sleeping-loop", "busy-polling-loop"])
def test_max_ticks_stores_exactly_n_rows_with_contiguous_ids(
    simulator_port: int, kairos: Kairos, database_url: str, busy_poll_us: int
) -> None:
    fetch(database_url, "TRUNCATE market_ticks")
    options = ["--max-ticks", "300", "--persist-batch-size", "64", "--busy-poll-us", str(busy_poll_us)]
    result = kairos(*stream_options(simulator_port), *options)
    assert result.returncode == 0, result.stderr
    polling = [e for e in json_lines(result.stderr) if e["event"] == "event_loop.busy_poll"]
    assert [e["window_us"] for e in polling] == ([busy_poll_us] if busy_poll_us else [])
    per_symbol = fetch(database_url, STORED_PER_SYMBOL)
    assert sum(row["rows"] for row in per_symbol) == 300
    for row in per_symbol:
        assert row["last"] - row["first"] + 1 == row["rows"], dict(row)
    summary = next(e for e in json_lines(result.stderr) if e["event"] == "service.stopped")
    assert summary["consumers"]["persistence"] == {"received": 300, "lost": 0}


def test_the_embedded_default_works_twice_in_a_row(simulator_port: int, tmp_path: Path) -> None:
    from kairos_core.adapters.outbound.postgres.embedded import EmbeddedPostgres

    kairos = Kairos(database_url=None)
    data_dir = tmp_path / "data"
    for _ in range(2):
        result = kairos(*stream_options(simulator_port), "--max-ticks", "50", "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
        assert any(e["event"] == "postgres.embedded.started" for e in json_lines(result.stderr))
        # stopped on exit: PostgreSQL removes its pid file when it shuts down cleanly
        assert not (data_dir / "pg" / "postmaster.pid").exists()
    with EmbeddedPostgres(data_dir) as url:
        per_symbol = fetch(url, STORED_PER_SYMBOL)
    assert sum(row["rows"] for row in per_symbol) == 100


def test_migrate_upgrades_an_empty_database_and_is_idempotent(
    kairos: Kairos, empty_database_url: str
) -> None:
    for _ in range(2):
        result = kairos("migrate", "--database-url", empty_database_url)
        assert result.returncode == 0, result.stderr
    assert fetch(empty_database_url, "SELECT count(*) AS n FROM market_ticks")[0]["n"] == 0


def test_no_migrate_on_a_database_never_migrated_exits_2_naming_the_fix(
    simulator_port: int, empty_database_url: str
) -> None:
    """It used to start, fail every write on the missing table and never stop retrying."""
    result = Kairos(empty_database_url)(*stream_options(simulator_port), "--no-migrate", "--max-ticks", "10")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "--no-migrate, but database" in last
    assert "none (never migrated)" in last
    assert "run `python -m kairos_core migrate` first" in last


def test_no_migrate_on_a_migrated_database_runs(simulator_port: int, empty_database_url: str) -> None:
    kairos = Kairos(empty_database_url)
    assert kairos("migrate").returncode == 0
    result = kairos(*stream_options(simulator_port), "--no-migrate", "--max-ticks", "10")
    assert result.returncode == 0, result.stderr
    assert fetch(empty_database_url, "SELECT count(*) AS n FROM market_ticks")[0]["n"] == 10


def test_no_migrate_on_a_database_a_newer_version_migrated_exits_2(
    simulator_port: int, empty_database_url: str
) -> None:
    kairos = Kairos(empty_database_url)
    assert kairos("migrate").returncode == 0
    fetch(empty_database_url, "UPDATE alembic_version SET version_num = 'f00dfeed'")
    result = kairos(*stream_options(simulator_port), "--no-migrate", "--max-ticks", "10")
    assert result.returncode == 2, result.stderr
    assert "revision f00dfeed, which this kairos-core does not know" in result.stderr.strip().splitlines()[-1]


def test_no_migrate_as_a_writer_that_may_not_read_alembic_version_runs_unchecked(
    simulator_port: int, empty_database_url: str
) -> None:
    """The least-privilege writer --no-migrate is for: SELECT and INSERT on market_ticks only."""
    from sqlalchemy.engine import make_url

    role = f"kairos_writer_{secrets.token_hex(4)}"
    assert Kairos(empty_database_url)("migrate").returncode == 0
    fetch(empty_database_url, f"CREATE ROLE {role} LOGIN")
    try:
        fetch(empty_database_url, f"GRANT SELECT, INSERT ON market_ticks TO {role}")
        writer = make_url(empty_database_url).set(username=role, password=None)
        result = Kairos(writer.render_as_string(hide_password=False))(
            *stream_options(simulator_port), "--no-migrate", "--max-ticks", "10"
        )
        assert result.returncode == 0, result.stderr
        assert any(e["event"] == "database.schema_unchecked" for e in json_lines(result.stderr))
        assert fetch(empty_database_url, "SELECT count(*) AS n FROM market_ticks")[0]["n"] == 10
    finally:
        fetch(empty_database_url, f"REVOKE ALL ON market_ticks FROM {role}")
        fetch(empty_database_url, f"DROP ROLE {role}")


def test_an_unreachable_database_exits_4_in_one_line_without_the_password(kairos: Kairos) -> None:
    result = kairos("migrate", "--database-url", "postgresql://kairos:hunter2@127.0.0.1:1/kairos")
    assert result.returncode == 4
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kairos: error: database postgresql://kairos:***@127.0.0.1:1/kairos")
    assert "unreachable" in last
    assert "hunter2" not in result.stderr


def test_a_refused_login_exits_2_at_once_naming_the_fix(kairos: Kairos, postgres_server_url: str) -> None:
    from sqlalchemy.engine import make_url

    refused = make_url(postgres_server_url).set(
        username="nosuchrole", password="hunter2", database="postgres"
    )
    result = kairos("migrate", "--database-url", refused.render_as_string(hide_password=False))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert 'role "nosuchrole" does not exist' in last
    assert "fix the user, password or database name" in last
    assert "hunter2" not in result.stderr


async def test_a_sigterm_during_startup_waits_for_the_service_then_stops_it_with_exit_0(
    simulator_port: int, empty_database_url: str
) -> None:
    """Start-up is held in its migration (the test holds the migration lock) when SIGTERM comes."""
    holder = await asyncpg.connect(**asyncpg_dsn(empty_database_url))
    await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    process = await _service(simulator_port, empty_database_url)
    assert process.stderr is not None
    try:
        await asyncio.wait_for(_lock_waiters(holder, 1), 30)
        process.send_signal(signal.SIGTERM)
        lines = [await asyncio.wait_for(process.stderr.readline(), 30)]
        while b"service.stop_requested_during_startup" not in lines[-1]:
            assert lines[-1], b"".join(lines).decode()
            lines.append(await asyncio.wait_for(process.stderr.readline(), 30))
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        lines.append(await asyncio.wait_for(process.stderr.read(), 30))
        assert await asyncio.wait_for(process.wait(), 30) == 0, b"".join(lines).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await holder.close()
    events = json_lines(b"".join(lines).decode())
    held = [e["signal"] for e in events if e["event"] == "service.stop_requested_during_startup"]
    assert held == ["SIGTERM"]
    assert next(e for e in events if e["event"] == "service.stopped")["reason"] == "SIGTERM"
    made = await fetch_async(empty_database_url, "SELECT to_regclass('market_ticks') IS NOT NULL AS made")
    assert made[0]["made"], "start-up finished the migration it had begun"


async def _service(simulator_port: int, database_url: str) -> asyncio.subprocess.Process:
    """The service against the simulator and ``database_url``, its log lines on a pipe."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kairos_core",
        *stream_options(simulator_port),
        env=Kairos(database_url).env,
        stderr=asyncio.subprocess.PIPE,
    )


async def _lock_waiters(connection: asyncpg.Connection, count: int) -> None:
    """Until ``count`` sessions of this database wait for the migration lock: the service is inside
    its migration. (A bigint key's low half is the lock's objid, its high half its classid.)"""
    waiting = """
        SELECT count(*) FROM pg_locks JOIN pg_database d ON d.oid = pg_locks.database
        WHERE locktype = 'advisory' AND NOT granted AND d.datname = current_database()
          AND objid = $1::bigint & 4294967295 AND classid = $1::bigint >> 32
    """
    while await connection.fetchval(waiting, MIGRATION_LOCK_KEY) < count:
        await asyncio.sleep(0.05)


async def test_a_second_sigterm_abandons_a_hanging_startup_with_exit_143(simulator_port: int) -> None:
    """The database accepts the connection and never answers: start-up would hang for minutes."""
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"postgresql+asyncpg://kairos@127.0.0.1:{server.sockets[0].getsockname()[1]}/kairos"
    process = await _service(simulator_port, url)
    try:
        await asyncio.wait_for(accepted.wait(), 30)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        server.close()
        for writer in held:
            writer.close()
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()
    events = [e["event"] for e in json_lines(stderr.decode())]
    assert "service.stop_requested_during_startup" in events
    assert "service.startup_abandoned" in events


async def _catching_sigterm(pid: int, timeout: float = 30) -> None:
    """Until process ``pid`` has a handler for SIGTERM: from there on a SIGTERM is the program's to
    answer, not the default action's."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not _sigterm_caught(pid):
        assert asyncio.get_running_loop().time() < deadline, "the program never took SIGTERM over"
        await asyncio.sleep(0.002)


def _sigterm_caught(pid: int) -> bool:
    """Whether SIGTERM is in the process's SigCgt mask (/proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) & 1 << (signal.SIGTERM - 1))


async def test_a_sigterm_while_the_program_still_imports_ends_a_migrate_before_it_starts(
    empty_database_url: str,
) -> None:
    """``python -m kairos_core`` takes SIGTERM over on its first line (``bootstrap/early_stop.py``);
    ``migrate`` installs no handler of its own, so without that this SIGTERM is never caught."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kairos_core",
        "migrate",
        env=Kairos(empty_database_url).env,
        stderr=asyncio.subprocess.PIPE,
    )
    await _catching_sigterm(process.pid)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()
    made = await fetch_async(empty_database_url, "SELECT to_regclass('market_ticks') IS NOT NULL AS made")
    assert not made[0]["made"], "nothing migrated"
