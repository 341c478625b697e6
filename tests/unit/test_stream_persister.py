"""The persist role's loop with fakes: store, then acknowledge; retry and hold; release on stop."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from kairos_core.application.stream_persister import StreamPersister
from kairos_core.domain import MarketTick, TickBatch, TickBatchSource
from tests.fakes import InMemoryTickRepository
from tests.strategies import numbered_tick


class FakeBatch(TickBatch):
    def __init__(self, ticks: list[MarketTick], log: list[str]) -> None:
        self._ticks = ticks
        self._log = log

    @property
    def ticks(self) -> Sequence[MarketTick]:
        return self._ticks

    async def ack(self) -> None:
        self._log.append(f"ack {len(self._ticks)}")

    async def hold(self) -> None:
        self._log.append("hold")

    async def release(self) -> None:
        self._log.append("release")


class FakeBatchSource(TickBatchSource):
    """Hands out the batches given, then None; ``log`` records what happened to each, in order."""

    def __init__(self, *batches: list[MarketTick]) -> None:
        self.log: list[str] = []
        self._batches = deque(FakeBatch(ticks, self.log) for ticks in batches)

    async def next_batch(self) -> TickBatch | None:
        await asyncio.sleep(0.001)
        return self._batches.popleft() if self._batches else None


def ticks(first: int, count: int) -> list[MarketTick]:
    return [numbered_tick(i) for i in range(first, first + count)]


async def test_each_batch_is_acknowledged_after_it_is_stored_and_repeats_are_harmless() -> None:
    repository = InMemoryTickRepository()
    source = FakeBatchSource(ticks(0, 10), ticks(5, 10), ticks(15, 5))
    persister = StreamPersister(source, repository, duration=0.2)
    stats = await persister.run()
    assert source.log == ["ack 10", "ack 10", "ack 5"]
    assert sorted(trade_id for _, _, trade_id in repository.rows) == list(range(20))
    assert (stats.batches, stats.stored, stats.duplicates) == (3, 20, 5)


async def test_a_failing_database_is_retried_while_the_batch_is_held() -> None:
    repository = InMemoryTickRepository()
    repository.fail_next(3)
    source = FakeBatchSource(ticks(0, 4))
    persister = StreamPersister(source, repository, retry_initial=0.01, retry_max=0.02, duration=0.5)
    stats = await persister.run()
    assert source.log == ["hold", "hold", "hold", "ack 4"]
    assert stats.retries == 3
    assert stats.stored == 4


async def test_stopped_during_an_outage_the_batch_is_released_not_acknowledged() -> None:
    repository = InMemoryTickRepository()
    repository.down = True
    source = FakeBatchSource(ticks(0, 4))
    persister = StreamPersister(source, repository, retry_initial=0.05, retry_max=0.05)
    running = asyncio.create_task(persister.run())
    await asyncio.sleep(0.2)
    persister.request_stop("SIGTERM")
    stats = await asyncio.wait_for(running, 1)
    assert source.log[-1] == "release"
    assert "ack 4" not in source.log
    assert stats.stored == 0
    assert stats.retries >= 2
