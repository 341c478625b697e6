"""Every trade stored exactly once, whatever the venue and the network do (issue 8's proof).

The simulator (``python -m kairos_core simulate``) plans a run of a few thousand trades, writes
every one to an expected file before it listens, then makes them with one fault on (or all of
them); the service (``python -m kairos_core``) streams them into a fresh PostgreSQL database
until the table holds as many rows as were planned, and is stopped with SIGTERM. The verdict is
``compare_stored``'s, which reads only the expected file and the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.proof.compare_stored import compare
from tests.proof.harness import ProofRun, stored_rows
from tests.sql import fetch_async

SYMBOLS = ("btcusdt", "ethusdt")
CLEAN = "expected {n} stored {n} missing 0 duplicated 0 unexpected 0"
CATCH_UP = 45.0
"""Seconds the service may take, after it starts, to store every planned trade."""
DOWN = 10.0
"""Seconds the service is stopped in the restart test."""

MakeRun = Callable[..., ProofRun]


@pytest.fixture
async def proof_run(empty_database_url: str, tmp_path: Path) -> AsyncIterator[MakeRun]:
    """Builds the test's ``ProofRun`` on a fresh database (the service migrates it on start)."""
    runs: list[ProofRun] = []

    def make(*faults: str, trades: int, rate: float) -> ProofRun:
        run = ProofRun(tmp_path, empty_database_url, SYMBOLS, trades=trades, rate=rate, faults=faults)
        runs.append(run)
        return run

    yield make
    for run in runs:
        await run.close()


async def prove(run: ProofRun) -> dict[str, int]:
    """Run it to the end; assert the comparison is clean; the simulator's counters."""
    await run.start_simulator()
    assert run.expected_file.is_file(), "the expected set is written before the simulator listens"
    await run.service.start()
    await run.wait_until_stored(run.trades, CATCH_UP)
    assert await run.service.stop() == 0
    assert await run.simulator.stop() == 0
    comparison = await compare(run.expected_file, run.database_url)
    assert comparison.line == CLEAN.format(n=run.trades), comparison.details()
    counters = run.simulator.last("simulator.stopped")
    assert counters["trades_made"] == run.trades
    return counters


def rejected(run: ProofRun) -> dict[str, int]:
    """The service's rejected-frame counts by reason, over every time the feed stopped."""
    totals: dict[str, int] = {}
    for event in run.service.events():
        if event.get("event") == "feed.stopped":
            for reason, count in event["rejected"].items():
                totals[reason] = totals.get(reason, 0) + count
    return totals


def events_named(run: ProofRun, name: str) -> list[dict[str, object]]:
    return [event for event in run.service.events() if event.get("event") == name]


async def test_connections_dropped_every_2_s(proof_run: MakeRun) -> None:
    run = proof_run("--drop-every", "2", trades=3_000, rate=500)
    counters = await prove(run)
    assert counters["drops"] >= 2
    assert counters["trades_unsent"] > 0, "no trade fell in a reconnect window"
    assert len(events_named(run, "feed.reconnecting")) >= counters["drops"]


async def test_every_50th_trade_withheld(proof_run: MakeRun) -> None:
    counters = await prove(proof_run("--withhold-every", "50", trades=3_000, rate=2_000))
    assert counters["trades_withheld"] >= 3_000 // 50 - len(SYMBOLS)


async def test_garbage_after_every_100th_trade(proof_run: MakeRun) -> None:
    run = proof_run("--garbage-every", "100", trades=3_000, rate=2_000)
    counters = await prove(run)
    assert counters["garbage_sent"] == 30
    assert sum(rejected(run).values()) == 30, rejected(run)
    assert set(rejected(run)) == {"json", "unknown_event", "type", "value"}


async def test_oversize_frame_after_every_500th_trade(proof_run: MakeRun) -> None:
    run = proof_run("--oversize-every", "500", trades=2_000, rate=500)
    counters = await prove(run)
    assert counters["oversize_sent"] >= 3, "the one due at the last trade needs the service back by then"
    assert rejected(run).get("oversize") == counters["oversize_sent"], "each one refused, unread"
    assert len(events_named(run, "feed.reconnecting")) >= counters["oversize_sent"]


async def test_every_20th_trade_sent_twice(proof_run: MakeRun) -> None:
    counters = await prove(proof_run("--duplicate-every", "20", trades=3_000, rate=2_000))
    assert counters["duplicates_sent"] == 3_000 // 20


async def test_rest_429_on_every_3rd_request_while_trades_are_withheld(proof_run: MakeRun) -> None:
    run = proof_run("--rest-429-every", "3", "--withhold-every", "250", trades=2_000, rate=1_000)
    counters = await prove(run)
    assert counters["rest_refused"] >= 2
    assert counters["trades_withheld"] >= 2


async def test_every_fault_at_once(proof_run: MakeRun) -> None:
    run = proof_run(
        *("--drop-every", "2", "--withhold-every", "200", "--garbage-every", "100"),
        *("--oversize-every", "700", "--duplicate-every", "20", "--rest-429-every", "3"),
        trades=2_500,
        rate=500,
    )
    counters = await prove(run)
    for counter in ("drops", "trades_withheld", "garbage_sent", "oversize_sent", "duplicates_sent"):
        assert counters[counter] > 0, counter
    assert counters["rest_refused"] > 0


async def test_a_restart_after_10_s_down_recovers_the_downtime_from_rest(proof_run: MakeRun) -> None:
    """The planned run ends while the service is down: nothing live is left to reveal the gap, so
    the restarted service must ask the venue for everything after what it stored."""
    run = proof_run(trades=3_000, rate=300)
    await run.start_simulator()
    await run.service.start()
    await run.wait_until_stored(300, CATCH_UP)
    assert await run.service.stop() == 0
    stored_before = await stored_rows(run.database_url)
    await asyncio.sleep(DOWN)  # the market goes on without us, and then goes quiet
    await run.service.start()
    await run.wait_until_stored(run.trades, CATCH_UP)
    assert await run.service.stop() == 0
    assert await run.simulator.stop() == 0
    comparison = await compare(run.expected_file, run.database_url)
    assert comparison.line == CLEAN.format(n=run.trades), comparison.details()
    unsent = run.simulator.last("simulator.stopped")["trades_unsent"]
    assert unsent >= run.trades - stored_before - 300, "the downtime was not ~all the rest of the run"
    backfilled = await fetch_async(
        run.database_url, "SELECT count(*) AS n FROM market_ticks WHERE source = 'backfill'"
    )
    assert backfilled[0]["n"] >= unsent, "the downtime came back from REST"
