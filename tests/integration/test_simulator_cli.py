"""``kairos simulate`` refuses what cannot work with one line and exit 2, and stops on --duration."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kairos_core.__main__ import main
from kairos_core.bootstrap.cli import parse_arguments
from kairos_core.settings import Settings
from kairos_core.simulator.binance import BinanceSimulator
from kairos_core.simulator.serve import _simulator


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


def test_simulate_pings_its_clients_every_20_seconds_as_binance_does() -> None:
    """The default of the server ``simulate`` builds; the pings themselves are tested at 0.1 s
    (test_simulator_protocol.py)."""
    overrides, run = parse_arguments(["simulate"])
    server = _simulator(Settings(**overrides), run)
    assert isinstance(server, BinanceSimulator)
    assert server.ping_interval == 20.0


def test_duration_stops_the_simulator() -> None:
    assert main(["simulate", "--port", "0", "--duration", "0.2", "--log-format", "json"]) == 0


def counters_at_exit(cwd: Path, *arguments: str) -> dict[str, int]:
    """Run ``simulate`` for 0.2 s with ``arguments``; the counters of its ``simulator.stopped`` line.

    A process of its own: module loggers keep the stream of the first main() in this one.
    """
    run = ["--port", "0", "--duration", "0.2", "--log-format", "json", *arguments]
    result = subprocess.run(
        [sys.executable, "-m", "kairos_core", "simulate", *run],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    stopped = [json.loads(line) for line in result.stderr.splitlines() if "simulator.stopped" in line]
    assert len(stopped) == 1
    return dict(stopped[0])


def test_a_planned_run_writes_the_expected_file_and_its_counters_at_exit(tmp_path: Path) -> None:
    expected = tmp_path / "expected.csv"
    plan = ["--trades", "50", "--expected-file", str(expected), "--id-base", "7", "--seed", "1"]
    faults = ["--drop-every", "1", "--drop-random", "--withhold-every", "5", "--garbage-every", "3"]
    faults += ["--oversize-every", "4", "--duplicate-every", "2", "--rest-429-every", "3"]
    counters = counters_at_exit(tmp_path, "--symbols", "btcusdt", *plan, *faults)
    assert expected.read_text().splitlines() == [f"binance,BTCUSDT,{i}" for i in range(7, 57)]
    assert counters["trades_made"] == 0, "nobody connected: a planned run waits for its first client"
    assert {"drops", "garbage_sent", "oversize_sent", "duplicates_sent", "rest_refused"} <= set(counters)


@pytest.mark.parametrize(
    ("exchange", "faults", "expected"),
    [
        (
            ["--symbols", "btcusdt"],
            [
                *("--shutdown-every", "1", "--shutdown-grace", "0.5", "--lifetime", "5"),
                *("--silent-after", "3", "--connection-budget", "10", "--budget-window", "60"),
            ],
            {"shutdown_notices", "lifetime_closes", "silenced", "trades_silenced", "handshakes_refused"}
            | {"streams_refused", "rate_limited"},
        ),
        (
            ["--exchange", "okx", "--symbols", "BTC-USDT"],
            ["--notice-every", "1", "--shutdown-grace", "0.5", "--lifetime", "5"],
            {"shutdown_notices", "shutdown_closes", "lifetime_closes", "pings", "idle_closes"},
        ),
    ],
    ids=["binance", "okx"],
)
def test_connection_fault_flags_are_taken_and_their_counters_reported_at_exit(
    tmp_path: Path, exchange: list[str], faults: list[str], expected: set[str]
) -> None:
    """The command line's plumbing only: nobody connects in 0.2 s. What each fault does to a client
    is tested in test_simulator_connections.py and test_rotation.py."""
    assert expected <= set(counters_at_exit(tmp_path, *exchange, *faults))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--expected-file", "x.csv"], "--expected-file needs a planned run: add --trades N"),
        (["--drop-random"], "--drop-random needs --drop-every SECONDS"),
        (["--exchange", "okx", "--symbols", "BTC-USDT", "--drop-every", "2"], "--drop-every shape Binance's"),
        (["--bench", "--trades", "10"], "--trades shape Binance's random walk"),
        (["--notice-every", "2"], "--notice-every: OKX only; for Binance use --shutdown-every"),
        (
            ["--exchange", "okx", "--symbols", "BTC-USDT", "--silent-after", "2"],
            "--silent-after: Binance only; drop for --exchange okx",
        ),
        (["--shutdown-grace", "2"], "--shutdown-grace needs --shutdown-every SECONDS"),
        (["--budget-window", "60"], "--budget-window needs --connection-budget N"),
        (["--bench", "--lifetime", "10"], "--lifetime: not for --bench"),
    ],
)
def test_plans_and_faults_that_cannot_apply_exit_2(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--port", "0", "--duration", "0.1", "--log-format", "json", *arguments]) == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize(
    ("flag", "complaint"),
    [
        ("--garbage-every", "must be a positive whole number"),
        ("--connection-budget", "must be a positive whole number"),
        ("--lifetime", "must be a positive number of seconds"),
    ],
)
def test_a_fault_period_must_be_positive(
    flag: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["simulate", flag, "0"])
    assert exited.value.code == 2
    assert f"{flag}: {complaint}" in capsys.readouterr().err
