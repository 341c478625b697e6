"""Pytest plugin: a real PostgreSQL for the tests, with a fresh database per session or per test.

The server is ``KAIROS_TEST_DATABASE_URL`` if set, else whatever listens on 127.0.0.1:5432, else
an embedded server started for the session. A server that cannot be reached fails the tests
that need it (an error, never a skip): CI must not pass by testing nothing.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kairos_core.adapters.outbound.postgres import (
    PostgresTickRepository,
    create_engine,
    masked,
    normalised_url,
    upgrade_to_head,
)

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run async setup from a sync fixture in a loop of its own, leaving pytest-asyncio's alone."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(coroutine)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def database_on(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url``, password kept (to connect)."""
    return normalised_url(server_url).set(database=name).render_as_string(hide_password=False)


async def _admin(server_url: str, *statements: str) -> None:
    engine = create_engine(server_url)
    try:
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                await autocommit.execute(text(statement))
    finally:
        await engine.dispose()


def create_database(server_url: str) -> str:
    """A new empty database ``kairos_test_<random>``; returns its name."""
    name = f"kairos_test_{secrets.token_hex(6)}"  # generated here, safe to spell into DDL
    run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    return name


def drop_database(server_url: str, name: str) -> None:
    run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def truncate_ticks(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("TRUNCATE market_ticks"))


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of some database on a server the tests may create databases on."""
    configured = os.environ.get("KAIROS_TEST_DATABASE_URL")
    if configured:
        yield configured
    elif _listening("127.0.0.1", 5432):
        yield LOCAL_SERVER
    else:
        from kairos_core.adapters.outbound.postgres.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("postgres")) / "data")
        url = server.start()
        try:
            yield url
        finally:
            server.stop()


@pytest.fixture(scope="session")
def _reachable_server(postgres_server_url: str) -> str:
    try:
        run(_admin(postgres_server_url, "SELECT 1"))
    except Exception as e:
        pytest.fail(
            f"the test PostgreSQL at {masked(postgres_server_url)} cannot be reached ({type(e).__name__}): "
            "start one on 127.0.0.1:5432 or set KAIROS_TEST_DATABASE_URL",
            pytrace=False,
        )
    return postgres_server_url


@pytest.fixture(scope="session")
def database_url(_reachable_server: str) -> Iterator[str]:
    """A database of the session migrated to head; tests share it (see ``repository``)."""
    name = create_database(_reachable_server)
    try:
        url = database_on(_reachable_server, name)
        run(upgrade_to_head(url))
        yield url
    finally:
        drop_database(_reachable_server, name)


@pytest.fixture
def empty_database_url(_reachable_server: str) -> Iterator[str]:
    """A database of this test alone, created empty (no migrations) and dropped after."""
    name = create_database(_reachable_server)
    try:
        yield database_on(_reachable_server, name)
    finally:
        drop_database(_reachable_server, name)


@pytest.fixture
async def database_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session's database with ``market_ticks`` emptied first."""
    engine = create_engine(database_url)
    try:
        await truncate_ticks(engine)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def repository(database_engine: AsyncEngine) -> PostgresTickRepository:
    """A repository on an empty ``market_ticks``."""
    return PostgresTickRepository(database_engine)
