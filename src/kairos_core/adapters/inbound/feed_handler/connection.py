"""The seam between feed handlers and a WebSocket client library.

A handler sees only ``WebSocketConnector`` and ``WebSocketSession``: raw frames in and our own
errors out. Each client library has one module behind this seam (``aiohttp_client``,
``websockets_client``); the parsers, the handlers' logic and the bus never see the library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from kairos_core.domain import FeedDisconnected

Frame = bytes | str
FrameHandler = Callable[[Frame], object]
Ready = Callable[[], Awaitable[None]]

READY_EVERY = 64
"""Frames between two ``ready()`` calls: small against the bus capacity (1000) so a consumer that
keeps up never lags, large enough that the call costs nothing per frame."""


class HandshakeRejected(FeedDisconnected):
    """The server answered the opening handshake with an HTTP status instead of 101."""

    def __init__(self, status: int, url: str) -> None:
        self.status = status
        super().__init__(f"handshake with {url} answered HTTP {status}")


class FrameTooLarge(FeedDisconnected):
    """The server sent a message over ``max_frame_bytes``: the client refused it from its header,
    before reading the payload, and closed the connection with code 1009 (message too big)."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        self.limit = limit
        self.size = size
        of = f" of {size} bytes" if size is not None else ""
        super().__init__(f"connection closed: code 1009, a message{of} over the limit of {limit} bytes")


class WebSocketSession(Protocol):
    """One open connection."""

    @property
    def frames(self) -> int:
        """Data frames received so far (the watchdog compares it between looks)."""
        ...

    async def pump(self, on_frame: FrameHandler, ready: Ready) -> None:
        """Hand every received frame to ``on_frame``; await ``ready()`` every ``READY_EVERY`` frames.

        ``ready`` is where the feed yields: to back-pressure from the bus and to the event loop,
        so consumers run between batches even while the socket never runs dry. Pings from the
        server are answered here. Returns never; raises ``FeedDisconnected`` (with the reason)
        when the connection ends, ``FrameTooLarge`` when it ended on a message over the limit.
        """
        ...

    def hand_over(self, on_frame: FrameHandler) -> None:
        """From the next batch on, ``pump`` hands frames to ``on_frame`` instead.

        A rotation starts a new connection's pump with a handler that holds frames back until the
        switch, and hands over to the direct one afterwards, so no frame pays for the detour.
        """
        ...

    async def is_alive(self, timeout: float) -> bool:
        """Ping the server; True if it answered within ``timeout`` seconds."""
        ...

    async def send(self, text: str) -> None:
        """Send one text frame (a subscribe request, an application-level ping); raises
        ``FeedDisconnected`` when the connection is gone."""
        ...

    async def close(self) -> None: ...


class WebSocketConnector(Protocol):
    async def connect(self, url: str) -> WebSocketSession:
        """Open a session; raises ``HandshakeRejected`` or ``FeedDisconnected``."""
        ...


DEFAULT_MAX_FRAME_BYTES = 1 << 20


class ConnectorLimits:
    """What every client's connector is told: how long to wait, and how large a frame may be.

    ``max_frame_bytes`` bounds a whole message (all of its fragments): one of exactly that size is
    read, a larger one ends the connection with ``FrameTooLarge`` and is never buffered.
    """

    def __init__(
        self,
        *,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_frame_bytes = max_frame_bytes
