"""The scale-out roles' composition: ingest (feeds -> NATS), persist (NATS -> PostgreSQL), watch
(NATS -> bus -> price monitor, strategy, risk: a remote reader), and the all-in-one service that
also publishes, each the one ``Container`` with NATS parts added and a few providers overridden
(``assign_role``); docs/scaling.md shows the topology.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import structlog
from dependency_injector import providers
from nats.aio.client import Client
from nats.errors import Error as NatsError

from kairos_core.adapters.inbound.nats import JetStreamTickBatches, NatsStatusReader, NatsTickFeed
from kairos_core.adapters.outbound.nats import (
    ConsumerSpec,
    NatsTickPublisher,
    NatsUnavailable,
    StreamSpec,
    connect,
    ensure_consumer,
    ensure_stream,
    last_ticks,
)
from kairos_core.application.consumers.publishing import PublishingConsumer
from kairos_core.application.continuity import ContinuityGuard
from kairos_core.application.latency import BATCH_BOUNDS, LatencyHistogram
from kairos_core.application.service import MarketDataService
from kairos_core.application.stream_persister import StreamPersister
from kairos_core.bootstrap.container import Container
from kairos_core.bootstrap.observability import build_status, persist_status
from kairos_core.domain import ConfigurationError, TickSink
from kairos_core.domain.status import Histogram
from kairos_core.settings import DatabaseSettings, FeedSettings, NatsSettings, Settings

log = structlog.get_logger(__name__)

__all__ = ["NatsUnavailable", "assign_role"]


def stream_spec(nats: NatsSettings) -> StreamSpec:
    return StreamSpec(
        name=nats.stream,
        subject_prefix=nats.subject_prefix,
        max_age=nats.max_age,
        max_bytes=nats.max_bytes,
        replicas=nats.replicas,
        duplicate_window=nats.duplicate_window,
    )


async def nats_client(nats: NatsSettings, role: str, *, stream: bool = True) -> AsyncIterator[Client]:
    """A connection with the stream made or checked (unless not ``stream``: a reader of the live
    subjects needs none, and makes none); drained at the end (acks still due arrive)."""
    if nats.url is None:
        raise ConfigurationError(
            f"{role} needs a NATS server: give --nats-url nats://host:4222 (KAIROS_NATS_URL)"
        )
    client = await connect(nats.url, name=f"kairos-{role}")
    try:
        if stream:
            await ensure_stream(client, stream_spec(nats))
        yield client
    finally:
        with contextlib.suppress(NatsError):
            await client.drain()


async def nats_publisher(client: Client, nats: NatsSettings) -> AsyncIterator[NatsTickPublisher]:
    publisher = NatsTickPublisher(client, subject_prefix=nats.subject_prefix, window=nats.publish_window)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.aclose()


async def jetstream_batches(
    client: Client, nats: NatsSettings, database: DatabaseSettings, batch_seconds: Histogram | None = None
) -> AsyncIterator[JetStreamTickBatches]:
    consumer = ConsumerSpec(
        durable=nats.durable, ack_wait=nats.ack_wait, max_ack_pending=nats.max_ack_pending
    )
    await ensure_consumer(client, stream_spec(nats), consumer)
    batches = JetStreamTickBatches(
        client,
        stream=nats.stream,
        durable=nats.durable,
        batch_size=database.batch_size,
        wait=database.flush_interval,
        batch_seconds=batch_seconds,
    )
    await batches.start()
    try:
        yield batches
    finally:
        await batches.aclose()


async def resumed_from_stream(
    client: Client,
    service: Callable[[], MarketDataService | Awaitable[MarketDataService]],
    guards: Sequence[ContinuityGuard],
    nats: NatsSettings,
    feeds: FeedSettings,
) -> MarketDataService:
    """The ingest service with its gap guards seeded from the stream's last tick of each symbol,
    so a restarted ingest node fetches what it missed from REST after its first connect. Built
    after the connection is up (``service`` is its provider): a connection that fails then fails once."""
    by_exchange = feeds.symbols_by_exchange()
    for guard in guards:
        symbols = [symbol.upper() for symbol in by_exchange[guard.exchange]]  # the ticks' form
        seeds: dict[str, int] = {}
        now = time.time()
        for symbol, tick in (await last_ticks(client, stream_spec(nats), guard.exchange, symbols)).items():
            age = now - tick.timestamp_ms / 1000
            fields = {"exchange": guard.exchange, "symbol": symbol, "last_trade_id": tick.trade_id}
            if age > feeds.backfill_max_age:
                log.warning("gap.resume_too_old", **fields, age_s=round(age), limit_s=feeds.backfill_max_age)
                continue
            seeds[symbol] = tick.trade_id
            log.info("gap.resume", **fields, age_s=round(age, 3), source="nats")
        guard.seed(seeds)
    built = service()
    return await built if inspect.isawaitable(built) else built


def nats_feeds(client: Client, sink: TickSink, nats: NatsSettings, feeds: FeedSettings) -> list[NatsTickFeed]:
    """A ``NatsTickFeed`` per configured exchange, subscribed to its symbols' subjects."""
    built: list[NatsTickFeed] = []
    for exchange, symbols in feeds.symbols_by_exchange().items():
        try:
            built.append(
                NatsTickFeed(
                    sink,
                    client,
                    exchange=exchange,
                    subject_prefix=nats.subject_prefix,
                    symbols=[symbol.upper() for symbol in symbols],  # the ticks' form
                )
            )
        except ValueError as e:
            raise ConfigurationError(f"{e}: fix --symbols") from e
    return built


def assign_role(container: Container, command: str | None) -> None:
    """Give ``container`` the NATS parts of ``command`` (None: the service) and override what the
    role changes; overrides, not a subclass, so every provider reading an overridden one (the
    service, the metrics' status) follows it. Without NATS the service is left as it is."""
    settings: Settings = container.settings()
    if command == "persist":
        _persist(container, settings)
    elif command == "watch":
        _watch(container, settings)
    elif command == "ingest":
        client, publishing = _publish(container, settings, role="ingest")
        container.consumers.override(providers.List(publishing))
        container.repository.override(providers.Object(None))  # no database: resumed from the stream
        unseeded = container.service
        service = providers.Singleton(unseeded.provides, *unseeded.args, **unseeded.kwargs)
        container.service.override(
            providers.Coroutine(
                resumed_from_stream, client, service.provider, container.guards, settings.nats, settings.feeds
            )
        )
    elif settings.nats_url is not None:
        _, publishing = _publish(container, settings, role="service")
        container.consumers.override(providers.List(*container.consumers.args, publishing))


def _publish(
    container: Container, settings: Settings, *, role: str
) -> tuple[providers.Resource[Client], providers.Singleton[PublishingConsumer]]:
    client = providers.Resource(nats_client, settings.nats, role=role)
    publisher = providers.Resource(nats_publisher, client, settings.nats)
    publishing = providers.Singleton(PublishingConsumer, publisher)
    container.set_providers(nats=client, publisher=publisher, publishing=publishing)
    _report_nats(container, providers.Singleton(NatsStatusReader, client, publisher=publisher))
    return client, publishing


def _persist(container: Container, settings: Settings) -> None:
    client = providers.Resource(nats_client, settings.nats, role="persist")
    batch_seconds = providers.Singleton(LatencyHistogram, BATCH_BOUNDS)
    batches = providers.Resource(jetstream_batches, client, settings.nats, settings.database, batch_seconds)
    container.set_providers(nats=client, batches=batches)
    container.consumers.override(providers.List())  # no bus on this path
    container.service.override(
        providers.Singleton(StreamPersister, batches, container.repository, duration=container.duration)
    )
    container.status.override(  # no feeds and no symbols of its own to report
        providers.Singleton(
            persist_status,
            settings.metrics,
            container.bus,
            container.counter,
            providers.Singleton(NatsStatusReader, client, batches=batches),
        )
    )


def _watch(container: Container, settings: Settings) -> None:
    """A remote reader: the subjects of ``--symbols`` as feeds into the usual bus, price monitor,
    strategy and risk (paper); no gap guards (a remote reader's feed is live and at most once,
    like an exchange's stream) and no database (persist nodes store)."""
    client = providers.Resource(nats_client, settings.nats, role="watch", stream=False)
    feeds = providers.Singleton(nats_feeds, client, container.counter, settings.nats, settings.feeds)
    container.set_providers(nats=client)
    container.feeds.override(feeds)
    container.guards.override(providers.Object([]))
    container.repository.override(providers.Object(None))
    container.consumers.override(
        providers.List(*(c for c in container.consumers.args if c is not container.persistence))
    )
    _report_nats(container, providers.Singleton(NatsStatusReader, client, feeds=feeds))


def _report_nats(container: Container, nats: providers.Provider[NatsStatusReader]) -> None:
    """The metrics, /readyz and the dashboard read the role's NATS parts too."""
    status = container.status
    container.status.override(
        providers.Singleton(build_status, *status.args, **{**status.kwargs, "nats": nats})
    )
