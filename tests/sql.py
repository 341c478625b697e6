"""Plain SQL against a test database, independent of the code under test: for checking what was stored."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url


def asyncpg_dsn(url: str) -> dict[str, Any]:
    """asyncpg.connect keyword arguments for an SQLAlchemy-style URL (unix socket form included)."""
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host
    return {
        "user": parsed.username,
        "password": parsed.password,
        "host": host if isinstance(host, str) else None,
        "port": parsed.port,
        "database": parsed.database,
    }


async def fetch_async(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(**asyncpg_dsn(url))
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(fetch_async(url, sql, *args))


STORED_PER_SYMBOL = """
    SELECT symbol, count(*) AS rows, min(trade_id) AS first, max(trade_id) AS last
    FROM market_ticks GROUP BY symbol ORDER BY symbol
"""
"""Per symbol: rows, lowest and highest id; ``last - first + 1 == rows`` means no id is missing."""
