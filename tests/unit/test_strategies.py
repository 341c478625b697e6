"""The example strategies on hand-made and generated tick sequences: when they signal, and what."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kairos_core.application.strategies import (
    Breakout,
    BreakoutParams,
    MovingAverageCrossover,
    MovingAverageCrossoverParams,
    OrderParams,
)
from kairos_core.domain import Exchange, MarketTick, OrderIntent, OrderType, Side, Strategy
from tests.trading import ticks_at

BUY, SELL = Side.BUY, Side.SELL


def signals(strategy: Strategy, ticks: Sequence[MarketTick]) -> list[tuple[int, Side]]:
    """(index of the tick, side) of every intent ``strategy`` makes."""
    return [(i, intent.side) for i, tick in enumerate(ticks) if (intent := strategy.on_market_tick(tick))]


def crossover(fast: int = 2, slow: int = 4, **order: Any) -> MovingAverageCrossover:
    return MovingAverageCrossover(MovingAverageCrossoverParams(fast_window=fast, slow_window=slow, **order))


# --- moving-average crossover -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        pytest.param([10, 9, 8, 7, 8, 10], [(5, BUY)], id="golden cross on the crossing tick"),
        pytest.param([10, 11, 12, 13, 12, 10], [(5, SELL)], id="death cross on the crossing tick"),
        pytest.param([10, 9, 8, 7, 8, 10, 7, 5], [(5, BUY), (7, SELL)], id="cross and cross back"),
        pytest.param([10, 9, 12, 12, 12], [], id="a cross before the slow window is full is the start"),
        pytest.param([10, 11, 12, 13, 10, 16], [], id="touch without crossing"),
        pytest.param([10, 10, 10, 10, 11, 10, 9, 8], [(6, SELL)], id="a tie is no regime yet"),
        pytest.param([10, 10, 10, 10, 10, 10], [], id="flat"),
        pytest.param([7, 8, 9], [], id="fewer ticks than the slow window"),
    ],
)
def test_crossover_signals(prices: list[int], expected: list[tuple[int, Side]]) -> None:
    assert signals(crossover(), ticks_at(prices)) == expected


def test_crossover_intent_is_a_market_order_for_the_configured_quantity() -> None:
    ticks = ticks_at([10, 9, 8, 7, 8, 10])
    strategy = crossover(quantity=Decimal("0.5"))

    intents = [intent for tick in ticks if (intent := strategy.on_market_tick(tick))]

    assert intents == [
        OrderIntent(
            exchange=Exchange.BINANCE,
            symbol="BTCUSDT",
            side=BUY,
            quantity=Decimal("0.5"),
            limit_price=None,
            reason="ma_crossover: 2-tick average crossed above the 4-tick average",
            created_at_ms=ticks[5].timestamp_ms,
        )
    ]
    assert intents[0].order_type is OrderType.MARKET


@pytest.mark.parametrize(
    ("prices", "offset_bps", "limit"),
    [
        ([10, 9, 8, 7, 8, "10.00"], Decimal(10), Decimal("10.01")),
        ([10, 11, 12, 13, 12, "10.00"], Decimal(10), Decimal("9.99")),
        ([10, 9, 8, 7, 8, "10.00"], Decimal(0), Decimal("10.00")),
    ],
    ids=["buy above the trade", "sell below the trade", "at the trade"],
)
def test_crossover_limit_orders_are_offset_in_the_direction_of_trade(
    prices: list[int | str], offset_bps: Decimal, limit: Decimal
) -> None:
    strategy = crossover(order_type=OrderType.LIMIT, limit_offset_bps=offset_bps)

    intents = [intent for tick in ticks_at(prices) if (intent := strategy.on_market_tick(tick))]

    assert [(intent.limit_price, intent.order_type) for intent in intents] == [(limit, OrderType.LIMIT)]


def test_crossover_keeps_each_symbol_apart() -> None:
    btc = ticks_at([10, 9, 8, 7, 8, 10], "BTCUSDT")
    eth = ticks_at([10, 11, 12, 13, 12, 10], "ETHUSDT")
    interleaved = [tick for pair in zip(btc, eth, strict=True) for tick in pair]
    strategy = crossover()

    intents = [intent for tick in interleaved if (intent := strategy.on_market_tick(tick))]

    assert [(intent.symbol, intent.side) for intent in intents] == [("BTCUSDT", BUY), ("ETHUSDT", SELL)]


@pytest.mark.parametrize(
    "params",
    [
        {"fast_window": 0, "slow_window": 4},
        {"fast_window": 4, "slow_window": 4},
        {"fast_window": 5, "slow_window": 4},
        {"quantity": Decimal(0)},
        {"quantity": Decimal(-1)},
        {"limit_offset_bps": Decimal(-1)},
        {"limit_offset_bps": Decimal(10_000)},
    ],
    ids=str,
)
def test_crossover_rejects_parameters_that_cannot_work(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|needs"):
        MovingAverageCrossoverParams(**params)


def reference_crossings(prices: Sequence[int], fast: int, slow: int) -> list[tuple[int, Side]]:
    """The crossover's signals recomputed from scratch at every tick, with exact fractions."""
    found: list[tuple[int, Side]] = []
    regime = 0
    for i in range(slow - 1, len(prices)):
        fast_mean = Fraction(sum(prices[i + 1 - fast : i + 1]), fast)
        slow_mean = Fraction(sum(prices[i + 1 - slow : i + 1]), slow)
        sign = (fast_mean > slow_mean) - (fast_mean < slow_mean)
        if sign and sign != regime:
            if regime:
                found.append((i, BUY if sign > 0 else SELL))
            regime = sign
    return found


windows = st.integers(1, 6).flatmap(lambda fast: st.tuples(st.just(fast), st.integers(fast + 1, 12)))
price_paths = st.lists(st.integers(95, 105), max_size=80)


@given(windows=windows, prices=price_paths)
def test_crossover_matches_a_from_scratch_recomputation(windows: tuple[int, int], prices: list[int]) -> None:
    fast, slow = windows
    found = signals(crossover(fast, slow), ticks_at(prices))

    assert found == reference_crossings(prices, fast, slow)
    assert all(index >= slow for index, _ in found)  # the start is known at slow - 1 at the earliest
    assert all(a[1] != b[1] for a, b in pairwise(found))  # sides alternate


@given(windows=windows, btc=price_paths, eth=price_paths)
def test_crossover_on_interleaved_symbols_equals_each_alone(
    windows: tuple[int, int], btc: list[int], eth: list[int]
) -> None:
    fast, slow = windows
    alone = {
        symbol: signals(crossover(fast, slow), ticks_at(prices, symbol))
        for symbol, prices in [("BTCUSDT", btc), ("ETHUSDT", eth)]
    }
    strategy = crossover(fast, slow)
    together: dict[str, list[Side]] = {"BTCUSDT": [], "ETHUSDT": []}
    for tick in sorted(ticks_at(btc, "BTCUSDT") + ticks_at(eth, "ETHUSDT"), key=lambda tick: tick.trade_id):
        if intent := strategy.on_market_tick(tick):
            together[intent.symbol].append(intent.side)

    assert together == {symbol: [side for _, side in found] for symbol, found in alone.items()}


# --- breakout -----------------------------------------------------------------------------------


def breakout(window: int = 3) -> Breakout:
    return Breakout(BreakoutParams(window=window))


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        pytest.param([10, 11, 12, 13], [(3, BUY)], id="new high"),
        pytest.param([10, 11, 12, 13, 14, 15], [(3, BUY)], id="a trend signals once"),
        pytest.param([10, 11, 12, 9], [(3, SELL)], id="new low"),
        pytest.param([10, 11, 12, 13, 14, 15, 8, 7, 20], [(3, BUY), (6, SELL), (8, BUY)], id="reversals"),
        pytest.param([10, 12, 11, 12, 11], [], id="equal to the high or low is no break"),
        pytest.param([10, 20], [], id="fewer ticks than the window"),
    ],
)
def test_breakout_signals(prices: list[int], expected: list[tuple[int, Side]]) -> None:
    assert signals(breakout(), ticks_at(prices)) == expected


def test_breakout_intent_names_the_channel() -> None:
    strategy = Breakout(BreakoutParams(window=2, quantity=Decimal(3)), name="channel")

    intents = [intent for tick in ticks_at([10, 11, 12]) if (intent := strategy.on_market_tick(tick))]

    assert [(intent.side, intent.quantity, intent.reason) for intent in intents] == [
        (BUY, Decimal(3), "channel: traded above the high of the last 2 ticks")
    ]


def test_breakout_rejects_an_empty_window() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BreakoutParams(window=0)


@given(window=st.integers(1, 8), prices=price_paths)
def test_breakout_matches_a_from_scratch_recomputation(window: int, prices: list[int]) -> None:
    expected: list[tuple[int, Side]] = []
    for i in range(window, len(prices)):
        channel = prices[i - window : i]
        side = BUY if prices[i] > max(channel) else SELL if prices[i] < min(channel) else None
        if side is not None and (not expected or expected[-1][1] is not side):
            expected.append((i, side))

    assert signals(breakout(window), ticks_at(prices)) == expected


def test_order_params_default_to_a_small_market_order() -> None:
    assert OrderParams() == OrderParams(
        quantity=Decimal("0.001"), order_type=OrderType.MARKET, limit_offset_bps=Decimal(0)
    )
