"""The publishing consumer on a real bus with a fake publisher: every tick, in order, no events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.publishing import PublishingConsumer
from kairos_core.domain import Exchange, GapDetected, MarketTick, TickPublisher
from tests.strategies import numbered_tick


class FakeTickPublisher(TickPublisher):
    """Records what it was sent; ``gate`` closed makes ``send`` wait, ``fail_next`` makes it raise."""

    def __init__(self) -> None:
        self.sent: list[MarketTick] = []
        self.calls: list[int] = []
        self.flushed = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = 0

    async def send(self, ticks: Sequence[MarketTick]) -> None:
        self.calls.append(len(ticks))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            self.sent.extend(ticks[: len(ticks) // 2])  # half went out before it failed
            raise ConnectionError("broker went away (fake)")
        self.sent.extend(ticks)

    async def flush(self) -> None:
        self.flushed += 1


def gap() -> GapDetected:
    return GapDetected(exchange=Exchange.BINANCE, symbol="BTCUSDT", from_id=5, to_id=6, open_gaps=1)


async def test_every_tick_is_sent_in_order_and_flushed_at_the_end() -> None:
    bus = BroadcastBus(capacity=16)
    publisher = FakeTickPublisher()
    consumer = PublishingConsumer(publisher, batch=10)
    subscription = bus.subscribe(consumer.name, lossless=consumer.lossless)
    running = asyncio.create_task(consumer.run(subscription))
    ticks = [numbered_tick(i) for i in range(100)]
    for tick in ticks[:50]:
        bus.publish(tick)
    bus.publish_event(gap())
    for tick in ticks[50:]:
        await bus.writable()
        bus.publish(tick)
    bus.close()
    await running
    assert publisher.sent == ticks
    assert max(publisher.calls) <= 10
    assert publisher.flushed == 1
    assert consumer.sent == 100


async def test_a_waiting_publisher_holds_the_feed_back() -> None:
    bus = BroadcastBus(capacity=8)
    publisher = FakeTickPublisher()
    publisher.gate.clear()
    consumer = PublishingConsumer(publisher, batch=4)
    running = asyncio.create_task(consumer.run(bus.subscribe(consumer.name, lossless=True)))
    for i in range(8 + 4):  # the batch in the publisher, then a full queue
        bus.publish(numbered_tick(i))
        await asyncio.sleep(0)
    writable = asyncio.create_task(bus.writable())
    await asyncio.sleep(0.05)
    assert not writable.done(), "the feed must wait while the broker does"
    publisher.gate.set()
    await asyncio.wait_for(writable, 1)
    bus.close()
    await running
    assert [tick.trade_id for tick in publisher.sent] == list(range(12))


async def test_a_restarted_consumer_sends_the_failed_batch_again_first() -> None:
    bus = BroadcastBus(capacity=16)
    publisher = FakeTickPublisher()
    publisher.fail_next = 1
    consumer = PublishingConsumer(publisher, batch=8)
    subscription = bus.subscribe(consumer.name, lossless=True)
    ticks = [numbered_tick(i) for i in range(8)]
    for tick in ticks:
        bus.publish(tick)
    with contextlib.suppress(ConnectionError):
        await consumer.run(subscription)
    bus.close()
    await consumer.run(subscription)
    assert publisher.sent == ticks[:4] + ticks, "the broker drops the repeats by their message ids"
    assert consumer.sent == 8
