"""SIGINT/SIGTERM routed by StopSignals, with real signals sent to this process."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable

import pytest
from structlog.testing import capture_logs

from kairos_core.bootstrap import early_stop
from kairos_core.bootstrap import stop_signals as module
from kairos_core.bootstrap.stop_signals import STOP_SIGNALS, StopSignals

Startup = Callable[[StopSignals], asyncio.Task[None]]


async def delivered(signum: signal.Signals) -> None:
    """Send ``signum`` to this process and give the loop the turn in which its handler runs."""
    os.kill(os.getpid(), signum)
    for _ in range(3):
        await asyncio.sleep(0.01)


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[signal.Signals]:
    """The process exits an abandoned start-up would make once its clean-up is overdue (recorded,
    not made: this is pytest's process)."""
    made: list[signal.Signals] = []
    monkeypatch.setattr(module, "_exit_now", made.append)
    return made


@pytest.fixture
async def start_up(exits: list[signal.Signals]) -> AsyncIterator[Startup]:
    """A start-up task that installs ``StopSignals`` first thing, then waits for what never comes."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    def started(stop_signals: StopSignals) -> asyncio.Task[None]:
        async def hanging() -> None:
            stop_signals.install(loop)
            # Were a signal not covered, os.kill would end the whole test run: check first.
            assert all(signal.getsignal(signum) is not signal.SIG_DFL for signum in STOP_SIGNALS)
            await asyncio.Event().wait()

        tasks.append(loop.create_task(hanging()))
        return tasks[-1]

    try:
        yield started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def test_a_signal_during_startup_is_held_and_handed_over_once(start_up: Startup) -> None:
    stop_signals = StopSignals()
    task = start_up(stop_signals)
    await asyncio.sleep(0)
    await delivered(signal.SIGTERM)
    assert stop_signals.pending is signal.SIGTERM
    stops: list[str] = []
    stop_signals.route_to(stops.append)
    assert stops == ["SIGTERM"]
    assert not task.done(), "start-up goes on to its end"


async def test_once_routed_every_signal_goes_to_the_service(start_up: Startup) -> None:
    stop_signals = StopSignals()
    start_up(stop_signals)
    await asyncio.sleep(0)
    stops: list[str] = []
    stop_signals.route_to(stops.append)
    await delivered(signal.SIGINT)
    await delivered(signal.SIGTERM)
    assert stops == ["SIGINT", "SIGTERM"]
    assert stop_signals.pending is None


async def test_a_signal_while_the_service_drains_says_what_it_waits_for(start_up: Startup) -> None:
    stop_signals = StopSignals()
    start_up(stop_signals)
    await asyncio.sleep(0)
    stop_signals.route_to(lambda _: None)
    with capture_logs() as logged:
        await delivered(signal.SIGTERM)
        assert not [e for e in logged if e["event"] == "service.still_stopping"], "the first one just stops"
        await delivered(signal.SIGINT)
    [still] = [e for e in logged if e["event"] == "service.still_stopping"]
    assert still["signal"] == "SIGINT"
    assert still["log_level"] == "warning"
    assert "rather than drop ticks" in still["why"]
    assert "SIGKILL" in still["sooner"]


async def test_after_a_held_signal_was_handed_over_the_next_one_says_the_service_drains(
    start_up: Startup,
) -> None:
    stop_signals = StopSignals()
    start_up(stop_signals)
    await asyncio.sleep(0)
    await delivered(signal.SIGTERM)  # during start-up: held
    stop_signals.route_to(lambda _: None)  # the service exists: the held one stops it
    with capture_logs() as logged:
        await delivered(signal.SIGTERM)
    assert [e["signal"] for e in logged if e["event"] == "service.still_stopping"] == ["SIGTERM"]


async def test_a_second_signal_during_startup_abandons_it_and_bounds_the_clean_up(
    start_up: Startup, exits: list[signal.Signals]
) -> None:
    stop_signals = StopSignals(cleanup_limit=0.05)
    task = start_up(stop_signals)
    await asyncio.sleep(0)
    await delivered(signal.SIGTERM)
    assert not task.done()
    await delivered(signal.SIGINT)
    assert task.cancelled()
    assert stop_signals.abandoned is signal.SIGINT
    await asyncio.sleep(0.1)
    assert exits == [signal.SIGINT], "the process would exit now, clean-up done or not"


async def test_startup_is_abandoned_once_the_held_signal_has_waited_its_grace(start_up: Startup) -> None:
    stop_signals = StopSignals(grace=0.05)
    task = start_up(stop_signals)
    await asyncio.sleep(0)
    await delivered(signal.SIGTERM)
    await asyncio.wait_for(asyncio.wait({task}), 5)
    assert task.cancelled()
    assert stop_signals.abandoned is signal.SIGTERM


async def test_a_service_up_within_the_grace_is_stopped_not_abandoned(start_up: Startup) -> None:
    stop_signals = StopSignals(grace=0.05)
    task = start_up(stop_signals)
    await asyncio.sleep(0)
    await delivered(signal.SIGTERM)
    stops: list[str] = []
    stop_signals.route_to(stops.append)
    await asyncio.sleep(0.1)
    assert stops == ["SIGTERM"]
    assert not task.done()
    assert stop_signals.abandoned is None


async def test_a_sigterm_held_before_the_loop_existed_is_taken_over_at_install(
    start_up: Startup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(early_stop, "_held", [])
    before = signal.getsignal(signal.SIGTERM)
    try:
        early_stop.hold()
        os.kill(os.getpid(), signal.SIGTERM)  # while the program would still be importing
        assert early_stop.take() is signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, before)
        monkeypatch.setattr(early_stop, "_holding", False)
    stop_signals = StopSignals()
    start_up(stop_signals)
    await asyncio.sleep(0)
    assert stop_signals.pending is signal.SIGTERM
    stops: list[str] = []
    stop_signals.route_to(stops.append)
    assert stops == ["SIGTERM"]
