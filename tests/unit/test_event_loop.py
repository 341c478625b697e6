"""The busy-polling event loop: it polls within its window, sleeps after it, and runs the service's
kind of work (timers, sockets) as asyncio's own loop does."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kairos_core.bootstrap.event_loop import BusyPollSelector, new_event_loop

Ready = list[tuple[selectors.SelectorKey, int]]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """Every timeout the kernel's selector is asked to wait, in order (0: a poll)."""
    asked: list[float | None] = []
    select = selectors.DefaultSelector.select

    def recorded(self: selectors.DefaultSelector, timeout: float | None = None) -> Ready:
        asked.append(timeout)
        return select(self, timeout)

    monkeypatch.setattr(selectors.DefaultSelector, "select", recorded)
    return asked


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    reader, writer = socket.socketpair()
    with reader, writer:
        yield reader, writer


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
    async def echo_round_trip() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.01)
            writer.write(b"trade")
            answer = await asyncio.wait_for(reader.readexactly(5), 5)
            writer.close()
            await writer.wait_closed()
        return answer

    with asyncio.Runner(loop_factory=lambda: new_event_loop(busy_poll_us=2_000)) as runner:
        selector = runner.get_loop()._selector  # type: ignore[attr-defined]
        assert isinstance(selector, BusyPollSelector)
        assert runner.run(echo_round_trip()) == b"trade"


def test_zero_is_asyncios_own_loop() -> None:
    loop = new_event_loop(busy_poll_us=0)
    try:
        assert not isinstance(getattr(loop, "_selector", None), BusyPollSelector)
    finally:
        loop.close()
