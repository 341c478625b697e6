"""``kairos simulate`` refuses what cannot work with one line and exit 2, and stops on --duration."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kairos_core.__main__ import main


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kairos")]
    assert len(lines) == 1
    return lines[0]


def test_a_port_in_use_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["simulate", "--port", str(port), "--duration", "0.1", "--log-format", "json"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in error_line(capsys)


def test_a_recording_without_binance_trades_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = tmp_path / "okx.txt"
    recording.write_text('1652459225.1: {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[]}\n')
    assert main(["simulate", "--replay", str(recording), "--log-format", "json"]) == 2
    assert "no Binance aggTrade or trade frames" in error_line(capsys)


def test_duration_stops_the_simulator() -> None:
    assert main(["simulate", "--port", "0", "--duration", "0.2", "--log-format", "json"]) == 0


def test_a_planned_run_writes_the_expected_file_and_its_counters_at_exit(tmp_path: Path) -> None:
    expected = tmp_path / "expected.csv"
    arguments = ["--port", "0", "--duration", "0.2", "--log-format", "json", "--symbols", "btcusdt"]
    plan = ["--trades", "50", "--expected-file", str(expected), "--id-base", "7", "--seed", "1"]
    faults = ["--drop-every", "1", "--drop-random", "--withhold-every", "5", "--garbage-every", "3"]
    faults += ["--oversize-every", "4", "--duplicate-every", "2", "--rest-429-every", "3"]
    # A process of its own: module loggers keep the stream of the first main() in this one.
    result = subprocess.run(
        [sys.executable, "-m", "kairos_core", "simulate", *arguments, *plan, *faults],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert expected.read_text().splitlines() == [f"binance,BTCUSDT,{i}" for i in range(7, 57)]
    stopped = [json.loads(line) for line in result.stderr.splitlines() if "simulator.stopped" in line]
    assert len(stopped) == 1
    assert stopped[0]["trades_made"] == 0, "nobody connected: a planned run waits for its first client"
    assert {"drops", "garbage_sent", "oversize_sent", "duplicates_sent", "rest_refused"} <= set(stopped[0])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--expected-file", "x.csv"], "--expected-file needs a planned run: add --trades N"),
        (["--drop-random"], "--drop-random needs --drop-every SECONDS"),
        (["--exchange", "okx", "--symbols", "BTC-USDT", "--drop-every", "2"], "--drop-every shape Binance's"),
        (["--bench", "--trades", "10"], "--trades shape Binance's random walk"),
    ],
)
def test_plans_and_faults_that_cannot_apply_exit_2(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--port", "0", "--duration", "0.1", "--log-format", "json", *arguments]) == 2
    assert message in error_line(capsys)


def test_a_fault_period_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--garbage-every", "0"])
    assert exited.value.code == 2
    assert "--garbage-every: must be a positive whole number" in capsys.readouterr().err
