"""The persist role: batches from a broker's durable queue straight into the repository.

No bus on this path: each batch goes to ``TickRepository.add_many`` and is acknowledged only
after that commit, so a node that dies in between has its batch handed out again (to another
node, or to itself after a restart). At least once from the broker and an idempotent insert make
exactly once in the table; batches arriving out of order across nodes do not matter.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import structlog

from kairos_core.domain import TickBatch, TickBatchSource, TickRepository

log = structlog.get_logger(__name__)

RETRY_INITIAL = 0.1
RETRY_MAX = 5.0
"""Seconds between attempts to store a batch while the database fails, doubling up to this."""
REPORT_EVERY = 10.0
"""Seconds between progress lines."""


@dataclass(slots=True)
class PersistStats:
    batches: int = 0
    stored: int = 0
    """Rows newly written."""
    duplicates: int = 0
    """Ticks handed out that were stored already (a redelivery, a tick published twice)."""
    retries: int = 0


class StreamPersister:
    """Runs until ``request_stop`` or ``duration``: take a batch, store it, acknowledge it.

    While the database fails, the batch is kept and retried with capped backoff and jitter, and
    the broker is told it is still being worked on, so it is not handed to another node meanwhile.
    Stopped during such an outage, the batch is released to be handed out again.
    """

    def __init__(
        self,
        source: TickBatchSource,
        repository: TickRepository,
        *,
        duration: float | None = None,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self._source = source
        self._repository = repository
        self._duration = duration
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self.stats = PersistStats()

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    async def run(self) -> PersistStats:
        timer = None
        if self._duration is not None:
            timer = asyncio.get_running_loop().call_later(
                self._duration, self.request_stop, "duration elapsed"
            )
        log.info("persist.started")
        reported = time.monotonic()
        try:
            while not self._stop.is_set():
                batch = await self._source.next_batch()
                if batch is not None:
                    await self._persist(batch)
                if time.monotonic() - reported >= REPORT_EVERY:
                    reported = time.monotonic()
                    self._report("persist.progress")
        finally:
            if timer is not None:
                timer.cancel()
        self._report("persist.stopped", reason=self._stop_reason)
        return self.stats

    async def _persist(self, batch: TickBatch) -> None:
        ticks = batch.ticks
        if ticks and not await self._store(batch):
            await batch.release()
            return
        await batch.ack()

    async def _store(self, batch: TickBatch) -> bool:
        """Whether the batch was stored (False: the service stopped during an outage)."""
        stats = self.stats
        delay = self._retry_initial
        while True:
            try:
                new = await self._repository.add_many(batch.ticks)
            except Exception as e:  # any failure: keep the batch, retry; the broker keeps it too
                stats.retries += 1
                wait = delay * random.uniform(0.5, 1.0)
                log.warning(
                    "persist.write_failed",
                    error=f"{type(e).__name__}: {e}",
                    batch=len(batch.ticks),
                    retry_in=round(wait, 3),
                )
                await batch.hold()
                try:
                    await asyncio.wait_for(self._stop.wait(), wait)
                except TimeoutError:
                    delay = min(delay * 2, self._retry_max)
                    continue
                return False
            stats.batches += 1
            stats.stored += new
            stats.duplicates += len(batch.ticks) - new
            return True

    def _report(self, event: str, **extra: object) -> None:
        stats = self.stats
        log.info(
            event,
            batches=stats.batches,
            stored=stats.stored,
            duplicates=stats.duplicates,
            retries=stats.retries,
            **extra,
        )
