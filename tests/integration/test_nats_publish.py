"""The publisher, the feed, the batches and the stream against a real NATS server with JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg

from kairos_core.adapters.inbound.nats import JetStreamTickBatches, NatsTickFeed
from kairos_core.adapters.outbound.nats import (
    ConsumerSpec,
    NatsTickPublisher,
    StreamSpec,
    ensure_consumer,
    ensure_stream,
    last_ticks,
    wire,
)
from kairos_core.domain import ConfigurationError, Exchange, MarketTick, Side, TickSink, TickSource
from tests.nats_server import NatsNames
from tests.strategies import market_ticks, numbered_tick, okx_market_ticks

EDGES = [
    numbered_tick(1)._replace(price=Decimal("0.00000001"), volume=Decimal("123456789012.12345678")),
    numbered_tick(2)._replace(event_time_ms=None, source=TickSource.BACKFILL, side=Side.SELL),
    numbered_tick(3)._replace(exchange=Exchange.OKX, symbol="BTC-USDT-SWAP", price=Decimal("1E+3")),
    numbered_tick(4)._replace(source=TickSource.REPLAY, received_at_ns=2**63 - 1),
]


class ListSink(TickSink):
    def __init__(self) -> None:
        self.ticks: list[MarketTick] = []

    def publish(self, tick: MarketTick) -> None:
        self.ticks.append(tick)

    async def writable(self) -> None:
        return None


@pytest.fixture
async def client(nats_names: NatsNames) -> AsyncIterator[Client]:
    connection = await nats.connect(nats_names.url)
    yield connection
    await connection.close()


def stream_of(names: NatsNames, **changes: float) -> StreamSpec:
    return StreamSpec(name=names.stream, subject_prefix=names.subject_prefix, **changes)  # type: ignore[arg-type]


async def started(client: Client, names: NatsNames, **options: float) -> NatsTickPublisher:
    publisher = NatsTickPublisher(client, subject_prefix=names.subject_prefix, **options)  # type: ignore[arg-type]
    await publisher.start()
    return publisher


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_round_trip_keeps_every_field_exact_live_and_durable(
    client: Client, nats_names: NatsNames
) -> None:
    await ensure_stream(client, stream_of(nats_names))
    sink = ListSink()
    feeds = [
        NatsTickFeed(sink, client, exchange=exchange, subject_prefix=nats_names.subject_prefix)
        for exchange in Exchange
    ]
    running = [asyncio.create_task(feed.start()) for feed in feeds]
    await asyncio.sleep(0.1)  # subscribed
    publisher = await started(client, nats_names)
    await publisher.send(EDGES)
    await publisher.flush()
    assert publisher.stats.stored == len(EDGES)
    await wait_for(lambda: len(sink.ticks) == len(EDGES))
    for feed in feeds:
        await feed.stop()
    await asyncio.gather(*running)
    assert sorted(sink.ticks) == sorted(EDGES)

    await ensure_consumer(client, stream_of(nats_names), ConsumerSpec(durable=nats_names.durable))
    batches = JetStreamTickBatches(
        client, stream=nats_names.stream, durable=nats_names.durable, batch_size=10
    )
    await batches.start()
    batch = await batches.next_batch()
    assert batch is not None
    assert list(batch.ticks) == EDGES, "one publisher, one stream: in order"
    await batch.ack()
    assert await batches.next_batch() is None
    await batches.aclose()
    await publisher.aclose()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ticks=st.lists(st.one_of(market_ticks(), okx_market_ticks()), min_size=1, max_size=20))
async def test_any_ticks_come_back_exactly(
    client: Client, nats_names: NatsNames, ticks: list[MarketTick]
) -> None:
    await ensure_stream(client, stream_of(nats_names))
    sink = ListSink()

    async def received(message: Msg) -> None:
        sink.publish(wire.decode(message.data))

    subscription = await client.subscribe(f"{nats_names.subject_prefix}.>", cb=received)
    publisher = await started(client, nats_names)
    await publisher.send(ticks)
    await publisher.flush()
    await wait_for(lambda: len(sink.ticks) == len(ticks))
    await subscription.unsubscribe()
    await publisher.aclose()
    assert sink.ticks == ticks


async def test_a_tick_published_twice_is_stored_once(client: Client, nats_names: NatsNames) -> None:
    await ensure_stream(client, stream_of(nats_names))
    publisher = await started(client, nats_names)
    ticks = [numbered_tick(i) for i in range(5)]
    await publisher.send(ticks)
    await publisher.send(ticks[2:])  # a reconnect's backfill, a restarted node
    await publisher.flush()
    assert (publisher.stats.stored, publisher.stats.duplicates) == (5, 3)
    ack = await client.jetstream().publish(  # any publisher with the same id is dropped too
        wire.subject(nats_names.subject_prefix, Exchange.BINANCE, "BTCUSDT"),
        wire.encode(ticks[0]),
        headers={wire.MSG_ID_HEADER: wire.message_id(ticks[0])},
    )
    assert ack.duplicate
    info = await client.jetstream().stream_info(nats_names.stream)
    assert info.state.messages == 5
    await publisher.aclose()


async def test_publishes_without_a_stream_are_retried_until_it_is_there(
    client: Client, nats_names: NatsNames
) -> None:
    publisher = await started(client, nats_names, retry_initial=0.05, retry_max=0.1, window=4)
    ticks = [numbered_tick(i) for i in range(10)]
    sending = asyncio.create_task(publisher.send(ticks))
    await asyncio.sleep(0.3)
    assert not sending.done(), "the window is full of unconfirmed ticks: send waits"
    assert publisher.stats.retries > 0
    await ensure_stream(client, stream_of(nats_names))
    await asyncio.wait_for(sending, 5)
    await asyncio.wait_for(publisher.flush(), 5)
    info = await client.jetstream().stream_info(nats_names.stream)
    assert info.state.messages == 10
    assert publisher.stats.stored == 10
    await publisher.aclose()


async def test_the_stream_is_made_updated_and_a_foreign_one_refused(
    client: Client, nats_names: NatsNames
) -> None:
    await ensure_stream(client, stream_of(nats_names))
    await ensure_stream(client, stream_of(nats_names))  # idempotent
    await ensure_stream(client, stream_of(nats_names, max_age=3600.0, duplicate_window=30.0))
    config = (await client.jetstream().stream_info(nats_names.stream)).config
    assert (config.max_age, config.duplicate_window) == (3600.0, 30.0)
    other = StreamSpec(name=nats_names.stream, subject_prefix=f"{nats_names.subject_prefix}x")
    with pytest.raises(ConfigurationError, match=r"exists with subjects .* delete it \(nats stream rm"):
        await ensure_stream(client, other)


async def test_the_consumer_is_made_and_its_limits_updated(client: Client, nats_names: NatsNames) -> None:
    stream = stream_of(nats_names)
    await ensure_stream(client, stream)
    await ensure_consumer(client, stream, ConsumerSpec(durable=nats_names.durable))
    await ensure_consumer(
        client, stream, ConsumerSpec(durable=nats_names.durable, ack_wait=5, max_ack_pending=50)
    )
    config = (await client.jetstream().consumer_info(nats_names.stream, nats_names.durable)).config
    assert (config.ack_wait, config.max_ack_pending) == (5.0, 50)


async def test_the_last_tick_of_each_symbol_is_read_back(client: Client, nats_names: NatsNames) -> None:
    stream = stream_of(nats_names)
    await ensure_stream(client, stream)
    publisher = await started(client, nats_names)
    await publisher.send([numbered_tick(i, symbol) for i in range(3) for symbol in ("BTCUSDT", "ETHUSDT")])
    await publisher.flush()
    found = await last_ticks(client, stream, Exchange.BINANCE, ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    assert found == {"BTCUSDT": numbered_tick(2, "BTCUSDT"), "ETHUSDT": numbered_tick(2, "ETHUSDT")}
    await publisher.aclose()


async def test_an_undecodable_message_is_terminated_and_the_rest_delivered(
    client: Client, nats_names: NatsNames
) -> None:
    stream = stream_of(nats_names)
    await ensure_stream(client, stream)
    await ensure_consumer(client, stream, ConsumerSpec(durable=nats_names.durable, ack_wait=1))
    js = client.jetstream()
    subject = wire.subject(nats_names.subject_prefix, Exchange.BINANCE, "BTCUSDT")
    await js.publish(subject, b"\x00garbage")
    await js.publish(subject, wire.encode(numbered_tick(7)))
    batches = JetStreamTickBatches(client, stream=nats_names.stream, durable=nats_names.durable, batch_size=5)
    await batches.start()
    batch = await batches.next_batch()
    assert batch is not None
    assert list(batch.ticks) == [numbered_tick(7)]
    await batch.ack()
    assert batches.rejected == 1
    await asyncio.sleep(1.2)  # past ack wait: a terminated message is not delivered again
    assert await batches.next_batch() is None
    await batches.aclose()
