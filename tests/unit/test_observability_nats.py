"""What an operator reads of the NATS parts and of each symbol's silence: the Prometheus exposition,
the /readyz body, the dashboard's text, and readiness while NATS is away."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from kairos_core.adapters.inbound.observability.dashboard import RichDashboard
from kairos_core.adapters.inbound.observability.prometheus import metrics_registry
from kairos_core.adapters.inbound.observability.server import readiness_body
from kairos_core.application.bus import BroadcastBus
from kairos_core.application.status import HealthPolicy, ServiceStatusReader
from kairos_core.application.tick_counter import TickCounter
from kairos_core.domain import Exchange
from kairos_core.domain.status import (
    HistogramSnapshot,
    NatsFeedStatus,
    NatsPersistStatus,
    NatsPublisherStatus,
    NatsStatus,
    NatsStatusPort,
    ServiceSnapshot,
    StatusSource,
    SymbolStatus,
)
from tests.unit.test_observability_output import SNAPSHOT

NATS = NatsStatus(
    server="n1:4222",
    connected=True,
    state_seconds=12.0,
    reconnects=2,
    publisher=NatsPublisherStatus(
        published=120,
        stored=100,
        duplicates=15,
        retries={"refused": 1, "timeout": 3, "unsent": 0},
        unconfirmed=5,
        window=10_000,
    ),
    persist=NatsPersistStatus(
        fetched=90,
        redelivered=10,
        acked=80,
        released=4,
        rejected=1,
        batch_seconds=HistogramSnapshot(bounds=(0.01, 0.1), counts=(2, 1, 0), total=0.06),
    ),
    feeds=(NatsFeedStatus(exchange=Exchange.OKX, received=33, rejected=2),),
)
QUIET = SymbolStatus(
    exchange=Exchange.BINANCE,
    symbol="ETHUSDT",
    ticks=9,
    backfilled=0,
    last_price=Decimal("3000.5"),
    seconds_since_last_tick=42.0,
    stale_after=30.0,
    stale=True,
)
WITH_NATS = dataclasses.replace(SNAPSHOT, nats=NATS, symbols=(*SNAPSHOT.symbols, QUIET))


class Fixed(StatusSource):
    def __init__(self, snapshot: ServiceSnapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> ServiceSnapshot:
        return self._snapshot


def scraped(snapshot: ServiceSnapshot) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = generate_latest(metrics_registry(Fixed(snapshot))).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def nats_metric_names() -> set[str]:
    """Every family and sample name a process with every NATS part exports."""
    text = generate_latest(metrics_registry(Fixed(WITH_NATS))).decode()
    families = list(text_string_to_metric_families(text))
    return {family.name for family in families} | {sample.name for f in families for sample in f.samples}


def test_the_nats_parts_are_exposed_with_their_counters_and_the_commit_histogram() -> None:
    samples = scraped(WITH_NATS)

    assert samples["kairos_nats_connected"] == {(("server", "n1:4222"),): 1}
    assert samples["kairos_nats_reconnects_total"] == {(): 2}
    assert samples["kairos_nats_published_total"] == {(): 120}
    assert samples["kairos_nats_publish_acks_total"] == {
        (("result", "stored"),): 100,
        (("result", "duplicate"),): 15,
    }
    assert samples["kairos_nats_publish_retries_total"] == {
        (("reason", "refused"),): 1,
        (("reason", "timeout"),): 3,
        (("reason", "unsent"),): 0,
    }
    assert samples["kairos_nats_publish_unconfirmed_ticks"] == {(): 5}
    assert samples["kairos_nats_publish_window_ticks"] == {(): 10_000}
    persisted = {
        name: samples[f"kairos_nats_persist_{name}_total"][()] for name in ("fetched", "redelivered")
    }
    assert persisted == {"fetched": 90, "redelivered": 10}
    assert samples["kairos_nats_persist_acked_total"] == {(): 80}
    assert samples["kairos_nats_persist_released_total"] == {(): 4}
    assert samples["kairos_nats_persist_rejected_total"] == {(): 1}
    buckets = samples["kairos_nats_persist_batch_commit_seconds_bucket"]
    assert [buckets[(("le", le),)] for le in ("0.01", "0.1", "+Inf")] == [2, 3, 3]
    assert samples["kairos_nats_persist_batch_commit_seconds_sum"] == {(): 0.06}
    assert samples["kairos_nats_feed_received_total"] == {(("exchange", "okx"),): 33}
    assert samples["kairos_nats_feed_rejected_total"] == {(("exchange", "okx"),): 2}


def test_without_nats_no_nats_series_and_each_symbol_has_its_threshold() -> None:
    samples = scraped(dataclasses.replace(SNAPSHOT, symbols=(*SNAPSHOT.symbols, QUIET)))

    assert not any(name.startswith("kairos_nats_") for name in samples)
    thresholds = samples["kairos_symbol_stale_after_seconds"]
    assert thresholds[(("exchange", "binance"), ("symbol", "ETHUSDT"))] == 30
    assert thresholds[(("exchange", "binance"), ("symbol", "BTCUSDT"))] == 300
    assert samples["kairos_symbol_stale"][(("exchange", "binance"), ("symbol", "ETHUSDT"))] == 1
    assert samples["kairos_seconds_since_last_tick"][(("exchange", "binance"), ("symbol", "ETHUSDT"))] == 42


def test_the_readiness_body_lists_every_symbols_silence_and_the_nats_connection() -> None:
    body = readiness_body(WITH_NATS)

    assert body["symbols"] == [
        {
            "exchange": "binance",
            "symbol": "BTCUSDT",
            "seconds_since_last_tick": 400.0,
            "stale_after_seconds": 300.0,
            "stale": True,
        },
        {
            "exchange": "okx",
            "symbol": "BTC-USDT",
            "seconds_since_last_tick": 1.5,
            "stale_after_seconds": 300.0,
            "stale": False,
        },
        {
            "exchange": "binance",
            "symbol": "ETHUSDT",
            "seconds_since_last_tick": 42.0,
            "stale_after_seconds": 30.0,
            "stale": True,
        },
    ]
    assert [entry["symbol"] for entry in body["stale_symbols"]] == ["BTCUSDT", "ETHUSDT"]
    assert body["nats"] == {"server": "n1:4222", "connected": True, "state_seconds": 12.0}
    assert readiness_body(SNAPSHOT)["nats"] is None


def test_the_dashboard_shows_each_symbols_silence_and_the_nats_parts() -> None:
    console = Console(record=True, width=200, force_terminal=False)
    board = RichDashboard(Fixed(WITH_NATS), console=console, clock=lambda: 10.0)

    console.print(board.render(WITH_NATS))
    screen = console.export_text()

    assert "silent" in screen
    assert "42 s > 30 s" in screen
    assert "NATS      n1:4222 up 12 s  reconnects 2" in screen
    assert "publish published 120  stored 100  duplicates 15  unconfirmed 5 of 10000" in screen
    assert "retries 4 (refused 1, timeout 3, unsent 0)" in screen
    assert "persist fetched 90  acked 80  redelivered 10  released 4  rejected 1" in screen
    assert "feed okx  received 33  rejected 2" in screen


class AwayNats(NatsStatusPort):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def status(self) -> NatsStatus:
        return NatsStatus(server="n1:4222", connected=False, state_seconds=self.seconds, reconnects=4)


def test_nats_away_past_the_grace_makes_the_node_unready() -> None:
    bus = BroadcastBus()
    away = AwayNats(3.0)
    reader = ServiceStatusReader(bus=bus, counter=TickCounter(bus), nats=away, policy=HealthPolicy())

    assert reader.snapshot().readiness.ready, "a reconnect within 5 s is no outage"
    away.seconds = 6.0
    readiness = reader.snapshot().readiness
    assert not readiness.ready
    assert readiness.problems == ("NATS connection n1:4222 down for 6 s",)
