"""Alembic against a real PostgreSQL: up/down/up, no drift from tables.py, processes starting together."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CheckConstraint, Connection, Dialect, inspect

from kairos_core.adapters.outbound.postgres import create_engine, downgrade_to_base, upgrade_to_head
from kairos_core.adapters.outbound.postgres.migrations import alembic_config
from kairos_core.adapters.outbound.postgres.tables import market_ticks, metadata
from tests.conftest import REPO
from tests.database import run

HEAD = ScriptDirectory.from_config(alembic_config("postgresql://unused/unused")).get_current_head()


async def schema_state(url: str) -> tuple[set[str], str | None]:
    """The tables of the public schema and the revision alembic recorded (None if none)."""

    def read(connection: Connection) -> tuple[set[str], str | None]:
        revision = MigrationContext.configure(connection).get_current_revision()
        return set(inspect(connection).get_table_names()), revision

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(read)
    finally:
        await engine.dispose()


def described(connection: Connection) -> dict[str, Any]:
    """``market_ticks`` as the database has it, in PostgreSQL's terms."""
    found = inspect(connection)
    indexes = found.get_indexes("market_ticks")
    primary_key = found.get_pk_constraint("market_ticks")
    return {
        "columns": [
            (column["name"], column["type"].compile(connection.dialect), column["nullable"])
            for column in found.get_columns("market_ticks")
        ],
        "primary key": (primary_key["name"], primary_key["constrained_columns"]),
        "indexes": sorted((index["name"], index["column_names"]) for index in indexes),
        "checks": sorted(check["name"] for check in found.get_check_constraints("market_ticks")),
    }


def modelled(dialect: Dialect) -> dict[str, Any]:
    """``market_ticks`` as ``tables.py`` has it, in the same terms."""
    table = market_ticks
    return {
        "columns": [(column.name, column.type.compile(dialect), column.nullable) for column in table.c],
        "primary key": (table.primary_key.name, [column.name for column in table.primary_key]),
        "indexes": sorted((index.name, [column.name for column in index.columns]) for index in table.indexes),
        "checks": sorted(str(c.name) for c in table.constraints if isinstance(c, CheckConstraint)),
    }


async def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    await upgrade_to_head(empty_database_url)
    assert await schema_state(empty_database_url) == ({"alembic_version", "market_ticks"}, HEAD)

    await downgrade_to_base(empty_database_url)
    assert await schema_state(empty_database_url) == ({"alembic_version"}, None)

    await upgrade_to_head(empty_database_url)
    await upgrade_to_head(empty_database_url)  # at head: nothing to do
    assert await schema_state(empty_database_url) == ({"alembic_version", "market_ticks"}, HEAD)


async def test_the_migrated_schema_is_the_model(database_url: str) -> None:
    def differences(connection: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
            # Autogenerate forgives NUMERIC against NUMERIC(20, 8) and ignores collations, primary
            # keys and checks: compare those as PostgreSQL spells them.
            assert await connection.run_sync(described) == modelled(connection.dialect)
    finally:
        await engine.dispose()


# Each process imports everything, says it is ready, and waits for the others, so the four
# migrations really start together; then half go through the service's helper, half through the
# alembic CLI's entry point (what the ``alembic`` script calls).
TOGETHER = """
import asyncio, os, sys, time
from pathlib import Path
from alembic.config import main as alembic
from kairos_core.adapters.outbound.postgres import upgrade_to_head
barrier, me, how = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(barrier / me).touch()
deadline = time.monotonic() + 30
while len(list(barrier.iterdir())) < 4 and time.monotonic() < deadline:
    time.sleep(0.005)
if how == "cli":
    alembic(argv=["-c", os.environ["ALEMBIC_INI"], "upgrade", "head"])
else:
    asyncio.run(upgrade_to_head(os.environ["KAIROS_DATABASE_URL"]))
"""


def test_processes_starting_together_on_an_empty_database_all_come_up(
    empty_database_url: str, tmp_path: Path
) -> None:
    environment = {
        **os.environ,
        "KAIROS_DATABASE_URL": empty_database_url,  # read by both; kept off the command line
        "ALEMBIC_INI": str(REPO / "alembic.ini"),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TOGETHER, str(tmp_path), str(n), how],
            env=environment,
            cwd=tmp_path.parent,  # neither depends on the working directory
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n, how in enumerate(("helper", "cli", "helper", "cli"))
    ]
    outputs = [process.communicate(timeout=60)[0] for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0, 0], "\n".join(outputs)
    assert sum("Running upgrade  -> " in output for output in outputs) <= 1  # CLIs log it; helpers do not
    assert run(schema_state(empty_database_url)) == ({"alembic_version", "market_ticks"}, HEAD)
