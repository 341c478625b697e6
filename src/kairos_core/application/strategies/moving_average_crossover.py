"""A moving-average crossover: buy when the fast average of trade prices crosses above the slow one,
sell when it crosses below."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from kairos_core.application.strategies.orders import OrderParams
from kairos_core.domain import Exchange, MarketTick, OrderIntent, Side, Strategy


@dataclass(frozen=True, slots=True, kw_only=True)
class MovingAverageCrossoverParams(OrderParams):
    fast_window: int = 10
    """Ticks in the fast simple moving average."""
    slow_window: int = 30
    """Ticks in the slow simple moving average; no signal until a symbol has traded this often."""

    def __post_init__(self) -> None:
        OrderParams.__post_init__(self)
        if not 1 <= self.fast_window < self.slow_window:
            raise ValueError(
                f"crossover needs 1 <= fast window < slow window, got {self.fast_window} "
                f"and {self.slow_window}"
            )


@dataclass(slots=True)
class _Averages:
    prices: deque[Decimal] = field(default_factory=deque)
    """The last ``slow_window`` prices, oldest first."""
    fast_sum: Decimal = Decimal(0)
    slow_sum: Decimal = Decimal(0)
    regime: int = 0
    """Sign of fast minus slow when it was last non-zero; 0 until it first is."""


class MovingAverageCrossover(Strategy):
    """One signal per crossing, per symbol.

    Sums are kept exactly (Decimal, no division) and averages are compared as
    ``fast_sum * slow_window`` against ``slow_sum * fast_window``, so a tie is a real tie and a
    replay gives the same signals. The first regime seen once the slow window is full is taken as
    the starting state, not as a crossing; touching without crossing (averages equal, then back
    where they were) is no signal.
    """

    def __init__(
        self, params: MovingAverageCrossoverParams | None = None, name: str = "ma_crossover"
    ) -> None:
        self.name = name
        self.params = params or MovingAverageCrossoverParams()
        self._state: dict[tuple[Exchange, str], _Averages] = {}

    def on_market_tick(self, tick: MarketTick) -> OrderIntent | None:
        params = self.params
        fast, slow = params.fast_window, params.slow_window
        state = self._state.get((tick.exchange, tick.symbol))
        if state is None:
            state = self._state[(tick.exchange, tick.symbol)] = _Averages()
        prices = state.prices
        prices.append(tick.price)
        state.fast_sum += tick.price
        state.slow_sum += tick.price
        if len(prices) > fast:
            state.fast_sum -= prices[-fast - 1]
        if len(prices) > slow:
            state.slow_sum -= prices.popleft()
        elif len(prices) < slow:
            return None
        difference = state.fast_sum * slow - state.slow_sum * fast
        regime = (difference > 0) - (difference < 0)
        if not regime or regime == state.regime:
            return None
        crossed, state.regime = state.regime != 0, regime
        if not crossed:
            return None
        side, direction = (Side.BUY, "above") if regime > 0 else (Side.SELL, "below")
        return params.intent(
            tick, side, f"{self.name}: {fast}-tick average crossed {direction} the {slow}-tick average"
        )
