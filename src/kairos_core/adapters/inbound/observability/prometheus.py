"""The Prometheus view of a ``ServiceSnapshot``: a custom collector, run only at scrape time.

Nothing on the hot path touches prometheus_client (a labelled ``inc()`` costs about 1 µs, a whole
tick a few): the components count in plain ints and arrays, and ``collect`` turns one snapshot of
them into metric families when Prometheus asks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from kairos_core.adapters.inbound.observability.families import buckets, histogram_family
from kairos_core.adapters.inbound.observability.prometheus_nats import nats_families
from kairos_core.domain.status import ServiceSnapshot, StatusSource


def metrics_registry(status: StatusSource) -> CollectorRegistry:
    """A registry of its own (not the global one): the service's collector and the process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PrometheusStatusCollector(status))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class PrometheusStatusCollector:
    """A ``prometheus_client`` collector over a ``StatusSource``; see docs/operations.md for the list."""

    def __init__(self, status: StatusSource) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        snapshot = self._status.snapshot()
        yield from _feeds(snapshot)
        yield from _symbols(snapshot)
        yield from _bus(snapshot)
        yield from _persistence(snapshot)
        yield from _trading(snapshot)
        yield from nats_families(snapshot)
        ready = GaugeMetricFamily("kairos_ready", "1 while /readyz answers 200 (see its body for why not).")
        ready.add_metric([], float(snapshot.readiness.ready))
        yield ready


def _feeds(snapshot: ServiceSnapshot) -> Iterator[Metric]:
    labels = ["exchange", "connection"]
    up = GaugeMetricFamily("kairos_connection_up", "1 while the exchange connection is open.", labels=labels)
    state = GaugeMetricFamily(
        "kairos_connection_state_seconds", "Seconds since the connection opened or was lost.", labels=labels
    )
    silent = GaugeMetricFamily(
        "kairos_connection_silent_seconds", "Seconds since the open connection's last frame.", labels=labels
    )
    reconnects = CounterMetricFamily(
        "kairos_reconnects_total", "Reconnects, by reason.", labels=["exchange", "reason"]
    )
    rotations = CounterMetricFamily(
        "kairos_rotations_total",
        "Connections replaced make-before-break, by reason.",
        labels=["exchange", "reason"],
    )
    rejected = CounterMetricFamily(
        "kairos_frames_rejected_total",
        "Frames that could not become a tick, by reason.",
        labels=["exchange", "reason"],
    )
    for feed in snapshot.feeds:
        for connection in feed.connections:
            named = [connection.exchange.value, connection.name]
            up.add_metric(named, float(connection.up))
            state.add_metric(named, connection.state_seconds)
            silent.add_metric(named, connection.silent_seconds)
        for reason, count in sorted(feed.reconnects.items()):
            reconnects.add_metric([feed.exchange.value, reason], count)
        for reason, count in sorted(feed.rotations.items()):
            rotations.add_metric([feed.exchange.value, reason], count)
        for reason, count in sorted(feed.rejected.items()):
            rejected.add_metric([feed.exchange.value, reason], count)
    yield from (up, state, silent, reconnects, rotations, rejected)
    latency = HistogramMetricFamily(
        "kairos_trade_to_receipt_seconds",
        "Exchange trade time to local receipt (sampled; includes the clocks' offset).",
        labels=["exchange"],
    )
    for exchange, histogram in sorted(snapshot.trade_to_receipt.items()):
        latency.add_metric([exchange.value], buckets(histogram), histogram.total)
    yield latency


def _symbols(snapshot: ServiceSnapshot) -> Iterator[Metric]:
    labels = ["exchange", "symbol"]
    ticks = CounterMetricFamily(
        "kairos_ticks_total",
        "Unique ticks published on the bus (after de-duplication), by source: live or backfill.",
        labels=[*labels, "source"],
    )
    since = GaugeMetricFamily(
        "kairos_seconds_since_last_tick",
        "Seconds since the last live tick was received (since start while none has been).",
        labels=labels,
    )
    threshold = GaugeMetricFamily(
        "kairos_symbol_stale_after_seconds",
        "The symbol's stale threshold: the default or its own.",
        labels=labels,
    )
    stale = GaugeMetricFamily(
        "kairos_symbol_stale",
        "1 while seconds since the last tick exceed the symbol's stale threshold.",
        labels=labels,
    )
    duplicates = CounterMetricFamily(
        "kairos_duplicates_dropped_total", "Live ticks dropped as already seen.", labels=labels
    )
    gaps = CounterMetricFamily("kairos_gaps_detected_total", "Gaps in trade ids detected.", labels=labels)
    unrecoverable = CounterMetricFamily(
        "kairos_gaps_unrecoverable_total", "Gaps (or their remainders) given up on.", labels=labels
    )
    unrecovered = CounterMetricFamily(
        "kairos_trades_unrecovered_total", "Trade ids in unrecoverable gaps, never published.", labels=labels
    )
    repair = GaugeMetricFamily(
        "kairos_gap_repair_seconds_max", "Longest time from a gap's detection to its repair.", labels=labels
    )
    for symbol in snapshot.symbols:
        named = [symbol.exchange.value, symbol.symbol]
        ticks.add_metric([*named, "live"], symbol.live)
        ticks.add_metric([*named, "backfill"], symbol.backfilled)
        since.add_metric(named, symbol.seconds_since_last_tick)
        threshold.add_metric(named, symbol.stale_after)
        stale.add_metric(named, float(symbol.stale))
        duplicates.add_metric(named, symbol.duplicates)
        gaps.add_metric(named, symbol.gaps)
        unrecoverable.add_metric(named, symbol.unrecoverable)
        unrecovered.add_metric(named, symbol.unrecovered_ids)
        repair.add_metric(named, symbol.repair_seconds_max)
    yield from (ticks, since, threshold, stale, duplicates, gaps, unrecoverable, unrecovered, repair)


def _bus(snapshot: ServiceSnapshot) -> Iterator[Metric]:
    labels = ["subscriber"]
    depth = GaugeMetricFamily(
        "kairos_bus_depth", "Items published and still readable by the subscriber.", labels=labels
    )
    lag = GaugeMetricFamily(
        "kairos_bus_lag", "Items published that the subscriber has not read.", labels=labels
    )
    received = CounterMetricFamily("kairos_bus_received_total", "Items the subscriber read.", labels=labels)
    lost = CounterMetricFamily(
        "kairos_bus_lost_total", "Items overwritten before the subscriber read them.", labels=labels
    )
    latency = HistogramMetricFamily(
        "kairos_receipt_to_consumer_seconds",
        "Local receipt of a tick to a consumer reading it from the bus (sampled).",
        labels=["consumer"],
    )
    for subscriber in snapshot.subscribers:
        depth.add_metric([subscriber.name], subscriber.depth)
        lag.add_metric([subscriber.name], subscriber.lag)
        received.add_metric([subscriber.name], subscriber.received)
        lost.add_metric([subscriber.name], subscriber.lost)
        if subscriber.latency is not None:
            latency.add_metric([subscriber.name], buckets(subscriber.latency), subscriber.latency.total)
    yield from (depth, lag, received, lost, latency)


def _persistence(snapshot: ServiceSnapshot) -> Iterator[Metric]:
    persistence = snapshot.persistence
    if persistence is None:
        return
    counters = (
        ("kairos_persistence_rows_written_total", "Rows newly written.", persistence.stored),
        (
            "kairos_persistence_duplicates_total",
            "Ticks written that were already stored.",
            persistence.duplicates,
        ),
        ("kairos_persistence_retries_total", "Failed batch writes (each retried).", persistence.retries),
        (
            "kairos_persistence_dropped_total",
            "Ticks dropped: always 0, the feeds pause instead.",
            persistence.dropped,
        ),
    )
    for name, documentation, value in counters:
        yield CounterMetricFamily(name, documentation, value=value)
    gauges = (
        ("kairos_persistence_buffered_ticks", "Ticks received and not yet stored.", persistence.buffered),
        (
            "kairos_persistence_buffer_limit_ticks",
            "Buffer bound; at it the feeds pause.",
            persistence.buffer_limit,
        ),
        ("kairos_persistence_failing", "1 while the last write failed.", int(persistence.failing)),
    )
    for name, documentation, value in gauges:
        yield GaugeMetricFamily(name, documentation, value=value)
    yield histogram_family(
        "kairos_persistence_batch_duration_seconds",
        "Duration of each successful batch write.",
        persistence.batch_seconds,
    )


def _trading(snapshot: ServiceSnapshot) -> Iterator[Metric]:
    trading = snapshot.trading
    if trading is None:
        return
    yield CounterMetricFamily(
        "kairos_order_intents_total", "Order intents the strategies made.", value=trading.intents
    )
    yield CounterMetricFamily(
        "kairos_order_approvals_total", "Intents risk approved.", value=trading.approved
    )
    rejections = CounterMetricFamily(
        "kairos_order_rejections_total", "Intents risk rejected, by reason.", labels=["reason"]
    )
    for reason, count in sorted(trading.rejected.items()):
        rejections.add_metric([reason], count)
    yield rejections
    yield CounterMetricFamily("kairos_order_fills_total", "Paper fills.", value=trading.fills)
    labels = ["exchange", "symbol"]
    position = GaugeMetricFamily(
        "kairos_position", "Net position, base asset (negative: short).", labels=labels
    )
    realised = GaugeMetricFamily("kairos_realised_pnl", "Realised P&L, quote asset.", labels=labels)
    unrealised = GaugeMetricFamily(
        "kairos_unrealised_pnl", "Unrealised P&L at the last price.", labels=labels
    )
    for held in trading.positions:
        named = [held.exchange.value, held.symbol]
        position.add_metric(named, float(held.quantity))
        realised.add_metric(named, float(held.realised_pnl))
        unrealised.add_metric(named, float(held.unrealised_pnl))
    yield from (position, realised, unrealised)
