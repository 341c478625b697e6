"""SIGINT/SIGTERM routed by StopSignals, with real signals sent to this process."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from kairos_core.bootstrap.stop_signals import STOP_SIGNALS, StopSignals


@pytest.fixture
async def stop_signals() -> AsyncIterator[StopSignals]:
    loop = asyncio.get_running_loop()
    routed = StopSignals()
    routed.install(loop)
    try:
        yield routed
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def delivered(signum: signal.Signals) -> None:
    """Send ``signum`` to this process and give the loop the turn in which its handler runs."""
    os.kill(os.getpid(), signum)
    for _ in range(3):
        await asyncio.sleep(0.01)


async def test_a_signal_before_the_service_exists_is_held_and_handed_over_once(
    stop_signals: StopSignals,
) -> None:
    await delivered(signal.SIGTERM)
    await delivered(signal.SIGINT)
    assert stop_signals.pending == "SIGTERM", "the first signal is the reason"
    stops: list[str] = []
    stop_signals.route_to(stops.append)
    assert stops == ["SIGTERM"]


async def test_once_routed_every_signal_goes_to_the_service(stop_signals: StopSignals) -> None:
    stops: list[str] = []
    stop_signals.route_to(stops.append)
    assert stops == []
    await delivered(signal.SIGINT)
    await delivered(signal.SIGTERM)
    assert stops == ["SIGINT", "SIGTERM"]
    assert stop_signals.pending is None
