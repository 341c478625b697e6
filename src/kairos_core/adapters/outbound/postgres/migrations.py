"""Alembic upgrades and downgrades from inside the service, wherever it is installed and run from."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

import kairos_core

_PACKAGED = Path(kairos_core.__file__).resolve().parent / "migrations"  # a wheel's force-included copy
_CHECKOUT = Path(__file__).resolve().parents[5] / "migrations"  # repo root, for an editable install
# Alembic publishes the running migration through module-level proxies (alembic.context, .op),
# so two migrations at once in one process would share them: one at a time.
_ONE_AT_A_TIME = threading.Lock()

MIGRATION_LOCK_KEY = 0x6B6169726F73
"""The session advisory lock every upgrade runs under (``migrations/env.py``): any fixed bigint
shared by every kairos-core process; this one spells "kairos" in ASCII."""


def migrations_directory() -> Path:
    """The alembic script directory: the wheel's copy, else the source checkout's."""
    for candidate in (_PACKAGED, _CHECKOUT):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"no alembic migrations in {_PACKAGED} or {_CHECKOUT}: reinstall kairos-core")


def alembic_config(url: str) -> Config:
    """A Config that needs no alembic.ini and no particular working directory.

    The URL travels in ``attributes``, not in an ini option, so a ``%`` in a percent-encoded
    password is not taken for interpolation.
    """
    config = _scripts_config()
    config.attributes["url"] = url
    return config


def _scripts_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str | None:
    """The newest revision of the migrations this kairos-core carries: the schema it writes to."""
    return ScriptDirectory.from_config(_scripts_config()).get_current_head()


def known_revisions() -> frozenset[str]:
    """Every revision this kairos-core carries a migration for."""
    return frozenset(
        script.revision for script in ScriptDirectory.from_config(_scripts_config()).walk_revisions()
    )


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (alembic's version table); None for a database never migrated."""
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def upgrade_to_head(url: str) -> None:
    """Migrate the database at ``url`` to the newest revision; nothing to do at head.

    Safe to call from several processes at once (see ``migrations/env.py``). Alembic runs in a
    worker thread, where env.py has an event loop of its own, so this may be awaited from the
    service's loop.
    """
    await asyncio.to_thread(_run, command.upgrade, url, "head")


async def downgrade_to_base(url: str) -> None:
    """Undo every migration: the schema is gone, the data with it."""
    await asyncio.to_thread(_run, command.downgrade, url, "base")


def _run(step: Callable[[Config, str], None], url: str, revision: str) -> None:
    with _ONE_AT_A_TIME:
        step(alembic_config(url), revision)
