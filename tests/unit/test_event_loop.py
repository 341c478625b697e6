"""The busy-polling event loop: it polls within its window, sleeps after it, and runs the service's
kind of work (timers, sockets) as asyncio's own loop does."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
from typing import Any

import pytest

from kairos_core.bootstrap.event_loop import BusyPollSelector, new_event_loop
from tests.unit.conftest import tcp_echo_round_trip

# window, data written after (s; None: none), timeout, found, the last wait asked of the kernel
CASES = {
    "data-within-the-window": (5.0, 0.05, None, True, 0),
    "data-after-it": (0.01, 0.3, None, True, None),  # slept until the data came
    "a-timer-due-after-the-window": (0.01, None, 0.3, False, pytest.approx(0.29)),  # slept the rest
    "a-timer-due-within-it": (5.0, None, 0.02, False, 0),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_it_polls_within_its_window_then_waits_in_the_kernel_for_the_rest(
    waits: list[float | None], pair: tuple[socket.socket, socket.socket], case: tuple[Any, ...]
) -> None:
    window, data_after, timeout, found, last_wait = case
    reader, writer = pair
    with BusyPollSelector(window) as selector:
        selector.register(reader, selectors.EVENT_READ)
        if data_after is not None:
            threading.Timer(data_after, writer.send, (b"trade",)).start()

        ready = selector.select(timeout)

    assert [key.fileobj for key, _ in ready] == ([reader] if found else [])
    assert len(waits) > 1
    assert set(waits[:-1]) == {0}  # polls, then the last wait
    assert waits[-1] == last_wait


def test_the_service_kind_of_work_runs_on_the_busy_polling_loop() -> None:
    with asyncio.Runner(loop_factory=lambda: new_event_loop(busy_poll_us=2_000)) as runner:
        selector = runner.get_loop()._selector  # type: ignore[attr-defined]
        assert isinstance(selector, BusyPollSelector)
        assert runner.run(tcp_echo_round_trip(0.01)) == b"trade"


def test_zero_is_asyncios_own_loop() -> None:
    loop = new_event_loop(busy_poll_us=0)
    try:
        assert not isinstance(getattr(loop, "_selector", None), BusyPollSelector)
    finally:
        loop.close()
