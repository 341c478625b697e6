"""The strategy consumer: every live tick to each strategy, every intent to review with its tick.

The strategy engine and the risk consumer read the bus on their own subscriptions, so either may
be ahead of the other. The engine hands each intent over together with the tick it was made on
(its origin), and the reviewer decides it only once its risk state includes that tick: an intent
is never checked against state older than the tick it came from, so one made on the tick that
trips the circuit breaker is rejected as halted however far behind risk was when it arrived.
``review`` parks an intent whose origin risk has not reached yet instead of waiting for it, so
the engine never waits for risk to catch up (see ``risk_engine`` for the other side).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog

from kairos_core.application.bus import Subscription
from kairos_core.domain import Lagged, MarketTick, OrderIntent, Strategy, TickSource

log = structlog.get_logger(__name__)


class IntentReviewer(Protocol):
    """Decides the intents the strategy engine hands over: risk check, then execution.

    ``review`` may decide ``intent`` at once or later, but never against market state older than
    ``origin``, the tick it was made on; it returns without waiting for a decision it defers.
    Intents are decided in the order they were handed over.
    """

    async def review(self, intent: OrderIntent, origin: MarketTick) -> None: ...


class StrategyEngine:
    """Runs each strategy on every live tick and hands each intent to the reviewer.

    Backfilled ticks are skipped: they are history, not news. The engine keeps no risk state and
    never touches the broker. Its state lives in the strategies, so ``run`` may be called again
    with a new subscription.
    """

    lossless = False

    def __init__(
        self, strategies: Sequence[Strategy], reviewer: IntentReviewer, *, name: str = "strategy"
    ) -> None:
        self.name = name
        self._strategies = tuple(strategies)
        self._reviewer = reviewer
        self.intents = 0
        """Intents the strategies made, for metrics."""

    async def run(self, subscription: Subscription) -> None:
        while True:
            try:
                async for item in subscription:
                    if isinstance(item, MarketTick) and item.source is not TickSource.BACKFILL:
                        await self.on_market_tick(item)
                return
            except Lagged as e:
                log.warning("consumer.lagged", consumer=self.name, missed=e.missed)

    async def on_market_tick(self, tick: MarketTick) -> None:
        for strategy in self._strategies:
            intent = strategy.on_market_tick(tick)
            if intent is None:
                continue
            self.intents += 1
            log.info("order.intent", strategy=strategy.name, **intent.describe(), reason=intent.reason)
            await self._reviewer.review(intent, tick)
