"""The simulator's loop: a short timer is slept out at fine resolution, not in epoll's milliseconds,
and sockets are served as on asyncio's own loop."""

from __future__ import annotations

import asyncio
import selectors
import socket
import statistics
import time

import pytest

from kairos_core.simulator.fine_timers import FINE_WAIT, FineTimerSelector, new_fine_timer_loop
from tests.unit.conftest import Ready, tcp_echo_round_trip


def test_a_short_wait_polls_sleeps_and_polls_again(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket]
) -> None:
    reader, writer = pair
    asked: list[float | None] = []
    select = selectors.DefaultSelector.select

    def recorded(self: selectors.DefaultSelector, timeout: float | None = None) -> Ready:
        asked.append(timeout)
        ready = select(self, timeout)
        if len(asked) == 1:
            writer.send(b"trade")  # comes during the sleep
        return ready

    monkeypatch.setattr(selectors.DefaultSelector, "select", recorded)
    with FineTimerSelector() as selector:
        selector.register(reader, selectors.EVENT_READ)
        started = time.perf_counter()
        ready = selector.select(0.001)
        slept = time.perf_counter() - started
    assert asked == [0, 0], "never a wait in epoll, whose timeout would round up to 1 ms"
    assert slept >= 0.001
    assert [key.fileobj for key, _ in ready] == [reader], "what came during the sleep is found"


def test_a_short_wait_with_data_ready_returns_it_at_once(
    waits: list[float | None], pair: tuple[socket.socket, socket.socket]
) -> None:
    reader, writer = pair
    writer.send(b"trade")
    with FineTimerSelector() as selector:
        selector.register(reader, selectors.EVENT_READ)
        ready = selector.select(0.001)
    assert waits == [0]
    assert [key.fileobj for key, _ in ready] == [reader]


@pytest.mark.parametrize("timeout", [None, 0, FINE_WAIT, 0.05])
def test_other_waits_are_epolls_own(
    waits: list[float | None], pair: tuple[socket.socket, socket.socket], timeout: float | None
) -> None:
    reader, writer = pair
    writer.send(b"trade")
    with FineTimerSelector() as selector:
        selector.register(reader, selectors.EVENT_READ)
        selector.select(timeout)
    assert waits == [timeout]


def test_sleeps_of_a_fifth_of_a_millisecond_end_well_before_epolls_millisecond() -> None:
    """asyncio's own loop takes at least 1 ms for each (epoll rounds the timeout up)."""

    async def sleeps() -> list[float]:
        taken = []
        for _ in range(50):
            started = time.perf_counter()
            await asyncio.sleep(0.0002)
            taken.append(time.perf_counter() - started)
        return taken

    with asyncio.Runner(loop_factory=new_fine_timer_loop) as runner:
        taken = runner.run(sleeps())
    assert min(taken) >= 0.0002
    assert statistics.median(taken) < 0.0009


def test_a_tcp_round_trip_runs_on_it() -> None:
    with asyncio.Runner(loop_factory=new_fine_timer_loop) as runner:
        assert runner.run(tcp_echo_round_trip(0.0003)) == b"trade"
