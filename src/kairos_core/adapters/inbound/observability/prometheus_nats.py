"""The Prometheus families of the scale-out roles' NATS parts (``ServiceSnapshot.nats``):
the connection, an ingest node's publisher, a persist node's durable consumer, a watch node's feeds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from kairos_core.adapters.inbound.observability.families import histogram_family
from kairos_core.domain.status import NatsFeedStatus, NatsPersistStatus, NatsPublisherStatus, ServiceSnapshot


def nats_families(snapshot: ServiceSnapshot) -> Iterator[Metric]:
    nats = snapshot.nats
    if nats is None:
        return
    connected = GaugeMetricFamily(
        "kairos_nats_connected", "1 while the NATS connection is up.", labels=["server"]
    )
    connected.add_metric([nats.server], float(nats.connected))
    yield connected
    yield CounterMetricFamily("kairos_nats_reconnects_total", "NATS reconnects.", value=nats.reconnects)
    if nats.publisher is not None:
        yield from _publisher(nats.publisher)
    if nats.persist is not None:
        yield from _persist(nats.persist)
    if nats.feeds:
        yield from _feeds(nats.feeds)


def _publisher(publisher: NatsPublisherStatus) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "kairos_nats_published_total",
        "Ticks published to JetStream (first attempts).",
        value=publisher.published,
    )
    acks = CounterMetricFamily(
        "kairos_nats_publish_acks_total",
        "Publishes JetStream confirmed, by result: stored, or duplicate (already stored).",
        labels=["result"],
    )
    acks.add_metric(["stored"], publisher.stored)
    acks.add_metric(["duplicate"], publisher.duplicates)
    retries = CounterMetricFamily(
        "kairos_nats_publish_retries_total",
        "Publishes repeated, by reason: refused, timeout, unsent.",
        labels=["reason"],
    )
    for reason, count in sorted(publisher.retries.items()):
        retries.add_metric([reason], count)
    yield from (acks, retries)
    yield GaugeMetricFamily(
        "kairos_nats_publish_unconfirmed_ticks",
        "Published and not yet confirmed (acks outstanding, retries due).",
        value=publisher.unconfirmed,
    )
    yield GaugeMetricFamily(
        "kairos_nats_publish_window_ticks",
        "The bound on unconfirmed ticks; at it publishing, then the feeds, wait.",
        value=publisher.window,
    )


def _persist(persist: NatsPersistStatus) -> Iterator[Metric]:
    counters = (
        ("fetched", "Messages the durable consumer delivered to this node.", persist.fetched),
        (
            "redelivered",
            "Of those, delivered before (a node died, or a commit outlasted the ack wait).",
            persist.redelivered,
        ),
        ("acked", "Messages acknowledged after their batch committed.", persist.acked),
        ("released", "Messages handed back unstored (a stop during a database outage).", persist.released),
        ("rejected", "Messages that were not a tick, terminated.", persist.rejected),
    )
    for name, documentation, value in counters:
        yield CounterMetricFamily(f"kairos_nats_persist_{name}_total", documentation, value=value)
    if persist.batch_seconds is not None:
        yield histogram_family(
            "kairos_nats_persist_batch_commit_seconds",
            "A batch from being handed out to its ack: its commit, retries included.",
            persist.batch_seconds,
        )


def _feeds(feeds: Sequence[NatsFeedStatus]) -> Iterator[Metric]:
    received = CounterMetricFamily(
        "kairos_nats_feed_received_total", "Ticks a NATS feed received.", labels=["exchange"]
    )
    rejected = CounterMetricFamily(
        "kairos_nats_feed_rejected_total", "NATS messages a feed could not read.", labels=["exchange"]
    )
    for feed in feeds:
        received.add_metric([feed.exchange.value], feed.received)
        rejected.add_metric([feed.exchange.value], feed.rejected)
    yield from (received, rejected)
