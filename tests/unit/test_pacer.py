"""The simulator's pacer: on time when it can be, and never a loop hog when it cannot."""

from __future__ import annotations

import asyncio

from kairos_core.simulator.venue import Pacer


async def test_a_producer_that_never_catches_up_still_lets_the_loop_run() -> None:
    pacer = Pacer(rate=1e12)  # every event is behind its turn: each goes at once
    timer = asyncio.create_task(asyncio.sleep(0.01))
    for _ in range(10_000_000):
        await pacer.next()
        if timer.done():
            break
    assert timer.done(), "the pacer never yielded: a timer due in 10 ms did not fire"


async def test_events_are_spaced_at_the_rate() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(rate=200)
    started = loop.time()
    for _ in range(21):
        await pacer.next()
    assert loop.time() - started >= 0.1  # the 21st event's turn: 20 intervals of 5 ms
    assert pacer.count == 21
