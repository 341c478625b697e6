"""Example strategies: deterministic functions of the tick sequence, with every knob a parameter."""

from kairos_core.application.strategies.breakout import Breakout, BreakoutParams
from kairos_core.application.strategies.moving_average_crossover import (
    MovingAverageCrossover,
    MovingAverageCrossoverParams,
)
from kairos_core.application.strategies.orders import OrderParams

__all__ = [
    "Breakout",
    "BreakoutParams",
    "MovingAverageCrossover",
    "MovingAverageCrossoverParams",
    "OrderParams",
]
