"""The persistence consumer: every tick on the bus into a ``TickRepository``, none dropped.

Receiving and writing are apart so a slow or absent database never slows the bus: the receive loop
only appends to the consumer's own buffer, and a writer stores it in batches (by size or age; a
batch takes every tick waiting, up to a larger bound, so a backlog drains in fewer, cheaper
transactions). Two batches are in flight at a time, so the repository can build and copy the next
while the one before commits; a repository that keeps such calls in order
(``PostgresTickRepository`` does: a call fails if the one before it failed) never stores a later
batch before an earlier one, so the highest stored id of a symbol stays a safe place to resume from.
A batch leaves the buffer only once it and every batch before it are stored. A failed batch is
retried with capped backoff (one batch at a time: the one after waits for it) while the buffer
grows; at its bound the receive loop stops reading, the subscription's queue fills and the bus holds
the feeds back, so a long outage pauses the exchange connections instead of dropping ticks. The
repository is idempotent, so a batch that committed but whose reply was lost is simply stored again
as duplicates.

The buffer belongs to this object, not to ``run``: a restarted loop goes on with what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice

import structlog

from kairos_core.application.bus import Subscription
from kairos_core.application.latency import BATCH_BOUNDS, LatencyHistogram
from kairos_core.domain import BusClosed, MarketTick, TickRepository

log = structlog.get_logger(__name__)

FILL_ALARMS = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9)
"""Fractions of the buffer bound at which a growing buffer is logged, each once per rise."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistencePolicy:
    batch_size: int = 1_000
    """Ticks waiting that make a batch: it is written then, or after ``flush_interval``."""
    batch_size_max: int = 5_000
    """Ticks one batch may take when more are waiting (a burst, the end of an outage, a feed faster
    than the database): fewer, larger transactions cost the database less per tick, so a backlog
    drains faster (docs/performance.md). Never below ``batch_size``."""
    flush_interval: float = 0.1
    """Seconds a tick may wait for its batch to fill before it is written anyway."""
    buffer_limit: int = 1_000_000
    """Ticks held in memory before the feeds are paused; never a reason to drop one."""
    retry_initial: float = 0.1
    retry_max: float = 5.0
    writes_in_flight: int = 2
    """Batches handed to the repository at once: with 2, the next batch is built and copied to the
    database while the one before commits."""

    def __post_init__(self) -> None:
        if self.writes_in_flight < 1:
            raise ValueError(f"persistence needs at least 1 write in flight, got {self.writes_in_flight}")
        if self.batch_size < 1 or self.buffer_limit < self.batch_size:
            raise ValueError(
                f"persistence needs 1 <= batch size <= buffer limit, got {self.batch_size} "
                f"and {self.buffer_limit}"
            )
        if not (self.flush_interval > 0 and 0 < self.retry_initial <= self.retry_max):
            raise ValueError("persistence flush interval and retry delays must be positive")


@dataclass(slots=True)
class PersistenceStats:
    stored: int = 0
    """Rows newly written."""
    duplicates: int = 0
    """Ticks written that were already stored (a repeated batch, a re-sent tick)."""
    batches: int = 0
    retries: int = 0
    last_batch_seconds: float = 0.0
    failing: bool = False
    """The last write failed (the database is down or refusing); cleared by the next success."""


class PersistenceConsumer:
    """A lossless bus consumer that stores every tick it receives, in batches."""

    lossless = True

    def __init__(
        self,
        repository: TickRepository,
        policy: PersistencePolicy | None = None,
        *,
        name: str = "persistence",
    ) -> None:
        self.name = name
        self._repository = repository
        self._policy = policy or PersistencePolicy()
        self._buffer: deque[MarketTick] = deque()
        self._in_flight = 0
        """Ticks at the head of the buffer handed to the repository and not yet stored."""
        self._ready_at = self._policy.batch_size
        """Buffer length at which a whole batch waits behind the ones in flight (kept equal to
        ``_in_flight + batch_size``)."""
        self._stored_at = 0.0
        self._batch_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._receiving = False
        self._alarm = 0
        self._paused = False
        self.stats = PersistenceStats()
        self.batch_seconds = LatencyHistogram(BATCH_BOUNDS)
        """Successful writes by duration."""

    @property
    def buffered(self) -> int:
        """Ticks received and not yet stored."""
        return len(self._buffer)

    @property
    def buffer_limit(self) -> int:
        return self._policy.buffer_limit

    async def run(self, subscription: Subscription) -> None:
        """Receive until the bus closes, then return once every received tick is stored.

        Cancelled, the writer is cancelled too and the unstored ticks stay in the buffer for the
        next ``run``.
        """
        self._receiving = True
        writer = asyncio.create_task(self._write_loop(), name=f"{self.name}:writer")
        try:
            await self._receive(subscription)
        except BaseException:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            raise
        self._receiving = False
        self._batch_ready.set()
        await writer
        log.info("persistence.flushed", stored=self.stats.stored, duplicates=self.stats.duplicates)

    async def _receive(self, subscription: Subscription) -> None:
        buffer = self._buffer
        limit = self._policy.buffer_limit
        while True:
            if len(buffer) >= limit:
                await self._wait_for_room()
            try:
                item = subscription.try_recv() or await subscription.recv()
            except BusClosed:
                return
            if not isinstance(item, MarketTick):
                continue  # a gap event: the table holds trades, the log holds the event
            buffer.append(item)
            size = len(buffer)
            if size >= self._ready_at:
                self._batch_ready.set()
                if size >= self._alarm_at():
                    self._raise_alarm(size)

    async def _wait_for_room(self) -> None:
        self._paused = True
        log.error(
            "persistence.feeds_paused",
            buffered=len(self._buffer),
            buffer_limit=self._policy.buffer_limit,
            reason="buffer full: the database is not keeping up or is down; nothing is dropped",
        )
        self._room.clear()
        await self._room.wait()

    def _alarm_at(self) -> int:
        if self._alarm >= len(FILL_ALARMS):
            return self._policy.buffer_limit + 1
        return max(self._policy.batch_size, int(FILL_ALARMS[self._alarm] * self._policy.buffer_limit))

    def _raise_alarm(self, size: int) -> None:
        while self._alarm < len(FILL_ALARMS) and size >= self._alarm_at():
            self._alarm += 1
        log.warning(
            "persistence.buffer_filling",
            buffered=size,
            buffer_limit=self._policy.buffer_limit,
            percent=round(100 * size / self._policy.buffer_limit, 1),
        )

    async def _write_loop(self) -> None:
        buffer = self._buffer
        policy = self._policy
        slots = asyncio.Semaphore(policy.writes_in_flight)
        writes: set[asyncio.Task[None]] = set()
        last: asyncio.Task[None] | None = None
        most = max(policy.batch_size, policy.batch_size_max)
        try:
            while True:
                waiting = len(buffer) - self._in_flight
                if waiting < policy.batch_size and self._receiving:
                    self._batch_ready.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._batch_ready.wait(), policy.flush_interval)
                    waiting = len(buffer) - self._in_flight
                if not waiting:
                    if self._receiving:
                        continue
                    break
                await slots.acquire()
                batch = list(islice(buffer, self._in_flight, self._in_flight + most))
                self._in_flight += len(batch)
                self._ready_at = self._in_flight + policy.batch_size
                last = asyncio.create_task(self._write(batch, last, slots), name=f"{self.name}:batch")
                writes.add(last)
                last.add_done_callback(writes.discard)
            if last is not None:
                await last
        finally:
            # Cancelled: the unfinished batches are still at the head of the buffer, for the next run.
            for write in writes:
                write.cancel()
            await asyncio.gather(*writes, return_exceptions=True)
            self._in_flight = 0
            self._ready_at = policy.batch_size

    async def _write(
        self, batch: list[MarketTick], earlier: asyncio.Task[None] | None, slots: asyncio.Semaphore
    ) -> None:
        """Store ``batch``, then, once the batch before it has left the buffer, take it out too."""
        try:
            await self._store(batch, earlier)
            if earlier is not None:
                await earlier
            buffer = self._buffer
            for _ in batch:
                buffer.popleft()
            self._in_flight -= len(batch)
            self._ready_at -= len(batch)
            self._after_write()
        finally:
            slots.release()

    async def _store(self, batch: list[MarketTick], earlier: asyncio.Task[None] | None) -> None:
        delay = self._policy.retry_initial
        failed = False
        while True:
            started = time.perf_counter()
            try:
                new = await self._repository.add_many(batch)
            except Exception as e:  # any failure: the batch is kept and retried, never dropped
                self.stats.retries += 1
                self.stats.failing = True
                failed = True
                # Only the oldest batch retries against the database; a later one goes once it is in.
                behind = earlier if earlier is not None and not earlier.done() else None
                wait = 0.0 if behind else delay * random.uniform(0.5, 1.0)
                log.warning(
                    "persistence.write_failed",
                    error=f"{type(e).__name__}: {e}",
                    batch=len(batch),
                    buffered=len(self._buffer),
                    retry_in=round(wait, 3),
                    after_earlier_batch=behind is not None,
                )
                if behind:
                    await asyncio.wait([behind])
                else:
                    await asyncio.sleep(wait)
                    delay = min(delay * 2, self._policy.retry_max)
                continue
            stats = self.stats
            # A batch's time is the write path's: from its call, or from the end of the batch before
            # it when that ended later (with two in flight, their calls overlap).
            done = time.perf_counter()
            stats.last_batch_seconds = elapsed = done - max(started, self._stored_at)
            self._stored_at = done
            self.batch_seconds.observe_ns(round(elapsed * 1e9))
            stats.failing = False
            stats.batches += 1
            stats.stored += new
            stats.duplicates += len(batch) - new
            if failed:
                log.info("persistence.write_recovered", buffered=len(self._buffer))
            return

    def _after_write(self) -> None:
        size = len(self._buffer)
        if self._paused and size < self._policy.buffer_limit:
            self._paused = False
            log.warning("persistence.feeds_resumed", buffered=size)
            self._room.set()
        while self._alarm and size < int(FILL_ALARMS[self._alarm - 1] * self._policy.buffer_limit):
            self._alarm -= 1
