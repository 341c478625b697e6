"""SIGINT and SIGTERM, handled from the loop's first step rather than from the moment the service
exists.

Start-up (migrations, an embedded PostgreSQL, NATS) takes seconds, and a supervisor may ask for a
stop in that time: systemd on a restart, a test harness once it has what it waited for. With the
handlers installed only after start-up, such a signal found the default action and the process died
as "killed by SIGTERM" (exit -15), leaving whatever start-up had begun half done. Here the request
is held until the service exists and then handed to it, so start-up finishes what it began, the
service drains an empty run, and the process exits 0 like any other stop.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog

log = structlog.get_logger("kairos_core")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Routes SIGINT/SIGTERM to whatever stops the service; holds a request that came before it."""

    def __init__(self) -> None:
        self._stop: Callable[[str], None] | None = None
        self.pending: str | None = None
        """The first signal's name, when it came before there was a service to stop."""

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._received, signum.name)

    def route_to(self, stop: Callable[[str], None]) -> None:
        """From now on a signal calls ``stop(name)``; one that came during start-up does so now."""
        self._stop = stop
        if self.pending is not None:
            stop(self.pending)

    def _received(self, name: str) -> None:
        if self._stop is not None:
            self._stop(name)
        elif self.pending is None:
            self.pending = name
            log.warning("service.stop_requested_during_startup", signal=name)
