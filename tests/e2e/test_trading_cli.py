"""``python -m kairos_core`` trading on the simulator into PostgreSQL: intents, risk decisions and paper
fills in the JSON logs; SIGTERM mid-run drains and exits 0 with every received tick stored."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from tests.e2e.conftest import Kairos
from tests.e2e.test_persistence_cli import stream_options
from tests.sql import STORED_PER_SYMBOL, fetch

Event = dict[str, Any]

TRADING = [
    "--strategy-fast-window",
    "2",
    "--strategy-slow-window",
    "5",
    "--strategy-quantity",
    "0.001",
    # 0.001 ETH is about 3 USDT and passes; 0.001 BTC is about 60 USDT and is refused. (The
    # crossover alternates buy and sell, so a position limit above one order never refuses one.)
    "--risk-max-order-notional",
    "10",
    "--persist-batch-size",
    "64",
    "--log-format",
    "json",
]
SYMBOLS = ("BTCUSDT", "ETHUSDT")


class LogLines:
    """A process's JSON log lines as they come, read on a thread so a silent process cannot hang us."""

    def __init__(self, stream: IO[str]) -> None:
        self.events: list[Event] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait_until(self, done: Callable[[Sequence[Event]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.events):
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"not seen within {timeout} s; last lines: {self.events[-5:]}") from None
            if line is None:
                raise AssertionError(f"the service ended first; last lines: {self.events[-5:]}")
            self._take(line)

    def read_to_end(self, timeout: float = 10) -> list[Event]:
        while (line := self._lines.get(timeout=timeout)) is not None:
            self._take(line)
        return self.events

    def _take(self, line: str) -> None:
        if line.startswith("{"):
            self.events.append(json.loads(line))


def named(events: Iterable[Event], name: str) -> list[Event]:
    return [event for event in events if event["event"] == name]


def trading_seen(events: Sequence[Event]) -> bool:
    """Fills and refusals, and each symbol's price logged twice (so its last id is from mid-run)."""
    updates = named(events, "price.update")
    return (
        bool(named(events, "order.filled"))
        and bool(named(events, "order.rejected"))
        and all(sum(update["symbol"] == symbol for update in updates) >= 2 for symbol in SYMBOLS)
    )


def last_ids_logged(events: Sequence[Event]) -> dict[str, int]:
    """The highest trade id each symbol's price updates name."""
    updates = named(events, "price.update")
    return {symbol: max(u["trade_id"] for u in updates if u["symbol"] == symbol) for symbol in SYMBOLS}


def side_and_price(fills: Iterable[Event]) -> list[tuple[str, str]]:
    return [(fill["side"], fill["price"]) for fill in fills]


def test_trading_runs_on_the_simulator_and_sigterm_mid_run_stores_every_received_tick(
    simulator_port: int, kairos: Kairos, database_url: str
) -> None:
    fetch(database_url, "TRUNCATE market_ticks")
    with subprocess.Popen(
        [sys.executable, "-m", "kairos_core", *stream_options(simulator_port), *TRADING],
        stderr=subprocess.PIPE,
        text=True,
        env=kairos.env,
    ) as process:
        assert process.stderr is not None
        logs = LogLines(process.stderr)
        try:
            logs.wait_until(trading_seen, timeout=60)
            received_before_signal = last_ids_logged(logs.events)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
        events = logs.read_to_end()

    intents = named(events, "order.intent")
    assert {(intent["strategy"], intent["symbol"]) for intent in intents} == {
        ("ma_crossover", symbol) for symbol in SYMBOLS
    }
    assert {intent["side"] for intent in intents} == {"buy", "sell"}
    filled, rejected = named(events, "order.filled"), named(events, "order.rejected")
    assert {fill["symbol"] for fill in filled} == {"ETHUSDT"}
    assert {(refusal["symbol"], refusal["reason"]) for refusal in rejected} == {("BTCUSDT", "order_notional")}
    assert all("notional" in refusal["detail"] for refusal in rejected)
    assert side_and_price(named(events, "paper.filled")) == side_and_price(filled)
    assert len(filled) + len(rejected) == len(intents)

    (summary,) = named(events, "service.stopped")
    assert summary["reason"] == "SIGTERM"
    assert summary["consumers"]["persistence"]["lost"] == 0
    stored = {row["symbol"]: row for row in fetch(database_url, STORED_PER_SYMBOL)}
    assert set(stored) == set(SYMBOLS)
    for symbol, row in stored.items():
        assert row["last"] - row["first"] + 1 == row["rows"], dict(row)  # no id missing
        assert row["last"] >= received_before_signal[symbol], (dict(row), received_before_signal)
        assert row["rows"] == summary["ticks"][f"binance:{symbol}"]  # every received tick is stored
