"""The order half of a strategy's parameters: how big, and at what price, a signal trades."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from kairos_core.domain import MarketTick, OrderIntent, OrderType, Side

_BPS = Decimal(10_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderParams:
    """Shared by every example strategy, so one set of order settings fits them all."""

    quantity: Decimal = Decimal("0.001")
    order_type: OrderType = OrderType.MARKET
    limit_offset_bps: Decimal = Decimal(0)
    """For limit orders: how far past the signal's trade price to bid (buy) or offer (sell), in
    basis points; 0 places the limit at the trade price itself."""

    def __post_init__(self) -> None:
        if not self.quantity > 0:
            raise ValueError(f"strategy order quantity must be positive, got {self.quantity}")
        if not 0 <= self.limit_offset_bps < _BPS:
            raise ValueError(f"limit offset must be in [0, 10000) bps, got {self.limit_offset_bps}")

    def intent(self, tick: MarketTick, side: Side, reason: str) -> OrderIntent:
        """The order a signal on ``tick`` asks for."""
        limit_price = None
        if self.order_type is OrderType.LIMIT:
            offset = self.limit_offset_bps / _BPS
            factor = 1 + offset if side is Side.BUY else 1 - offset
            limit_price = (tick.price * factor).quantize(tick.price)
        return OrderIntent(
            exchange=tick.exchange,
            symbol=tick.symbol,
            side=side,
            quantity=self.quantity,
            limit_price=limit_price,
            reason=reason,
            created_at_ms=tick.timestamp_ms,
        )
