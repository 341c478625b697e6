"""The event loop the service runs on: asyncio's, made to poll its sockets before it sleeps when
``--busy-poll-us`` says so.

A loop with nothing to do sleeps in epoll, and the frame that wakes it waits for the kernel to run
the thread again: on a VM, for the host to run an idle vCPU again. On the 2-vCPU Firecracker VM of
docs/performance.md a 128-byte message written over loopback by another process reached a reader
that slept 76-109 µs later at the median and 290-330 µs at p99; one that never slept got it in
15-21 µs (p99 41-123 µs). That wake-up, and the loop steps after it that run slowly on caches
gone cold meanwhile, are most of the feed's latency at a few thousand trades a second; parsing and
publishing a frame take under 10 µs of it. Polling buys it back with CPU: while trades keep
coming within the window the loop never sleeps (a core busy all the time); once they stop it polls
for the window, then sleeps as before. Off by default: it is for a deployment that gives the
service a core of its own.
"""

from __future__ import annotations

import asyncio
import selectors
import time

import structlog

log = structlog.get_logger("kairos_core.event_loop")

_Ready = list[tuple[selectors.SelectorKey, int]]


class BusyPollSelector(selectors.DefaultSelector):
    """Asks the kernel without waiting, again and again for up to ``window`` seconds, before it
    waits; a timer due sooner than that ends the polling when it is due."""

    def __init__(self, window: float) -> None:
        super().__init__()
        self._window = window

    def select(self, timeout: float | None = None) -> _Ready:
        if timeout is not None and timeout <= 0:
            return super().select(0)
        polling = self._window if timeout is None else min(self._window, timeout)
        clock = time.perf_counter
        until = clock() + polling
        while not (ready := super().select(0)):
            if clock() >= until:
                return super().select(None if timeout is None else timeout - polling)
        return ready


def new_event_loop(busy_poll_us: int) -> asyncio.AbstractEventLoop:
    """asyncio's own loop, or with ``busy_poll_us`` a selector loop that polls that long first."""
    if not busy_poll_us:
        return asyncio.new_event_loop()
    log.info("event_loop.busy_poll", window_us=busy_poll_us)
    return asyncio.SelectorEventLoop(BusyPollSelector(busy_poll_us / 1_000_000))
