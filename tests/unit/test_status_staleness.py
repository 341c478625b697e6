"""Per-symbol staleness: silence measured between looks, own thresholds, each crossing logged once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from kairos_core.application.bus import BroadcastBus
from kairos_core.application.status import HealthPolicy, ServiceStatusReader
from kairos_core.application.tick_counter import TickCounter
from kairos_core.bootstrap.observability import health_policy
from kairos_core.domain import Exchange, TickSource
from kairos_core.settings import Settings
from tests.strategies import numbered_tick

SECOND = 10**9
BTC, ETH, OKX_BTC = (Exchange.BINANCE, "BTCUSDT"), (Exchange.BINANCE, "ETHUSDT"), (Exchange.OKX, "BTC-USDT")


class Looks:
    """A reader over a counter, a clock the test moves, and each look's symbols by key."""

    def __init__(self, policy: HealthPolicy, symbols: list[tuple[Exchange, str]]) -> None:
        self.now = 0
        self.counter = TickCounter(BroadcastBus())
        self.reader = ServiceStatusReader(
            bus=BroadcastBus(), counter=self.counter, symbols=symbols, policy=policy, clock=lambda: self.now
        )

    def at(self, seconds: float) -> dict[tuple[Exchange, str], Any]:
        self.now = round(seconds * SECOND)
        return {(symbol.exchange, symbol.symbol): symbol for symbol in self.reader.symbols()}

    def trade(self, key: tuple[Exchange, str], seq: int, source: TickSource = TickSource.LIVE) -> None:
        self.counter.publish(numbered_tick(seq, key[1], key[0])._replace(source=source))


def events(logs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(log["event"], log["symbol"]) for log in logs if log["event"].startswith("symbol.")]


def test_a_symbol_has_its_own_threshold_on_one_exchange_or_on_all() -> None:
    policy = HealthPolicy(
        stale_after=300, stale_after_symbols={(None, "BTCUSDT"): 30, (Exchange.OKX, "BTC-USDT"): 600}
    )

    assert policy.stale_threshold(*BTC) == 30
    assert policy.stale_threshold(Exchange.OKX, "BTCUSDT") == 30
    assert policy.stale_threshold(*OKX_BTC) == 600
    assert policy.stale_threshold(*ETH) == 300
    assert HealthPolicy().stale_threshold(*BTC) == 300


@pytest.mark.parametrize(
    ("policy", "every"),
    [
        (HealthPolicy(), 1.0),
        (HealthPolicy(stale_after_symbols={(None, "BTCUSDT"): 2.0}), 0.5),
        (HealthPolicy(stale_after=0.01), 0.1),
    ],
)
def test_the_watch_looks_often_enough_for_the_shortest_threshold(policy: HealthPolicy, every: float) -> None:
    assert policy.look_every == every


def test_silence_counts_from_the_first_look_that_saw_the_last_tick() -> None:
    looks = Looks(HealthPolicy(stale_after=300), [BTC, ETH])
    looks.trade(BTC, 1)

    first = looks.at(10)
    assert first[BTC].seconds_since_last_tick == 0
    assert first[ETH].seconds_since_last_tick == 10, "never traded: silent since the start"

    looks.trade(BTC, 2)
    assert looks.at(25)[BTC].seconds_since_last_tick == 0
    assert looks.at(40)[BTC].seconds_since_last_tick == 15


def test_a_backfilled_tick_is_history_and_does_not_freshen_a_symbol() -> None:
    looks = Looks(HealthPolicy(stale_after=5), [BTC])
    looks.trade(BTC, 1)
    looks.at(0)
    looks.trade(BTC, 2, TickSource.BACKFILL)

    later = looks.at(6)[BTC]
    assert (later.stale, later.seconds_since_last_tick, later.ticks) == (True, 6, 2)


def test_each_crossing_is_logged_once_each_way_with_its_own_threshold() -> None:
    looks = Looks(HealthPolicy(stale_after=300, stale_after_symbols={(None, "BTCUSDT"): 30}), [BTC, ETH])
    looks.trade(BTC, 1)
    looks.trade(ETH, 1)
    with capture_logs() as logs:
        looks.at(0)
        quiet = looks.at(31)
        looks.at(32)
        looks.at(200)
        looks.trade(BTC, 2)
        back = looks.at(201)
        looks.at(202)

    assert quiet[BTC].stale
    assert (quiet[BTC].stale_after, quiet[ETH].stale_after) == (30, 300)
    assert not quiet[ETH].stale, "31 s is within ETHUSDT's default 300 s"
    assert not back[BTC].stale
    assert events(logs) == [("symbol.stale", "BTCUSDT"), ("symbol.fresh", "BTCUSDT")]
    stale, fresh = (log for log in logs if log["event"].startswith("symbol."))
    assert stale["log_level"] == "warning"
    assert (stale["exchange"], stale["age_s"], stale["stale_after_s"]) == (Exchange.BINANCE, 31.0, 30)
    assert fresh["log_level"] == "info"
    assert fresh["silent_s"] == 201.0


def test_a_stale_symbol_is_reported_but_the_service_stays_ready() -> None:
    looks = Looks(HealthPolicy(stale_after=1), [BTC])
    looks.at(0)
    looks.now = 5 * SECOND

    snapshot = looks.reader.snapshot()

    assert snapshot.symbols[0].stale
    assert snapshot.readiness.ready


async def test_the_watch_logs_a_crossing_without_anyone_scraping() -> None:
    counter = TickCounter(BroadcastBus())
    reader = ServiceStatusReader(
        bus=BroadcastBus(),
        counter=counter,
        symbols=[BTC],
        policy=HealthPolicy(stale_after_symbols={(None, "BTCUSDT"): 0.2}),
    )
    counter.publish(numbered_tick(1))
    with capture_logs() as logs:
        watching = asyncio.create_task(reader.watch())
        await asyncio.sleep(0.5)
        counter.publish(numbered_tick(2))
        await asyncio.sleep(0.15)
        watching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watching

    assert events(logs) == [("symbol.stale", "BTCUSDT"), ("symbol.fresh", "BTCUSDT")]


@pytest.mark.usefixtures("bare_environment")
def test_own_thresholds_are_read_from_a_comma_list_and_unknown_symbols_are_said_so() -> None:
    settings = Settings(
        symbols=("binance:btcusdt", "okx:BTC-USDT"),
        exchanges=(Exchange.BINANCE, Exchange.OKX),
        metrics_stale_after_symbols="btcusdt=30, okx:BTC-USDT=600.5,SOLUSDT=5",  # type: ignore[arg-type]
    )

    with capture_logs() as logs:
        policy = health_policy(settings.metrics, settings.feeds)

    assert policy.stale_after_symbols == {
        (None, "BTCUSDT"): 30.0,
        (Exchange.OKX, "BTC-USDT"): 600.5,
        (None, "SOLUSDT"): 5.0,
    }
    unused = next(log for log in logs if log["event"] == "symbol.stale_after_unused")
    assert unused["symbols"] == ["SOLUSDT"]


@pytest.mark.usefixtures("bare_environment")
@pytest.mark.parametrize(
    "entry", ["BTCUSDT", "BTCUSDT=0", "BTCUSDT=-3", "BTCUSDT=soon", "=30", "kraken:X=30"]
)
def test_an_unreadable_threshold_says_how_to_write_one(entry: str) -> None:
    with pytest.raises(ValueError, match=r"\[exchange:\]SYMBOL=SECONDS.*BTCUSDT=30"):
        Settings(metrics_stale_after_symbols=entry)  # type: ignore[arg-type]
