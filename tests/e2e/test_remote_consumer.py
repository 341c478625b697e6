"""A remote consumer: ``python -m kairos_core watch`` reads the ticks an ingest process publishes to
NATS, into its price monitor, strategy and risk; every process as a user runs it, NATS real.

What is checked is what an operator reads: both processes' ``/metrics`` and ``/readyz``, and the
watch process's log.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import free_port
from tests.e2e.test_observability_cli import Programs, by_label, get, scrape, until
from tests.nats_server import NatsNames

TRADES = 600
SYMBOLS = "btcusdt,ethusdt"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Programs]:
    """Every process started is ended at teardown."""
    started = Programs(tmp_path)
    yield started
    started.close()


def watch_log(programs: Programs) -> list[dict[str, Any]]:
    text = (programs.workdir / "watch.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_ticks_an_ingest_process_publishes_reach_a_watch_process_on_another_machine(
    processes: Programs, nats_names: NatsNames, tmp_path: Path
) -> None:
    programs = processes
    sim_port, ingest_metrics, watch_metrics = free_port(), free_port(), free_port()
    common = [*nats_names.flags(), "--symbols", SYMBOLS, "--log-format", "json"]
    watch = programs.start(
        "watch",
        "watch",
        *common,
        *("--data-dir", str(tmp_path / "watch"), "--metrics-port", str(watch_metrics)),
        *("--metrics-stale-after-symbols", "BTCUSDT=2", "--price-summary-interval", "1"),
    )
    until(
        lambda: any(e["event"] == "feed.subscribed" for e in watch_log(programs)) or None,
        30,
        "subscribed",
        watch,
    )
    expected_file = tmp_path / "expected.csv"
    programs.simulator(
        sim_port,
        *("--trades", str(TRADES), "--rate", "300", "--seed", "7", "--expected-file", str(expected_file)),
    )
    ingest = programs.start(
        "ingest",
        "ingest",
        *common,
        *("--binance-url", f"ws://127.0.0.1:{sim_port}/stream"),
        *("--binance-rest-url", f"http://127.0.0.1:{sim_port}"),
        *("--data-dir", str(tmp_path / "ingest"), "--metrics-port", str(ingest_metrics)),
    )

    def all_read() -> dict[str, Any] | None:
        samples = scrape(watch_metrics)
        received = samples.get("kairos_nats_feed_received_total", {}).get((("exchange", "binance"),), 0)
        return samples if received >= TRADES else None

    def all_confirmed() -> dict[str, Any] | None:
        samples = scrape(ingest_metrics)
        stored = samples.get("kairos_nats_publish_acks_total", {}).get((("result", "stored"),), 0)
        return samples if stored >= TRADES else None

    seen = until(all_read, 60, f"{TRADES} ticks read by the watch process", watch)
    published = until(all_confirmed, 10, f"{TRADES} ticks confirmed by the stream", ingest)

    sent = Counter(line.split(",")[1] for line in expected_file.read_text().splitlines())
    assert published["kairos_nats_published_total"] == {(): TRADES}
    assert published["kairos_nats_publish_acks_total"][(("result", "stored"),)] == TRADES
    assert published["kairos_nats_publish_unconfirmed_ticks"] == {(): 0}
    assert published["kairos_nats_connected"] == {(("server", nats_names.url.removeprefix("nats://")),): 1}
    live = {
        dict(labels)["symbol"]: value
        for labels, value in seen["kairos_ticks_total"].items()
        if dict(labels)["source"] == "live"
    }
    assert live == {"BTCUSDT": sent["BTCUSDT"], "ETHUSDT": sent["ETHUSDT"]}
    assert seen["kairos_nats_feed_received_total"] == {(("exchange", "binance"),): TRADES}
    assert seen["kairos_nats_feed_rejected_total"] == {(("exchange", "binance"),): 0}
    assert by_label(seen, "kairos_bus_received_total", "subscriber") == dict.fromkeys(
        ("price_monitor", "strategy", "risk"), TRADES
    ), "no persistence on a reader: persist nodes store"
    intents = seen["kairos_order_intents_total"][()]
    assert intents > 0, "the strategy traded on the remote ticks"
    rejected = sum(seen.get("kairos_order_rejections_total", {}).values())
    assert intents == seen["kairos_order_approvals_total"][()] + rejected

    # The planned run is over: BTCUSDT (2 s of its own) goes stale, ETHUSDT (300 s) does not.
    def btc_stale() -> dict[str, Any] | None:
        status, body = get(watch_metrics, "/readyz")
        parsed: dict[str, Any] = json.loads(body)
        parsed["status"] = status
        return parsed if parsed["stale_symbols"] else None

    body = until(btc_stale, 20, "BTCUSDT stale", watch)
    assert body["status"] == 200, "a quiet symbol is not an outage"
    assert [entry["symbol"] for entry in body["stale_symbols"]] == ["BTCUSDT"]
    assert body["nats"]["connected"] is True
    crossings = [e for e in watch_log(programs) if e["event"] in ("symbol.stale", "symbol.fresh")]
    assert {e["symbol"] for e in crossings} == {"BTCUSDT"}
    # (stale already once if the ingest took over 2 s to start: silent since the start, then fresh)
    assert [e["event"] for e in crossings][-2:] in (["symbol.stale"], ["symbol.fresh", "symbol.stale"])
    assert all(e["stale_after_s"] == 2.0 for e in crossings if e["event"] == "symbol.stale")
    assert any(e["event"] == "price.update" for e in watch_log(programs))

    for process in (ingest, watch):
        process.send_signal(signal.SIGTERM)
    assert ingest.wait(30) == 0
    assert watch.wait(30) == 0
    stopped = next(e for e in watch_log(programs) if e["event"] == "service.stopped")
    assert stopped["ticks_total"] == TRADES
