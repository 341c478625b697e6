"""The publishing consumer: every tick on the bus to a ``TickPublisher`` (a broker), none dropped.

Lossless: while the publisher waits for the broker (its window of unconfirmed ticks is full, or
the broker is away), this consumer stops reading, its queue fills and the bus holds the feeds
back, as persistence does. Gap events are not published: the broker carries trades, and a remote
reader sees continuity in the trade ids; the ingest node's log keeps the events.
"""

from __future__ import annotations

import structlog

from kairos_core.application.bus import Subscription
from kairos_core.domain import BusClosed, MarketTick, TickPublisher

log = structlog.get_logger(__name__)

DEFAULT_BATCH = 256
"""Ticks handed to the publisher at once: what is ready on the bus, up to this many."""


class PublishingConsumer:
    """A lossless bus consumer that sends every tick to ``publisher`` and, at the end, waits until
    the broker has confirmed them all.

    The ticks being sent belong to this object, not to ``run``: a restarted loop sends them again
    first (the broker drops the repeats).
    """

    lossless = True

    def __init__(
        self, publisher: TickPublisher, *, name: str = "publisher", batch: int = DEFAULT_BATCH
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.name = name
        self._publisher = publisher
        self._batch = batch
        self._sending: list[MarketTick] = []
        self.sent = 0

    async def run(self, subscription: Subscription) -> None:
        if self._sending:
            await self._send()
        closed = False
        while not closed:
            try:
                item = subscription.try_recv() or await subscription.recv()
            except BusClosed:
                break
            batch = self._sending
            if isinstance(item, MarketTick):
                batch.append(item)
            while len(batch) < self._batch:
                try:
                    ready = subscription.try_recv()
                except BusClosed:
                    closed = True
                    break
                if ready is None:
                    break
                if isinstance(ready, MarketTick):
                    batch.append(ready)
            if batch:
                await self._send()
        await self._publisher.flush()
        log.info("publisher.flushed", sent=self.sent)

    async def _send(self) -> None:
        await self._publisher.send(self._sending)
        self.sent += len(self._sending)
        self._sending = []
