"""Builders for the trading tests: priced ticks, order intents, the trading pipeline, and
consumers read to the end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from structlog.testing import capture_logs

from kairos_core.adapters.outbound.paper_broker import PaperBroker
from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers import Consumer
from kairos_core.application.consumers.risk_engine import RiskEngineConsumer
from kairos_core.application.consumers.strategy_engine import StrategyEngine
from kairos_core.application.risk import RiskEngine, RiskLimits
from kairos_core.domain import BusItem, Exchange, MarketTick, OrderIntent, Side, Strategy
from tests.strategies import numbered_tick

GUARD_SECONDS = 5.0
"""Upper bound for a consumer's run, so a missed wake-up fails instead of hanging."""

NOW_NS = 1_700_000_000_000_000_000
"""The risk engine's fake clock: the receipt time of ``numbered_tick(0)``, so no tick is stale."""


def priced(price: int | str, seq: int = 0, symbol: str = "BTCUSDT", **fields: Any) -> MarketTick:
    """``numbered_tick(seq)`` trading at ``price``, with any other field replaced."""
    return numbered_tick(seq, symbol)._replace(price=Decimal(price), **fields)


def ticks_at(prices: Sequence[int | str], symbol: str = "BTCUSDT") -> list[MarketTick]:
    """One tick per price; trade ids and times count up from 0 (see ``numbered_tick``)."""
    return [priced(price, seq, symbol) for seq, price in enumerate(prices)]


def order(
    side: Side = Side.BUY,
    quantity: int | str = 1,
    limit: int | str | None = None,
    *,
    symbol: str = "BTCUSDT",
    created_at_ms: int = 0,
) -> OrderIntent:
    return OrderIntent(
        exchange=Exchange.BINANCE,
        symbol=symbol,
        side=side,
        quantity=Decimal(quantity),
        limit_price=None if limit is None else Decimal(limit),
        reason="test",
        created_at_ms=created_at_ms,
    )


async def read_to_end(
    consumer: Consumer, ticks: Sequence[MarketTick], capacity: int = 1000
) -> list[MutableMapping[str, Any]]:
    """What ``consumer`` logs reading ``ticks`` (all published before it starts) to the bus's close."""
    bus = BroadcastBus(capacity)
    subscription = bus.subscribe(consumer.name, lossless=consumer.lossless)
    for tick in ticks:
        bus.publish(tick)
    bus.close()
    with capture_logs() as logs:
        async with asyncio.timeout(GUARD_SECONDS):
            await consumer.run(subscription)
    return logs


async def read_together(
    consumers: Sequence[Consumer],
    ticks: Sequence[BusItem],
    batches: Iterable[int] = (),
    capacity: int = 1000,
) -> list[MutableMapping[str, Any]]:
    """What ``consumers`` log reading ``ticks`` on one bus, each on its own subscription.

    The ticks are published in batches of the sizes in ``batches`` (then the rest at once), with
    one pass of the event loop after each: every consumer woken reads all there is before the
    next runs, in the order they started waiting, so the first in ``consumers`` stays ahead of
    the next by up to a batch (unless it has to wait for something else).
    """
    bus = BroadcastBus(capacity)
    subscriptions = [bus.subscribe(consumer.name, lossless=consumer.lossless) for consumer in consumers]
    sizes = iter(batches)
    with capture_logs() as logs:
        async with asyncio.timeout(GUARD_SECONDS), asyncio.TaskGroup() as group:
            for consumer, subscription in zip(consumers, subscriptions, strict=True):
                group.create_task(consumer.run(subscription))
            published = 0
            while published < len(ticks):
                size = next(sizes, len(ticks))
                for tick in ticks[published : published + size]:
                    bus.publish(tick)
                published += size
                await asyncio.sleep(0)
            bus.close()
    return logs


def events(logs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [entry["event"] for entry in logs]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The strategy engine handing its intents to the risk consumer, over one risk engine and broker."""

    strategies: StrategyEngine
    risk_consumer: RiskEngineConsumer
    risk: RiskEngine
    broker: PaperBroker

    def consumers(self, *, strategy_first: bool = True) -> list[Consumer]:
        """Both consumers; the first is woken first, so it leads when ticks come in batches."""
        both: list[Consumer] = [self.strategies, self.risk_consumer]
        return both if strategy_first else both[::-1]


def pipeline(
    *strategies: Strategy, limits: RiskLimits | None = None, broker: PaperBroker | None = None
) -> Pipeline:
    """The trading pipeline on a paper broker, with a risk clock at ``NOW_NS``."""
    broker = broker or PaperBroker()
    risk = RiskEngine(broker, limits, clock=lambda: NOW_NS)
    risk_consumer = RiskEngineConsumer(risk, broker)
    return Pipeline(StrategyEngine(strategies, risk_consumer), risk_consumer, risk, broker)


class ScriptedStrategy(Strategy):
    """Sees every tick; asks for the intent scripted for a trade id, if any."""

    name = "scripted"

    def __init__(self, script: Mapping[int, dict[str, Any]] | None = None) -> None:
        self.script = script or {}
        self.seen: list[int] = []

    def on_market_tick(self, tick: MarketTick) -> OrderIntent | None:
        self.seen.append(tick.trade_id)
        scripted = self.script.get(tick.trade_id)
        if scripted is None:
            return None
        fields = {"quantity": "0.01", "symbol": tick.symbol, **scripted}
        return order(**fields, created_at_ms=tick.timestamp_ms)
