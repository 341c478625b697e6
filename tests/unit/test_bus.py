"""The broadcast bus: ordering, lag accounting, back-pressure from lossless subscribers, close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from kairos_core.application.bus import BroadcastBus, SubscriberStats, Subscription
from kairos_core.domain import BusClosed, Exchange, GapDetected, Lagged
from tests.strategies import numbered_tick as tick

GUARD_SECONDS = 5.0
"""Upper bound for any await in these tests, so a missed wake-up fails instead of hanging."""


def publish_range(bus: BroadcastBus, start: int, stop: int) -> None:
    for seq in range(start, stop):
        bus.publish(tick(seq))


def drain_ids(subscription: Subscription) -> list[int]:
    """Trade ids of every tick ready now (stops at None; Lagged and BusClosed propagate)."""
    ids = []
    while (received := subscription.try_recv()) is not None:
        ids.append(received.trade_id)
    return ids


async def ids_until_closed(subscription: Subscription) -> list[int]:
    """Trade ids read with ``async for`` until the bus is closed and drained."""
    return [item.trade_id async for item in subscription]


def stats_of(bus: BroadcastBus, name: str) -> SubscriberStats:
    (found,) = [stats for stats in bus.stats() if stats.name == name]
    return found


async def completes_at_once(awaitable: Awaitable[None]) -> bool:
    """Whether ``awaitable`` finishes within one turn of the event loop; cancels it if not."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.sleep(0)
    if task.done():
        task.result()
        return True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return False


async def test_every_subscriber_receives_every_tick_in_order() -> None:
    bus = BroadcastBus(capacity=16)
    subscriptions = [bus.subscribe("a"), bus.subscribe("b"), bus.subscribe("c", lossless=True)]

    publish_range(bus, 0, 10)

    async with asyncio.timeout(GUARD_SECONDS):
        for subscription in subscriptions:
            assert [(await subscription.recv()).trade_id for _ in range(10)] == list(range(10))
            assert subscription.try_recv() is None


async def test_subscriber_sees_only_ticks_published_after_subscribing() -> None:
    bus = BroadcastBus(capacity=16)
    early = bus.subscribe("early")
    publish_range(bus, 0, 5)
    late = bus.subscribe("late")
    late_lossless = bus.subscribe("late-lossless", lossless=True)
    publish_range(bus, 5, 8)

    assert drain_ids(early) == list(range(8))
    assert drain_ids(late) == [5, 6, 7]
    assert drain_ids(late_lossless) == [5, 6, 7]


def test_lagging_subscriber_learns_exact_missed_count_then_reads_the_newest_in_order() -> None:
    bus = BroadcastBus(capacity=8)
    subscription = bus.subscribe("slow")
    publish_range(bus, 0, 20)

    with pytest.raises(Lagged) as lagged:
        subscription.try_recv()

    assert lagged.value.missed == 12
    assert drain_ids(subscription) == list(range(12, 20))


async def test_recv_raises_lagged_once_then_resumes_with_oldest_held_tick() -> None:
    bus = BroadcastBus(capacity=8)
    subscription = bus.subscribe("slow")
    publish_range(bus, 0, 3)
    assert subscription.try_recv() == tick(0)
    publish_range(bus, 3, 20)  # subscriber is at 1, oldest held is 12

    async with asyncio.timeout(GUARD_SECONDS):
        with pytest.raises(Lagged) as lagged:
            await subscription.recv()
        assert lagged.value.missed == 11
        assert [(await subscription.recv()).trade_id for _ in range(8)] == list(range(12, 20))


async def test_lagged_ends_async_for_and_iterating_again_resumes() -> None:
    bus = BroadcastBus(capacity=4)
    subscription = bus.subscribe("slow")
    publish_range(bus, 0, 10)
    bus.close()

    async with asyncio.timeout(GUARD_SECONDS):
        with pytest.raises(Lagged) as lagged:
            await ids_until_closed(subscription)
        assert lagged.value.missed == 6
        assert await ids_until_closed(subscription) == [6, 7, 8, 9]


def test_stats_count_lost_depth_and_lag_before_and_after_receiving() -> None:
    bus = BroadcastBus(capacity=8)
    ordinary = bus.subscribe("ordinary")
    lossless = bus.subscribe("lossless", lossless=True)
    publish_range(bus, 0, 20)

    assert stats_of(bus, "ordinary") == SubscriberStats(
        name="ordinary", lossless=False, received=0, depth=8, lag=20, lost=12
    )
    assert stats_of(bus, "lossless") == SubscriberStats(
        name="lossless", lossless=True, received=0, depth=20, lag=20, lost=0
    )

    with pytest.raises(Lagged):
        ordinary.try_recv()
    assert stats_of(bus, "ordinary") == SubscriberStats(
        name="ordinary", lossless=False, received=0, depth=8, lag=8, lost=12
    )

    assert ordinary.try_recv() == tick(12)
    assert lossless.try_recv() == tick(0)
    assert stats_of(bus, "ordinary") == SubscriberStats(
        name="ordinary", lossless=False, received=1, depth=7, lag=7, lost=12
    )
    assert stats_of(bus, "lossless") == SubscriberStats(
        name="lossless", lossless=True, received=1, depth=19, lag=19, lost=0
    )

    publish_range(bus, 20, 30)  # the ordinary subscriber falls behind again: 17 unread, 8 held
    assert stats_of(bus, "ordinary") == SubscriberStats(
        name="ordinary", lossless=False, received=1, depth=8, lag=17, lost=21
    )


def test_lossless_subscriber_keeps_everything_while_publish_never_waits() -> None:
    bus = BroadcastBus(capacity=4)
    ordinary = bus.subscribe("ordinary")
    lossless = bus.subscribe("lossless", lossless=True)

    publish_range(bus, 0, 100)

    assert drain_ids(lossless) == list(range(100))
    with pytest.raises(Lagged) as lagged:
        ordinary.try_recv()
    assert lagged.value.missed == 96
    assert drain_ids(ordinary) == [96, 97, 98, 99]


async def test_lossless_subscriber_loses_nothing_when_producer_awaits_writable() -> None:
    capacity, total = 4, 1000
    bus = BroadcastBus(capacity=capacity)
    lossless = bus.subscribe("persistence", lossless=True)
    waits = 0
    max_depth = 0

    async def produce() -> None:
        nonlocal waits, max_depth
        for seq in range(total):
            depth = stats_of(bus, "persistence").depth
            max_depth = max(max_depth, depth)
            if depth >= capacity:
                waits += 1
                await bus.writable()
                # Resumes only once the consumer is down to half the capacity.
                assert stats_of(bus, "persistence").depth <= capacity // 2
            else:
                await bus.writable()
            bus.publish(tick(seq))
        bus.close()

    async def consume() -> list[int]:
        received = []
        async for item in lossless:
            received.append(item.trade_id)
            await asyncio.sleep(0)  # slower than the producer, which does not yield when not full
            await asyncio.sleep(0)
        return received

    async with asyncio.timeout(GUARD_SECONDS), asyncio.TaskGroup() as group:
        group.create_task(produce())
        consumer = group.create_task(consume())

    assert consumer.result() == list(range(total))
    assert waits > total // capacity  # the producer really was held back, many times
    assert max_depth == capacity
    assert stats_of(bus, "persistence").lost == 0


@pytest.mark.parametrize("capacity", [8, 5, 1])
async def test_writable_blocks_while_lossless_is_full_until_drained_to_half(capacity: int) -> None:
    bus = BroadcastBus(capacity=capacity)
    lossless = bus.subscribe("lossless", lossless=True)
    publish_range(bus, 0, capacity)

    writer = asyncio.ensure_future(bus.writable())
    await asyncio.sleep(0)
    assert not writer.done()

    while stats_of(bus, "lossless").depth > capacity // 2 + 1:
        lossless.try_recv()
    await asyncio.sleep(0)
    assert not writer.done()  # one above half (rounded down) still holds the producer

    lossless.try_recv()
    async with asyncio.timeout(GUARD_SECONDS):
        await writer
    assert stats_of(bus, "lossless").depth == capacity // 2
    assert await completes_at_once(bus.writable())


async def test_writable_waits_for_every_full_lossless_subscriber() -> None:
    bus = BroadcastBus(capacity=2)
    first = bus.subscribe("first", lossless=True)
    second = bus.subscribe("second", lossless=True)
    publish_range(bus, 0, 2)

    writer = asyncio.ensure_future(bus.writable())
    first.try_recv()
    await asyncio.sleep(0)
    assert not writer.done()

    second.try_recv()
    async with asyncio.timeout(GUARD_SECONDS):
        await writer


async def test_writable_returns_at_once_when_no_lossless_subscriber_is_full() -> None:
    bus = BroadcastBus(capacity=4)
    assert await completes_at_once(bus.writable())

    bus.subscribe("ordinary")
    publish_range(bus, 0, 50)  # a lagging ordinary subscriber never holds the producer back
    assert await completes_at_once(bus.writable())

    bus.subscribe("lossless", lossless=True)
    publish_range(bus, 50, 53)  # capacity - 1 queued
    assert await completes_at_once(bus.writable())


async def test_writable_returns_at_once_when_closed_even_if_lossless_is_full() -> None:
    bus = BroadcastBus(capacity=2)
    bus.subscribe("lossless", lossless=True)
    publish_range(bus, 0, 2)
    assert not await completes_at_once(bus.writable())

    bus.close()

    assert await completes_at_once(bus.writable())


async def test_close_wakes_a_producer_blocked_in_writable() -> None:
    bus = BroadcastBus(capacity=2)
    bus.subscribe("lossless", lossless=True)
    publish_range(bus, 0, 2)
    writer = asyncio.ensure_future(bus.writable())
    await asyncio.sleep(0)
    assert not writer.done()

    bus.close()

    async with asyncio.timeout(GUARD_SECONDS):
        await writer


async def test_close_lets_subscribers_drain_then_ends_async_for() -> None:
    bus = BroadcastBus(capacity=16)
    subscriptions = [bus.subscribe("ordinary"), bus.subscribe("lossless", lossless=True)]
    publish_range(bus, 0, 5)
    bus.close()

    async with asyncio.timeout(GUARD_SECONDS):
        for subscription in subscriptions:
            assert await ids_until_closed(subscription) == list(range(5))
            with pytest.raises(BusClosed):
                await subscription.recv()
            with pytest.raises(BusClosed):
                subscription.try_recv()


async def test_close_ends_async_for_of_waiting_subscribers() -> None:
    bus = BroadcastBus(capacity=16)
    subscriptions = [bus.subscribe("ordinary"), bus.subscribe("lossless", lossless=True)]

    async with asyncio.timeout(GUARD_SECONDS):
        readers = [asyncio.ensure_future(ids_until_closed(subscription)) for subscription in subscriptions]
        await asyncio.sleep(0)
        publish_range(bus, 0, 3)
        await asyncio.sleep(0)
        assert not any(reader.done() for reader in readers)
        bus.close()
        assert await asyncio.gather(*readers) == [[0, 1, 2], [0, 1, 2]]


def test_publish_after_close_raises_bus_closed() -> None:
    bus = BroadcastBus(capacity=4)
    subscription = bus.subscribe("ordinary")
    bus.close()

    with pytest.raises(BusClosed):
        bus.publish(tick(0))
    assert bus.published == 0
    with pytest.raises(BusClosed):
        subscription.try_recv()


@pytest.mark.parametrize("lossless", [False, True])
def test_subscribe_after_close_raises_bus_closed(lossless: bool) -> None:
    bus = BroadcastBus(capacity=4)
    bus.close()

    with pytest.raises(BusClosed):
        bus.subscribe("late", lossless=lossless)
    assert bus.stats() == []


async def test_cancelling_a_blocked_recv_leaves_other_subscribers_working() -> None:
    bus = BroadcastBus(capacity=16)
    cancelled = bus.subscribe("cancelled")
    other = bus.subscribe("other")
    other_lossless = bus.subscribe("other-lossless", lossless=True)

    async with asyncio.timeout(GUARD_SECONDS):
        doomed = asyncio.ensure_future(cancelled.recv())
        survivors = [asyncio.ensure_future(other.recv()), asyncio.ensure_future(other_lossless.recv())]
        await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed

        bus.publish(tick(0))

        assert await asyncio.gather(*survivors) == [tick(0), tick(0)]
        # The cancelled wait consumed nothing: its subscriber still gets the tick.
        assert await cancelled.recv() == tick(0)


async def test_closed_subscription_is_detached_from_the_bus() -> None:
    bus = BroadcastBus(capacity=4)
    kept = bus.subscribe("kept")
    gone = bus.subscribe("gone")
    gone_lossless = bus.subscribe("gone-lossless", lossless=True)

    gone.close()
    gone_lossless.close()
    gone.close()  # twice is harmless
    publish_range(bus, 0, 10)

    assert [stats.name for stats in bus.stats()] == ["kept"]
    assert gone_lossless.stats().depth == 0  # nothing is queued for a detached lossless subscriber
    assert await completes_at_once(bus.writable())
    with pytest.raises(Lagged):
        kept.try_recv()


async def test_closing_a_full_lossless_subscription_releases_a_blocked_producer() -> None:
    bus = BroadcastBus(capacity=2)
    lossless = bus.subscribe("lossless", lossless=True)
    publish_range(bus, 0, 2)
    writer = asyncio.ensure_future(bus.writable())
    await asyncio.sleep(0)
    assert not writer.done()

    lossless.close()

    async with asyncio.timeout(GUARD_SECONDS):
        await writer
    publish_range(bus, 2, 10)
    assert await completes_at_once(bus.writable())


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_below_one_is_rejected(capacity: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BroadcastBus(capacity=capacity)


def test_capacity_one_keeps_only_the_newest_tick() -> None:
    bus = BroadcastBus(capacity=1)
    subscription = bus.subscribe("ordinary")
    publish_range(bus, 0, 3)

    with pytest.raises(Lagged) as lagged:
        subscription.try_recv()
    assert lagged.value.missed == 2
    assert drain_ids(subscription) == [2]


async def test_many_concurrent_subscribers_each_get_every_tick() -> None:
    subscribers, total = 50, 300
    bus = BroadcastBus()

    async def collect(subscription: Subscription) -> list[int]:
        received = []
        async for item in subscription:
            received.append(item.trade_id)
            if item.trade_id % 7 == 0:
                await asyncio.sleep(0)
        return received

    async def produce() -> None:
        for seq in range(total):
            await bus.writable()
            bus.publish(tick(seq))
            if seq % 10 == 0:
                await asyncio.sleep(0)
        bus.close()

    async with asyncio.timeout(GUARD_SECONDS), asyncio.TaskGroup() as group:
        readers = [
            group.create_task(collect(bus.subscribe(f"reader-{index}", lossless=index % 5 == 0)))
            for index in range(subscribers)
        ]
        group.create_task(produce())

    for reader in readers:
        assert reader.result() == list(range(total))
    assert all(stats.lost == 0 and stats.received == total for stats in bus.stats())


async def test_a_closed_subscription_stops_receiving() -> None:
    bus = BroadcastBus(capacity=8)
    ordinary, lossless = bus.subscribe("o"), bus.subscribe("l", lossless=True)
    waiting = asyncio.create_task(ordinary.recv())
    await asyncio.sleep(0)
    ordinary.close()
    lossless.close()
    with pytest.raises(BusClosed):
        await asyncio.wait_for(waiting, 5)
    bus.publish(tick(0))
    with pytest.raises(BusClosed):
        ordinary.try_recv()
    with pytest.raises(BusClosed):
        await asyncio.wait_for(lossless.recv(), 5)


async def test_cancelled_waits_leave_nothing_behind() -> None:
    bus = BroadcastBus(capacity=2)
    subscription = bus.subscribe("s")
    full = bus.subscribe("full", lossless=True)
    for seq in range(2):
        bus.publish(tick(seq))
    for _ in range(100):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bus.writable(), 0.001)
    assert bus._writers == []
    for _ in range(2):
        subscription.try_recv()
    for _ in range(100):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(subscription.recv(), 0.001)
    assert bus._readers == []
    assert full.stats().depth == 2


async def test_events_reach_every_subscriber_in_order_with_the_ticks() -> None:
    bus = BroadcastBus(capacity=8)
    ring, lossless = bus.subscribe("ring"), bus.subscribe("lossless", lossless=True)
    event = GapDetected(exchange=Exchange.BINANCE, symbol="BTCUSDT", from_id=2, to_id=2, open_gaps=1)
    bus.publish(tick(1))
    bus.publish_event(event)
    bus.publish(tick(3))
    bus.close()
    for subscription in (ring, lossless):
        assert [item async for item in subscription] == [tick(1), event, tick(3)]
    assert bus.published == 3
