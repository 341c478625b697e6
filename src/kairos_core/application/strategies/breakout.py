"""A channel breakout: buy when a trade prints above the highest of the previous N trades, sell
when one prints below the lowest."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import Decimal

from kairos_core.application.strategies.orders import OrderParams
from kairos_core.domain import Exchange, MarketTick, OrderIntent, Side, Strategy


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakoutParams(OrderParams):
    window: int = 50
    """Previous trades that make the channel; no signal until a symbol has traded this often."""

    def __post_init__(self) -> None:
        OrderParams.__post_init__(self)
        if self.window < 1:
            raise ValueError(f"breakout window must be at least 1 tick, got {self.window}")


class Breakout(Strategy):
    """One signal per change of direction, per symbol.

    A breakout in the direction of the last one is no news (a trend makes new highs tick after
    tick), so only the first upside break after a downside one (or the very first break) buys,
    and the other way round.
    """

    def __init__(self, params: BreakoutParams | None = None, name: str = "breakout") -> None:
        self.name = name
        self.params = params or BreakoutParams()
        self._windows: dict[tuple[Exchange, str], deque[Decimal]] = {}
        self._last_side: dict[tuple[Exchange, str], Side] = {}

    def on_market_tick(self, tick: MarketTick) -> OrderIntent | None:
        key = (tick.exchange, tick.symbol)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque(maxlen=self.params.window)
        price = tick.price
        side: Side | None = None
        if len(window) == window.maxlen:
            if price > max(window):
                side = Side.BUY
            elif price < min(window):
                side = Side.SELL
        window.append(price)
        if side is None or self._last_side.get(key) is side:
            return None
        self._last_side[key] = side
        edge = "above the high" if side is Side.BUY else "below the low"
        return self.params.intent(tick, side, f"{self.name}: traded {edge} of the last {window.maxlen} ticks")
