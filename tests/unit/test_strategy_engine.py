"""The strategy engine: ticks to strategies, intents to review with their tick; and the whole
pipeline, strategies through risk to the paper broker, on a real bus."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from structlog.testing import capture_logs

from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers import Consumer
from kairos_core.application.consumers.price_monitor import PriceMonitor
from kairos_core.application.consumers.strategy_engine import IntentReviewer, StrategyEngine
from kairos_core.application.risk import RiskLimits
from kairos_core.application.strategies import MovingAverageCrossover, MovingAverageCrossoverParams
from kairos_core.domain import Exchange, MarketTick, OrderIntent, OrderType, RiskRejection, Side, TickSource
from tests.trading import (
    GUARD_SECONDS,
    ScriptedStrategy,
    events,
    pipeline,
    read_to_end,
    read_together,
    ticks_at,
)

# A crossover with fast 2 / slow 4 buys at index 5 and sells at index 7 (see test_strategies).
CROSSING_PRICES = ["100", "99.9", "99.8", "99.7", "99.8", "100", "99.7", "99.5"]


class RecordingReviewer(IntentReviewer):
    """Takes every intent and decides nothing."""

    def __init__(self) -> None:
        self.reviewed: list[tuple[OrderIntent, MarketTick]] = []

    async def review(self, intent: OrderIntent, origin: MarketTick) -> None:
        self.reviewed.append((intent, origin))


def crossover() -> MovingAverageCrossover:
    return MovingAverageCrossover(MovingAverageCrossoverParams(fast_window=2, slow_window=4))


# --- the engine alone ---------------------------------------------------------------------------


def test_the_engine_is_an_ordinary_consumer_named_strategy() -> None:
    engine = StrategyEngine([], RecordingReviewer())

    assert (engine.name, engine.lossless) == ("strategy", False)


async def test_each_intent_is_logged_and_handed_over_with_the_tick_it_was_made_on() -> None:
    reviewer = RecordingReviewer()
    engine = StrategyEngine([ScriptedStrategy({1: {}})], reviewer)
    ticks = ticks_at(["100", "101", "102"])

    logs = await read_to_end(engine, ticks)

    assert logs == [
        {
            "event": "order.intent",
            "log_level": "info",
            "strategy": "scripted",
            "exchange": Exchange.BINANCE,
            "symbol": "BTCUSDT",
            "side": Side.BUY,
            "quantity": "0.01",
            "limit_price": None,
            "reason": "test",
        }
    ]
    assert [(intent.created_at_ms, origin) for intent, origin in reviewer.reviewed] == [
        (ticks[1].timestamp_ms, ticks[1])
    ]


async def test_every_strategy_sees_every_tick_in_order() -> None:
    first, second = ScriptedStrategy({0: {}}), ScriptedStrategy({0: {"side": Side.SELL}, 1: {}})
    reviewer = RecordingReviewer()

    await read_to_end(StrategyEngine([first, second], reviewer), ticks_at(["100", "101"]))

    assert first.seen == second.seen == [0, 1]
    assert [(intent.side, origin.trade_id) for intent, origin in reviewer.reviewed] == [
        (Side.BUY, 0),
        (Side.SELL, 0),
        (Side.BUY, 1),
    ]


async def test_backfilled_ticks_reach_no_strategy() -> None:
    strategy = ScriptedStrategy({1: {}})
    reviewer = RecordingReviewer()
    ticks = ticks_at(["100", "500", "101"])
    ticks[1] = ticks[1]._replace(source=TickSource.BACKFILL)

    logs = await read_to_end(StrategyEngine([strategy], reviewer), ticks)

    assert strategy.seen == [0, 2]
    assert (logs, reviewer.reviewed) == ([], [])


async def test_a_lagging_engine_warns_and_goes_on() -> None:
    strategy = ScriptedStrategy()
    engine = StrategyEngine([strategy], RecordingReviewer())

    logs = await read_to_end(engine, ticks_at([str(100 + seq) for seq in range(5)]), capacity=2)

    assert logs == [{"event": "consumer.lagged", "log_level": "warning", "consumer": "strategy", "missed": 3}]
    assert strategy.seen == [3, 4]


async def test_a_restarted_engine_goes_on_where_its_strategies_were() -> None:
    reviewer = RecordingReviewer()
    engine = StrategyEngine([crossover()], reviewer)
    ticks = ticks_at(CROSSING_PRICES)

    await read_to_end(engine, ticks[:4])
    await read_to_end(engine, ticks[4:])

    assert [(intent.side, origin.trade_id) for intent, origin in reviewer.reviewed] == [
        (Side.BUY, 5),
        (Side.SELL, 7),
    ]


# --- the pipeline: strategy engine and risk consumer on one bus ---------------------------------


async def test_an_approved_intent_is_filled_and_each_step_is_logged() -> None:
    trading = pipeline(ScriptedStrategy({1: {}}))

    logs = await read_together(trading.consumers(), ticks_at(["100", "101", "102"]))

    assert events(logs) == ["order.intent", "paper.filled", "order.filled"]
    assert logs[2] == {
        "event": "order.filled",
        "log_level": "info",
        "exchange": Exchange.BINANCE,
        "symbol": "BTCUSDT",
        "side": Side.BUY,
        "quantity": "0.01",
        "limit_price": None,
        "price": "101",
    }
    position = trading.broker.position(Exchange.BINANCE, "BTCUSDT")
    assert (position.quantity, position.average_price, position.mark_price) == (
        Decimal("0.01"),
        Decimal(101),
        Decimal(102),
    )


async def test_a_rejected_intent_never_reaches_the_broker() -> None:
    trading = pipeline(ScriptedStrategy({0: {"quantity": "1000"}}))

    logs = await read_together(trading.consumers(), ticks_at(["100"]))

    assert events(logs) == ["order.intent", "order.rejected"]
    assert logs[1]["reason"] is RiskRejection.ORDER_NOTIONAL
    assert "notional" in logs[1]["detail"]
    assert trading.broker.positions() == []


async def test_an_unfilled_limit_order_leaves_the_position_flat() -> None:
    trading = pipeline(ScriptedStrategy({0: {"limit": "99.9"}}))

    logs = await read_together(trading.consumers(), ticks_at(["100"]))

    assert events(logs) == ["order.intent", "paper.unfilled"]
    assert trading.broker.position(Exchange.BINANCE, "BTCUSDT").quantity == 0


async def test_a_restarted_pipeline_goes_on_where_it_was() -> None:
    trading = pipeline(crossover())
    ticks = ticks_at(CROSSING_PRICES)

    first = await read_together(trading.consumers(), ticks[:4])
    second = await read_together(trading.consumers(), ticks[4:])

    assert first == []
    assert [(entry["side"], entry["price"]) for entry in second if entry["event"] == "order.filled"] == [
        (Side.BUY, "100"),
        (Side.SELL, "99.5"),
    ]
    assert trading.broker.position(Exchange.BINANCE, "BTCUSDT").quantity == 0


async def test_end_to_end_on_a_live_bus_with_the_price_monitor_alongside() -> None:
    params = MovingAverageCrossoverParams(
        fast_window=2, slow_window=4, quantity=Decimal("0.5"), order_type=OrderType.LIMIT
    )
    trading = pipeline(MovingAverageCrossover(params), limits=RiskLimits(max_position=Decimal(1)))
    monitor = PriceMonitor(interval=0)
    bus = BroadcastBus(capacity=4)
    consumers: list[Consumer] = [*trading.consumers(), monitor]
    subscriptions = [bus.subscribe(consumer.name) for consumer in consumers]

    with capture_logs() as logs:
        async with asyncio.timeout(GUARD_SECONDS), asyncio.TaskGroup() as group:
            for consumer, subscription in zip(consumers, subscriptions, strict=True):
                group.create_task(consumer.run(subscription))
            for tick in ticks_at(CROSSING_PRICES):
                bus.publish(tick)
                await asyncio.sleep(0)  # the feed yields between frames; consumers keep up
            bus.close()

    fills = [(entry["side"], entry["price"]) for entry in logs if entry["event"] == "paper.filled"]
    assert fills == [(Side.BUY, "100"), (Side.SELL, "99.5")]
    assert len([entry for entry in logs if entry["event"] == "price.update"]) == len(CROSSING_PRICES)
    position = trading.broker.position(Exchange.BINANCE, "BTCUSDT")
    assert (position.quantity, position.realised_pnl, position.unrealised_pnl) == (
        Decimal(0),
        Decimal("-0.25"),
        Decimal(0),
    )
    assert not trading.risk.halted(Exchange.BINANCE, "BTCUSDT")
    assert trading.risk_consumer.pending == 0
