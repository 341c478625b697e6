"""Scale-out end to end: 2 ingest nodes, NATS, 2 persist nodes, a kill of each kind, nothing lost.

The harness (``tests/e2e/scale_out.py``, also ``make scale-demo``) runs every process as a user
would; the verdict is ``compare_stored``'s, which reads only the planned trades and the table.
"""

from __future__ import annotations

from pathlib import Path

import nats

from tests.database import run
from tests.e2e.conftest import Kairos, free_port, json_lines
from tests.e2e.scale_out import ScaleOutRun, summary
from tests.nats_server import NatsNames
from tests.sql import fetch_async

TRADES = 2_000
RATE = 500.0


async def test_every_trade_is_stored_once_through_a_killed_persist_node_and_a_restarted_ingest_node(
    nats_names: NatsNames, empty_database_url: str, tmp_path: Path
) -> None:
    run = ScaleOutRun(tmp_path, nats_names, empty_database_url, trades=TRADES, rate=RATE)
    try:
        comparison = await run.run()
    finally:
        await run.close()
    assert summary(comparison) == f"sent {TRADES} stored {TRADES} missing 0 duplicated 0", (
        comparison.details()
    )
    assert comparison.clean
    resumed = [event for event in run.ingest[0].events() if event.get("event") == "gap.resume"]
    assert resumed, "the restarted ingest node read its symbols' last ticks from the stream"
    assert {event["source"] for event in resumed} == {"nats"}
    assert run.simulators[0].last("simulator.stopped")["trades_unsent"] > 0, (
        "trades went by while it was down"
    )
    backfilled = await fetch_async(
        empty_database_url, "SELECT count(*) AS n FROM market_ticks WHERE source = 'backfill'"
    )
    assert backfilled[0]["n"] > 0, "what it missed came back from REST"


def test_the_all_in_one_service_with_a_nats_url_also_publishes_every_tick(
    simulator_port: int, kairos: Kairos, nats_names: NatsNames
) -> None:
    result = kairos(
        *("--binance-url", f"ws://127.0.0.1:{simulator_port}/stream"),
        *("--binance-rest-url", f"http://127.0.0.1:{simulator_port}"),
        *("--max-ticks", "150", *nats_names.flags()),
    )
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stderr)
    stopped = next(e for e in events if e["event"] == "service.stopped")
    assert stopped["ticks_total"] == 150
    consumers = stopped["consumers"]  # items: ticks, and gap events if the guard found any
    assert consumers["publisher"]["received"] == consumers["persistence"]["received"]
    assert run(_stream_messages(nats_names)) == 150, "every tick, and no gap event, is in the stream"


async def _stream_messages(names: NatsNames) -> int:
    client = await nats.connect(names.url)
    try:
        return (await client.jetstream().stream_info(names.stream)).state.messages
    finally:
        await client.close()


def test_roles_without_nats_or_with_a_foreign_stream_exit_2_and_an_absent_server_exits_5(
    kairos: Kairos, nats_names: NatsNames
) -> None:
    missing = kairos("ingest", "--symbols", "btcusdt")
    assert missing.returncode == 2
    assert "ingest needs a NATS server: give --nats-url" in missing.stderr
    run(_make_stream(nats_names))
    foreign = kairos("persist", *nats_names.flags(), "--nats-subject-prefix", "someone.else")
    assert foreign.returncode == 2
    assert f"stream {nats_names.stream} exists with subjects" in foreign.stderr
    absent = kairos("ingest", "--nats-url", f"nats://127.0.0.1:{free_port()}", "--symbols", "btcusdt")
    assert absent.returncode == 5
    assert "is unreachable after 5 attempts" in absent.stderr


async def _make_stream(names: NatsNames) -> None:
    client = await nats.connect(names.url)
    try:
        await client.jetstream().add_stream(name=names.stream, subjects=[f"{names.subject_prefix}.>"])
    finally:
        await client.close()
