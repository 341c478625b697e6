"""PostgresTickRepository against a real PostgreSQL: exact round trips, idempotent writes, the reads."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kairos_core.adapters.outbound.postgres import (
    PostgresTickRepository,
    create_engine,
    masked,
    normalised_url,
    upgrade_to_head,
)
from kairos_core.adapters.outbound.postgres.tick_repository import EarlierWriteFailed
from kairos_core.domain import ConfigurationError, Exchange, MarketTick, Side
from tests.database import run, truncate_ticks
from tests.strategies import (
    MAX_EPOCH_MS,
    binance_symbols,
    market_ticks,
    numbered_tick,
    okx_inst_ids,
    okx_market_ticks,
)

EVERYTHING = (datetime(1970, 1, 1, tzinfo=UTC), datetime.max.replace(tzinfo=UTC))


def as_stored(tick: MarketTick) -> MarketTick:
    """What a read returns for ``tick``: the receipt time is kept to the microsecond."""
    return tick._replace(received_at_ns=tick.received_at_ns // 1000 * 1000)


def first_of_each_key(ticks: list[MarketTick]) -> dict[tuple[Exchange, str, int], MarketTick]:
    kept: dict[tuple[Exchange, str, int], MarketTick] = {}
    for tick in ticks:
        kept.setdefault((tick.exchange, tick.symbol, tick.trade_id), tick)
    return kept


def scale(value: Decimal) -> int:
    """Digits after the decimal point, as written."""
    return max(-int(value.as_tuple().exponent), 0)


# Mostly two symbols a venue and a few ids, so batches collide with themselves and with each other;
# OKX ticks too (no event time, their own symbols), and BTCUSDT on both venues at times.
colliding_ticks = st.builds(
    lambda tick, trade_id: tick._replace(trade_id=trade_id),
    market_ticks(symbol=st.sampled_from(["BTCUSDT", "ETHUSDT"]) | binance_symbols)
    | okx_market_ticks(inst_id=st.sampled_from(["BTC-USDT", "ETH-USDT"]) | okx_inst_ids)
    | okx_market_ticks(inst_id=st.just("BTCUSDT")),
    st.integers(0, 5) | st.sampled_from([2**63 - 1]),
)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(colliding_ticks, max_size=12), min_size=1, max_size=3))
async def test_stores_each_key_once_exactly_as_given(
    repository: PostgresTickRepository, database_engine: AsyncEngine, batches: list[list[MarketTick]]
) -> None:
    await truncate_ticks(database_engine)  # per example: the fixture runs once per test
    counts = [await repository.add_many(batch) for batch in batches]

    everything = [tick for batch in batches for tick in batch]
    kept = first_of_each_key(everything)
    seen: set[tuple[Exchange, str, int]] = set()
    for batch, count in zip(batches, counts, strict=True):
        new = first_of_each_key(
            [tick for tick in batch if (tick.exchange, tick.symbol, tick.trade_id) not in seen]
        )
        assert count == len(new)
        seen.update(new)
    for exchange, symbol in {(exchange, symbol) for exchange, symbol, _ in kept}:
        stored = await repository.ticks_between(exchange, symbol, *EVERYTHING)
        expected = sorted(
            (tick for key, tick in kept.items() if key[:2] == (exchange, symbol)), key=lambda t: t.trade_id
        )
        assert stored == [as_stored(tick) for tick in expected]


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prices=st.lists(
        st.decimals(
            allow_nan=False, allow_infinity=False, min_value=Decimal("1e-30"), max_value=Decimal("1e30")
        ),
        min_size=1,
        max_size=20,
    )
)
async def test_decimals_keep_value_and_digits(
    repository: PostgresTickRepository, database_engine: AsyncEngine, prices: list[Decimal]
) -> None:
    await truncate_ticks(database_engine)
    ticks = [numbered_tick(seq)._replace(price=price, volume=price) for seq, price in enumerate(prices)]
    await repository.add_many(ticks)

    stored = await repository.ticks_between(Exchange.BINANCE, "BTCUSDT", *EVERYTHING)
    assert [(tick.price, tick.volume) for tick in stored] == [(price, price) for price in prices]
    # Fraction digits are kept, trailing zeros too ("0.02200000"); whole numbers may come back as
    # Decimal("15E+4") (the driver reads numeric in base 10000): equal, and with no decimals either way.
    assert [scale(tick.price) for tick in stored] == [scale(price) for price in prices]


async def test_times_at_the_edges_of_the_range_round_trip(repository: PostgresTickRepository) -> None:
    trade_ms = [0, 1, 999, 1_700_000_000_123, MAX_EPOCH_MS]
    received_ns = [0, 999, 1_000, 1_700_000_000_123_456_789, 2**63 - 1]
    ticks = [
        numbered_tick(seq)._replace(timestamp_ms=ms, event_time_ms=ms, received_at_ns=ns)
        for seq, (ms, ns) in enumerate(zip(trade_ms, received_ns, strict=True))
    ]
    ticks[0] = ticks[0]._replace(event_time_ms=None)
    assert await repository.add_many(ticks) == len(ticks)

    stored = await repository.ticks_between(Exchange.BINANCE, "BTCUSDT", *EVERYTHING)
    assert stored == [as_stored(tick) for tick in ticks]


async def test_a_stored_tick_does_not_cost_the_rest_of_its_batch(repository: PostgresTickRepository) -> None:
    assert await repository.add_many([numbered_tick(2), numbered_tick(4)]) == 2
    assert await repository.add_many([numbered_tick(n) for n in (1, 2, 3, 3, 4, 5)]) == 3
    assert await repository.add_many([]) == 0

    stored = await repository.ticks_between(Exchange.BINANCE, "BTCUSDT", *EVERYTHING)
    assert [tick.trade_id for tick in stored] == [1, 2, 3, 4, 5]


async def test_last_trade_id_per_exchange_and_symbol(repository: PostgresTickRepository) -> None:
    assert await repository.last_trade_id(Exchange.BINANCE, "BTCUSDT") is None
    await repository.add_many(
        [
            numbered_tick(7),
            numbered_tick(3),
            numbered_tick(9, symbol="ETHUSDT"),
            numbered_tick(11, symbol="BTC-USDT", exchange=Exchange.OKX),
        ]
    )
    assert await repository.last_trade_id(Exchange.BINANCE, "BTCUSDT") == 7
    assert await repository.last_trade_id(Exchange.BINANCE, "ETHUSDT") == 9
    assert await repository.last_trade_id(Exchange.OKX, "BTC-USDT") == 11
    assert await repository.last_trade_id(Exchange.OKX, "BTCUSDT") is None


async def test_latest_tick_is_the_stored_tick_with_the_highest_id(repository: PostgresTickRepository) -> None:
    assert await repository.latest_tick(Exchange.BINANCE, "BTCUSDT") is None
    ticks = [numbered_tick(7), numbered_tick(3), numbered_tick(9, symbol="ETHUSDT")]
    await repository.add_many(ticks)
    latest = await repository.latest_tick(Exchange.BINANCE, "BTCUSDT")
    assert latest is not None
    assert latest._replace(received_at_ns=ticks[0].received_at_ns) == ticks[0]
    assert latest.received_at_ns // 1000 == ticks[0].received_at_ns // 1000


async def test_ticks_between_is_half_open_and_in_trade_id_order(repository: PostgresTickRepository) -> None:
    # Trade ids against time order: late trades reported with lower ids must still come first.
    ticks = [numbered_tick(seq)._replace(timestamp_ms=1_700_000_000_000 + 10 - seq) for seq in range(10)]
    await repository.add_many([*ticks, numbered_tick(5, symbol="ETHUSDT")])
    start, end = ticks[7].timestamp, ticks[2].timestamp  # times of trades 7 and 2

    between = await repository.ticks_between(Exchange.BINANCE, "BTCUSDT", start, end)

    assert [tick.trade_id for tick in between] == [3, 4, 5, 6, 7]
    assert await repository.ticks_between(Exchange.BINANCE, "BTCUSDT", end, end) == []
    assert await repository.ticks_between(Exchange.OKX, "BTCUSDT", *EVERYTHING) == []


async def test_ticks_between_refuses_naive_times(repository: PostgresTickRepository) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await repository.ticks_between(Exchange.BINANCE, "BTCUSDT", datetime(2024, 1, 1), datetime.now(UTC))


async def test_writes_from_several_writers_at_once_store_each_tick_once(database_engine: AsyncEngine) -> None:
    # Overlapping batches in opposite orders (live and backfill), from repositories of their own as
    # several processes would be: without the sort before the insert, PostgreSQL finds a deadlock
    # within a few rounds.
    writers = [PostgresTickRepository(database_engine) for _ in range(3)]
    for first in range(0, 5_000, 500):
        forward = [numbered_tick(seq) for seq in range(first, first + 500)]
        batches = (forward, forward[::-1], forward)
        writes = (writer.add_many(batch) for writer, batch in zip(writers, batches, strict=True))
        counts = await asyncio.gather(*writes)
        assert sum(counts) == 500
    assert await writers[0].last_trade_id(Exchange.BINANCE, "BTCUSDT") == 4_999


async def test_calls_in_flight_at_once_are_stored_in_order(
    repository: PostgresTickRepository, database_engine: AsyncEngine
) -> None:
    # Each batch repeats a tick of the one before: stored once, counted for the earlier batch.
    batches = [
        [numbered_tick(seq) for seq in range(first - 1, first + 100)] for first in range(1, 1_000, 100)
    ]
    counts = await asyncio.gather(*(repository.add_many(batch) for batch in batches))
    assert counts == [101] + [100] * 9
    async with database_engine.connect() as connection:
        # One writer at a time appends to the heap, so the rows' physical order is the insert order.
        ids = list(await connection.scalars(text("SELECT trade_id FROM market_ticks ORDER BY ctid")))
    assert ids == list(range(1_001))


async def test_a_call_after_a_failed_one_fails_too_and_stores_nothing(
    repository: PostgresTickRepository,
) -> None:
    refused = [numbered_tick(1)._replace(side=cast(Side, "hold"))]  # breaks the table's check on side
    after = [numbered_tick(2)]
    results = await asyncio.gather(
        repository.add_many(refused), repository.add_many(after), return_exceptions=True
    )
    assert isinstance(results[0], asyncpg.CheckViolationError)
    assert isinstance(results[1], EarlierWriteFailed)
    assert await repository.last_trade_id(Exchange.BINANCE, "BTCUSDT") is None
    assert await repository.add_many(after) == 1  # retried in order, it goes in


async def test_a_connection_the_server_dropped_is_not_lent_again(database_url: str) -> None:
    # No pre-ping here: the repository itself must keep a broken connection out of the pool.
    engine = create_async_engine(normalised_url(database_url), pool_pre_ping=False)
    repository = PostgresTickRepository(engine)
    try:
        await truncate_ticks(engine)
        assert await repository.add_many([numbered_tick(1)]) == 1
        async with engine.connect() as connection:  # the pool's one connection, the write's
            backend = await connection.scalar(text("SELECT pg_backend_pid()"))
        admin = create_engine(database_url)
        try:
            async with admin.connect() as connection:
                await connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        finally:
            await admin.dispose()
        driver_errors = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError)
        with pytest.raises((*driver_errors, OSError)):
            await repository.add_many([numbered_tick(2)])
        assert await repository.add_many([numbered_tick(2)]) == 1
    finally:
        await engine.dispose()


SYMBOLS = [f"S{n}USDT" for n in range(10)]


@pytest.fixture
def never_analyzed(empty_database_url: str) -> str:
    """A database of this test's own at head, whose ``market_ticks`` autovacuum never analyzes."""

    async def prepare() -> None:
        await upgrade_to_head(empty_database_url)
        engine = create_engine(empty_database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("ALTER TABLE market_ticks SET (autovacuum_enabled = false)"))
        finally:
            await engine.dispose()

    run(prepare())
    return empty_database_url


@pytest.fixture
async def cold_engine(never_analyzed: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(never_analyzed)
    try:
        yield engine
    finally:
        await engine.dispose()


def round_robin(first: int, count: int) -> list[MarketTick]:
    return [numbered_tick(seq // 10, SYMBOLS[seq % 10]) for seq in range(first * 10, (first + count) * 10)]


def scans_of_market_ticks(node: dict[str, Any], parent: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every plan node reading ``market_ticks`` (not the one writing it), with its parent's type."""
    if node.get("Relation Name") == "market_ticks" and node["Node Type"] != "ModifyTable":
        yield parent, node
    for child in node.get("Plans", []):
        yield from scans_of_market_ticks(child, node["Node Type"])


class StatementLog:
    """The statements run on a driver connection while recording, each with its last arguments."""

    def __init__(self) -> None:
        self.statements: dict[str, tuple[Any, ...]] = {}
        self.recording = True

    def __call__(self, logged: Any) -> None:
        if self.recording:
            self.statements[logged.query] = logged.args


async def explain(driver: Any, statement: str, args: tuple[Any, ...], mode: str) -> dict[str, Any]:
    """The plan of ``statement`` in ``mode`` (``auto``: a prepared statement's kept plan, if any)."""
    async with driver.transaction():
        await driver.execute(f"SET LOCAL plan_cache_mode = {mode}")
        if args:  # EXPLAIN takes no parameters: prepare it, and give the write's as quoted literals
            await driver.execute(f"PREPARE plan_check AS {statement}")
            literals = [await driver.fetchval("SELECT quote_literal($1::text[]::text)", arg) for arg in args]
            statement = f"EXECUTE plan_check({', '.join(literals)})"
        explained = await driver.fetchval(f"EXPLAIN (FORMAT JSON) {statement}")
        if args:
            await driver.execute("DEALLOCATE plan_check")
    plan = json.loads(explained) if isinstance(explained, str) else explained  # decoded, or not
    return cast(dict[str, Any], plan[0]["Plan"])


def reading_market_ticks(log: StatementLog) -> dict[str, tuple[Any, ...]]:
    """The statements of the write that read ``market_ticks``, as they can be explained: a statement
    it prepared by name (``PREPARE name AS ...``) as ``EXECUTE name``, the plan the connection keeps."""
    reading: dict[str, tuple[Any, ...]] = {}
    for query, args in log.statements.items():
        for statement in query.split(";"):  # a simple query may hold several (none has a ';' inside)
            if "FROM market_ticks t" in statement:
                name = re.match(r"\s*PREPARE (\w+) AS", statement)
                reading[f"EXECUTE {name[1]}" if name else statement] = args
    return reading


async def assert_primary_key_only(driver: Any, log: StatementLog) -> None:
    """Each statement the write runs reads ``market_ticks`` only by LIMIT 1 through the primary key:
    in the plan it keeps (made when it first ran) and in a plan made now alike."""
    log.recording = False
    reading = reading_market_ticks(log)
    assert reading, f"no statement of the write reads market_ticks: {list(log.statements)}"
    for statement, args in reading.items():
        for mode in ("auto", "force_generic_plan", "force_custom_plan"):
            scans = list(scans_of_market_ticks(await explain(driver, statement, args, mode)))
            assert scans
            for parent, scan in scans:
                assert (parent, scan["Node Type"], scan.get("Index Name")) in {
                    ("Limit", "Index Only Scan", "pk_market_ticks"),
                    ("Limit", "Index Scan", "pk_market_ticks"),
                }, f"{statement}, {mode}: {scan}"
    log.recording = True


async def test_on_a_table_never_analyzed_the_write_probes_only_through_the_primary_key(
    cold_engine: AsyncEngine,
) -> None:
    repository = PostgresTickRepository(cold_engine)
    log = StatementLog()
    async with cold_engine.connect() as connection:  # the pool's one connection, the write's
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        driver.add_query_logger(log)
    resent = [numbered_tick(3, SYMBOLS[4]), numbered_tick(7, SYMBOLS[9])]
    # A fresh service: the write's statements are planned (and prepared ones kept) on a nearly empty table.
    for first in range(0, 100, 10):
        assert await repository.add_many(resent + round_robin(first, 10)) == 100
    async with cold_engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        await assert_primary_key_only(driver, log)
        # The table grows to a realistic size, never analyzed: 300,000 rows, 30,000 per symbol.
        await connection.execute(
            text(
                "INSERT INTO market_ticks SELECT 'binance', symbol, id, id, id, 1, 1, 'buy', now(), now(),"
                " now(), 'live' FROM unnest(CAST(:symbols AS text[])) symbol, generate_series(100, 29999) id"
            ),
            {"symbols": SYMBOLS},
        )
        await connection.commit()
    for first in range(30_000, 30_050, 10):
        assert await repository.add_many(resent + round_robin(first, 10)) == 100
    async with cold_engine.connect() as connection:
        analyzed = (
            await connection.execute(
                text(
                    "SELECT s.last_analyze, s.last_autoanalyze, c.reltuples FROM pg_stat_user_tables s"
                    " JOIN pg_class c ON c.oid = s.relid WHERE s.relname = 'market_ticks'"
                )
            )
        ).one()
        assert tuple(analyzed) == (None, None, -1)  # no statistics at all
        driver = (await connection.get_raw_connection()).driver_connection
        await assert_primary_key_only(driver, log)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://kairos:s3cret@db.example:5432/kairos",
        "postgres://kairos:s3cret@db.example/kairos",
        "postgresql+asyncpg://kairos:s3cret@db.example/kairos",
    ],
)
def test_urls_are_normalised_to_asyncpg(url: str) -> None:
    assert normalised_url(url).drivername == "postgresql+asyncpg"
    assert normalised_url(url).password == "s3cret"


def test_libpq_sslmode_becomes_asyncpg_ssl() -> None:
    assert dict(normalised_url("postgresql://k@db/kairos?sslmode=require").query) == {"ssl": "require"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://kairos:s3cret@db/kairos",
        "postgresql://kairos@db/kairos?password=s3cret",
        "postgresql://kairos:s3c@ret@db/kairos",  # an unencoded @ in the password
    ],
)
def test_masked_hides_the_password(url: str) -> None:
    shown = masked(url)
    assert "s3c" not in shown
    assert "ret" not in shown
    assert "kairos@db" in shown or "kairos:***@db" in shown


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("mysql://kairos:s3cret@db/kairos", "PostgreSQL only"),
        ("postgresql://kairos:s3cret@db:port/kairos", "cannot be parsed"),
        ("postgresql://kairos:s3cret@db:5432", "names no database"),
        ("s3cret", "cannot be parsed"),
        ("postgresql://kairos:s3cret@db:99999/kairos", "has port 99999: use 1-65535"),
        ("postgresql://kairos:s3cret@db/kairos?connect_timeout=5", "does not take: connect_timeout; drop"),
        ("postgresql://kairos:s3cret@db/kairos?sslmode=on", "ssl mode 'on': use one of disable"),
        ("postgresql://kairos:s3cret@db/kairos?ssl=bogus", "ssl mode 'bogus'"),
    ],
)
def test_a_bad_url_says_what_to_fix_without_the_password(url: str, fix: str) -> None:
    with pytest.raises(ConfigurationError, match=fix) as raised:
        create_engine(url)
    chain: BaseException | None = raised.value
    while chain is not None:
        assert "s3cret" not in str(chain)
        chain = chain.__cause__ or chain.__context__


@pytest.mark.parametrize(
    "query",
    [
        "host=/run/postgresql",
        "port=5433",
        "sslmode=require",
        "ssl=disable",
        "passfile=/etc/kairos/pgpass",
        "krbsrvname=postgres",
        "target_session_attrs=read-write",
        "command_timeout=5",
    ],
)
def test_a_url_argument_the_driver_takes_is_kept(query: str) -> None:
    key, value = query.split("=")
    assert (
        normalised_url(f"postgresql://kairos@db/kairos?{query}").query[key.replace("sslmode", "ssl")] == value
    )


def test_a_unix_socket_url_connects(database_url: str) -> None:
    async def ask(url: str, *queries: str) -> list[object]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return [await connection.scalar(text(query)) for query in queries]
        finally:
            await engine.dispose()

    directories, database, user = run(
        ask(database_url, "SHOW unix_socket_directories", "SELECT current_database()", "SELECT current_user")
    )
    socket_dir = next((d.strip() for d in str(directories).split(",") if Path(d.strip()).is_dir()), None)
    if socket_dir is None:
        pytest.skip("the test server's socket directory is not on this machine")
    assert run(ask(f"postgresql://{user}@/{database}?host={socket_dir}", "SELECT current_database()")) == [
        database
    ]
