"""A simulated broker: fills against the last trade seen, keeps positions and P&L, sends nothing."""

from __future__ import annotations

from decimal import Decimal

import structlog

from kairos_core.domain import (
    Exchange,
    Fill,
    MarketTick,
    OrderExecutionPort,
    OrderIntent,
    Position,
    Side,
    TickSource,
)

log = structlog.get_logger(__name__)


class PaperBroker(OrderExecutionPort):
    """Paper execution with unlimited liquidity at the last trade price, all or nothing.

    A market order fills in full at the symbol's last live trade price. A limit order is
    immediate-or-cancel: a buy fills (at the last price) only if that is at or below its limit, a
    sell only if at or above; otherwise nothing happens and ``submit`` returns None. An order for
    a symbol with no live trade yet is not filled either. No fees, no slippage.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[Exchange, str], MarketTick] = {}
        self._positions: dict[tuple[Exchange, str], Position] = {}

    def on_market_tick(self, tick: MarketTick) -> None:
        if tick.source is TickSource.BACKFILL:
            return  # an old price is no price to trade at
        self._last[(tick.exchange, tick.symbol)] = tick  # positions are marked when read

    async def submit(self, intent: OrderIntent) -> Fill | None:
        key = (intent.exchange, intent.symbol)
        last = self._last.get(key)
        if last is None or not _crosses(intent, last.price):
            log.info(
                "paper.unfilled",
                **intent.describe(),
                last_price=None if last is None else str(last.price),
            )
            return None
        fill = Fill(intent=intent, price=last.price, quantity=intent.quantity, timestamp_ms=last.timestamp_ms)
        position = self.position(*key).after_fill(intent.signed_quantity, fill.price)
        self._positions[key] = position
        log.info(
            "paper.filled",
            **intent.describe(),
            price=str(fill.price),
            position=str(position.quantity),
            average_price=str(position.average_price),
            realised_pnl=str(position.realised_pnl),
        )
        return fill

    def position(self, exchange: Exchange, symbol: str) -> Position:
        last = self._last.get((exchange, symbol))
        mark = None if last is None else last.price
        position = self._positions.get((exchange, symbol))
        if position is None:
            return Position(exchange=exchange, symbol=symbol, mark_price=mark)
        return position if mark is None or mark == position.mark_price else position.marked(mark)

    def positions(self) -> list[Position]:
        return [self.position(exchange, symbol) for exchange, symbol in self._positions]


def _crosses(intent: OrderIntent, last: Decimal) -> bool:
    limit = intent.limit_price
    if limit is None:
        return True
    return last <= limit if intent.side is Side.BUY else last >= limit
