"""Running ``python -m kairos_core`` in a subprocess: ports, the simulator, the test database."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Kairos:
    """Runs ``python -m kairos_core`` with a bare environment that points at the test database."""

    def __init__(self, database_url: str | None) -> None:
        self.env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
        if database_url is not None:
            self.env["KAIROS_DATABASE_URL"] = database_url

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kairos_core", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )


@pytest.fixture
def kairos(database_url: str) -> Kairos:
    return Kairos(database_url)


@pytest.fixture(scope="module")
def simulator_port() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kairos_core",
            "simulate",
            "--port",
            str(port),
            "--rate",
            "500",
            "--seed",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
