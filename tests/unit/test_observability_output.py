"""What an operator reads: the Prometheus exposition, the /readyz body and the dashboard's text."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from kairos_core.adapters.inbound.observability.dashboard import RichDashboard
from kairos_core.adapters.inbound.observability.prometheus import metrics_registry
from kairos_core.adapters.inbound.observability.server import readiness_body
from kairos_core.domain import Exchange, Position
from kairos_core.domain.status import (
    ConnectionStatus,
    FeedStatus,
    HistogramSnapshot,
    PersistenceStatus,
    Readiness,
    ServiceSnapshot,
    StatusSource,
    SubscriberStatus,
    SymbolStatus,
    TradingStatus,
)

LATENCY = HistogramSnapshot(bounds=(0.001, 0.01), counts=(3, 2, 1), total=0.05)

SNAPSHOT = ServiceSnapshot(
    feeds=(
        FeedStatus(
            exchange=Exchange.BINANCE,
            connections=(
                ConnectionStatus(
                    exchange=Exchange.BINANCE,
                    name="127.0.0.1:9443",
                    up=False,
                    state_seconds=7.5,
                    silent_seconds=0.0,
                    watchdog_seconds=60.0,
                ),
            ),
            reconnects={"connect": 3, "dropped": 1},
            rejected={"json": 2},
            rotations={"lifetime": 2},
        ),
    ),
    symbols=(
        SymbolStatus(
            exchange=Exchange.BINANCE,
            symbol="BTCUSDT",
            ticks=120,
            backfilled=20,
            last_price=Decimal("60000.5"),
            last_trade_ms=1_700_000_000_000,
            seconds_since_last_tick=400.0,
            stale=True,
            gaps=2,
            unrecoverable=1,
            unrecovered_ids=7,
        ),
        SymbolStatus(
            exchange=Exchange.OKX, symbol="BTC-USDT", ticks=5, backfilled=0, seconds_since_last_tick=1.5
        ),
    ),
    subscribers=(
        SubscriberStatus(
            name="strategy", lossless=False, received=100, depth=3, lag=40, lost=37, latency=LATENCY
        ),
        SubscriberStatus(name="persistence", lossless=True, received=125, depth=0, lag=0, lost=0),
    ),
    persistence=PersistenceStatus(
        stored=125,
        duplicates=4,
        batches=3,
        retries=2,
        buffered=600,
        buffer_limit=1000,
        failing=True,
        batch_seconds=HistogramSnapshot(bounds=(0.01,), counts=(3, 0), total=0.012),
    ),
    trading=TradingStatus(
        intents=5,
        approved=3,
        rejected={"position_limit": 2},
        fills=3,
        positions=(
            Position(
                exchange=Exchange.BINANCE,
                symbol="BTCUSDT",
                quantity=Decimal("0.5"),
                average_price=Decimal(60000),
                realised_pnl=Decimal("12.5"),
                mark_price=Decimal(60010),
            ),
        ),
    ),
    trade_to_receipt={Exchange.BINANCE: LATENCY},
    readiness=Readiness(ready=False, problems=("binance connection 127.0.0.1:9443 down for 8 s",)),
    stale_after=300.0,
)


class FixedStatus(StatusSource):
    def snapshot(self) -> ServiceSnapshot:
        return SNAPSHOT


def scraped() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted labels: value}}`` as Prometheus would parse the scrape."""
    text = generate_latest(metrics_registry(FixedStatus())).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_the_exposition_parses_and_names_its_types() -> None:
    text = generate_latest(metrics_registry(FixedStatus())).decode()
    types = {family.name: family.type for family in text_string_to_metric_families(text)}

    assert types["kairos_ticks"] == "counter"
    assert types["kairos_connection_up"] == "gauge"
    assert types["kairos_trade_to_receipt_seconds"] == "histogram"
    assert types["kairos_persistence_batch_duration_seconds"] == "histogram"
    assert "process_cpu_seconds" in types  # the process collector rides along


def test_ticks_are_split_by_source_and_feeds_by_reason() -> None:
    samples = scraped()

    ticks = samples["kairos_ticks_total"]
    assert ticks[(("exchange", "binance"), ("source", "live"), ("symbol", "BTCUSDT"))] == 100
    assert ticks[(("exchange", "binance"), ("source", "backfill"), ("symbol", "BTCUSDT"))] == 20
    assert ticks[(("exchange", "okx"), ("source", "live"), ("symbol", "BTC-USDT"))] == 5
    assert samples["kairos_reconnects_total"] == {
        (("exchange", "binance"), ("reason", "connect")): 3,
        (("exchange", "binance"), ("reason", "dropped")): 1,
    }
    assert samples["kairos_frames_rejected_total"] == {(("exchange", "binance"), ("reason", "json")): 2}
    assert samples["kairos_connection_up"] == {(("connection", "127.0.0.1:9443"), ("exchange", "binance")): 0}
    stale = samples["kairos_symbol_stale"]
    assert stale[(("exchange", "binance"), ("symbol", "BTCUSDT"))] == 1
    assert samples["kairos_seconds_since_last_tick"][(("exchange", "okx"), ("symbol", "BTC-USDT"))] == 1.5
    assert samples["kairos_gaps_detected_total"][(("exchange", "binance"), ("symbol", "BTCUSDT"))] == 2
    assert samples["kairos_trades_unrecovered_total"][(("exchange", "binance"), ("symbol", "BTCUSDT"))] == 7
    assert samples["kairos_ready"] == {(): 0}


def test_histograms_are_cumulative_with_inf_equal_to_the_count() -> None:
    samples = scraped()

    buckets = samples["kairos_receipt_to_consumer_seconds_bucket"]
    assert [buckets[(("consumer", "strategy"), ("le", le))] for le in ("0.001", "0.01", "+Inf")] == [3, 5, 6]
    assert samples["kairos_receipt_to_consumer_seconds_count"] == {(("consumer", "strategy"),): 6}
    assert samples["kairos_receipt_to_consumer_seconds_sum"] == {(("consumer", "strategy"),): 0.05}
    assert samples["kairos_trade_to_receipt_seconds_count"] == {(("exchange", "binance"),): 6}


def test_bus_persistence_and_trading_counters() -> None:
    samples = scraped()

    assert samples["kairos_bus_lost_total"] == {
        (("subscriber", "strategy"),): 37,
        (("subscriber", "persistence"),): 0,
    }
    assert samples["kairos_bus_depth"][(("subscriber", "strategy"),)] == 3
    assert samples["kairos_persistence_rows_written_total"] == {(): 125}
    assert samples["kairos_persistence_retries_total"] == {(): 2}
    assert samples["kairos_persistence_dropped_total"] == {(): 0}
    assert samples["kairos_persistence_buffered_ticks"] == {(): 600}
    assert samples["kairos_persistence_failing"] == {(): 1}
    assert samples["kairos_order_intents_total"] == {(): 5}
    assert samples["kairos_order_rejections_total"] == {(("reason", "position_limit"),): 2}
    assert samples["kairos_order_fills_total"] == {(): 3}
    assert samples["kairos_position"] == {(("exchange", "binance"), ("symbol", "BTCUSDT")): 0.5}
    assert samples["kairos_unrealised_pnl"] == {(("exchange", "binance"), ("symbol", "BTCUSDT")): 5.0}


def test_the_readiness_body_says_what_is_wrong_and_lists_stale_symbols() -> None:
    body = readiness_body(SNAPSHOT)

    assert body["ready"] is False
    assert body["problems"] == ["binance connection 127.0.0.1:9443 down for 8 s"]
    assert body["connections"][0]["up"] is False
    assert body["persistence"] == {"failing": True, "buffered": 600, "buffer_limit": 1000}
    assert body["stale_symbols"] == [
        {"exchange": "binance", "symbol": "BTCUSDT", "seconds_since_last_tick": 400.0}
    ]


def test_the_dashboard_shows_symbols_connections_bus_database_and_positions() -> None:
    console = Console(record=True, width=160, force_terminal=False)
    board = RichDashboard(FixedStatus(), console=console, clock=lambda: 10.0)

    console.print(board.render(SNAPSHOT))
    screen = console.export_text()

    for shown in (
        "BTCUSDT",
        "BTC-USDT",
        "60000.5",
        "NOT READY",
        "down for 8 s",
        "connect 3",
        "strategy",
        "37",
    ):
        assert shown in screen, shown
    assert "buffered 600 of 1000" in screen
    assert "writes failing" in screen
    assert "+12.50" in screen  # realised P&L
    assert "≤ 1 ms / > 10 ms" in screen  # p50 and p99 bounds of the strategy's latency


def test_every_metric_the_docs_and_the_grafana_dashboard_name_is_exported() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    text = generate_latest(metrics_registry(FixedStatus())).decode()
    exported = {family.name for family in text_string_to_metric_families(text)} | set(scraped())
    from tests.unit.test_observability_nats import nats_metric_names  # (imports this module)

    exported |= nats_metric_names()
    named = set(re.findall(r"\bkairos_[a-z_]+", (docs / "grafana-dashboard.json").read_text()))
    named |= set(re.findall(r"`(kairos_[a-z_]+)`", (docs / "operations.md").read_text()))

    assert named, "the docs name no metric"
    assert named <= exported, named - exported
