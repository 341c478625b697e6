"""``NatsTickFeed``: the ticks ingest nodes publish, read from NATS as one more feed.

For strategies and monitors on other machines: they run the usual bus and consumers with this
feed in place of an exchange's. It is a core NATS subscription, live from the moment it
subscribes and at most once, like an exchange's stream: a reader that falls too far behind has
messages dropped by its client (logged as a slow consumer). Whoever needs every tick reads the
stream through a durable JetStream consumer instead, as the persist role does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from kairos_core.adapters.outbound.nats import wire
from kairos_core.domain import Exchange, MarketFeedPort, TickSink
from kairos_core.domain.status import NatsFeedStatus

log = structlog.get_logger(__name__)

_READY_EVERY = 64
"""Ticks between two waits for the sink's room (the WebSocket feeds' rhythm)."""


class NatsTickFeed(MarketFeedPort):
    """Streams ``exchange``'s ticks (all symbols, or those given) from NATS into ``sink`` until
    ``stop``; a message that is not a tick is counted in ``rejected``, logged and skipped."""

    def __init__(
        self,
        sink: TickSink,
        client: Client,
        *,
        exchange: Exchange,
        subject_prefix: str = "kairos.ticks",
        symbols: Iterable[str] = (),
    ) -> None:
        prefix = wire.checked_prefix(subject_prefix)
        chosen = tuple(symbols)
        self._subjects = (
            [wire.subject(prefix, exchange, symbol) for symbol in chosen]
            if chosen
            else [wire.exchange_subjects(prefix, exchange)]
        )
        self._sink = sink
        self._client = client
        self._exchange = exchange
        self._stopped = asyncio.Event()
        self._since_ready = 0
        self.received = 0
        self.rejected = 0

    @property
    def exchange(self) -> Exchange:
        return self._exchange

    def nats_status(self) -> NatsFeedStatus:
        """Its counters (not ``status``: that would make it a ``FeedStatusPort`` of exchange connections)."""
        return NatsFeedStatus(exchange=self._exchange, received=self.received, rejected=self.rejected)

    async def start(self) -> None:
        subscriptions = [await self._client.subscribe(s, cb=self._on_message) for s in self._subjects]
        log.info("feed.subscribed", exchange=self._exchange, subjects=self._subjects)
        try:
            await self._stopped.wait()
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()
            log.info("feed.stopped", exchange=self._exchange, received=self.received, rejected=self.rejected)

    async def stop(self) -> None:
        self._stopped.set()

    async def _on_message(self, message: Msg) -> None:
        try:
            tick = wire.decode(message.data)
        except msgspec.DecodeError as e:
            self.rejected += 1
            log.warning("feed.message_rejected", subject=message.subject, error=str(e))
            return
        self.received += 1
        self._sink.publish(tick)
        self._since_ready += 1
        if self._since_ready >= _READY_EVERY:
            self._since_ready = 0
            await self._sink.writable()  # the next messages wait in the subscription's queue
