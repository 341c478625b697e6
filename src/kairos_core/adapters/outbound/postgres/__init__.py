"""PostgreSQL storage: the tick repository, its schema and migrations, and the engine they share."""

from kairos_core.adapters.outbound.postgres.engine import create_engine, masked, normalised_url
from kairos_core.adapters.outbound.postgres.migrations import (
    downgrade_to_base,
    head_revision,
    known_revisions,
    schema_revision,
    upgrade_to_head,
)
from kairos_core.adapters.outbound.postgres.tick_repository import PostgresTickRepository

__all__ = [
    "PostgresTickRepository",
    "create_engine",
    "downgrade_to_base",
    "head_revision",
    "known_revisions",
    "masked",
    "normalised_url",
    "schema_revision",
    "upgrade_to_head",
]
