"""``kairos simulate`` refuses what cannot work with one line and exit 2, and stops on --duration."""

from __future__ import annotations

import socket
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
