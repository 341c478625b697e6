"""Pre-trade risk: every intent is checked against live market state and the current position."""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from decimal import Decimal

import structlog

from kairos_core.domain import (
    Exchange,
    GapDetected,
    GapEvent,
    MarketTick,
    OrderIntent,
    PositionBook,
    RiskDecision,
    RiskRejection,
    TickSource,
)
from kairos_core.domain.model import datetime_from_ms

log = structlog.get_logger(__name__)

_HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskLimits:
    """Every limit the engine enforces; percentages are in percent (5 is 5 %)."""

    max_order_notional: Decimal = Decimal(10_000)
    """Quantity times price (the limit price, or the last trade for a market order), in quote."""
    max_position: Decimal = Decimal(1)
    """Largest absolute net position per symbol, in the base asset; reducing is always allowed."""
    price_band_pct: Decimal = Decimal(5)
    """How far from the last trade a limit price may be."""
    stale_after_s: float = 5.0
    """Reject when the symbol's last tick was received longer ago than this."""
    breaker_move_pct: Decimal = Decimal(10)
    """Halt a symbol whose price moves more than this within ``breaker_window_s`` of trade time."""
    breaker_window_s: float = 60.0
    breaker_cooldown_s: float = 300.0
    """Trade-time seconds after the last tripping move before a halted symbol resumes."""
    volatility_window: int = 100
    """Log returns in the rolling volatility."""

    def __post_init__(self) -> None:
        for limit in fields(self):
            value = getattr(self, limit.name)
            if not value > 0:
                raise ValueError(f"risk limit {limit.name} must be positive, got {value}")
        if self.volatility_window < 2:
            raise ValueError(f"volatility window must be at least 2 returns, got {self.volatility_window}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SymbolRisk:
    """What the engine knows of one symbol."""

    last_price: Decimal
    last_trade_ms: int
    last_received_ns: int
    volatility: float | None
    """Sample standard deviation of the last ``volatility_window`` tick-to-tick log returns."""
    halted_until_ms: int | None
    """Trade time at which a halted symbol resumes (on its first tick at or after it)."""


@dataclass(slots=True)
class _Market:
    last_price: Decimal
    last_trade_ms: int
    last_received_ns: int
    returns: deque[float]
    # Monotonic deques over the breaker window: the window's high (low) is always at the front.
    highs: deque[tuple[int, Decimal]] = field(default_factory=deque)
    lows: deque[tuple[int, Decimal]] = field(default_factory=deque)
    halted_until_ms: int | None = None


class RiskEngine:
    """Approves or rejects intents; fed every live tick through ``update_market_data``.

    Checks run cheapest and most fundamental first, and the first failure is the reason: no market
    data, stale data, halted, price band, order notional, position limit. A symbol is halted while
    its circuit breaker is tripped and while its data has an open gap (``update_continuity``): an
    order priced on a market with trades missing is priced blind. The circuit breaker runs on
    trade time, so a replayed sequence halts and resumes at the same ticks; staleness is
    measured on receipt time against ``clock`` (epoch nanoseconds, like ``received_at_ns``).
    """

    def __init__(
        self,
        positions: PositionBook,
        limits: RiskLimits | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.limits = limits = limits or RiskLimits()
        self._positions = positions
        self._clock = clock
        self._markets: dict[tuple[Exchange, str], _Market] = {}
        self._open_gaps: dict[tuple[Exchange, str], int] = {}
        self._stale_ns = int(limits.stale_after_s * 1e9)
        self._window_ms = max(1, int(limits.breaker_window_s * 1000))
        self._cooldown_ms = int(limits.breaker_cooldown_s * 1000)

    def update_market_data(self, tick: MarketTick) -> None:
        if tick.source is TickSource.BACKFILL:
            return  # history: it says nothing about the market now
        key = (tick.exchange, tick.symbol)
        price, now_ms = tick.price, tick.timestamp_ms
        market = self._markets.get(key)
        if market is None:
            market = self._markets[key] = _Market(
                price, now_ms, tick.received_at_ns, deque(maxlen=self.limits.volatility_window)
            )
        elif market.last_price and price:
            market.returns.append(math.log(float(price) / float(market.last_price)))
        market.last_price, market.last_trade_ms, market.last_received_ns = price, now_ms, tick.received_at_ns
        if market.halted_until_ms is not None and now_ms >= market.halted_until_ms:
            market.halted_until_ms = None
            log.info("risk.resumed", exchange=tick.exchange, symbol=tick.symbol, price=str(price))
        self._watch_moves(tick, market)

    def update_continuity(self, event: GapEvent) -> None:
        """Halt the event's symbol while its data has an open gap, resume once none is open."""
        key = (event.exchange, event.symbol)
        was_open = key in self._open_gaps
        if event.open_gaps:
            self._open_gaps[key] = event.open_gaps
        else:
            self._open_gaps.pop(key, None)
        if not was_open and event.open_gaps:
            log.warning(
                "risk.halted",
                exchange=event.exchange,
                symbol=event.symbol,
                reason="data_gap",
                from_id=event.from_id if isinstance(event, GapDetected) else None,
            )
        elif was_open and not event.open_gaps:
            log.info("risk.resumed", exchange=event.exchange, symbol=event.symbol, reason="data_gap_closed")

    def check(self, intent: OrderIntent) -> RiskDecision:
        limits = self.limits
        market = self._markets.get((intent.exchange, intent.symbol))
        if market is None:
            return RiskDecision.reject(RiskRejection.NO_MARKET_DATA, "no live tick seen for the symbol")
        age_ns = self._clock() - market.last_received_ns
        if age_ns > self._stale_ns:
            return RiskDecision.reject(
                RiskRejection.STALE_DATA,
                f"last tick {age_ns / 1e9:.3f} s old, limit {limits.stale_after_s}",
            )
        gaps = self._open_gaps.get((intent.exchange, intent.symbol))
        if gaps:
            return RiskDecision.reject(
                RiskRejection.HALTED, f"data gap: {gaps} gap(s) in the symbol's trades still being repaired"
            )
        if market.halted_until_ms is not None:
            until = datetime_from_ms(market.halted_until_ms).isoformat()
            return RiskDecision.reject(RiskRejection.HALTED, f"circuit breaker: halted until {until}")
        last = market.last_price
        price = last if intent.limit_price is None else intent.limit_price
        if abs(price - last) * _HUNDRED > limits.price_band_pct * last:
            return RiskDecision.reject(
                RiskRejection.PRICE_BAND,
                f"limit {price} is more than {limits.price_band_pct}% from last trade {last}",
            )
        notional = intent.quantity * price
        if notional > limits.max_order_notional:
            return RiskDecision.reject(
                RiskRejection.ORDER_NOTIONAL, f"notional {notional} above {limits.max_order_notional}"
            )
        held = self._positions.position(intent.exchange, intent.symbol).quantity
        after = held + intent.signed_quantity
        if abs(after) > limits.max_position and abs(after) > abs(held):
            return RiskDecision.reject(
                RiskRejection.POSITION_LIMIT, f"position would be {after}, limit {limits.max_position}"
            )
        return RiskDecision.approve()

    def state(self, exchange: Exchange, symbol: str) -> SymbolRisk | None:
        market = self._markets.get((exchange, symbol))
        if market is None:
            return None
        return SymbolRisk(
            last_price=market.last_price,
            last_trade_ms=market.last_trade_ms,
            last_received_ns=market.last_received_ns,
            volatility=self._volatility(market),
            halted_until_ms=market.halted_until_ms,
        )

    def halted(self, exchange: Exchange, symbol: str) -> bool:
        """By the circuit breaker or by an open data gap."""
        market = self._markets.get((exchange, symbol))
        tripped = market is not None and market.halted_until_ms is not None
        return tripped or (exchange, symbol) in self._open_gaps

    @staticmethod
    def _volatility(market: _Market) -> float | None:
        return statistics.stdev(market.returns) if len(market.returns) >= 2 else None

    def _watch_moves(self, tick: MarketTick, market: _Market) -> None:
        """Trip the breaker when the price has moved more than the limit from any trade in the window."""
        price, now_ms = tick.price, tick.timestamp_ms
        highs, lows = market.highs, market.lows
        while highs and highs[-1][1] <= price:
            highs.pop()
        highs.append((now_ms, price))
        while lows and lows[-1][1] >= price:
            lows.pop()
        lows.append((now_ms, price))
        oldest = now_ms - self._window_ms
        while highs[0][0] <= oldest:
            highs.popleft()
        while lows[0][0] <= oldest:
            lows.popleft()
        high, low, limit = highs[0][1], lows[0][1], self.limits.breaker_move_pct
        if (price - low) * _HUNDRED > limit * low:
            reference = low
        elif (high - price) * _HUNDRED > limit * high:
            reference = high
        else:
            return
        if market.halted_until_ms is None:
            log.warning(
                "risk.halted",
                exchange=tick.exchange,
                symbol=tick.symbol,
                price=str(price),
                reference=str(reference),
                move_pct=f"{(price - reference) / reference * _HUNDRED:.2f}",
                window_s=self.limits.breaker_window_s,
                cooldown_s=self.limits.breaker_cooldown_s,
                volatility=self._volatility(market),
            )
        market.halted_until_ms = max(market.halted_until_ms or 0, now_ms + self._cooldown_ms)
