"""An event loop whose short timers fire on time: the simulator's, so a paced rate is an even one.

asyncio waits for its next timer in ``epoll_wait``, whose timeout is whole milliseconds (the
selector rounds up), so a 200 µs sleep lasts 1-2 ms. A sender paced at 5,000 frames a second
therefore wrote them in bursts of 5 to 10 every millisecond or two, and the last frame of a burst
queued at the client behind the others: the benchmark's "latency at a paced 5,000 msgs/s" measured
that queue as much as the client. Here a wait shorter than ``FINE_WAIT`` is a non-blocking poll
then a ``nanosleep`` (high-resolution timers, with the thread's timer slack cut from the default
50 µs to 1 µs), so frames go out one at a time, 200 µs apart, each about one wake-up late.

What this gives up: during such a short sleep an arriving message waits until the sleep ends (at
most ``FINE_WAIT``), which costs a simulator nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import selectors
import sys
import time

FINE_WAIT = 0.002
"""Seconds: waits shorter than this sleep at nanosecond resolution instead of in epoll."""

_PR_SET_TIMERSLACK = 29
_TIMER_SLACK_NS = 1_000

_Ready = list[tuple[selectors.SelectorKey, int]]


class FineTimerSelector(selectors.DefaultSelector):
    def select(self, timeout: float | None = None) -> _Ready:
        if timeout is None or timeout <= 0 or timeout >= FINE_WAIT:
            return super().select(timeout)
        ready = super().select(0)
        if ready:
            return ready
        time.sleep(timeout)
        return super().select(0)


def new_fine_timer_loop() -> asyncio.AbstractEventLoop:
    """A loop on ``FineTimerSelector``, its thread's timer slack cut where the OS allows it."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, _TIMER_SLACK_NS, 0, 0, 0)
    return asyncio.SelectorEventLoop(FineTimerSelector())
