"""Alembic's entry point: migrate under an advisory lock, so services starting together all come up.

The URL comes from the caller's Config (``kairos_core.adapters.outbound.postgres.migrations``),
else ``alembic -x url=...``, else ``KAIROS_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from kairos_core.adapters.outbound.postgres.engine import normalised_url
from kairos_core.adapters.outbound.postgres.migrations import MIGRATION_LOCK_KEY
from kairos_core.adapters.outbound.postgres.tables import metadata
from kairos_core.domain import ConfigurationError

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get("KAIROS_DATABASE_URL")
    if not url:
        raise ConfigurationError(
            "no database to migrate: pass -x url=postgresql://... or set KAIROS_DATABASE_URL"
        )
    return str(url)


def _migrate_locked(connection: Connection) -> None:
    # A session lock, not a transaction one, so it spans alembic's own transaction. Alembic reads
    # the current revision inside run_migrations, i.e. only once the lock is ours: whoever waited
    # finds the schema at head and does nothing.
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    connection.commit()  # leave no transaction open, or alembic would run inside it and never commit
    try:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()


async def _migrate_online(url: str) -> None:
    engine = create_async_engine(normalised_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate_locked)
    finally:
        await engine.dispose()


def _migrate_offline() -> None:
    """``alembic upgrade head --sql``: the SQL, for a DBA to review; no database, no lock."""
    context.configure(dialect_name="postgresql", target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if config.config_file_name is not None:  # the alembic CLI; the service configures its own logging
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    _migrate_offline()
else:
    asyncio.run(_migrate_online(_url()))
