"""PostgresTickRepository against a real PostgreSQL: exact round trips, idempotent writes, the reads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kairos_core.adapters.outbound.postgres import (
    PostgresTickRepository,
    create_engine,
    masked,
    normalised_url,
)
from kairos_core.domain import ConfigurationError, Exchange, MarketTick
from tests.database import run, truncate_ticks
from tests.strategies import MAX_EPOCH_MS, binance_symbols, market_ticks, numbered_tick

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


# Mostly two symbols and a few ids, so batches collide with themselves and with each other.
colliding_ticks = st.builds(
    lambda tick, trade_id: tick._replace(trade_id=trade_id),
    market_ticks(symbol=st.sampled_from(["BTCUSDT", "ETHUSDT"]) | binance_symbols),
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
    for symbol in {symbol for _, symbol, _ in kept}:
        stored = await repository.ticks_between(Exchange.BINANCE, symbol, *EVERYTHING)
        expected = sorted((tick for key, tick in kept.items() if key[1] == symbol), key=lambda t: t.trade_id)
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


async def test_writes_from_several_tasks_at_once_store_each_tick_once(
    repository: PostgresTickRepository,
) -> None:
    # Overlapping batches in opposite orders (live and backfill): without the sort before the
    # insert, PostgreSQL finds a deadlock within a few rounds.
    for first in range(0, 5_000, 500):
        forward = [numbered_tick(seq) for seq in range(first, first + 500)]
        batches = (forward, forward[::-1], forward)
        counts = await asyncio.gather(*(repository.add_many(batch) for batch in batches))
        assert sum(counts) == 500
    assert await repository.last_trade_id(Exchange.BINANCE, "BTCUSDT") == 4_999


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
    ],
)
def test_a_bad_url_says_what_to_fix_without_the_password(url: str, fix: str) -> None:
    with pytest.raises(ConfigurationError, match=fix) as raised:
        create_engine(url)
    chain: BaseException | None = raised.value
    while chain is not None:
        assert "s3cret" not in str(chain)
        chain = chain.__cause__ or chain.__context__


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
