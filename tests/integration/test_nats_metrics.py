"""What the NATS parts count for metrics, against a real NATS server with JetStream: the publisher,
the persist role's batches (redeliveries and commit time included), a remote reader's feed, and
the connection they share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from kairos_core.adapters.inbound.nats import JetStreamTickBatches, NatsStatusReader, NatsTickFeed
from kairos_core.adapters.outbound.nats import (
    ConsumerSpec,
    ensure_consumer,
    ensure_stream,
    wire,
)
from kairos_core.application.latency import BATCH_BOUNDS, LatencyHistogram
from kairos_core.domain import Exchange
from tests.integration.test_nats_publish import ListSink, started, stream_of, wait_for
from tests.nats_server import NatsNames
from tests.strategies import numbered_tick


@pytest.fixture
async def client(nats_names: NatsNames) -> AsyncIterator[Client]:
    connection = await nats.connect(nats_names.url)
    yield connection
    await connection.close()


async def test_the_publisher_counts_publishes_acks_by_result_and_retries_by_reason(
    client: Client, nats_names: NatsNames
) -> None:
    publisher = await started(client, nats_names, retry_initial=0.05, retry_max=0.1, ack_timeout=0.5)
    reader = NatsStatusReader(client, publisher=publisher)
    sending = asyncio.create_task(publisher.send([numbered_tick(i) for i in range(5)]))
    await wait_for(lambda: publisher.stats.retries >= 5)  # no stream takes the subjects yet
    waiting = reader.status().publisher
    assert waiting is not None
    assert waiting.unconfirmed == 5
    assert waiting.retries["refused"] >= 5
    assert waiting.retries.keys() == {"refused", "timeout", "unsent"}, "every reason from the start"

    await ensure_stream(client, stream_of(nats_names))
    await asyncio.wait_for(sending, 5)
    await publisher.send([numbered_tick(i) for i in range(3, 8)])  # 3, 4 again: duplicates
    await asyncio.wait_for(publisher.flush(), 5)
    status = reader.status()
    assert status.connected
    assert status.server == nats_names.url.removeprefix("nats://")
    done = status.publisher
    assert done is not None
    assert (done.published, done.stored, done.duplicates, done.unconfirmed) == (10, 8, 2, 0)
    assert done.window == 10_000
    await publisher.aclose()


async def test_the_batches_count_fetches_acks_redeliveries_releases_and_time_each_commit(
    client: Client, nats_names: NatsNames
) -> None:
    stream = stream_of(nats_names)
    await ensure_stream(client, stream)
    await ensure_consumer(client, stream, ConsumerSpec(durable=nats_names.durable, ack_wait=1))
    publisher = await started(client, nats_names)
    await publisher.send([numbered_tick(i) for i in range(6)])
    await publisher.flush()
    await publisher.aclose()
    seconds = LatencyHistogram(BATCH_BOUNDS)
    batches = JetStreamTickBatches(
        client, stream=nats_names.stream, durable=nats_names.durable, batch_size=4, batch_seconds=seconds
    )
    await batches.start()
    reader = NatsStatusReader(client, batches=batches)

    dropped = await batches.next_batch()  # a node that dies before its ack: never answered
    assert dropped is not None
    assert len(dropped.ticks) == 4
    stored = await batches.next_batch()
    assert stored is not None
    await asyncio.sleep(0.05)  # a commit
    await stored.ack()
    again = None
    for _ in range(40):  # past the ack wait (1 s), the first batch comes again
        again = await batches.next_batch()
        if again is not None:
            break
    assert again is not None
    assert len(again.ticks) == 4
    await again.release()

    persist = reader.status().persist
    assert persist is not None
    assert (persist.fetched, persist.redelivered, persist.acked, persist.released) == (10, 4, 2, 4)
    assert persist.rejected == 0
    assert persist.batch_seconds is not None
    assert persist.batch_seconds.count == 1, "released and unanswered batches are not commits"
    assert persist.batch_seconds.total >= 0.05
    await batches.aclose()


async def test_a_remote_feed_counts_what_it_received_and_rejected(
    client: Client, nats_names: NatsNames
) -> None:
    sink = ListSink()
    feed = NatsTickFeed(sink, client, exchange=Exchange.BINANCE, subject_prefix=nats_names.subject_prefix)
    reader = NatsStatusReader(client, feeds=[feed])
    running = asyncio.create_task(feed.start())
    await asyncio.sleep(0.1)  # subscribed
    subject = wire.subject(nats_names.subject_prefix, Exchange.BINANCE, "BTCUSDT")
    for seq in range(3):
        await client.publish(subject, wire.encode(numbered_tick(seq)))
    await client.publish(subject, b"\x00not a tick")
    await wait_for(lambda: feed.received == 3 and feed.rejected == 1)
    await feed.stop()
    await running

    (status,) = reader.status().feeds
    assert (status.exchange, status.received, status.rejected) == (Exchange.BINANCE, 3, 1)


async def test_a_closed_connection_reads_as_down_since_the_look_that_saw_it(nats_names: NatsNames) -> None:
    connection = await nats.connect(nats_names.url)
    now = [100.0]
    reader = NatsStatusReader(connection, clock=lambda: now[0])
    assert reader.status().connected
    await connection.close()
    now[0] = 103.0
    down = reader.status()
    now[0] = 110.0
    later = reader.status()

    assert (down.connected, down.state_seconds) == (False, 0.0)
    assert (later.connected, later.state_seconds) == (False, 7.0)
    assert later.server == nats_names.url.removeprefix("nats://"), "the server it was connected to"
