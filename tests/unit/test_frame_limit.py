"""``max_frame_bytes``: the setting, and what a feed does when its client refuses a larger message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from kairos_core.__main__ import main
from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.inbound.feed_handler.connection import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameHandler,
    FrameTooLarge,
    Ready,
    WebSocketConnector,
    WebSocketSession,
)
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy
from kairos_core.domain import FeedDisconnected, MarketTick, RejectReason
from kairos_core.settings import Settings

pytestmark = pytest.mark.usefixtures("bare_environment")


# The setting -------------------------------------------------------------------------------------


def test_the_default_is_one_mebibyte_as_the_connectors_own() -> None:
    assert Settings().max_frame_bytes == 1_048_576 == DEFAULT_MAX_FRAME_BYTES
    assert Settings().feeds.max_frame_bytes == 1_048_576


def test_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_MAX_FRAME_BYTES", "65536")

    assert Settings().feeds.max_frame_bytes == 65_536


@pytest.mark.parametrize("limit", [0, -1, 1_000, 65_535, 2**30 + 1])
def test_a_limit_that_cannot_work_is_refused_saying_the_range(limit: int) -> None:
    with pytest.raises(ValidationError, match=r"from 65536 \(64 KiB\) to 1073741824 \(1 GiB\) bytes"):
        Settings(max_frame_bytes=limit)


@pytest.mark.parametrize("limit", [65_536, 2**30])
def test_the_bounds_themselves_are_taken(limit: int) -> None:
    assert Settings(max_frame_bytes=limit).max_frame_bytes == limit


def test_a_bad_limit_from_the_environment_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAIROS_MAX_FRAME_BYTES", "1024")

    assert main([]) == 2
    error = capsys.readouterr().err
    assert "max_frame_bytes" in error
    assert "KAIROS_MAX_FRAME_BYTES" in error
    assert "got 1024" in error
    assert error.count("\n") == 1


# The feed ----------------------------------------------------------------------------------------


class OversizeSession(WebSocketSession):
    """A connection whose client refused a message over ``limit``: ``pump`` raises at once."""

    frames = 0

    def hand_over(self, on_frame: FrameHandler) -> None:
        return None

    def __init__(self, limit: int, size: int | None) -> None:
        self._error = FrameTooLarge(limit, size)

    async def pump(self, on_frame: FrameHandler, ready: Ready) -> None:
        await ready()
        raise self._error

    async def is_alive(self, timeout: float) -> bool:
        return False

    async def send(self, text: str) -> None:
        raise FeedDisconnected("closed")

    async def close(self) -> None:
        return None


class QuietSession(OversizeSession):
    """A connection that stays open and silent until the feed stops."""

    async def pump(self, on_frame: FrameHandler, ready: Ready) -> None:
        await asyncio.Event().wait()


class ScriptedConnector(WebSocketConnector):
    def __init__(self, sessions: Iterator[WebSocketSession]) -> None:
        self._sessions = sessions
        self.connects = 0

    async def connect(self, url: str) -> WebSocketSession:
        self.connects += 1
        return next(self._sessions)


class NullSink:
    def publish(self, tick: MarketTick) -> None:
        raise AssertionError("no frame was read, so no tick may come")

    async def writable(self) -> None:
        return None


@pytest.mark.parametrize("size", [2_000_000, None])
async def test_a_refused_message_is_counted_oversize_logged_once_and_the_feed_reconnects(
    size: int | None,
) -> None:
    connector = ScriptedConnector(iter([OversizeSession(65_536, size), QuietSession(65_536, None)]))
    feed = BinanceFeedHandler(
        NullSink(),
        ["btcusdt"],
        url="ws://127.0.0.1:1/stream",
        rest_url=None,
        connector=connector,
        policy=ReconnectPolicy(initial_delay=0.001, max_delay=0.001),
    )
    with capture_logs() as logs:
        running = asyncio.create_task(feed.start())
        while connector.connects < 2:
            await asyncio.sleep(0.001)
        await feed.stop()
        await asyncio.wait_for(running, 1)

    assert feed.rejected == {RejectReason.OVERSIZE: 1}
    assert feed.reconnects == 1
    [rejected] = [entry for entry in logs if entry["event"] == "frame.rejected"]
    assert rejected["log_level"] == "warning"
    assert rejected["reason"] is RejectReason.OVERSIZE
    assert rejected["limit"] == 65_536
    assert rejected["size"] == size
    assert rejected["count"] == 1
    assert "--max-frame-bytes" in rejected["hint"]
    assert "code 1009" in rejected["detail"]
    [reconnecting] = [entry for entry in logs if entry["event"] == "feed.reconnecting"]
    assert "65536 bytes" in reconnecting["reason"]


def test_frame_too_large_says_what_happened() -> None:
    assert str(FrameTooLarge(65_536, 70_000)) == (
        "connection closed: code 1009, a message of 70000 bytes over the limit of 65536 bytes"
    )
    assert (
        str(FrameTooLarge(65_536)) == "connection closed: code 1009, a message over the limit of 65536 bytes"
    )
    assert isinstance(FrameTooLarge(1), FeedDisconnected)
