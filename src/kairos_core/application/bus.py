"""The broadcast bus between feeds and consumers, with tokio ``broadcast`` semantics.

Besides ticks it carries the gap guards' continuity events (``GapEvent``), in order with the
ticks, so every subscriber receives ``BusItem``s and tells them apart by type; an event counts as
one item in every bound below.

Ordinary subscribers share one ring of ``capacity`` slots: ``publish`` writes a slot and never
waits, every subscriber reads every tick in order, and one that falls more than ``capacity``
behind loses the oldest ticks and learns how many from ``Lagged``. Lossless subscribers
(persistence, publishers) each get a queue that is never overwritten instead; while one holds
``capacity`` ticks, ``writable()`` makes the feed stop reading its socket until the queue has
drained to half, so back-pressure reaches the exchange connection and nothing is dropped.

Single event loop only: publish and receive from the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

from kairos_core.application.latency import RECEIPT_TO_CONSUMER_BOUNDS, LatencyHistogram, sample_mask
from kairos_core.domain import BusClosed, BusItem, GapEvent, Lagged, MarketTick

DEFAULT_CAPACITY = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberStats:
    """A snapshot of one subscriber's counters."""

    name: str
    lossless: bool
    received: int
    """Ticks handed to the subscriber so far."""
    depth: int
    """Ticks published and still readable by the subscriber."""
    lag: int
    """Ticks published that the subscriber has not read, including ones already overwritten."""
    lost: int
    """Ticks overwritten before the subscriber read them (always 0 for lossless subscribers)."""


class Subscription:
    """One consumer's view of the bus: ``await recv()`` or ``async for tick in subscription``.

    ``recv`` raises ``Lagged`` once after ticks were lost (the next call goes on with the oldest
    tick still held) and ``BusClosed`` when the bus is closed and everything was read. ``async
    for`` ends at close; a ``Lagged`` propagates, and iterating again resumes.
    """

    __slots__ = ("_bus", "_detached", "_lost", "_mask", "_next", "latency", "name", "received")

    def __init__(self, bus: BroadcastBus, name: str) -> None:
        self._bus = bus
        self._next = bus._seq
        self._lost = 0
        self._detached = False
        self.name = name
        self.received = 0
        self._mask = bus._sample_mask
        self.latency = None if self._mask == -1 else LatencyHistogram(RECEIPT_TO_CONSUMER_BOUNDS)
        """A tick's receipt to this subscriber reading it, every ``sample_every``-th item."""

    @property
    def lossless(self) -> bool:
        return False

    def try_recv(self) -> BusItem | None:
        """The next item if one is ready, else None; raises ``Lagged`` or ``BusClosed``."""
        if self._detached:
            raise BusClosed()
        bus = self._bus
        seq = bus._seq
        position = self._next
        if position < seq:
            oldest = seq - bus._capacity
            if position < oldest:
                missed = oldest - position
                self._next = oldest
                self._lost += missed
                raise Lagged(missed)
            self._next = position + 1
            self.received += 1
            if position & self._mask:  # one AND a read; every N-th position is timed
                return bus._ring[position % bus._capacity]
            return self._sampled(bus._ring[position % bus._capacity])
        if bus._closed:
            raise BusClosed()
        return None

    def _sampled(self, item: BusItem) -> BusItem:
        if self.latency is not None and type(item) is MarketTick:
            self.latency.observe_ns(time.time_ns() - item.received_at_ns)
        return item

    async def recv(self) -> BusItem:
        """Wait for the next item."""
        while (tick := self.try_recv()) is None:
            await self._bus._wait_for_publish()
        return tick

    def stats(self) -> SubscriberStats:
        lag = self._bus._seq - self._next
        overwritten = max(0, lag - self._bus._capacity)
        return SubscriberStats(
            name=self.name,
            lossless=False,
            received=self.received,
            depth=lag - overwritten,
            lag=lag,
            lost=self._lost + overwritten,
        )

    def close(self) -> None:
        """Stop receiving: the bus forgets this subscriber and its ``recv`` raises ``BusClosed``."""
        self._detached = True
        self._bus._forget(self)
        self._bus._wake_readers()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusItem:
        try:
            return await self.recv()
        except BusClosed:
            raise StopAsyncIteration from None


class LosslessSubscription(Subscription):
    """A subscriber that is never overwritten; its backlog pauses the feeds instead."""

    __slots__ = ("_queue",)

    def __init__(self, bus: BroadcastBus, name: str) -> None:
        super().__init__(bus, name)
        self._queue: deque[BusItem] = deque()

    @property
    def lossless(self) -> bool:
        return True

    def try_recv(self) -> BusItem | None:
        if self._detached:
            raise BusClosed()
        queue = self._queue
        if queue:
            tick = queue.popleft()
            self.received += 1
            if len(queue) <= self._bus._resume_depth:
                self._bus._release(self)
            if self.received & self._mask:
                return tick
            return self._sampled(tick)
        if self._bus._closed:
            raise BusClosed()
        return None

    def stats(self) -> SubscriberStats:
        depth = len(self._queue)
        return SubscriberStats(
            name=self.name, lossless=True, received=self.received, depth=depth, lag=depth, lost=0
        )


class BroadcastBus:
    """Bounded broadcast of ticks from feeds to every subscriber; implements ``TickSink``.

    With ``sample_every`` N (a power of two; 0 is off) each subscriber times every N-th item it
    reads from the tick's receipt (its ``latency`` histogram).
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, sample_every: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"bus capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._sample_mask = sample_mask(sample_every)
        self._resume_depth = capacity // 2
        # Slots are read only after they were written (position >= seq - capacity).
        self._ring = cast("list[BusItem]", [None] * capacity)
        self._seq = 0
        self._closed = False
        self._subscribers: list[Subscription] = []
        self._lossless: list[LosslessSubscription] = []
        self._saturated: set[LosslessSubscription] = set()
        self._readers: list[asyncio.Future[None]] = []
        self._writers: list[asyncio.Future[None]] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def published(self) -> int:
        """Ticks published since the bus was made."""
        return self._seq

    def subscribe(self, name: str, *, lossless: bool = False) -> Subscription:
        """A new subscriber that sees every tick published from now on."""
        if self._closed:
            raise BusClosed()
        subscription = LosslessSubscription(self, name) if lossless else Subscription(self, name)
        self._subscribers.append(subscription)
        if isinstance(subscription, LosslessSubscription):
            self._lossless.append(subscription)
        return subscription

    def publish(self, tick: BusItem) -> None:
        """Hand ``tick`` to every subscriber; never waits, never drops for a lossless one."""
        if self._closed:
            raise BusClosed()
        seq = self._seq
        self._ring[seq % self._capacity] = tick
        self._seq = seq + 1
        for subscription in self._lossless:
            queue = subscription._queue
            queue.append(tick)
            if len(queue) >= self._capacity:
                self._saturated.add(subscription)
        if self._readers:
            _wake(self._readers)

    def publish_event(self, event: GapEvent) -> None:
        """Hand ``event`` to every subscriber, after every tick published before it."""
        self.publish(event)

    async def writable(self) -> None:
        """Return once no lossless subscriber is full (at once if none is, or the bus is closed)."""
        while self._saturated and not self._closed:
            await _wait_in(self._writers)

    def close(self) -> None:
        """No more ticks: subscribers read what is left, then their iteration ends."""
        self._closed = True
        _wake(self._readers)
        _wake(self._writers)

    def stats(self) -> list[SubscriberStats]:
        return [subscription.stats() for subscription in self._subscribers]

    def latency(self) -> dict[str, LatencyHistogram]:
        """Each subscriber's receipt-to-read histogram, while sampling is on."""
        return {s.name: s.latency for s in self._subscribers if s.latency is not None}

    async def _wait_for_publish(self) -> None:
        await _wait_in(self._readers)

    def _wake_readers(self) -> None:
        _wake(self._readers)

    def _release(self, subscription: LosslessSubscription) -> None:
        if subscription in self._saturated:
            self._saturated.discard(subscription)
            if not self._saturated:
                _wake(self._writers)

    def _forget(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
        if isinstance(subscription, LosslessSubscription) and subscription in self._lossless:
            self._lossless.remove(subscription)
            self._release(subscription)


async def _wait_in(waiters: list[asyncio.Future[None]]) -> None:
    """Wait for the next ``_wake`` of ``waiters``; a cancelled wait leaves nothing behind."""
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        if not waiter.done() or waiter.cancelled():
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()
