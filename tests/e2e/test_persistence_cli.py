"""``python -m kairos_core`` storing into PostgreSQL: exact counts, the embedded default, migrate."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Kairos, json_lines
from tests.sql import STORED_PER_SYMBOL, fetch


def stream_options(port: int) -> list[str]:
    return [
        "--binance-url",
        f"ws://127.0.0.1:{port}/stream",
        "--binance-rest-url",
        f"http://127.0.0.1:{port}",
    ]


# The whole service (feeds, bus, asyncpg, the flush at the end) on either event loop.
@pytest.mark.parametrize("busy_poll_us", [0, 2_000], ids=["sleeping-loop", "busy-polling-loop"])
def test_max_ticks_stores_exactly_n_rows_with_contiguous_ids(
    simulator_port: int, kairos: Kairos, database_url: str, busy_poll_us: int
) -> None:
    fetch(database_url, "TRUNCATE market_ticks")
    options = ["--max-ticks", "300", "--persist-batch-size", "64", "--busy-poll-us", str(busy_poll_us)]
    result = kairos(*stream_options(simulator_port), *options)
    assert result.returncode == 0, result.stderr
    polling = [e for e in json_lines(result.stderr) if e["event"] == "event_loop.busy_poll"]
    assert [e["window_us"] for e in polling] == ([busy_poll_us] if busy_poll_us else [])
    per_symbol = fetch(database_url, STORED_PER_SYMBOL)
    assert sum(row["rows"] for row in per_symbol) == 300
    for row in per_symbol:
        assert row["last"] - row["first"] + 1 == row["rows"], dict(row)
    summary = next(e for e in json_lines(result.stderr) if e["event"] == "service.stopped")
    assert summary["consumers"]["persistence"] == {"received": 300, "lost": 0}


def test_the_embedded_default_works_twice_in_a_row(simulator_port: int, tmp_path: Path) -> None:
    from kairos_core.adapters.outbound.postgres.embedded import EmbeddedPostgres

    kairos = Kairos(database_url=None)
    data_dir = tmp_path / "data"
    for _ in range(2):
        result = kairos(*stream_options(simulator_port), "--max-ticks", "50", "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
        assert any(e["event"] == "postgres.embedded.started" for e in json_lines(result.stderr))
    with EmbeddedPostgres(data_dir) as url:
        per_symbol = fetch(url, STORED_PER_SYMBOL)
    assert sum(row["rows"] for row in per_symbol) == 100


def test_migrate_upgrades_an_empty_database_and_is_idempotent(
    kairos: Kairos, empty_database_url: str
) -> None:
    for _ in range(2):
        result = kairos("migrate", "--database-url", empty_database_url)
        assert result.returncode == 0, result.stderr
    assert fetch(empty_database_url, "SELECT count(*) AS n FROM market_ticks")[0]["n"] == 0


def test_an_unreachable_database_exits_4_in_one_line_without_the_password(kairos: Kairos) -> None:
    result = kairos("migrate", "--database-url", "postgresql://kairos:hunter2@127.0.0.1:1/kairos")
    assert result.returncode == 4
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kairos: error: database postgresql://kairos:***@127.0.0.1:1/kairos")
    assert "unreachable" in last
    assert "hunter2" not in result.stderr


def test_a_refused_login_exits_2_at_once_naming_the_fix(kairos: Kairos, postgres_server_url: str) -> None:
    from sqlalchemy.engine import make_url

    refused = make_url(postgres_server_url).set(
        username="nosuchrole", password="hunter2", database="postgres"
    )
    result = kairos("migrate", "--database-url", refused.render_as_string(hide_password=False))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert 'role "nosuchrole" does not exist' in last
    assert "fix the user, password or database name" in last
    assert "hunter2" not in result.stderr
