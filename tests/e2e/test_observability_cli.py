"""The metrics port and the dashboard of ``python -m kairos_core``, fed by the simulator in another process.

Both programs run as a user runs them, with a bare environment; the tests read only what an
operator reads: ``/metrics``, ``/readyz``, the terminal, the log file.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pexpect
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import free_port, wait_for_port

SYMBOLS = "btcusdt,ethusdt"
TRADES = 3_000
BARE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TERM": "xterm-256color"}

T = TypeVar("T")
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


class Programs:
    """Starts ``python -m kairos_core`` processes and ends every one still running at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "kairos_core", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=BARE_ENV,
            )
        self.running.append(process)
        return process

    def simulator(self, port: int, *extra: str) -> subprocess.Popen[bytes]:
        process = self.start("simulator", "simulate", "--port", str(port), "--symbols", SYMBOLS, *extra)
        wait_for_port(port)
        return process

    def service(
        self, sim_port: int, metrics_port: int, database_url: str, *extra: str
    ) -> subprocess.Popen[bytes]:
        return self.start(
            "service",
            *service_args(sim_port, database_url, self.workdir),
            "--metrics-port",
            str(metrics_port),
            *extra,
        )

    def close(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.kill()
                process.wait()


def service_args(sim_port: int, database_url: str, workdir: Path) -> list[str]:
    return [
        "--symbols",
        SYMBOLS,
        "--binance-url",
        f"ws://127.0.0.1:{sim_port}/stream",
        "--binance-rest-url",
        f"http://127.0.0.1:{sim_port}",
        "--database-url",
        database_url,
        "--data-dir",
        str(workdir / "data"),
        "--log-format",
        "json",
    ]


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[Programs]:
    started = Programs(tmp_path)
    yield started
    started.close()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> Samples:
    """``{sample name: {sorted labels: value}}``, as Prometheus parses ``/metrics``."""
    status, text = get(port, "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def until(probe: Callable[[], T | None], timeout: float, what: str, process: subprocess.Popen[bytes]) -> T:
    """Poll ``probe`` until it returns something; fail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the service exited ({process.returncode}) while waiting for {what}"
        try:
            found = probe()
        except OSError:
            found = None  # the metrics port is not open yet
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples.get(name, {}).items()}


def test_the_counters_equal_what_the_simulator_sent(
    programs: Programs, empty_database_url: str, tmp_path: Path
) -> None:
    sim_port, metrics_port = free_port(), free_port()
    expected_file = tmp_path / "expected.csv"
    simulator = programs.simulator(
        sim_port,
        "--trades",
        str(TRADES),
        "--rate",
        "1000",
        "--seed",
        "5",
        "--expected-file",
        str(expected_file),
    )
    service = programs.service(sim_port, metrics_port, empty_database_url)

    def all_stored() -> Samples | None:
        samples = scrape(metrics_port)
        written = samples.get("kairos_persistence_rows_written_total", {}).get((), 0)
        return samples if written >= TRADES else None

    samples = until(all_stored, 45, f"{TRADES} rows written", service)

    sent = Counter(line.split(",")[1] for line in expected_file.read_text().splitlines())
    live = {
        dict(labels)["symbol"]: value
        for labels, value in samples["kairos_ticks_total"].items()
        if dict(labels)["source"] == "live"
    }
    assert live == {"BTCUSDT": sent["BTCUSDT"], "ETHUSDT": sent["ETHUSDT"]}
    assert sum(sent.values()) == TRADES
    assert set(by_label(samples, "kairos_ticks_total", "source")) == {"live", "backfill"}
    assert samples["kairos_persistence_rows_written_total"] == {(): TRADES}
    assert samples["kairos_persistence_dropped_total"] == {(): 0}
    assert by_label(samples, "kairos_bus_received_total", "subscriber") == dict.fromkeys(
        ("price_monitor", "strategy", "risk", "persistence"), TRADES
    )
    assert set(by_label(samples, "kairos_bus_lost_total", "subscriber").values()) == {0}
    assert samples.get("kairos_frames_rejected_total", {}) == {}
    assert samples["kairos_connection_up"] == {
        (("connection", f"127.0.0.1:{sim_port}"), ("exchange", "binance")): 1
    }
    # 1 tick in 64 of each symbol is timed from trade to receipt: the count says which.
    assert samples["kairos_trade_to_receipt_seconds_count"] == {
        (("exchange", "binance"),): sum(count // 64 for count in sent.values())
    }
    assert all(
        count > 0
        for count in by_label(samples, "kairos_receipt_to_consumer_seconds_count", "consumer").values()
    )
    assert samples["kairos_ready"] == {(): 1}
    intents = samples["kairos_order_intents_total"][()]
    rejected = sum(samples.get("kairos_order_rejections_total", {}).values())
    assert intents == samples["kairos_order_approvals_total"][()] + rejected

    service.send_signal(signal.SIGTERM)
    assert service.wait(30) == 0
    simulator.terminate()
    simulator.wait(10)


def test_readiness_turns_false_while_the_exchange_is_gone_and_true_when_it_is_back(
    programs: Programs, empty_database_url: str
) -> None:
    sim_port, metrics_port = free_port(), free_port()
    simulator = programs.simulator(sim_port, "--rate", "100")
    service = programs.service(sim_port, metrics_port, empty_database_url)

    def ready() -> bool | None:
        return True if get(metrics_port, "/readyz")[0] == 200 else None

    def unready() -> dict[str, Any] | None:
        status, body = get(metrics_port, "/readyz")
        return json.loads(body) if status == 503 else None

    until(ready, 30, "ready", service)
    # The simulator closes its connections at once on SIGTERM and exits ~0.5 s later: the service's
    # down time starts after the SIGTERM, not after the exit.
    gone = time.monotonic()
    simulator.terminate()
    simulator.wait(10)
    body = until(unready, 20, "503 from /readyz", service)
    assert time.monotonic() - gone > 4.5, "one connection down for up to 5 s is still ready"
    assert body["ready"] is False
    assert re.fullmatch(rf"binance connection 127\.0\.0\.1:{sim_port} down for \d+ s", body["problems"][0])
    assert body["connections"][0]["up"] is False
    assert get(metrics_port, "/healthz") == (200, '{"alive": true}')
    assert scrape(metrics_port)["kairos_ready"] == {(): 0}

    programs.simulator(sim_port, "--rate", "100")
    until(ready, 40, "ready again", service)
    reasons = by_label(scrape(metrics_port), "kairos_reconnects_total", "reason")
    # Seen once (2026-11-26, CI, not reproduced in 8 runs): no "dropped" among the reasons. The
    # message carries the reasons and the service's reconnect lines to tell why, should it recur.
    ends = [
        line for line in (programs.workdir / "service.log").read_text().splitlines() if "reconnect" in line
    ]
    assert reasons.get("dropped", 0) >= 1, (reasons, ends[:5])
    assert reasons.get("connect", 0) >= 1, (reasons, ends[:5])

    service.send_signal(signal.SIGTERM)
    assert service.wait(30) == 0


def test_the_dashboard_draws_the_symbols_and_moving_counts_in_a_terminal(
    programs: Programs, database_url: str, tmp_path: Path
) -> None:
    sim_port = free_port()
    programs.simulator(sim_port, "--rate", "100")
    shown = io.StringIO()
    terminal = pexpect.spawn(
        sys.executable,
        ["-m", "kairos_core", "--dashboard", *service_args(sim_port, database_url, tmp_path)],
        cwd=str(tmp_path),
        env=BARE_ENV,
        dimensions=(60, 160),
        encoding="utf-8",
        timeout=30,
    )
    terminal.logfile_read = shown
    try:
        terminal.expect("ETHUSDT")
        counts: list[int] = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            terminal.expect(r"ticks (\d+) \(")
            counts.append(int(terminal.match.group(1)))
        terminal.sendintr()  # Ctrl-C, as a person stops it
        terminal.expect(pexpect.EOF)
    finally:
        terminal.close(force=True)

    assert terminal.exitstatus == 0
    assert len(counts) >= 5, "the dashboard is redrawn twice a second"
    assert counts == sorted(counts)
    assert counts[-1] - counts[0] >= 200, f"100 trades a second should show: {counts}"
    screen = shown.getvalue()
    for text in ("BTCUSDT", "ETHUSDT", f"127.0.0.1:{sim_port}", "persistence (lossless)", "READY"):
        assert text in screen, text
    log_file = tmp_path / "data" / "kairos.log"
    assert f"logs: {log_file}" in screen
    events = [json.loads(line)["event"] for line in log_file.read_text().splitlines() if line.startswith("{")]
    assert "service.started" in events
    assert "service.stopped" in events
    assert '"event": "service.started"' not in screen, "no log line is drawn over the dashboard"


def test_without_a_terminal_the_dashboard_gives_way_to_plain_logs(
    programs: Programs, database_url: str, tmp_path: Path
) -> None:
    sim_port = free_port()
    programs.simulator(sim_port, "--rate", "50")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kairos_core",
            "--dashboard",
            "--max-ticks",
            "20",
            *service_args(sim_port, database_url, tmp_path),
        ],
        capture_output=True,
        text=True,
        env=BARE_ENV,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    off = next(event for event in events if event["event"] == "dashboard.off")
    assert "not a terminal" in off["reason"]
    assert any(event["event"] == "service.stopped" for event in events)
    assert not (tmp_path / "data" / "kairos.log").exists()
