"""The database's lifecycle for a run: which server, the schema upgrade, the engine, and the end.

With no ``database_url`` an embedded PostgreSQL is started in ``data_dir`` and stopped at the end
(unless another kairos process still uses it). Start-up waits a little for a database that is
still coming up, then fails with one line that names the (masked) URL and what to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import cast

import asyncpg
import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from kairos_core.adapters.outbound.postgres import (
    create_engine,
    head_revision,
    known_revisions,
    masked,
    schema_revision,
    upgrade_to_head,
)
from kairos_core.adapters.outbound.postgres.embedded import EmbeddedPostgres
from kairos_core.domain import ConfigurationError, KairosError
from kairos_core.settings import DatabaseSettings

log = structlog.get_logger(__name__)

CONNECT_ATTEMPTS = 5
CONNECT_FIRST_DELAY = 0.25
_INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE: permission denied


class DatabaseUnavailable(KairosError):
    """The database could not be reached at start-up, after retries."""


async def database_url(database: DatabaseSettings) -> AsyncGenerator[str]:
    """The configured URL, or an embedded server's for as long as the generator is open."""
    if database.url is not None:
        yield database.url
        return
    embedded = EmbeddedPostgres(database.data_dir)
    try:
        url = await asyncio.to_thread(embedded.start)
    except OSError as e:
        raise ConfigurationError(
            f"the embedded PostgreSQL cannot use data dir {str(database.data_dir)!r} ({e}): set "
            "--data-dir / KAIROS_DATA_DIR to a writable directory, or give --database-url"
        ) from e
    try:
        yield url
    finally:
        await asyncio.to_thread(embedded.stop)


async def database_engine(url: str, *, migrate: bool) -> AsyncIterator[AsyncEngine]:
    """An engine on a reachable database, its schema upgraded first when ``migrate``, else checked
    to be the one this kairos-core writes."""
    if migrate:
        await _with_retries(url, lambda: upgrade_to_head(url))
    engine = create_engine(url)
    try:
        await _with_retries(url, lambda: _ping(engine))
        if not migrate:
            await _with_retries(url, lambda: _check_schema(engine, url))
        log.info("database.ready", database=masked(url), migrated=migrate)
        yield engine
    finally:
        await engine.dispose()


async def migrate_only(database: DatabaseSettings) -> None:
    """``python -m kairos_core migrate``."""
    urls = database_url(database)
    url = await anext(urls)
    try:
        await _with_retries(url, lambda: upgrade_to_head(url))
        log.info("database.migrated", database=masked(url))
    finally:
        await urls.aclose()


async def _check_schema(engine: AsyncEngine, url: str) -> None:
    """Without it, a service told not to migrate a database that is empty or behind starts, fails
    every write (no table, a missing column) and, keeping its ticks, never stops retrying."""
    try:
        current = await schema_revision(engine)
    except DBAPIError as e:
        # A least-privilege writer (SELECT, INSERT on market_ticks) may not read alembic's table.
        if getattr(e.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
            raise
        log.warning(
            "database.schema_unchecked",
            database=masked(url),
            why="this user may not read alembic_version: grant it SELECT to have the schema checked",
        )
        return
    head = head_revision()
    if current == head:
        return
    if current is not None and current not in known_revisions():
        raise ConfigurationError(
            f"--no-migrate, but database {masked(url)} is at schema revision {current}, which this "
            f"kairos-core does not know (it writes {head}): a newer version migrated it; run that one"
        )
    raise ConfigurationError(
        f"--no-migrate, but database {masked(url)} is at schema revision "
        f"{current or 'none (never migrated)'}, and this kairos-core writes revision {head}: "
        "run `python -m kairos_core migrate` first, or start without --no-migrate"
    )


async def _ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _with_retries(url: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run ``step``, retrying a few times with backoff while the database is unreachable."""
    delay = CONNECT_FIRST_DELAY
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            await step()
        except (OSError, SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            refusal = _refusal(e)
            if refusal is not None:  # no retry helps: the server answered, and said no
                raise ConfigurationError(
                    f"database {masked(url)} refused us ({_first_line(refusal)}): fix the user, password "
                    "or database name in --database-url / KAIROS_DATABASE_URL"
                ) from e
            reason = f"{type(e).__name__}: {_first_line(e)}"
            if attempt == CONNECT_ATTEMPTS:
                raise DatabaseUnavailable(
                    f"database {masked(url)} is unreachable after {attempt} attempts ({reason}): "
                    "start it, or fix --database-url / KAIROS_DATABASE_URL"
                ) from e
            log.warning("database.unreachable", database=masked(url), attempt=attempt, error=reason)
            await asyncio.sleep(delay)
            delay *= 2
        else:
            return


_REFUSALS = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)
"""Login refused (unknown role, wrong password) or no such database."""


def _refusal(error: BaseException) -> BaseException | None:
    """The server's own refusal somewhere in ``error``'s chain (SQLAlchemy wraps it twice)."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, _REFUSALS):
            return cast(BaseException, seen)
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no detail"
