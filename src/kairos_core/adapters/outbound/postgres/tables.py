"""The schema as SQLAlchemy Core metadata: what the reads select from and what alembic compares against."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, DateTime, Index, MetaData, Numeric, Table, Text

# Named constraints and indexes, so a migration can address them and alembic sees no drift.
metadata = MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

market_ticks = Table(
    "market_ticks",
    metadata,
    # Key text compares bytewise ("C"): cheaper in both indexes than the server's locale, and immune
    # to the index corruption a libc collation change brings. These are codes, not prose.
    Column("exchange", Text(collation="C"), primary_key=True),  # an Exchange value
    Column("symbol", Text(collation="C"), primary_key=True),  # the venue's own form, e.g. BTCUSDT
    Column("trade_id", BigInteger, primary_key=True),
    Column("first_trade_id", BigInteger, nullable=False),
    Column("last_trade_id", BigInteger, nullable=False),
    # Unconstrained numeric keeps the exchange's digits and scale exactly; never a float.
    Column("price", Numeric, nullable=False),
    Column("volume", Numeric, nullable=False),
    Column("side", Text, nullable=False),
    Column("trade_time", DateTime(timezone=True), nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),  # microseconds: ns are truncated
    Column("source", Text, nullable=False),  # a TickSource value
    CheckConstraint("side IN ('buy', 'sell')", name="side"),
    # "A symbol's ticks in a time range": the read every replay and chart makes.
    Index(None, "exchange", "symbol", "trade_time"),
)
