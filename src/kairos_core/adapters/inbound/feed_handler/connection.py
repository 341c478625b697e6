"""The seam between feed handlers and a WebSocket client library.

A handler sees only ``WebSocketConnector`` and ``WebSocketSession``: raw frames in, text out,
and our own errors. Replacing ``websockets`` with another client means one new module here;
the parsers, the handlers' logic and the bus stay as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from kairos_core.domain import FeedDisconnected

Frame = bytes | str
READY_EVERY = 64
"""Frames between two ``ready()`` calls: small against the bus capacity (1000) so a consumer that
keeps up never lags, large enough that the call costs nothing per frame."""
FrameHandler = Callable[[Frame], object]
Ready = Callable[[], Awaitable[None]]


class HandshakeRejected(FeedDisconnected):
    """The server answered the opening handshake with an HTTP status instead of 101."""

    def __init__(self, status: int, url: str) -> None:
        self.status = status
        super().__init__(f"handshake with {url} answered HTTP {status}")


class WebSocketSession(Protocol):
    """One open connection."""

    async def pump(self, on_frame: FrameHandler, ready: Ready) -> None:
        """Hand every received frame to ``on_frame``; await ``ready()`` every ``READY_EVERY`` frames.

        ``ready`` is where the feed yields: to back-pressure from the bus and to the event loop,
        so consumers run between batches even while the socket never runs dry. Returns never;
        raises ``FeedDisconnected`` (with the reason) when the connection ends.
        """
        ...

    async def send_text(self, text: str) -> None: ...

    async def is_alive(self, timeout: float) -> bool:
        """Ping the server; True if it answered within ``timeout`` seconds."""
        ...

    async def close(self) -> None: ...


class WebSocketConnector(Protocol):
    async def connect(self, url: str) -> WebSocketSession:
        """Open a session; raises ``HandshakeRejected`` or ``FeedDisconnected``."""
        ...


class WebsocketsConnector(WebSocketConnector):
    """``websockets`` (asyncio API). It answers server pings itself and pings every 20 s."""

    def __init__(
        self, *, open_timeout: float = 10.0, close_timeout: float = 5.0, max_frame_bytes: int = 1 << 20
    ) -> None:
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_frame_bytes = max_frame_bytes

    async def connect(self, url: str) -> WebSocketSession:
        try:
            connection = await connect(
                url,
                open_timeout=self._open_timeout,
                close_timeout=self._close_timeout,
                max_size=self._max_frame_bytes,
                ping_interval=20,
                ping_timeout=20,
                compression=None,
            )
        except InvalidStatus as e:
            raise HandshakeRejected(e.response.status_code, url) from e
        except (OSError, TimeoutError, WebSocketException) as e:
            raise FeedDisconnected(f"cannot connect to {url}: {e or type(e).__name__}") from e
        return WebsocketsSession(connection)


class WebsocketsSession(WebSocketSession):
    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    async def pump(self, on_frame: FrameHandler, ready: Ready) -> None:
        recv = self._connection.recv
        batch = range(READY_EVERY)
        try:
            while True:
                await ready()
                for _ in batch:
                    # decode=False: text frames arrive as bytes, skipping a UTF-8 decode the
                    # parser does not need.
                    on_frame(await recv(decode=False))
        except ConnectionClosed as e:
            raise FeedDisconnected(f"connection closed: {_close_reason(e)}") from e
        except OSError as e:
            raise FeedDisconnected(f"network error: {e}") from e

    async def send_text(self, text: str) -> None:
        try:
            await self._connection.send(text)
        except ConnectionClosed as e:
            raise FeedDisconnected(f"connection closed: {_close_reason(e)}") from e

    async def is_alive(self, timeout: float) -> bool:
        try:
            pong = await self._connection.ping()
            await asyncio.wait_for(pong, timeout)
        except (ConnectionClosed, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        await self._connection.close()


def _close_reason(error: ConnectionClosed) -> str:
    frame = error.rcvd or error.sent
    if frame is None:
        return "no close frame (connection lost)"
    return f"code {frame.code}" + (f" ({frame.reason})" if frame.reason else "")
