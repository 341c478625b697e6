"""The risk consumer: live ticks into risk state and the broker's marks; intents through risk to execution.

Ordering. The strategy engine hands each intent over with its origin, the tick it was made on,
and it is decided only once this consumer has applied that tick: at once by ``review`` if it
has (the origin's trade id is at most the highest seen for its symbol), otherwise by the run
loop right after applying it. So risk never judges an intent by state older than its tick, and
an intent made on the tick that trips the circuit breaker is rejected as halted even when this
consumer was behind. Risk may be ahead, though: an intent reviewed after this consumer read
later ticks of its symbol is judged by the newer state. The decisions are exactly those of one
loop doing every step per tick whenever risk does not lead, as when both keep up tick by tick,
or when the strategy engine is woken first and orders complete without yielding (paper); an
order in flight at a real venue lets this consumer resume first and read ahead. Decisions are
serialised in hand-over order: one intent is checked and submitted before the next is checked,
so the position limit sees every earlier fill.

An intent whose origin this consumer never applies (lost to ``Lagged`` here but not on the
strategy engine's subscription) is not dropped: once this consumer has read everything published
so far its origin can no longer arrive, and it is decided against the latest state, as is every
intent still waiting when the bus closes. Between runs an intent is decided at once only if its
origin was applied; any other waits for the next run, whose bus may bring its tick (a restarted
strategy engine may start before this consumer does). Trade ids are assumed to rise within a
symbol in bus order, as they do in each venue's live stream and in a recording replayed alone.
"""

from __future__ import annotations

import asyncio
from collections import deque

import structlog

from kairos_core.application.bus import Subscription
from kairos_core.application.consumers.strategy_engine import IntentReviewer
from kairos_core.application.risk import RiskEngine
from kairos_core.domain import Exchange, Lagged, MarketTick, OrderExecutionPort, OrderIntent, TickSource

log = structlog.get_logger(__name__)


class RiskEngineConsumer(IntentReviewer):
    """Feeds every live tick to risk and the broker; executes the intents risk approves.

    Backfilled ticks are skipped: they are history, not news; gap events halt and resume symbols,
    so an intent made on a tick that came after a gap's detection is judged while the gap is open.
    With no intents it still keeps risk state (and its halt/resume events) and the broker's marks
    current. Waiting intents and the trade ids seen live on this object, so ``run`` may be called
    again with a new subscription.
    """

    lossless = False

    def __init__(self, risk: RiskEngine, broker: OrderExecutionPort, *, name: str = "risk") -> None:
        self.name = name
        self._risk = risk
        self._broker = broker
        self._seen: dict[tuple[Exchange, str], int] = {}
        """The highest trade id applied per symbol."""
        self._pending: deque[tuple[OrderIntent, MarketTick]] = deque()
        self._deciding = asyncio.Lock()
        self._reading: Subscription | None = None
        self.approved = 0
        self.rejected: dict[str, int] = {}
        """Intents rejected, by ``RiskRejection``."""
        self.fills = 0

    @property
    def pending(self) -> int:
        """Intents waiting for this consumer to reach the tick they were made on."""
        return len(self._pending)

    async def review(self, intent: OrderIntent, origin: MarketTick) -> None:
        self._pending.append((intent, origin))
        async with self._deciding:
            await self._decide_ready()

    async def run(self, subscription: Subscription) -> None:
        self._reading = subscription
        try:
            while True:
                try:
                    async for item in subscription:
                        if not isinstance(item, MarketTick):
                            self._risk.update_continuity(item)
                        elif item.source is not TickSource.BACKFILL:
                            self._apply(item)
                            if self._pending:
                                async with self._deciding:
                                    await self._decide_ready()
                    break
                except Lagged as e:
                    log.warning("consumer.lagged", consumer=self.name, missed=e.missed)
            async with self._deciding:  # the bus has closed: whatever still waits lost its tick here
                while self._pending:
                    await self._decide(*self._pending.popleft())
        finally:
            self._reading = None

    def _apply(self, tick: MarketTick) -> None:
        self._risk.update_market_data(tick)
        self._broker.on_market_tick(tick)
        key = (tick.exchange, tick.symbol)
        seen = self._seen.get(key)
        if seen is None or tick.trade_id > seen:
            self._seen[key] = tick.trade_id

    def _has_seen(self, origin: MarketTick) -> bool:
        seen = self._seen.get((origin.exchange, origin.symbol))
        return seen is not None and origin.trade_id <= seen

    def _nothing_to_read(self) -> bool:
        """No tick can still arrive for a waiting intent: every one published was read or lost."""
        return self._reading is not None and self._reading.stats().depth == 0

    async def _decide_ready(self) -> None:
        """Decide every intent whose origin was applied (or can no longer be), oldest first."""
        while (ready := self._next_ready()) is not None:
            await self._decide(*ready)

    def _next_ready(self) -> tuple[OrderIntent, MarketTick] | None:
        pending = self._pending
        if pending and self._nothing_to_read():
            return pending.popleft()
        for index, entry in enumerate(pending):
            if self._has_seen(entry[1]):
                del pending[index]
                return entry
        return None

    async def _decide(self, intent: OrderIntent, origin: MarketTick) -> None:
        fields = intent.describe()
        if not self._has_seen(origin):
            log.warning("order.origin_unseen", **fields, origin_trade_id=origin.trade_id)
        decision = self._risk.check(intent)
        if not decision.approved:
            reason = str(decision.reason)
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            log.info("order.rejected", **fields, reason=decision.reason, detail=decision.detail)
            return
        self.approved += 1
        fill = await self._broker.submit(intent)
        if fill is not None:
            self.fills += 1
            log.info("order.filled", **fields, price=str(fill.price))
