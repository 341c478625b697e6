"""Logs the latest price per symbol, at most once per interval so a busy market stays readable."""

from __future__ import annotations

import time
from decimal import Decimal

import structlog

from kairos_core.application.bus import Subscription
from kairos_core.domain import Lagged

log = structlog.get_logger(__name__)


def price_text(price: Decimal) -> str:
    """Every significant digit, and at least two decimals: ``3098.07``, ``0.3513``, ``58001.00``."""
    plain = format(price.normalize(), "f")
    whole, _, fraction = plain.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


class PriceMonitor:
    """The seed's price monitor: ``📊 ETHUSDT | $3098.07 | Vol: 0.0220``.

    A symbol's price is logged when it first trades and then at most once per ``interval``
    seconds (0 logs every tick); lost ticks are logged as a warning, never silently.
    """

    lossless = False

    def __init__(self, interval: float = 1.0, name: str = "price_monitor") -> None:
        self.name = name
        self._interval = interval
        self._next_log: dict[tuple[str, str], float] = {}

    async def run(self, subscription: Subscription) -> None:
        while True:
            try:
                async for tick in subscription:
                    key = (tick.exchange, tick.symbol)
                    now = time.monotonic()
                    if now >= self._next_log.get(key, 0.0):
                        self._next_log[key] = now + self._interval
                        log.info(
                            "price.update",
                            exchange=tick.exchange,
                            symbol=tick.symbol,
                            price=price_text(tick.price),
                            volume=f"{tick.volume:.4f}",
                        )
                return
            except Lagged as e:
                log.warning("consumer.lagged", consumer=self.name, missed=e.missed)
