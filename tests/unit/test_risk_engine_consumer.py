"""The risk consumer: risk state and marks from the bus, and the barrier that keeps an intent from
being judged by state older than its tick, whichever consumer runs first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from itertools import repeat
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from kairos_core.adapters.outbound.paper_broker import PaperBroker
from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers import Consumer
from kairos_core.application.consumers.risk_engine import RiskEngineConsumer
from kairos_core.application.consumers.strategy_engine import StrategyEngine
from kairos_core.application.risk import RiskEngine, RiskLimits
from kairos_core.application.strategies import MovingAverageCrossover, MovingAverageCrossoverParams
from kairos_core.domain import (
    BusItem,
    Exchange,
    Fill,
    GapDetected,
    GapRepaired,
    MarketTick,
    OrderIntent,
    Position,
    PositionBook,
    RiskDecision,
    Side,
    Strategy,
    TickSource,
)
from tests.trading import (
    GUARD_SECONDS,
    NOW_NS,
    ScriptedStrategy,
    events,
    order,
    pipeline,
    read_to_end,
    read_together,
    ticks_at,
)

Outcome = tuple[str, Side, str, str | None, str]
"""An intent's symbol, side, quantity and limit, and what became of it."""

BTC = ticks_at(["100", "101", "102", "103", "90", "91", "92", "91.5", "92", "93"])
"""Rises to the position limit, trips the breaker on index 4 (-12.6%), resumes on index 7."""
ETH = ticks_at(["2000", "2010", "2005", "2020", "2015"], symbol="ETHUSDT")
INTERLEAVED = [BTC[0], BTC[1], ETH[0], BTC[2], ETH[1], BTC[3], BTC[4], ETH[2], BTC[5], ETH[3]]
INTERLEAVED += [BTC[6], BTC[7], ETH[4], BTC[8], BTC[9]]
LIMITS = RiskLimits(max_position=Decimal(1), breaker_window_s=0.002, breaker_cooldown_s=0.003)
"""The breaker compares a tick with the one before and halts a symbol for three ticks."""

SCHEDULES = [
    pytest.param(True, 0, id="strategy ahead by the whole sequence"),
    pytest.param(True, 1, id="tick by tick, strategy woken first"),
    pytest.param(False, 1, id="tick by tick, risk woken first"),
    pytest.param(True, 3, id="strategy ahead by three ticks"),
]
"""Schedules in which risk never leads the strategy engine: (strategy first, batch size or 0 for
all at once), on the paper broker, whose orders complete without yielding.

A broker that yields while an order is in flight lets risk resume before the strategy engine and
read ahead; see test_whatever_the_schedule_no_intent_is_judged_by_state_older_than_its_tick.
"""

# A crossover with fast 2 / slow 4 buys at index 5 and sells at index 7 (see test_strategies).
CROSSING_PRICES = ["100", "99.9", "99.8", "99.7", "99.8", "100", "99.7", "99.5"]


class Momentum(Strategy):
    """Buys every rise and sells every fall at the market: a fill's price tells which tick it met."""

    name = "momentum"

    def __init__(self) -> None:
        self._last: dict[str, Decimal] = {}

    def on_market_tick(self, tick: MarketTick) -> OrderIntent | None:
        last, self._last[tick.symbol] = self._last.get(tick.symbol), tick.price
        if last is None or last == tick.price:
            return None
        side = Side.BUY if tick.price > last else Side.SELL
        return order(side, "0.4", symbol=tick.symbol, created_at_ms=tick.timestamp_ms)


def scenario_strategies() -> list[Strategy]:
    """Market orders up to the position limit and through the breaker, an unfilled limit buy on
    BTC and one outside the price band on ETH (both at index 2), a sell while halted."""
    return [Momentum(), ScriptedStrategy({2: {"limit": "101.5"}, 6: {"side": Side.SELL}})]


class WitnessedRisk(RiskEngine):
    """Risk that notes, at each check, how far its view of the symbol is past the intent's tick."""

    def __init__(self, positions: PositionBook, limits: RiskLimits, *, clock: Callable[[], int]) -> None:
        super().__init__(positions, limits, clock=clock)
        self.leads_ms: list[int] = []

    def check(self, intent: OrderIntent) -> RiskDecision:
        state = self.state(intent.exchange, intent.symbol)
        self.leads_ms.append(-1 if state is None else state.last_trade_ms - intent.created_at_ms)
        return super().check(intent)


class SlowPaperBroker(PaperBroker):
    """A paper broker that lets the event loop run while an order is in flight, as a venue would."""

    def __init__(self, passes: int) -> None:
        super().__init__()
        self._passes = passes

    async def submit(self, intent: OrderIntent) -> Fill | None:
        for _ in range(self._passes):
            await asyncio.sleep(0)
        return await super().submit(intent)


async def one_loop(
    strategies: Sequence[Strategy], ticks: Sequence[MarketTick], limits: RiskLimits = LIMITS
) -> tuple[list[Outcome], list[Position]]:
    """The sequential expectation: every step of a tick, in order, before the next tick."""
    broker = PaperBroker()
    risk = RiskEngine(broker, limits, clock=lambda: NOW_NS)
    results: list[Outcome] = []
    with capture_logs():
        for tick in ticks:
            if tick.source is TickSource.BACKFILL:
                continue
            risk.update_market_data(tick)
            broker.on_market_tick(tick)
            for strategy in strategies:
                intent = strategy.on_market_tick(tick)
                if intent is None:
                    continue
                decision = risk.check(intent)
                if decision.reason is not None:
                    result = str(decision.reason)
                else:
                    fill = await broker.submit(intent)
                    result = "unfilled" if fill is None else f"filled at {fill.price}"
                limit = None if intent.limit_price is None else str(intent.limit_price)
                results.append((intent.symbol, intent.side, str(intent.quantity), limit, result))
    return results, broker.positions()


def outcomes(logs: Sequence[Mapping[str, Any]]) -> list[Outcome]:
    """Each decided intent in the logs, in the order it was decided."""
    results: list[Outcome] = []
    for entry in logs:
        if entry["event"] == "order.rejected":
            result = str(entry["reason"])
        elif entry["event"] == "order.filled":
            result = f"filled at {entry['price']}"
        elif entry["event"] == "paper.unfilled":
            result = "unfilled"
        else:
            continue
        results.append((entry["symbol"], entry["side"], entry["quantity"], entry["limit_price"], result))
    return results


def intents(logs: Sequence[Mapping[str, Any]]) -> list[tuple[str, Side, str]]:
    return [(e["symbol"], e["side"], e["quantity"]) for e in logs if e["event"] == "order.intent"]


def test_the_risk_consumer_is_an_ordinary_consumer_named_risk() -> None:
    risk_consumer = pipeline().risk_consumer

    assert (risk_consumer.name, risk_consumer.lossless) == ("risk", False)


async def test_with_no_intents_it_keeps_risk_state_and_marks_current() -> None:
    trading = pipeline(limits=LIMITS)

    logs = await read_to_end(trading.risk_consumer, BTC[:5])

    assert events(logs) == ["risk.halted"]
    state = trading.risk.state(Exchange.BINANCE, "BTCUSDT")
    assert state is not None
    assert (state.last_price, state.halted_until_ms) == (Decimal(90), BTC[4].timestamp_ms + 3)
    assert trading.broker.position(Exchange.BINANCE, "BTCUSDT").mark_price == Decimal(90)


async def test_an_intent_waits_for_its_tick_and_is_decided_right_after_it() -> None:
    trading = pipeline()
    ticks = ticks_at(["100", "101", "102", "103"])
    await trading.risk_consumer.review(order(quantity="0.1"), ticks[0])
    await trading.risk_consumer.review(order(quantity="0.2"), ticks[2])
    assert trading.risk_consumer.pending == 2

    logs = await read_to_end(trading.risk_consumer, ticks)

    assert outcomes(logs) == [
        ("BTCUSDT", Side.BUY, "0.1", None, "filled at 100"),
        ("BTCUSDT", Side.BUY, "0.2", None, "filled at 102"),
    ]
    assert trading.risk_consumer.pending == 0


async def test_backfilled_ticks_are_not_applied_and_release_no_intent() -> None:
    trading = pipeline()
    ticks = ticks_at(["100", "500", "101"])
    ticks[1] = ticks[1]._replace(source=TickSource.BACKFILL, trade_id=9)
    await trading.risk_consumer.review(order(quantity="0.1"), ticks[2])

    logs = await read_to_end(trading.risk_consumer, ticks)

    assert outcomes(logs) == [("BTCUSDT", Side.BUY, "0.1", None, "filled at 101")]
    state = trading.risk.state(Exchange.BINANCE, "BTCUSDT")
    assert state is not None
    assert state.last_price == Decimal(101)


@pytest.mark.parametrize(("strategy_first", "batch"), SCHEDULES)
async def test_the_decisions_are_those_of_one_loop_whenever_risk_does_not_lead(
    strategy_first: bool, batch: int
) -> None:
    expected, positions = await one_loop(scenario_strategies(), INTERLEAVED)
    trading = pipeline(*scenario_strategies(), limits=LIMITS)

    logs = await read_together(
        trading.consumers(strategy_first=strategy_first),
        INTERLEAVED,
        repeat(batch) if batch else (),
    )

    assert outcomes(logs) == expected
    assert ("BTCUSDT", Side.SELL, "0.4", None, "halted") in expected  # made on the tripping tick
    assert ("ETHUSDT", Side.BUY, "0.01", "101.5", "price_band") in expected
    assert len(intents(logs)) == len(expected)
    assert trading.broker.positions() == positions
    assert trading.risk_consumer.pending == 0


@given(
    batches=st.lists(st.integers(1, 6), max_size=8),
    strategy_first=st.booleans(),
    passes=st.integers(0, 3),
)
def test_whatever_the_schedule_no_intent_is_judged_by_state_older_than_its_tick(
    batches: list[int], strategy_first: bool, passes: int
) -> None:
    async def scenario() -> None:
        expected, positions = await one_loop(scenario_strategies(), INTERLEAVED)
        broker = SlowPaperBroker(passes)
        risk = WitnessedRisk(broker, LIMITS, clock=lambda: NOW_NS)
        risk_consumer = RiskEngineConsumer(risk, broker)
        strategies = StrategyEngine(scenario_strategies(), risk_consumer)
        consumers: list[Consumer] = [strategies, risk_consumer]

        logs = await read_together(consumers if strategy_first else consumers[::-1], INTERLEAVED, batches)

        assert len(risk.leads_ms) == len(outcomes(logs)) == len(expected)
        assert min(risk.leads_ms) >= 0
        assert risk_consumer.pending == 0
        if strategy_first and not passes:  # risk never leads: exactly one loop's decisions
            assert outcomes(logs) == expected
            assert broker.positions() == positions

    asyncio.run(scenario())


@pytest.mark.parametrize("strategy_first", [True, False], ids=["strategy first", "risk first"])
@pytest.mark.parametrize("batch", [0, 1], ids=["all at once", "tick by tick"])
async def test_an_intent_on_the_tick_that_trips_the_breaker_is_rejected_as_halted(
    strategy_first: bool, batch: int
) -> None:
    crossover = MovingAverageCrossover(MovingAverageCrossoverParams(fast_window=2, slow_window=4))
    trading = pipeline(crossover)

    logs = await read_together(
        trading.consumers(strategy_first=strategy_first),
        ticks_at([*CROSSING_PRICES[:7], "80"]),
        repeat(batch) if batch else (),
    )

    assert outcomes(logs)[-1] == ("BTCUSDT", Side.SELL, "0.001", None, "halted")
    if strategy_first or batch:  # else risk leads by the whole sequence: see the next test
        assert outcomes(logs)[0] == ("BTCUSDT", Side.BUY, "0.001", None, "filled at 100")
    assert events(logs).count("risk.halted") == 1
    assert trading.risk.halted(Exchange.BINANCE, "BTCUSDT")


@pytest.mark.parametrize("concurrently", [True, False], ids=["both running", "risk finished first"])
async def test_risk_that_leads_judges_by_newer_state_never_older(concurrently: bool) -> None:
    trading = pipeline(ScriptedStrategy({0: {}, 2: {"side": Side.SELL}}))
    ticks = ticks_at(["100", "101", "102"])

    if concurrently:
        logs = await read_together(trading.consumers(strategy_first=False), ticks)
    else:
        logs = [
            *await read_to_end(trading.risk_consumer, ticks),
            *await read_to_end(trading.strategies, ticks),
        ]

    assert outcomes(logs) == [
        ("BTCUSDT", Side.BUY, "0.01", None, "filled at 102"),
        ("BTCUSDT", Side.SELL, "0.01", None, "filled at 102"),
    ]
    assert "order.origin_unseen" not in events(logs)


async def test_intents_wait_for_a_risk_consumer_that_has_not_started() -> None:
    expected, positions = await one_loop(scenario_strategies(), INTERLEAVED)
    trading = pipeline(*scenario_strategies(), limits=LIMITS)

    before = await read_to_end(trading.strategies, INTERLEAVED)
    waiting = trading.risk_consumer.pending
    after = await read_to_end(trading.risk_consumer, INTERLEAVED)

    assert (outcomes(before), waiting) == ([], len(expected))
    assert outcomes(after) == expected
    assert trading.broker.positions() == positions
    assert trading.risk_consumer.pending == 0


async def test_decisions_are_serialised_so_the_position_limit_sees_every_fill() -> None:
    trading = pipeline(limits=LIMITS, broker=SlowPaperBroker(3))
    ticks = ticks_at(["100"])
    await read_to_end(trading.risk_consumer, ticks)

    with capture_logs() as logs:
        await asyncio.gather(
            trading.risk_consumer.review(order(quantity="0.6"), ticks[0]),
            trading.risk_consumer.review(order(quantity="0.6"), ticks[0]),
        )

    assert outcomes(logs) == [
        ("BTCUSDT", Side.BUY, "0.6", None, "filled at 100"),
        ("BTCUSDT", Side.BUY, "0.6", None, "position_limit"),
    ]


async def test_a_lagging_risk_consumer_warns_and_decides_on_a_later_tick_of_the_symbol() -> None:
    trading = pipeline()
    ticks = ticks_at([str(100 + seq) for seq in range(5)])
    await trading.risk_consumer.review(order(quantity="0.1"), ticks[1])

    logs = await read_to_end(trading.risk_consumer, ticks, capacity=2)

    assert events(logs) == ["consumer.lagged", "paper.filled", "order.filled"]
    assert logs[0] == {"event": "consumer.lagged", "log_level": "warning", "consumer": "risk", "missed": 3}
    assert outcomes(logs) == [("BTCUSDT", Side.BUY, "0.1", None, "filled at 103")]


async def test_an_intent_whose_tick_risk_lost_is_decided_once_risk_has_read_all_there_is() -> None:
    trading = pipeline()
    eth, btc = ticks_at(["2000"], symbol="ETHUSDT"), ticks_at(["100", "101", "102"])
    bus = BroadcastBus(capacity=2)
    subscription = bus.subscribe(trading.risk_consumer.name)
    for tick in [*eth, *btc]:
        bus.publish(tick)
    await trading.risk_consumer.review(order(quantity="0.1", symbol="ETHUSDT"), eth[0])

    with capture_logs() as logs:
        async with asyncio.timeout(GUARD_SECONDS), asyncio.TaskGroup() as group:
            group.create_task(trading.risk_consumer.run(subscription))
            while trading.risk_consumer.pending:
                await asyncio.sleep(0)
            assert not bus.closed  # decided without waiting for the close
            bus.close()

    assert events(logs) == ["consumer.lagged", "order.origin_unseen", "order.rejected"]
    assert logs[1]["origin_trade_id"] == 0
    assert outcomes(logs) == [("ETHUSDT", Side.BUY, "0.1", None, "no_market_data")]


async def test_between_runs_an_intent_is_decided_at_once_only_if_its_tick_was_applied() -> None:
    trading = pipeline()
    ticks = ticks_at(["100", "101", "102"])
    await read_to_end(trading.risk_consumer, ticks[:2])

    with capture_logs() as between:
        await trading.risk_consumer.review(order(quantity="0.1"), ticks[0])
        await trading.risk_consumer.review(order(quantity="0.2"), ticks[2])
    waiting = trading.risk_consumer.pending
    later = await read_to_end(trading.risk_consumer, ticks[2:])

    assert (outcomes(between), waiting) == ([("BTCUSDT", Side.BUY, "0.1", None, "filled at 101")], 1)
    assert outcomes(later) == [("BTCUSDT", Side.BUY, "0.2", None, "filled at 102")]
    assert trading.risk_consumer.pending == 0


async def test_an_intent_still_waiting_when_the_bus_closes_is_decided_against_the_latest_state() -> None:
    trading = pipeline()
    await read_to_end(trading.risk_consumer, ticks_at(["100"]))
    await trading.risk_consumer.review(order(quantity="0.1"), ticks_at(["100", "101"])[1])

    logs = await read_to_end(trading.risk_consumer, [])

    assert events(logs) == ["order.origin_unseen", "paper.filled", "order.filled"]
    assert outcomes(logs) == [("BTCUSDT", Side.BUY, "0.1", None, "filled at 100")]
    assert trading.risk_consumer.pending == 0


@pytest.mark.parametrize(
    ("strategy_first", "batch"), [p.values for p in SCHEDULES], ids=[p.id for p in SCHEDULES]
)
async def test_an_intent_on_a_tick_after_a_gap_was_detected_waits_out_the_repair(
    strategy_first: bool, batch: int
) -> None:
    trading = pipeline(ScriptedStrategy({1: {}, 2: {}, 3: {}}))
    ticks = ticks_at(["100", "100", "100", "100"])
    where = {"exchange": Exchange.BINANCE, "symbol": "BTCUSDT", "from_id": 1, "to_id": 1}
    items: list[BusItem] = [
        ticks[0],
        GapDetected(**where, open_gaps=1),  # revealed by the next tick, and put before it
        ticks[2],
        ticks[1]._replace(source=TickSource.BACKFILL),
        GapRepaired(**where, backfilled=1, seconds=0.01, open_gaps=0),
        ticks[3],
    ]

    logs = await read_together(
        trading.consumers(strategy_first=strategy_first), items, repeat(batch) if batch else ()
    )

    assert [result for *_, result in outcomes(logs)] == ["halted", "filled at 100"]
    assert [(e, entry.get("reason")) for entry in logs if (e := entry["event"]).startswith("risk.")] == [
        ("risk.halted", "data_gap"),
        ("risk.resumed", "data_gap_closed"),
    ]
