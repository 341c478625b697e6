"""SIGINT and SIGTERM, handled from the loop's first step rather than from the moment the service
exists.

Start-up (migrations, an embedded PostgreSQL, NATS) takes seconds, and a supervisor may ask for a
stop in that time: systemd on a restart, a test harness once it has what it waited for. With the
handlers installed only after start-up, SIGTERM found the default action and the process died as
"killed by SIGTERM" (exit -15), leaving whatever start-up had begun half done. Here the request is
held until the service exists and then handed to it, so start-up finishes what it began, the
service drains an empty run, and the process exits 0 like any other stop.

Start-up can also hang (a database that accepts connections and never answers, a migration lock
someone holds): a second signal, or the first one held for ``grace`` seconds, abandons it by
cancelling the start-up task; the resources already up are shut down as on any failure and the
process exits 128 + the signal's number, as a shell reports a process a signal ended. If that
shutdown does not finish within ``CLEANUP_LIMIT`` (a resource still waiting on the silent server
it was starting against), the process exits at once with the same code: no tick has been accepted
before the service exists, so none can be lost, and an embedded PostgreSQL left running is adopted
by the next start.

Before the loop exists (the interpreter's start, the imports: 1-3 s here) ``early_stop.py`` holds
SIGTERM for ``python -m kairos_core``; ``install`` takes it over.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable

import structlog

from kairos_core.bootstrap import early_stop

log = structlog.get_logger("kairos_core")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STARTUP_STOP_GRACE = 10.0
"""Seconds a stop requested during start-up waits for it before abandoning it."""
CLEANUP_LIMIT = 5.0
"""Seconds an abandoned start-up has to shut down what it started before the process just exits."""


class StartupAbandoned(Exception):
    """Start-up was cancelled by a stop signal before the service existed."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(f"start-up abandoned on {signum.name}")
        self.signum = signum


class StopSignals:
    """Routes SIGINT/SIGTERM to whatever stops the service; holds a request that came before it."""

    def __init__(self, grace: float = STARTUP_STOP_GRACE, cleanup_limit: float = CLEANUP_LIMIT) -> None:
        self._grace = grace
        self._cleanup_limit = cleanup_limit
        self._stop: Callable[[str], None] | None = None
        self._startup: asyncio.Task[object] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.pending: signal.Signals | None = None
        """The first signal, when it came before there was a service to stop."""
        self.abandoned: signal.Signals | None = None
        """The signal on which start-up was cancelled, if it was."""
        self._stopping = False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle the signals on ``loop`` from now on; the current task is the start-up to abandon."""
        self._startup = asyncio.current_task(loop)
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._received, signum)
        held = early_stop.take()  # one that came before the loop existed (``early_stop.py``)
        if held is not None:
            self._received(held)

    def route_to(self, stop: Callable[[str], None]) -> None:
        """From now on a signal calls ``stop(name)``; one that came during start-up does so now."""
        self._stop = stop
        if self._deadline is not None:
            self._deadline.cancel()
        if self.pending is not None:
            self._stopping = True
            stop(self.pending.name)

    def _received(self, signum: signal.Signals) -> None:
        if self._stop is not None:
            if self._stopping:
                # The service is draining: what it accepted is consumed (and stored) before it exits,
                # however long a failing database takes. Say so, rather than seem deaf.
                log.warning(
                    "service.still_stopping",
                    signal=signum.name,
                    why="it finishes what it accepted before it exits, and retries a failing "
                    "database rather than drop ticks (the lines above say what waits)",
                    sooner="SIGKILL: what was not yet stored comes back at the next start, redelivered "
                    "by NATS to a persist node, else fetched again from the exchange by gap repair",
                )
            self._stopping = True
            self._stop(signum.name)
        elif self.pending is None:
            self.pending = signum
            log.warning("service.stop_requested_during_startup", signal=signum.name, grace_s=self._grace)
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._grace, self._abandon, signum, "grace elapsed")
        else:
            self._abandon(signum, "signalled again")

    def _abandon(self, signum: signal.Signals, why: str) -> None:
        if self.abandoned is None and self._startup is not None and not self._startup.done():
            self.abandoned = signum
            log.error("service.startup_abandoned", signal=signum.name, why=why)
            self._startup.cancel()
            asyncio.get_running_loop().call_later(self._cleanup_limit, _exit_now, signum)


def _exit_now(signum: signal.Signals) -> None:
    log.error("service.startup_cleanup_overdue", signal=signum.name, exit_code=128 + signum)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)
