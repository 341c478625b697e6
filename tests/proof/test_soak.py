"""The soak in short (``make soak`` is the long one): every fault at once and a database outage,
60,000 trades over 20 symbols in about 30 seconds, and every one of them stored exactly once.

The connection faults run on an 8-second lifetime here instead of 32 seconds, so each happens
within the run; drops and the oversize frame are placed apart (by time and by trade count) so
that connections still live long enough to be rotated.
"""

from __future__ import annotations

from pathlib import Path

from tests.proof.soak import Faults, SoakConfig, soak

SHORT = SoakConfig(
    trades=60_000,
    rate=2_000,
    outage=3.0,
    faults=Faults(
        lifetime=8.0,
        shutdown_every=7.65,
        silent_after=3.0,
        silent_every=2,
        drop_every=14.0,
        drop_random=False,
        withhold_every=500,
        garbage_every=1000,
        oversizes=1,
        duplicate_every=200,
        rest_429_every=20,
        connection_budget=10,
        budget_window=60.0,
    ),
)


async def test_a_short_soak_stores_every_trade_once_and_every_fault_fires(
    empty_database_url: str, postgres_server_url: str, tmp_path: Path
) -> None:
    result = await soak(
        SHORT, database_url=empty_database_url, server_url=postgres_server_url, workdir=tmp_path
    )

    assert result.failures() == [], "\n".join([result.line, *result.details()])
    assert result.line.startswith("sent 60000 stored 60000 missing 0 duplicated 0 ")
    fired = result.simulator
    for counter in (
        *("drops", "trades_withheld", "garbage_sent", "oversize_sent", "duplicates_sent", "rest_refused"),
        *("shutdown_notices", "silenced"),
    ):
        assert fired[counter] > 0, f"{counter} never happened: {result.details()}"
    stopped = result.named("feed.stopped")[-1]
    assert stopped["reconnects"] == result.reconnects.total()
    assert stopped["rotations"] == dict(result.rotations)
    assert result.rotations.total() > result.rotations["silent"] > 0, "silent rotations and others"
    assert result.reconnects.total() >= fired["drops"]
    assert stopped["rejected"]["oversize"] > 0
    assert result.named("persistence.write_failed"), "the outage never reached the service"
    assert result.backfilled > 0
