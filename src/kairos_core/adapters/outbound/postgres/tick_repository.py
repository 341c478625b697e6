"""Ticks in PostgreSQL: binary COPY through a staging table on the write path, SQLAlchemy Core reads."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kairos_core.adapters.outbound.postgres.tables import market_ticks
from kairos_core.domain import Exchange, KairosError, MarketTick, Side, TickRepository, TickSource

# A tick's (exchange, symbol, trade_id): the table's key, in the key's column order. Python orders
# str by code point, which is the byte order of UTF-8, so tuples sorted on it are in COLLATE "C"
# order too: the ORDER BYs below get their rows already sorted, and PostgreSQL's sort checks for that
# first (one pass of comparisons instead of a sort: ~1 ms of server time less per 1,000 rows).
_KEY = itemgetter(1, 0, 5)

# The staging table's columns follow MarketTick's field order, so a COPY record is the tick itself
# with three fields changed. Measured per 1,000 ticks, asyncpg's binary encoders cost ~3.8 ms for two
# Decimals and ~2.4 ms for three datetimes (plus building them); as text and bigint they cost ~0.3 ms,
# and the server's exact conversion below ~0.7 ms.
_STAGING = "market_ticks_staging"
_STAGING_COLUMNS = (
    "symbol",
    "exchange",
    "price",
    "volume",
    "side",
    "trade_id",
    "first_trade_id",
    "last_trade_id",
    "trade_time_ms",
    "event_time_ms",
    "received_at_us",
    "source",
)
# Per connection, for the connection's life; emptied by every commit (and by every rollback, being
# filled only inside the transaction), which costs ~0.5 ms less per batch than a TRUNCATE.
# ``row_by_row`` is never written: a volatile default makes COPY insert row by row instead of
# through its multi-insert buffer, which makes and drops a tuple slot for every row it buffers in
# each COPY. With one COPY of 1,000 rows a batch, that costs ~1 ms more server CPU than inserting
# the rows one by one into this (unlogged, local) table: 2.5 against 1.3 µs a row, measured alike
# on PostgreSQL 15 and 18.
_CREATE_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS market_ticks_staging (
    symbol text COLLATE "C", exchange text COLLATE "C", price text, volume text, side text,
    trade_id bigint, first_trade_id bigint, last_trade_id bigint,
    trade_time_ms bigint, event_time_ms bigint, received_at_us bigint, source text,
    row_by_row double precision DEFAULT random()
) ON COMMIT DELETE ROWS
"""
# Integer epoch times become timestamptz exactly: interval * bigint multiplies in float8, exact only
# below 2**53 microseconds (year ~2255), so whole seconds and the remainder are scaled apart, which
# stays exact for every date a datetime holds (to_timestamp(float8) would round them). The numeric
# casts keep the digits and scale sent.
_COLUMNS = """
    exchange, symbol, trade_id, first_trade_id, last_trade_id, price, volume, side,
    trade_time, event_time, received_at, source
"""
_VALUES = """
    s.exchange, s.symbol, s.trade_id, s.first_trade_id, s.last_trade_id,
    s.price::numeric, s.volume::numeric, s.side,
    timestamptz 'epoch' + (s.trade_time_ms / 1000) * interval '1 second'
        + (s.trade_time_ms % 1000) * interval '1 millisecond',
    timestamptz 'epoch' + (s.event_time_ms / 1000) * interval '1 second'
        + (s.event_time_ms % 1000) * interval '1 millisecond',
    timestamptz 'epoch' + (s.received_at_us / 1000000) * interval '1 second'
        + (s.received_at_us % 1000000) * interval '1 microsecond',
    s.source
"""
# A batch (one tick per key: add_many keeps a key's first) goes in by a plain INSERT once the ticks
# already stored are taken out of the staging table. ON CONFLICT would probe the key index once more
# for every row and take a speculative-insertion lock per row, ~2 ms of server time per 1,000 rows;
# here only ticks at or below the highest id stored for their symbol can be stored already, so only
# those are looked up (one index probe each). The highest ids are read once per symbol of the batch
# (OFFSET 0 keeps the planner from pulling those lookups into the per-row filter, and the CASE
# keeps it from probing the ticks above them).
#
# The probes run before the batch's turn to insert (see PostgresTickRepository), beside the insert
# of the batch before, so they see neither that batch's rows nor a concurrent writer's: a tick
# stored by either meanwhile makes the plain insert fail with a unique violation, and the batch
# goes again with ON CONFLICT DO NOTHING (_INSERT_AGAIN). Inserting in key order makes concurrent
# writers (live and backfill, several processes) meet each other's rows in one order, so they
# cannot deadlock.
#
# Both lookups are written so that only the primary key can serve them cheaply, whatever the
# planner knows of the table: "the first stored key at or after this one" and "the last stored key
# up to this symbol" are row comparisons over (exchange, symbol, trade_id) ordered by that key with
# LIMIT 1, which the key's btree answers in one descent. Any other path (the time index, which also
# starts with exchange and symbol, or a scan) must read every key past the bound and sort them
# first: estimated at a third of the table even with no statistics at all, so the plan cannot flip
# to it. The plain equality probe could: on a table never analyzed, both indexes were estimated at
# one row and the planner took the time index, filtering trade_id over all of a symbol's rows
# (batches went from 8 to 460 ms as such a table grew). The row comparisons cost ~2 us more per
# probe.
_DROP_STORED = """
DELETE FROM pg_temp.market_ticks_staging s
USING (
    SELECT batch.exchange, batch.symbol, (
        SELECT last.trade_id FROM (
            SELECT t.exchange, t.symbol, t.trade_id FROM market_ticks t
            WHERE (t.exchange, t.symbol) <= (batch.exchange, batch.symbol)
            ORDER BY t.exchange DESC, t.symbol DESC, t.trade_id DESC
            LIMIT 1
        ) AS last
        WHERE (last.exchange, last.symbol) = (batch.exchange, batch.symbol)
    ) AS top
    FROM (SELECT DISTINCT exchange, symbol FROM pg_temp.market_ticks_staging) AS batch
    OFFSET 0
) stored
WHERE stored.exchange = s.exchange AND stored.symbol = s.symbol AND CASE WHEN s.trade_id <= stored.top
    THEN EXISTS (
        SELECT FROM (
            SELECT t.exchange, t.symbol, t.trade_id FROM market_ticks t
            WHERE (t.exchange, t.symbol, t.trade_id) >= (s.exchange, s.symbol, s.trade_id)
            ORDER BY t.exchange, t.symbol, t.trade_id
            LIMIT 1
        ) AS next
        WHERE (next.exchange, next.symbol, next.trade_id) = (s.exchange, s.symbol, s.trade_id)
    )
END
"""
_INSERT = f"""
INSERT INTO market_ticks ({_COLUMNS})
SELECT {_VALUES}
FROM pg_temp.market_ticks_staging s
ORDER BY s.exchange, s.symbol, s.trade_id
"""
_INSERT_AGAIN = f"ROLLBACK TO SAVEPOINT staged; {_INSERT}ON CONFLICT DO NOTHING\n"
# Prepared once per connection, by name, so the write's one message (several statements: a simple
# query, where no extended-protocol statement cache applies) plans neither of them again: ~0.4 ms of
# server time per batch less than sending them as text.
_PREPARED = {"kairos_drop_stored": _DROP_STORED, "kairos_insert": _INSERT}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_US = timedelta(microseconds=1)
_t = market_ticks.c
_TICK_COLUMNS = (
    _t.symbol,
    _t.exchange,
    _t.price,
    _t.volume,
    _t.side,
    _t.trade_id,
    _t.first_trade_id,
    _t.last_trade_id,
    _t.trade_time,
    _t.event_time,
    _t.received_at,
    _t.source,
)


class EarlierWriteFailed(KairosError):
    """A batch not written because the batch handed to ``add_many`` just before it failed: storing
    it anyway would put a later batch in the table before an earlier one. Retry in order."""


class _Write:
    """One ``add_many`` call's place in the write order.

    ``turn`` is the key of a transaction-level advisory lock the call's transaction takes first and
    holds to its end; the next call's insert waits on the server for that lock, so it starts the
    moment this transaction ends, without a reply having to reach us and a request to come back.
    """

    __slots__ = ("ended", "locked", "stored", "turn")

    def __init__(self, turn: int) -> None:
        self.turn = turn
        self.locked = asyncio.Event()
        """The transaction holds ``turn`` (or the call has ended): the next insert may be sent."""
        self.ended = asyncio.Event()
        self.stored = False


class PostgresTickRepository(TickRepository):
    """``TickRepository`` on PostgreSQL's ``market_ticks`` (see ``tables.py``).

    Times are stored as timestamptz: trade and event times exactly (milliseconds), the receipt time
    to the microsecond, so a stored tick reads back with ``received_at_ns`` truncated to a multiple
    of 1,000 and every other field equal. The engine belongs to the caller, who disposes it.

    ``add_many`` may be called again before an earlier call has returned (a writer keeping a second
    batch in flight): each call builds its batch, copies it to the server and takes out the ticks
    already stored on a connection of its own at once, but inserts only once the call before it has
    ended its transaction, so at most one batch is being written into the table at a time and
    batches are stored in the order they were handed over. If that earlier call fails, the later
    one fails too, with ``EarlierWriteFailed`` and nothing written, so a caller that retries its
    batches in order never stores a later one first (the highest stored id of a symbol is what a
    restart resumes from).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Driver connections that have the staging table: created once per connection, not per batch.
        self._staged: weakref.WeakSet[Any] = weakref.WeakSet()
        self._last_write: _Write | None = None
        self._turns = itertools.count(secrets.randbits(62))  # advisory lock keys of this repository's own
        # A connection a write left for the next one because a later write was still in flight (a
        # writer keeping batches coming): lent again without the pool's checkout and its pre-ping
        # round trips. The last write in flight to end returns it to the pool.
        self._spare: AsyncConnection | None = None

    async def add_many(self, ticks: Sequence[MarketTick]) -> int:
        if not ticks:
            return 0
        kept = {_KEY(tick): tick for tick in reversed(ticks)}  # of a key's ticks, the batch's first
        records = [
            (symbol, exchange, str(price), str(volume), side, tid, first, last, ms, event_ms, ns // 1000, src)
            for symbol, exchange, price, volume, side, tid, first, last, ms, event_ms, ns, src in map(
                kept.__getitem__, sorted(kept)
            )
        ]
        previous, write = self._last_write, _Write(next(self._turns))
        self._last_write = write
        connection, self._spare = self._spare, None
        try:
            if connection is None:
                connection = await self._engine.connect()
            # COPY exists only on the driver: the whole write runs there, in transactions of its own,
            # on the connection SQLAlchemy's pool lent us.
            driver: Any = (await connection.get_raw_connection()).driver_connection
            try:
                status = await self._write(driver, records, previous, write)
            except BaseException:
                # SQLAlchemy never saw this error: discard the connection rather than lend it again in
                # an unknown state (mid-COPY, in a transaction, closed by the server, a dropped table).
                # Its transaction ends with it.
                self._staged.discard(driver)
                await connection.invalidate()
                raise
            write.stored = True
        finally:
            write.locked.set()
            write.ended.set()
            if self._last_write is write:
                self._last_write = None
            await self._release(connection, keep=write.stored)
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows stored>"

    async def _write(
        self, driver: Any, records: list[tuple[Any, ...]], previous: _Write | None, write: _Write
    ) -> str:
        if driver not in self._staged:
            await _stage(driver)
            self._staged.add(driver)
        # Simple queries (several statements in one message, which take no parameters): the lock
        # keys are spelled into the text, numbers generated here. A batch takes its own turn first,
        # then stages its ticks and, in one message, takes out those already stored (beside the
        # insert before it), waits on the server for the batch before to end, and inserts.
        await driver.execute(f"BEGIN; SELECT pg_advisory_xact_lock({write.turn:d})")
        write.locked.set()
        await driver.copy_records_to_table(
            _STAGING, records=records, columns=_STAGING_COLUMNS, schema_name="pg_temp"
        )
        wait = ""
        if previous is not None:
            await previous.locked.wait()
            if previous.ended.is_set() and not previous.stored:
                raise EarlierWriteFailed("the batch before this one was not stored")
            wait = f"SELECT pg_advisory_xact_lock_shared({previous.turn:d}); "
        # The savepoint comes after the turns are taken: a unique violation rolls back to it, keeping
        # them and the staged ticks, and the batch goes again from there.
        try:
            status: str = await driver.execute(
                f"EXECUTE kairos_drop_stored; {wait}SAVEPOINT staged; EXECUTE kairos_insert"
            )
        except asyncpg.UniqueViolationError:
            status = await driver.execute(_INSERT_AGAIN)
        if previous is not None:
            await previous.ended.wait()
            if not previous.stored:
                raise EarlierWriteFailed("the batch before this one was not stored")
        await driver.execute("COMMIT")
        return status

    async def _release(self, connection: AsyncConnection | None, *, keep: bool) -> None:
        """Leave ``connection`` for the next write if a later one is in flight, else return it (and
        any spare: no write will come for it) to the pool."""
        if connection is not None and keep and self._last_write is not None and self._spare is None:
            self._spare = connection
            return
        if self._last_write is None and self._spare is not None:
            spare, self._spare = self._spare, None
            await spare.close()
        if connection is not None:
            await connection.close()

    async def last_trade_id(self, exchange: Exchange, symbol: str) -> int | None:
        statement = select(func.max(_t.trade_id)).where(_t.exchange == exchange.value, _t.symbol == symbol)
        async with self._engine.connect() as connection:
            highest: int | None = await connection.scalar(statement)
        return highest

    async def latest_tick(self, exchange: Exchange, symbol: str) -> MarketTick | None:
        statement = (
            select(*_TICK_COLUMNS)
            .where(_t.exchange == exchange.value, _t.symbol == symbol)
            .order_by(_t.trade_id.desc())
            .limit(1)
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(statement)).first()
        return None if row is None else _tick(row)

    async def ticks_between(
        self, exchange: Exchange, symbol: str, start: datetime, end: datetime
    ) -> list[MarketTick]:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("ticks_between needs timezone-aware datetimes (UTC): a naive one is ambiguous")
        statement = (
            select(*_TICK_COLUMNS)
            .where(
                _t.exchange == exchange.value,
                _t.symbol == symbol,
                _t.trade_time >= start,
                _t.trade_time < end,
            )
            .order_by(_t.trade_id)
        )
        async with self._engine.connect() as connection:
            result = await connection.execute(statement)
            return [_tick(row) for row in result]


def _tick(row: Sequence[Any]) -> MarketTick:
    symbol, exchange, price, volume, side, tid, first, last, trade_time, event_time, received_at, src = row
    return MarketTick(
        symbol=symbol,
        exchange=Exchange(exchange),
        price=price,
        volume=volume,
        side=Side(side),
        trade_id=tid,
        first_trade_id=first,
        last_trade_id=last,
        timestamp_ms=(trade_time - _EPOCH) // _MS,
        event_time_ms=None if event_time is None else (event_time - _EPOCH) // _MS,
        received_at_ns=(received_at - _EPOCH) // _US * 1000,
        source=TickSource(src),
    )


async def _stage(driver: Any) -> None:
    """The staging table and the write's prepared statements on this connection, unless there (another
    repository on the same pool may have made them)."""
    await driver.execute(_CREATE_STAGING)
    there = await driver.fetch(
        "SELECT name FROM pg_prepared_statements WHERE name = ANY($1::text[])", list(_PREPARED)
    )
    for name in _PREPARED.keys() - {row["name"] for row in there}:
        await driver.execute(f"PREPARE {name} AS {_PREPARED[name]}")
