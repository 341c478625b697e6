"""The persistence consumer against an in-memory repository: batching, outages, the bound, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer, PersistencePolicy
from kairos_core.domain import GapDetected, MarketTick, TickSource
from tests.fakes import InMemoryTickRepository
from tests.strategies import numbered_tick

GUARD = 5.0


def ticks(count: int, start: int = 0) -> list[MarketTick]:
    return [numbered_tick(seq, ("BTCUSDT", "ETHUSDT")[seq % 2]) for seq in range(start, start + count)]


def fast(**overrides: float) -> PersistencePolicy:
    values: dict[str, float] = {
        "batch_size": 10,
        "flush_interval": 0.01,
        "buffer_limit": 1_000,
        "retry_initial": 0.001,
        "retry_max": 0.005,
        "writes_in_flight": 2,
    }
    values.update(overrides)
    return PersistencePolicy(
        batch_size=int(values["batch_size"]),
        batch_size_max=int(values.get("batch_size_max", values["batch_size"])),
        flush_interval=values["flush_interval"],
        buffer_limit=int(values["buffer_limit"]),
        retry_initial=values["retry_initial"],
        retry_max=values["retry_max"],
        writes_in_flight=int(values["writes_in_flight"]),
    )


async def feed(bus: BroadcastBus, items: list[MarketTick]) -> None:
    """What a feed does: wait until the bus is writable, then publish."""
    for item in items:
        await bus.writable()
        bus.publish(item)


async def run_to_the_end(consumer: PersistenceConsumer, items: list[MarketTick]) -> list[dict[str, Any]]:
    """``items`` through a bus into ``consumer`` until it has drained and returned; what it logged."""
    bus = BroadcastBus(capacity=16)
    with capture_logs() as logs:
        task = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
        await feed(bus, items)
        bus.close()
        await asyncio.wait_for(task, GUARD)
    return logs


def stored_ids(repository: InMemoryTickRepository) -> list[int]:
    return sorted(trade_id for (_, _, trade_id) in repository.rows)


async def test_every_tick_is_stored_once_in_batches_and_flushed_at_close() -> None:
    repository = InMemoryTickRepository()
    consumer = PersistenceConsumer(repository, fast())
    bus = BroadcastBus(capacity=16)
    task = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
    await feed(bus, ticks(95))
    bus.close()
    await asyncio.wait_for(task, GUARD)
    assert stored_ids(repository) == list(range(95))
    assert max(repository.calls) <= 10
    assert consumer.stats.stored == 95
    assert consumer.buffered == 0


async def test_a_part_batch_is_written_after_the_flush_interval_while_the_bus_is_open() -> None:
    repository = InMemoryTickRepository()
    consumer = PersistenceConsumer(repository, fast(batch_size=100, flush_interval=0.02))
    bus = BroadcastBus()
    task = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
    await feed(bus, ticks(3))
    async with asyncio.timeout(GUARD):
        while len(repository.rows) < 3:
            await asyncio.sleep(0.005)
    assert not task.done()
    bus.close()
    await asyncio.wait_for(task, GUARD)


async def test_an_outage_loses_nothing_and_stores_nothing_twice() -> None:
    repository = InMemoryTickRepository()
    repository.fail_next(7)
    consumer = PersistenceConsumer(repository, fast())
    logs = await run_to_the_end(consumer, ticks(200))
    assert stored_ids(repository) == list(range(200))
    assert consumer.stats.retries == 7
    assert consumer.stats.duplicates == 0
    events = [entry["event"] for entry in logs]
    assert events.count("persistence.write_failed") == 7
    assert "persistence.write_recovered" in events


async def test_retries_back_off_doubling_up_to_the_cap() -> None:
    repository = InMemoryTickRepository()
    repository.fail_next(8)
    consumer = PersistenceConsumer(repository, fast(retry_initial=0.002, retry_max=0.016, writes_in_flight=1))
    logs = await run_to_the_end(consumer, ticks(10))
    waits = [entry["retry_in"] for entry in logs if entry["event"] == "persistence.write_failed"]
    # Each wait is its step's delay with jitter (half to all of it): 2, 4, 8, 16, then 16 ms on.
    steps = [0.002, 0.004, 0.008, 0.016, 0.016, 0.016, 0.016, 0.016]
    assert len(waits) == len(steps)
    for wait, step in zip(waits, steps, strict=True):
        assert step / 2 - 0.001 <= wait <= step + 0.001, (waits, steps)
    assert stored_ids(repository) == list(range(10))


async def test_a_full_buffer_pauses_the_feed_instead_of_dropping() -> None:
    repository = InMemoryTickRepository()
    repository.down = True
    consumer = PersistenceConsumer(repository, fast(batch_size=10, buffer_limit=50))
    bus = BroadcastBus(capacity=20)
    subscription = bus.subscribe("persistence", lossless=True)
    with capture_logs() as logs:
        task = asyncio.create_task(consumer.run(subscription))
        feeding = asyncio.create_task(feed(bus, ticks(500)))
        await asyncio.sleep(0.1)
        # Held back: the buffer is at its bound, the bus queue full, the feed waiting in writable().
        assert not feeding.done()
        assert consumer.buffered == 50
        assert bus.published <= 50 + 20 + 1
        assert subscription.stats().lost == 0
        repository.down = False
        await asyncio.wait_for(feeding, GUARD)
        bus.close()
        await asyncio.wait_for(task, GUARD)
    assert stored_ids(repository) == list(range(500))
    events = [entry["event"] for entry in logs]
    assert "persistence.feeds_paused" in events
    assert "persistence.feeds_resumed" in events
    assert "persistence.buffer_filling" in events
    paused = next(entry for entry in logs if entry["event"] == "persistence.feeds_paused")
    assert paused["log_level"] == "error"


async def test_the_buffer_survives_a_restart_of_the_loop() -> None:
    repository = InMemoryTickRepository()
    repository.down = True
    consumer = PersistenceConsumer(repository, fast())
    bus = BroadcastBus()
    first = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
    await feed(bus, ticks(30))
    async with asyncio.timeout(GUARD):
        while consumer.buffered < 30:
            await asyncio.sleep(0.005)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert consumer.buffered == 30
    repository.down = False
    second = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
    await feed(bus, ticks(30, start=30))
    bus.close()
    await asyncio.wait_for(second, GUARD)
    assert stored_ids(repository) == list(range(60))


async def test_ticks_already_stored_count_as_duplicates() -> None:
    repository = InMemoryTickRepository()
    await repository.add_many(ticks(5))
    consumer = PersistenceConsumer(repository, fast())
    bus = BroadcastBus()
    task = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
    await feed(bus, ticks(12))
    bus.close()
    await asyncio.wait_for(task, GUARD)
    assert (consumer.stats.stored, consumer.stats.duplicates) == (7, 5)


@given(
    count=st.integers(0, 300),
    batch_size=st.integers(1, 40),
    failures=st.integers(0, 5),
    capacity=st.integers(1, 64),
)
def test_whatever_the_sizes_and_failures_every_tick_is_stored_exactly_once(
    count: int, batch_size: int, failures: int, capacity: int
) -> None:
    async def scenario() -> None:
        repository = InMemoryTickRepository()
        repository.fail_next(failures)
        consumer = PersistenceConsumer(repository, fast(batch_size=batch_size, buffer_limit=batch_size * 3))
        bus = BroadcastBus(capacity=capacity)
        task = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
        await feed(bus, ticks(count))
        bus.close()
        await asyncio.wait_for(task, GUARD)
        assert stored_ids(repository) == list(range(count))
        assert max(repository.calls, default=0) <= batch_size

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("buffer_limit", 5),
        ("flush_interval", 0),
        ("retry_initial", 0),
        ("writes_in_flight", 0),
    ],
)
def test_a_policy_that_cannot_work_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match="persistence"):
        fast(**{field: value})


async def test_backfilled_ticks_are_stored_like_live_ones() -> None:
    repository = InMemoryTickRepository()
    consumer = PersistenceConsumer(repository, fast())
    bus = BroadcastBus()
    task = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
    history = [tick._replace(source=TickSource.BACKFILL) for tick in ticks(5)]
    await feed(bus, history + ticks(5, start=5))
    bus.close()
    await asyncio.wait_for(task, GUARD)
    assert stored_ids(repository) == list(range(10))
    assert [repository.rows[(t.exchange, t.symbol, t.trade_id)].source for t in history] == [
        TickSource.BACKFILL
    ] * 5


async def test_gap_events_on_the_bus_are_not_stored() -> None:
    repository = InMemoryTickRepository()
    consumer = PersistenceConsumer(repository, fast())
    bus = BroadcastBus(capacity=16)
    task = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
    for index, tick in enumerate(ticks(30)):
        if index % 7 == 0:
            bus.publish_event(
                GapDetected(exchange=tick.exchange, symbol=tick.symbol, from_id=0, to_id=None, open_gaps=1)
            )
        await bus.writable()
        bus.publish(tick)
    bus.close()
    await asyncio.wait_for(task, GUARD)
    assert stored_ids(repository) == list(range(30))
    assert consumer.stats.stored == 30


class GatedTickRepository(InMemoryTickRepository):
    """Each ``add_many`` waits until its batch (by first trade id) is let through, then stores it or,
    while ``down``, fails; ``attempts`` lists the first trade id of every call, in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[int] = []
        self.open: set[int] = set()
        self.opened = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    def let_through(self, *first_ids: int) -> None:
        self.open.update(first_ids)
        self.opened.set()

    async def add_many(self, ticks: Sequence[MarketTick]) -> int:
        first = ticks[0].trade_id
        self.attempts.append(first)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            while first not in self.open:
                self.opened.clear()
                await self.opened.wait()
            return await super().add_many(ticks)
        finally:
            self.in_flight -= 1


def running(
    repository: InMemoryTickRepository,
) -> tuple[PersistenceConsumer, BroadcastBus, asyncio.Task[None]]:
    """A consumer of ``repository`` with the fast policy, running on a bus of its own."""
    consumer = PersistenceConsumer(repository, fast())
    bus = BroadcastBus()
    return consumer, bus, asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD):
        while not condition():
            await asyncio.sleep(0.001)


async def test_the_next_batch_is_handed_over_while_one_is_being_written() -> None:
    repository = GatedTickRepository()
    consumer, bus, task = running(repository)
    await feed(bus, ticks(40))
    await until(lambda: repository.attempts == [0, 10])
    await asyncio.sleep(0.05)  # batches 20 and 30 are ready, but two are in flight already
    assert repository.attempts == [0, 10]
    assert consumer.buffered == 40
    repository.let_through(0, 10, 20, 30)
    bus.close()
    await asyncio.wait_for(task, GUARD)
    assert repository.attempts == [0, 10, 20, 30]
    assert repository.most_in_flight == 2
    assert stored_ids(repository) == list(range(40))


async def test_a_backlog_goes_in_larger_batches_up_to_the_bound() -> None:
    # The database holds the first batch up while 95 more ticks arrive: they go in batches of up to
    # 30 (the bound) instead of 10, in order; a part batch later still goes alone.
    repository = GatedTickRepository()
    consumer = PersistenceConsumer(repository, fast(batch_size_max=30))
    bus = BroadcastBus()
    task = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
    await feed(bus, ticks(10))
    await until(lambda: repository.attempts == [0])
    await feed(bus, ticks(95, start=10))
    await until(lambda: repository.attempts == [0, 10])  # the second slot took 30 at once
    repository.let_through(0, 10, 40, 70, 100)
    await until(lambda: consumer.buffered == 0)
    await feed(bus, ticks(3, start=105))
    repository.let_through(105)
    bus.close()
    await asyncio.wait_for(task, GUARD)
    assert repository.attempts == [0, 10, 40, 70, 100, 105]
    assert repository.calls == [10, 30, 30, 30, 5, 3]
    assert stored_ids(repository) == list(range(108))


async def test_a_batch_stored_first_leaves_the_buffer_after_the_one_before_it() -> None:
    repository = GatedTickRepository()
    consumer, bus, task = running(repository)
    await feed(bus, ticks(20))
    repository.let_through(10)
    await until(lambda: consumer.stats.stored == 10)
    await asyncio.sleep(0.02)
    assert consumer.buffered == 20  # ticks 0-9 are not stored yet, and they come first
    repository.let_through(0)
    await until(lambda: consumer.buffered == 0)
    bus.close()
    await asyncio.wait_for(task, GUARD)
    assert stored_ids(repository) == list(range(20))


async def test_while_the_database_is_down_only_the_oldest_batch_is_retried() -> None:
    repository = GatedTickRepository()
    repository.down = True
    repository.let_through(0, 10, 20)
    _, bus, task = running(repository)
    await feed(bus, ticks(30))
    await until(lambda: repository.attempts.count(0) >= 10)
    repository.down = False
    bus.close()
    await asyncio.wait_for(task, GUARD)
    assert repository.attempts.count(10) <= 2  # its first try, then once after batch 0 was stored
    assert repository.attempts.index(20) > len(repository.attempts) - 3
    assert stored_ids(repository) == list(range(30))


async def test_cancelled_with_batches_in_flight_the_buffer_keeps_them() -> None:
    repository = GatedTickRepository()
    consumer, bus, first = running(repository)
    await feed(bus, ticks(25))
    await until(lambda: repository.in_flight == 2)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert consumer.buffered == 25
    assert repository.in_flight == 0
    repository.let_through(0, 10, 20)
    second = asyncio.create_task(consumer.run(bus.subscribe("persistence", lossless=True)))
    bus.close()
    await asyncio.wait_for(second, GUARD)
    assert stored_ids(repository) == list(range(25))
    assert consumer.buffered == 0
