"""Why a feed reconnected, counted by reason, over fake sessions behind the WebSocket seam."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.inbound.feed_handler.connection import (
    FrameHandler,
    HandshakeRejected,
    Ready,
    WebSocketConnector,
    WebSocketSession,
)
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy, ReconnectReason
from kairos_core.application.bus import BroadcastBus
from kairos_core.domain import FeedDisconnected

SHUTDOWN = b'{"e":"serverShutdown","E":1700000000000}'


class OpenSession(WebSocketSession):
    """Hands over ``frames``, then stays open and silent until closed; answers pings if ``alive``."""

    frames = 0

    def hand_over(self, on_frame: FrameHandler) -> None:
        return None

    def __init__(self, frames: Sequence[bytes] = (), *, alive: bool = False) -> None:
        self._frames = frames
        self._alive = alive
        self._closed = asyncio.Event()

    async def pump(self, on_frame: FrameHandler, ready: Ready) -> None:
        for frame in self._frames:
            on_frame(frame)
        await self._closed.wait()
        raise FeedDisconnected("connection closed")

    async def is_alive(self, timeout: float) -> bool:
        return self._alive

    async def send(self, text: str) -> None:
        return None

    async def close(self) -> None:
        self._closed.set()


class Outcomes(WebSocketConnector):
    """Each connect takes the next outcome: a session, or an error raised; then sessions that
    stay open and answer pings."""

    def __init__(self, *outcomes: WebSocketSession | FeedDisconnected) -> None:
        self._outcomes = list(outcomes)
        self.connects = 0

    async def connect(self, url: str) -> WebSocketSession:
        self.connects += 1
        outcome = self._outcomes.pop(0) if self._outcomes else OpenSession(alive=True)
        if isinstance(outcome, FeedDisconnected):
            raise outcome
        return outcome


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (FeedDisconnected("cannot connect to ws://127.0.0.1:1/stream: refused"), ReconnectReason.CONNECT),
        (HandshakeRejected(503, "ws://127.0.0.1:1/stream"), ReconnectReason.HANDSHAKE),
        (OpenSession(), ReconnectReason.WATCHDOG),
    ],
)
async def test_each_reconnect_is_counted_by_why_the_connection_ended(
    first: WebSocketSession | FeedDisconnected, reason: ReconnectReason
) -> None:
    connector = Outcomes(first)
    feed = BinanceFeedHandler(
        BroadcastBus(),
        ["btcusdt"],
        url="ws://127.0.0.1:1/stream",
        rest_url=None,
        connector=connector,
        policy=ReconnectPolicy(initial_delay=0.001, max_delay=0.001),
        watchdog=0.05,
    )
    running = asyncio.create_task(feed.start())
    while connector.connects < 2:
        await asyncio.sleep(0.005)
    status = feed.status()
    await feed.stop()
    await asyncio.wait_for(running, 1)

    assert feed.reconnect_reasons == {reason: 1}
    assert status.reconnects == {str(reason): 1}
    assert status.connections[0].up
