"""Unit-test fixtures shared by more than one module."""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

Ready = list[tuple[selectors.SelectorKey, int]]


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KAIROS_* variable of the machine and no ``.env`` of the working directory leak in."""
    for name in list(os.environ):
        if name.upper().startswith("KAIROS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


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
    """A connected socket pair: a reader and a writer."""
    reader, writer = socket.socketpair()
    with reader, writer:
        yield reader, writer


async def tcp_echo_round_trip(pause: float) -> bytes:
    """Five bytes to a local echo server and back, ``pause`` seconds after connecting: the kinds of
    work (a listening socket, a connection, a timer) a loop must serve."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        await asyncio.sleep(pause)
        writer.write(b"trade")
        answer = await asyncio.wait_for(reader.readexactly(5), 5)
        writer.close()
        await writer.wait_closed()
    return answer
