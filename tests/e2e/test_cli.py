"""``python -m kairos_core`` as a user runs it, against the simulator in another process."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.e2e.conftest import Kairos, free_port, json_lines, wait_for_port


def test_max_ticks_stops_cleanly_and_the_summary_reports_exactly_n(
    simulator_port: int, kairos: Kairos
) -> None:
    result = kairos(
        "--binance-url",
        f"ws://127.0.0.1:{simulator_port}/stream",
        "--binance-rest-url",
        f"http://127.0.0.1:{simulator_port}",
        "--max-ticks",
        "137",
    )
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stderr)
    summary = next(e for e in events if e["event"] == "service.stopped")
    assert summary["ticks_total"] == 137
    assert sum(summary["ticks"].values()) == 137  # type: ignore[union-attr]
    assert set(summary["ticks"]) <= {"binance:BTCUSDT", "binance:ETHUSDT"}  # type: ignore[arg-type]
    assert any(e["event"] == "price.update" for e in events)


def test_duration_stops_cleanly(simulator_port: int, kairos: Kairos) -> None:
    started = time.monotonic()
    result = kairos(
        "--binance-url",
        f"ws://127.0.0.1:{simulator_port}/stream",
        "--binance-rest-url",
        f"http://127.0.0.1:{simulator_port}",
        "--duration",
        "1.5",
    )
    assert result.returncode == 0, result.stderr
    assert 1.5 <= time.monotonic() - started < 20
    summary = next(e for e in json_lines(result.stderr) if e["event"] == "service.stopped")
    assert summary["reason"] == "duration elapsed"
    assert isinstance(summary["ticks_total"], int)
    assert summary["ticks_total"] > 0


def test_sigterm_stops_cleanly(simulator_port: int, kairos: Kairos) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kairos_core",
            "--binance-url",
            f"ws://127.0.0.1:{simulator_port}/stream",
            "--binance-rest-url",
            f"http://127.0.0.1:{simulator_port}",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=kairos.env,
    ) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if '"price.update"' in line:
                break
        process.terminate()
        rest = process.stderr.read()
        assert process.wait(timeout=20) == 0
    summary = next(e for e in json_lines(rest) if e["event"] == "service.stopped")
    assert summary["reason"] == "SIGTERM"


def test_an_unknown_symbol_exits_2_naming_it(simulator_port: int, kairos: Kairos) -> None:
    result = kairos(
        "--symbols",
        "btcusdt,nosuchcoin",
        "--binance-url",
        f"ws://127.0.0.1:{simulator_port}/stream",
        "--binance-rest-url",
        f"http://127.0.0.1:{simulator_port}",
    )
    assert result.returncode == 2
    assert "'nosuchcoin' is not listed" in result.stderr.splitlines()[-1]


def test_a_restricted_location_exits_3(kairos: Kairos) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _REFUSING_SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        result = kairos(
            "--binance-url", f"ws://127.0.0.1:{port}/stream", "--binance-rest-url", f"http://127.0.0.1:{port}"
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert result.returncode == 3
    assert "HTTP 451" in result.stderr.splitlines()[-1]
    assert "--binance-url" in result.stderr.splitlines()[-1]


_REFUSING_SERVER = """
import asyncio, sys
from kairos_core.simulator.binance import BinanceSimulator
async def main():
    sim = BinanceSimulator(("btcusdt", "ethusdt"), handshake_status=451)
    await sim.start(port=int(sys.argv[1]))
    await asyncio.sleep(60)
asyncio.run(main())
"""
