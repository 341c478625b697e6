"""Trading values: what a strategy asks for, what risk answers, and what execution reports."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from kairos_core.domain.model import Exchange, Side

_ZERO = Decimal(0)


class OrderType(StrEnum):
    """How an order is priced: at the market, or no worse than its limit price."""

    MARKET = "market"
    LIMIT = "limit"


class RiskRejection(StrEnum):
    """Why the risk engine refused an intent; a label for counters and logs."""

    NO_MARKET_DATA = "no_market_data"
    """No live tick was ever seen for the symbol, so nothing can price the order."""
    STALE_DATA = "stale_data"
    HALTED = "halted"
    """The symbol's circuit breaker tripped and its cool-down has not passed, or its data has an
    open gap (trades missing from the stream, being repaired)."""
    PRICE_BAND = "price_band"
    ORDER_NOTIONAL = "order_notional"
    POSITION_LIMIT = "position_limit"


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderIntent:
    """A strategy's wish to trade, before risk has seen it; nothing is sent until it is approved."""

    exchange: Exchange
    symbol: str
    side: Side
    quantity: Decimal
    limit_price: Decimal | None = None
    """None for a market order."""
    reason: str
    created_at_ms: int
    """Trade time of the tick that prompted the intent, epoch milliseconds."""

    def __post_init__(self) -> None:
        if not self.quantity > 0:
            raise ValueError(f"order quantity must be positive, got {self.quantity}")
        if self.limit_price is not None and not self.limit_price > 0:
            raise ValueError(f"limit price must be positive, got {self.limit_price}")

    @property
    def order_type(self) -> OrderType:
        return OrderType.MARKET if self.limit_price is None else OrderType.LIMIT

    def describe(self) -> dict[str, object]:
        """The intent as log fields: the same keys on every line from ``order.intent`` to its fill."""
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": str(self.quantity),
            "limit_price": None if self.limit_price is None else str(self.limit_price),
        }

    @property
    def signed_quantity(self) -> Decimal:
        """What the order adds to the position: positive to buy, negative to sell."""
        return self.quantity if self.side is Side.BUY else -self.quantity


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskDecision:
    approved: bool
    reason: RiskRejection | None = None
    """Set exactly when the intent is rejected."""
    detail: str = ""

    def __post_init__(self) -> None:
        if self.approved == (self.reason is not None):
            raise ValueError("a risk decision has a rejection reason exactly when it is not approved")

    @classmethod
    def approve(cls) -> RiskDecision:
        return cls(approved=True)

    @classmethod
    def reject(cls, reason: RiskRejection, detail: str) -> RiskDecision:
        return cls(approved=False, reason=reason, detail=detail)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill:
    intent: OrderIntent
    price: Decimal
    quantity: Decimal
    timestamp_ms: int
    """Trade time of the market price the order filled at, epoch milliseconds."""

    @property
    def notional(self) -> Decimal:
        return self.price * self.quantity


@dataclass(frozen=True, slots=True, kw_only=True)
class Position:
    """A symbol's net holding, valued at its average entry price and at the last mark.

    ``quantity`` is signed (negative is short). Realised P&L accrues when a fill reduces or flips
    the position; unrealised P&L is what closing the rest at ``mark_price`` would realise.
    """

    exchange: Exchange
    symbol: str
    quantity: Decimal = _ZERO
    average_price: Decimal = _ZERO
    """Average entry price of the open quantity; 0 while flat."""
    realised_pnl: Decimal = _ZERO
    mark_price: Decimal | None = None

    @property
    def unrealised_pnl(self) -> Decimal:
        if self.mark_price is None or not self.quantity:
            return _ZERO
        return self.quantity * (self.mark_price - self.average_price)

    def marked(self, price: Decimal) -> Position:
        return replace(self, mark_price=price)

    def after_fill(self, signed_quantity: Decimal, price: Decimal) -> Position:
        """The position once ``signed_quantity`` traded at ``price`` (also the new mark)."""
        if not signed_quantity:
            raise ValueError("a fill must trade a non-zero quantity")
        held = self.quantity
        after = held + signed_quantity
        realised = self.realised_pnl
        if not held or (held > 0) == (signed_quantity > 0):  # opening or adding
            average = (held * self.average_price + signed_quantity * price) / after
        else:
            closed = min(abs(signed_quantity), abs(held))
            realised += closed * (price - self.average_price) * (1 if held > 0 else -1)
            if not after:
                average = _ZERO
            elif (after > 0) == (held > 0):  # reduced, same side: the entry price stands
                average = self.average_price
            else:  # flipped: the new side was opened at this price
                average = price
        return replace(self, quantity=after, average_price=average, realised_pnl=realised, mark_price=price)
