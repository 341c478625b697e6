"""The comparator: one line, exit 0 only when nothing is missing, duplicated or unexpected.

It runs against a bare ``market_ticks`` of three columns and no primary key, so a duplicate can
be stored and must be counted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proof.compare_stored import compare
from tests.sql import fetch_async

SCRIPT = Path(__file__).with_name("compare_stored.py")


@pytest.fixture
async def bare_table(empty_database_url: str) -> str:
    await fetch_async(
        empty_database_url, "CREATE TABLE market_ticks (exchange text, symbol text, trade_id bigint)"
    )
    return empty_database_url


async def store(url: str, *keys: tuple[str, str, int]) -> None:
    for exchange, symbol, trade_id in keys:
        await fetch_async(url, "INSERT INTO market_ticks VALUES ($1, $2, $3)", exchange, symbol, trade_id)


@pytest.fixture
def expected(tmp_path: Path) -> Path:
    path = tmp_path / "expected.csv"
    lines = [f"binance,BTCUSDT,{i}" for i in range(1, 6)] + [f"binance,ETHUSDT,{i}" for i in (7, 8)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_script(expected: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--expected", str(expected), "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_everything_stored_once_is_clean_and_exits_0(bare_table: str, expected: Path) -> None:
    keys = [("binance", "BTCUSDT", i) for i in range(1, 6)] + [("binance", "ETHUSDT", i) for i in (7, 8)]
    await store(bare_table, *keys, ("okx", "BTC-USDT", 1))  # another exchange is not compared
    result = run_script(expected, bare_table)
    assert result.returncode == 0
    assert result.stdout == "expected 7 stored 7 missing 0 duplicated 0 unexpected 0\n"
    assert result.stderr == ""


async def test_missing_duplicated_and_unexpected_are_counted_and_exit_1(
    bare_table: str, expected: Path
) -> None:
    await store(
        bare_table,
        *[("binance", "BTCUSDT", i) for i in (1, 2, 2, 4, 5, 9)],
        ("binance", "ETHUSDT", 8),
        ("binance", "SOLUSDT", 1),
    )
    result = run_script(expected, bare_table)
    assert result.returncode == 1
    assert result.stdout == "expected 7 stored 8 missing 2 duplicated 1 unexpected 2\n"
    assert result.stderr.splitlines() == [
        "missing BTCUSDT: 1 ids, first 3",
        "missing ETHUSDT: 1 ids, first 7",
        "unexpected BTCUSDT: 1 ids, first 9",
        "unexpected SOLUSDT: 1 ids, first 1",
    ]


async def test_it_is_a_function_too(bare_table: str, expected: Path) -> None:
    await store(bare_table, ("binance", "BTCUSDT", 1))
    comparison = await compare(expected, bare_table)
    assert not comparison.clean
    assert comparison.missing == {"BTCUSDT": {2, 3, 4, 5}, "ETHUSDT": {7, 8}}
    assert comparison.line == "expected 7 stored 1 missing 6 duplicated 0 unexpected 0"


def test_a_malformed_expected_line_names_its_place(tmp_path: Path) -> None:
    from tests.proof.compare_stored import read_expected

    path = tmp_path / "expected.csv"
    path.write_text("binance,BTCUSDT,1\nbinance,BTCUSDT\n")
    with pytest.raises(ValueError, match=r"expected.csv:2: expected exchange,SYMBOL,trade_id"):
        read_expected(path, "binance")


def test_the_comparator_imports_only_the_standard_library_and_asyncpg() -> None:
    imported = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            assert node.module is not None
            imported.add(node.module.split(".")[0])
    assert "kairos_core" not in imported
    assert "tests" not in imported
    assert imported - {"asyncpg"} <= set(sys.stdlib_module_names) | {"__future__"}, imported
