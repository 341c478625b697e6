"""The paper broker: what fills and at what price, positions, and exact P&L."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from kairos_core.adapters.outbound.paper_broker import PaperBroker
from kairos_core.domain import Exchange, Fill, MarketTick, OrderIntent, Position, Side, TickSource
from tests.trading import order, priced

BUY, SELL = Side.BUY, Side.SELL


def last_trade(price: int | str, symbol: str = "BTCUSDT", source: TickSource = TickSource.LIVE) -> MarketTick:
    return priced(price, 7, symbol, source=source)


async def trade(broker: PaperBroker, price: int | str, side: Side, quantity: int | str) -> Fill | None:
    broker.on_market_tick(last_trade(price))
    return await broker.submit(order(side, quantity))


async def test_worked_example_realised_and_unrealised_pnl() -> None:
    broker = PaperBroker()

    await trade(broker, 100, BUY, 2)
    await trade(broker, 110, SELL, 1)
    broker.on_market_tick(last_trade(120))

    position = broker.position(Exchange.BINANCE, "BTCUSDT")
    assert position == Position(
        exchange=Exchange.BINANCE,
        symbol="BTCUSDT",
        quantity=Decimal(1),
        average_price=Decimal(100),
        realised_pnl=Decimal(10),
        mark_price=Decimal(120),
    )
    assert position.unrealised_pnl == Decimal(20)


@pytest.mark.parametrize(
    ("trades", "quantity", "average", "realised"),
    [
        pytest.param([(BUY, 1, 100), (BUY, 3, 120)], 4, 115, 0, id="adding averages the entry"),
        pytest.param([(BUY, 1, 100), (SELL, 3, 90)], -2, 90, -10, id="flip opens at the fill"),
        pytest.param([(SELL, 2, 100), (SELL, 1, 130)], -3, 110, 0, id="adding to a short"),
        pytest.param([(SELL, 2, 110), (BUY, 2, 100)], 0, 0, 20, id="covering a short at a profit"),
        pytest.param([(BUY, 2, 100), (SELL, 1, 90), (SELL, 1, 120)], 0, 0, 10, id="loss then gain"),
    ],
)
def test_position_after_fills(
    trades: list[tuple[Side, int, int]], quantity: int, average: int, realised: int
) -> None:
    position = Position(exchange=Exchange.BINANCE, symbol="BTCUSDT")
    for side, size, price in trades:
        position = position.after_fill(Decimal(size if side is BUY else -size), Decimal(price))

    expected = (Decimal(quantity), Decimal(average), Decimal(realised))
    assert (position.quantity, position.average_price, position.realised_pnl) == expected
    assert position.unrealised_pnl == quantity * (trades[-1][2] - average)


@pytest.mark.parametrize(
    ("intent", "fill_price"),
    [
        pytest.param(order(BUY, 1), Decimal(100), id="market buy"),
        pytest.param(order(SELL, 1), Decimal(100), id="market sell"),
        pytest.param(order(BUY, 1, 101), Decimal(100), id="buy limit above the last trade"),
        pytest.param(order(BUY, 1, 100), Decimal(100), id="buy limit at the last trade"),
        pytest.param(order(BUY, 1, "99.99"), None, id="buy limit below the last trade"),
        pytest.param(order(SELL, 1, 99), Decimal(100), id="sell limit below the last trade"),
        pytest.param(order(SELL, 1, 100), Decimal(100), id="sell limit at the last trade"),
        pytest.param(order(SELL, 1, "100.01"), None, id="sell limit above the last trade"),
        pytest.param(order(BUY, 1, symbol="ETHUSDT"), None, id="no trade seen for the symbol"),
    ],
)
async def test_what_fills_and_at_what_price(intent: OrderIntent, fill_price: Decimal | None) -> None:
    broker = PaperBroker()
    broker.on_market_tick(last_trade(100))

    with capture_logs() as logs:
        fill = await broker.submit(intent)

    if fill_price is None:
        assert fill is None
        assert [entry["event"] for entry in logs] == ["paper.unfilled"]
        assert broker.position(intent.exchange, intent.symbol).quantity == 0
    else:
        tick = last_trade(100)
        assert fill == Fill(
            intent=intent, price=fill_price, quantity=Decimal(1), timestamp_ms=tick.timestamp_ms
        )
        assert [entry["event"] for entry in logs] == ["paper.filled"]
        assert broker.position(intent.exchange, intent.symbol).quantity == intent.signed_quantity


async def test_every_fill_is_logged_with_the_position_it_leaves() -> None:
    broker = PaperBroker()
    await trade(broker, 100, BUY, 2)

    with capture_logs() as logs:
        await trade(broker, 110, SELL, "0.5")

    assert logs == [
        {
            "event": "paper.filled",
            "log_level": "info",
            "exchange": Exchange.BINANCE,
            "symbol": "BTCUSDT",
            "side": SELL,
            "quantity": "0.5",
            "limit_price": None,
            "price": "110",
            "position": "1.5",
            "average_price": "100",
            "realised_pnl": "5.0",
        }
    ]


async def test_backfilled_ticks_neither_price_orders_nor_mark_positions() -> None:
    broker = PaperBroker()
    broker.on_market_tick(last_trade(50, source=TickSource.BACKFILL))
    assert await broker.submit(order(BUY, 1)) is None

    await trade(broker, 100, BUY, 1)
    broker.on_market_tick(last_trade(500, source=TickSource.BACKFILL))

    assert broker.position(Exchange.BINANCE, "BTCUSDT").mark_price == Decimal(100)
    assert (await broker.submit(order(SELL, 1))) == Fill(
        intent=order(SELL, 1),
        price=Decimal(100),
        quantity=Decimal(1),
        timestamp_ms=last_trade(100).timestamp_ms,
    )


async def test_positions_lists_every_symbol_that_traded_and_marks_the_untraded() -> None:
    broker = PaperBroker()
    await trade(broker, 100, BUY, 1)
    broker.on_market_tick(last_trade(10, "ETHUSDT"))

    assert [(position.symbol, position.quantity) for position in broker.positions()] == [
        ("BTCUSDT", Decimal(1))
    ]
    assert broker.position(Exchange.BINANCE, "ETHUSDT") == Position(
        exchange=Exchange.BINANCE, symbol="ETHUSDT", mark_price=Decimal(10)
    )
    assert broker.position(Exchange.OKX, "BTC-USDT").mark_price is None


@given(
    fills=st.lists(st.tuples(st.sampled_from(Side), st.integers(1, 5), st.integers(1, 1_000)), max_size=30),
    mark=st.integers(1, 1_000),
)
def test_pnl_is_what_the_cash_and_the_holding_are_worth(
    fills: list[tuple[Side, int, int]], mark: int
) -> None:
    """Realised plus unrealised P&L equals cash spent and received plus the holding at the mark."""
    position = Position(exchange=Exchange.BINANCE, symbol="BTCUSDT")
    cash = Decimal(0)
    for side, size, price in fills:
        signed = Decimal(size if side is BUY else -size)
        position = position.after_fill(signed, Decimal(price))
        cash -= signed * price
    position = position.marked(Decimal(mark))

    assert abs(position.realised_pnl + position.unrealised_pnl - (cash + position.quantity * mark)) < Decimal(
        "1e-18"
    )
    assert position.quantity == sum(size if side is BUY else -size for side, size, _ in fills)
