"""The container: built from the environment or a settings file, and run end to end on fakes, no I/O."""

from __future__ import annotations

import asyncio
import socket
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest
from dependency_injector import providers
from structlog.testing import capture_logs

from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.application.consumers.persistence import PersistencePolicy
from kairos_core.application.risk import RiskLimits
from kairos_core.application.service import MarketDataService
from kairos_core.application.strategies import (
    Breakout,
    BreakoutParams,
    MovingAverageCrossover,
    MovingAverageCrossoverParams,
)
from kairos_core.bootstrap.container import Container
from kairos_core.domain import Exchange, MarketTick, OrderType
from kairos_core.settings import Settings, StrategyName
from tests.fakes import FakeFeed, InMemoryTickRepository
from tests.trading import GUARD_SECONDS, priced

# Every setting the built parts read, as an operator would write it in the environment.
ENVIRONMENT = {
    "KAIROS_SYMBOLS": "solusdt, adausdt",
    "KAIROS_BINANCE_WS_URL": "ws://127.0.0.1:1/stream",
    "KAIROS_BUS_CAPACITY": "64",
    "KAIROS_PERSIST_BATCH_SIZE": "50",
    "KAIROS_PERSIST_FLUSH_INTERVAL": "0.25",
    "KAIROS_PERSIST_BUFFER_LIMIT": "500",
    "KAIROS_STRATEGY_FAST_WINDOW": "3",
    "KAIROS_STRATEGY_SLOW_WINDOW": "8",
    "KAIROS_STRATEGY_QUANTITY": "0.5",
    "KAIROS_STRATEGY_ORDER_TYPE": "limit",
    "KAIROS_STRATEGY_LIMIT_OFFSET_BPS": "2",
    "KAIROS_RISK_MAX_ORDER_NOTIONAL": "250",
    "KAIROS_RISK_MAX_POSITION": "2",
    "KAIROS_RISK_PRICE_BAND_PCT": "1.5",
    "KAIROS_RISK_STALE_AFTER": "2",
    "KAIROS_RISK_BREAKER_MOVE_PCT": "7",
    "KAIROS_RISK_BREAKER_WINDOW": "30",
    "KAIROS_RISK_BREAKER_COOLDOWN": "120",
    "KAIROS_RISK_VOLATILITY_WINDOW": "20",
}

# The same settings as a --config file.
SETTINGS_FILE = """\
symbols = ["solusdt", "adausdt"]
binance_ws_url = "ws://127.0.0.1:1/stream"
bus_capacity = 64
persist_batch_size = 50
persist_flush_interval = 0.25
persist_buffer_limit = 500
strategy_fast_window = 3
strategy_slow_window = 8
strategy_quantity = "0.5"
strategy_order_type = "limit"
strategy_limit_offset_bps = "2"
risk_max_order_notional = "250"
risk_max_position = "2"
risk_price_band_pct = "1.5"
risk_stale_after = 2
risk_breaker_move_pct = "7"
risk_breaker_window = 30
risk_breaker_cooldown = 120
risk_volatility_window = 20
"""

pytestmark = pytest.mark.usefixtures("bare_environment")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (a database, an exchange) fails the test."""

    def refuse(_: socket.socket, address: object) -> None:
        raise AssertionError(f"the test tried to connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def from_environment(monkeypatch: pytest.MonkeyPatch, _: Path) -> Settings:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    return Settings()


def from_config_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    config = tmp_path / "kairos.toml"
    config.write_text(SETTINGS_FILE, encoding="utf-8")
    monkeypatch.setenv("KAIROS_CONFIG", str(config))
    return Settings()


def from_config_argument(_: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    config = tmp_path / "kairos.toml"
    config.write_text(SETTINGS_FILE, encoding="utf-8")
    return Settings(config=config)


@pytest.mark.parametrize("source", [from_environment, from_config_variable, from_config_argument])
def test_the_built_parts_follow_the_settings(
    source: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    container = Container(settings=source(monkeypatch, tmp_path))

    assert container.bus().capacity == 64
    assert container.persistence_policy() == PersistencePolicy(
        batch_size=50, flush_interval=0.25, buffer_limit=500
    )
    (strategy,) = container.strategies()
    assert isinstance(strategy, MovingAverageCrossover)
    assert strategy.params == MovingAverageCrossoverParams(
        fast_window=3,
        slow_window=8,
        quantity=Decimal("0.5"),
        order_type=OrderType.LIMIT,
        limit_offset_bps=Decimal(2),
    )
    assert container.limits() == RiskLimits(
        max_order_notional=Decimal(250),
        max_position=Decimal(2),
        price_band_pct=Decimal("1.5"),
        stale_after_s=2.0,
        breaker_move_pct=Decimal(7),
        breaker_window_s=30.0,
        breaker_cooldown_s=120.0,
        volatility_window=20,
    )
    assert container.risk().limits is container.limits()
    (feed,) = container.feeds()
    assert isinstance(feed, BinanceFeedHandler)
    assert feed.symbols == ("solusdt", "adausdt")
    assert [feed.url_for(link.shard) for link in feed.links] == [
        "ws://127.0.0.1:1/stream?streams=solusdt@aggTrade/adausdt@aggTrade"
    ]


def test_the_environment_wins_over_the_settings_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = from_config_variable(monkeypatch, tmp_path)
    monkeypatch.setenv("KAIROS_BUS_CAPACITY", "128")

    assert Container(settings=Settings()).bus().capacity == 128
    assert Container(settings=settings).bus().capacity == 64


def test_each_part_is_built_once_and_shared() -> None:
    container = Container(settings=Settings())
    container.repository.override(providers.Object(InMemoryTickRepository()))

    service = container.service()

    assert isinstance(service, MarketDataService)  # not an awaitable: no database resource reached
    assert container.risk_engine() is container.risk_engine()
    assert container.counter() is container.counter()
    assert container.broker() is container.broker()
    assert service is container.service()


@pytest.mark.parametrize(
    ("name", "built"),
    [
        (StrategyName.BREAKOUT, [Breakout]),
        (StrategyName.NONE, []),
    ],
)
def test_the_strategy_is_chosen_by_name(name: StrategyName, built: list[type]) -> None:
    container = Container(settings=Settings(strategy_name=name, strategy_breakout_window=12))

    strategies = container.strategies()

    assert [type(strategy) for strategy in strategies] == built
    if strategies:
        assert strategies[0].params == BreakoutParams(window=12)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("fast", "slow"), [(30, 30), (31, 30)])
def test_a_fast_window_not_below_the_slow_one_fails_at_settings_naming_both(fast: int, slow: int) -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        Settings(strategy_fast_window=fast, strategy_slow_window=slow)

    message = str(raised.value)
    assert f"strategy_fast_window ({fast})" in message
    assert f"strategy_slow_window ({slow})" in message


def test_a_bad_strategy_setting_from_the_environment_fails_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAIROS_STRATEGY_FAST_WINDOW", "40")

    with pytest.raises(pydantic.ValidationError, match=r"strategy_fast_window \(40\).*strategy_slow_window"):
        Settings()


# --- the whole pipeline on fakes ------------------------------------------------------------------

# Moves of a few cents around each start: the 2-tick average crosses the 4-tick one both ways.
PATH = [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5]
STARTS = {"BTCUSDT": Decimal(60_000), "ETHUSDT": Decimal(3_000)}


def interleaved_ticks() -> list[MarketTick]:
    """Both symbols tick by tick, received now (so risk does not find them stale)."""
    now = time.time_ns()
    return [
        priced(str(STARTS[symbol] + Decimal(step) / 100), seq, symbol, received_at_ns=now)
        for seq, step in enumerate(PATH)
        for symbol in STARTS
    ]


async def test_the_pipeline_runs_on_an_in_memory_repository_and_a_scripted_feed(no_network: None) -> None:
    ticks = interleaved_ticks()
    settings = Settings(
        symbols=("btcusdt", "ethusdt"),
        strategy_fast_window=2,
        strategy_slow_window=4,
        risk_max_order_notional=Decimal(10),  # 0.001 ETH is 3 USDT, 0.001 BTC is 60: refused
        persist_batch_size=8,
        persist_batch_size_max=8,  # else the scripted feed's ticks, all there at once, make one write
    )
    container = Container(settings=settings, max_ticks=len(ticks))
    repository = InMemoryTickRepository()
    container.repository.override(providers.Object(repository))
    container.feeds.override(providers.List(providers.Singleton(FakeFeed, container.counter, ticks)))

    service = container.service()
    assert isinstance(service, MarketDataService)
    with capture_logs() as logs:
        summary = await asyncio.wait_for(service.run(), GUARD_SECONDS)

    assert summary.stop_reason == "max-ticks reached"
    assert summary.ticks == {"binance:BTCUSDT": len(PATH), "binance:ETHUSDT": len(PATH)}
    assert set(repository.rows) == {(Exchange.BINANCE, tick.symbol, tick.trade_id) for tick in ticks}
    assert max(repository.calls) <= 8
    decisions = [
        (entry["event"], entry["symbol"], str(entry["side"]), entry.get("reason"))
        for entry in logs
        if entry["event"] in {"order.filled", "order.rejected"}
    ]
    assert decisions == [
        ("order.rejected", "BTCUSDT", "sell", "order_notional"),
        ("order.filled", "ETHUSDT", "sell", None),
        ("order.rejected", "BTCUSDT", "buy", "order_notional"),
        ("order.filled", "ETHUSDT", "buy", None),
    ]
    intents = [(entry["symbol"], str(entry["side"])) for entry in logs if entry["event"] == "order.intent"]
    assert intents == [(symbol, side) for _, symbol, side, _ in decisions]
    fills = [(str(entry["side"]), entry["price"]) for entry in logs if entry["event"] == "paper.filled"]
    assert fills == [("sell", "3000.02"), ("buy", "3000.02")]
    assert container.broker().position(Exchange.BINANCE, "ETHUSDT").quantity == 0
    assert not container.database_url.initialized
    assert not container.engine.initialized
