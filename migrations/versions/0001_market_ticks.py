"""market_ticks: every stored trade, keyed by (exchange, symbol, trade_id).

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Written out, not derived from tables.py: a migration is history and must not change when
    # the model does (tests/integration/test_migrations.py checks the two agree). op.f: these
    # names are final, not inputs to the model's naming convention.
    op.create_table(
        "market_ticks",
        sa.Column("exchange", sa.Text(collation="C"), nullable=False),
        sa.Column("symbol", sa.Text(collation="C"), nullable=False),
        sa.Column("trade_id", sa.BigInteger(), nullable=False),
        sa.Column("first_trade_id", sa.BigInteger(), nullable=False),
        sa.Column("last_trade_id", sa.BigInteger(), nullable=False),
        sa.Column("price", sa.Numeric(), nullable=False),
        sa.Column("volume", sa.Numeric(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("trade_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("exchange", "symbol", "trade_id", name=op.f("pk_market_ticks")),
        sa.CheckConstraint("side IN ('buy', 'sell')", name=op.f("ck_market_ticks_side")),
    )
    op.create_index(
        op.f("ix_market_ticks_exchange_symbol_trade_time"),
        "market_ticks",
        ["exchange", "symbol", "trade_time"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_market_ticks_exchange_symbol_trade_time"), table_name="market_ticks")
    op.drop_table("market_ticks")
