"""``JetStreamTickBatches``: the persist nodes' shared durable pull consumer, a batch at a time.

Each request asks the consumer for up to ``batch_size`` messages, waiting at most ``wait`` seconds
for them (the server ends the request with a 408 status then), so a batch is full or at most
``wait`` old, as the all-in-one persistence's are. While a batch is being stored the next one is
already asked for and arriving (a node holds at most two batches unacknowledged). The messages
arrive on an inbox of this node's own; several nodes pulling from one durable consumer share its
messages, each to one node at a time, and ``max_ack_pending`` on the consumer bounds how many are
out at once.

Acks are explicit and per message (never ack-all: on a shared consumer that would acknowledge
what another node has not stored yet). A message that cannot be decoded is terminated (never
delivered again) and logged with an excerpt, so one bad message cannot stall the consumer.

Measured here against nats-py's ``PullSubscription.fetch`` and ``Msg.ack``: 7 CPU µs per message
fetched and acknowledged against 27, by one lingering request per batch into a callback instead
of a no-wait probe plus a second request and a queue read per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kairos_core.adapters.outbound.nats import wire
from kairos_core.domain import MarketTick, TickBatch, TickBatchSource

log = structlog.get_logger(__name__)

_ACK, _PROGRESS, _NAK, _TERM = b"+ACK", b"+WPI", b"-NAK", b"+TERM"
_STATUS = "Status"
_HEARTBEAT = "100"
_WARN_EVERY = 10.0
"""Seconds between two warnings about the same refused pull request."""


class _JetStreamBatch(TickBatch):
    __slots__ = ("_client", "_messages", "_ticks")

    def __init__(self, client: Client, ticks: list[MarketTick], messages: list[Msg]) -> None:
        self._client = client
        self._ticks = ticks
        self._messages = messages

    @property
    def ticks(self) -> Sequence[MarketTick]:
        return self._ticks

    async def ack(self) -> None:
        await self._reply(_ACK)

    async def hold(self) -> None:
        await self._reply(_PROGRESS)

    async def release(self) -> None:
        await self._reply(_NAK)

    async def _reply(self, verdict: bytes) -> None:
        """Lost with the connection, a verdict costs a redelivery, never a tick."""
        publish = self._client.publish
        with contextlib.suppress(nats.errors.Error):
            for message in self._messages:
                await publish(message.reply, verdict)


class JetStreamTickBatches(TickBatchSource):
    """Batches from the durable pull consumer ``durable`` of ``stream``; ``start`` before the first
    ``next_batch``, ``aclose`` at the end (what arrived and was not handed out is released)."""

    def __init__(
        self, client: Client, *, stream: str, durable: str, batch_size: int = 1_000, wait: float = 0.1
    ) -> None:
        if batch_size < 1 or wait <= 0:
            raise ValueError("batches need batch_size >= 1 and a positive wait")
        self._client = client
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch_size = batch_size
        self._wait = wait
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._arrived: list[Msg] = []
        self._wanted = 0
        self._ended = asyncio.Event()
        self._asking = False
        self._refused = False
        self._warned_at = 0.0
        self.rejected = 0

    async def start(self) -> None:
        self._inbox = self._client.new_inbox()
        self._subscription = await self._client.subscribe(self._inbox, cb=self._on_message)

    async def aclose(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()
        left, self._arrived = self._arrived, []
        await _JetStreamBatch(self._client, [], left).release()

    async def next_batch(self) -> TickBatch | None:
        if not self._asking and not await self._ask():
            await asyncio.sleep(self._wait)
            return None
        with contextlib.suppress(TimeoutError):  # a request lost with a connection never ends
            await asyncio.wait_for(self._ended.wait(), self._wait + 1.0)
        self._asking = False
        messages, self._arrived = self._arrived, []
        if not messages:
            if self._refused:  # asking again at once would be refused again at once
                await asyncio.sleep(self._wait)
            return None
        await self._ask()  # the next batch arrives while this one is stored
        kept: list[Msg] = []
        ticks = await self._decoded(messages, kept)
        return _JetStreamBatch(self._client, ticks, kept)

    async def _ask(self) -> bool:
        """Ask for the next batch; False if the request could not be sent."""
        wanted = self._batch_size - len(self._arrived)
        self._wanted = self._batch_size
        self._refused = False
        self._ended.clear()
        if wanted <= 0:  # late messages of an earlier request made a batch already
            self._ended.set()
            return True
        request = {"batch": wanted, "expires": int(self._wait * 1e9)}
        try:
            await self._client.publish(self._next_subject, json.dumps(request).encode(), self._inbox)
        except nats.errors.Error as e:  # reconnecting with a full buffer: ask again later
            self._warn("nats.pull_failed", error=f"{type(e).__name__}: {e}")
            return False
        self._asking = True
        return True

    async def _decoded(self, messages: list[Msg], keep: list[Msg]) -> list[MarketTick]:
        """The ticks of ``messages``; each one kept goes to ``keep``, the rest are terminated."""
        ticks: list[MarketTick] = []
        decode = wire.decode
        for message in messages:
            try:
                ticks.append(decode(message.data))
            except msgspec.DecodeError as e:
                self.rejected += 1
                log.error(
                    "nats.message_rejected",
                    subject=message.subject,
                    error=str(e),
                    excerpt=message.data[:120].hex(),
                )
                with contextlib.suppress(nats.errors.Error):
                    await self._client.publish(message.reply, _TERM)
                continue
            keep.append(message)
        return ticks

    async def _on_message(self, message: Msg) -> None:
        if message.reply:
            self._arrived.append(message)
            if len(self._arrived) >= self._wanted:
                self._ended.set()
            return
        status = (message.headers or {}).get(_STATUS)
        if status == _HEARTBEAT:
            return
        if status not in ("404", "408"):  # 409: max ack pending reached, consumer deleted, ...
            description = (message.headers or {}).get("Description", "")
            self._refused = True
            self._warn("nats.pull_refused", status=status, description=description)
        self._ended.set()

    def _warn(self, event: str, **fields: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(event, **fields)
