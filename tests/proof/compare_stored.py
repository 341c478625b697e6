"""Compare the trades a simulator planned with the rows ``market_ticks`` holds, key by key.

    python tests/proof/compare_stored.py --expected FILE --database-url URL [--exchange binance]

The expected file has one ``exchange,SYMBOL,trade_id`` line per trade (``simulate --trades N
--expected-file FILE`` writes it before it serves anything). One line comes out::

    expected 3000 stored 3000 missing 0 duplicated 0 unexpected 0

and the exit code is 0 only when missing, duplicated and unexpected are all 0; otherwise the
first missing and unexpected ids of each symbol follow on stderr. ``duplicated`` counts keys
stored more than once, which the primary key forbids: it is counted by a GROUP BY all the same,
so the proof does not rest on the schema it checks.

This file imports nothing from ``kairos_core`` (a test holds it to that): the proof must not
share code, and so bugs, with what it proves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import asyncpg

SHOWN = 5
"""Ids listed per symbol when some are missing or unexpected."""

STORED = """
    SELECT symbol, trade_id, count(*) AS copies FROM market_ticks
    WHERE exchange = $1 GROUP BY symbol, trade_id
"""

Keys = dict[str, set[int]]
"""Trade ids per symbol."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """What the expected file and the table have in common, and where they differ."""

    expected: int
    stored: int
    """Rows, copies included."""
    missing: Keys
    duplicated: int
    """Keys stored more than once."""
    unexpected: Keys

    @property
    def clean(self) -> bool:
        return not self.missing and not self.duplicated and not self.unexpected

    @property
    def line(self) -> str:
        return (
            f"expected {self.expected} stored {self.stored} missing {_count(self.missing)} "
            f"duplicated {self.duplicated} unexpected {_count(self.unexpected)}"
        )

    def details(self) -> list[str]:
        """The first few missing and unexpected ids of each symbol."""
        lines = []
        for what, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            for symbol, ids in sorted(keys.items()):
                first = " ".join(str(trade_id) for trade_id in sorted(ids)[:SHOWN])
                lines.append(f"{what} {symbol}: {len(ids)} ids, first {first}")
        return lines


def read_expected(path: Path, exchange: str) -> Keys:
    """The expected file's trade ids of ``exchange``, per symbol."""
    keys: Keys = defaultdict(set)
    with path.open(encoding="ascii") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                venue, symbol, trade_id = line.strip().split(",")
                key = symbol, int(trade_id)
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: expected exchange,SYMBOL,trade_id, got {line!r}"
                ) from None
            if venue == exchange:
                keys[key[0]].add(key[1])
    return dict(keys)


async def stored_copies(database_url: str, exchange: str) -> dict[tuple[str, int], int]:
    """How many rows ``market_ticks`` holds of each key of ``exchange``."""
    connection = await asyncpg.connect(asyncpg_url(database_url))
    try:
        rows = await connection.fetch(STORED, exchange)
    finally:
        await connection.close()
    return {(row["symbol"], row["trade_id"]): row["copies"] for row in rows}


def asyncpg_url(url: str) -> str:
    """``url`` as asyncpg takes it: SQLAlchemy's ``postgresql+asyncpg://`` loses its driver."""
    scheme, separator, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{separator}{rest}"


async def compare(expected_file: Path, database_url: str, exchange: str = "binance") -> Comparison:
    expected = read_expected(expected_file, exchange)
    copies = await stored_copies(database_url, exchange)
    stored: Keys = defaultdict(set)
    for symbol, trade_id in copies:
        stored[symbol].add(trade_id)
    missing = {s: ids - stored.get(s, set()) for s, ids in expected.items()}
    unexpected = {s: ids - expected.get(s, set()) for s, ids in stored.items()}
    return Comparison(
        expected=sum(len(ids) for ids in expected.values()),
        stored=sum(copies.values()),
        missing={s: ids for s, ids in missing.items() if ids},
        duplicated=sum(1 for n in copies.values() if n > 1),
        unexpected={s: ids for s, ids in unexpected.items() if ids},
    )


def _count(keys: Keys) -> int:
    return sum(len(ids) for ids in keys.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--expected", type=Path, required=True, metavar="FILE", help="exchange,SYMBOL,trade_id lines")
    add("--database-url", required=True, metavar="URL", help="postgresql://user:pass@host:5432/db")
    add("--exchange", default="binance", help="compare this exchange's trades (default binance)")
    arguments = parser.parse_args(argv)
    result = asyncio.run(compare(arguments.expected, arguments.database_url, arguments.exchange))
    print(result.line, flush=True)
    for line in result.details():
        print(line, file=sys.stderr)
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main())
