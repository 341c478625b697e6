"""What every exchange's WebSocket feed does alike: its task, reconnects, back-pressure, rejects, watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from urllib.parse import urlsplit

import structlog

from kairos_core.domain import FeedDisconnected, FrameRejected, MarketFeedPort, RejectReason, TickSink
from kairos_core.domain.status import ConnectionStatus, FeedStatus, FeedStatusPort

from .aiohttp_client import AiohttpConnector
from .connection import Frame, FrameTooLarge, HandshakeRejected, WebSocketConnector, WebSocketSession
from .reconnect import ReconnectPolicy

log = structlog.get_logger(__name__)

_LOGGED_PER_REASON = 10  # then one rejected-frame log line per 1000, so garbage cannot flood the log
_ANNOUNCED_MIN_UPTIME = 1.0
"""Seconds a connection must have lived for its announced end to skip the backoff: a server that
announces the end of every fresh connection gets the ordinary backoff, not a reconnect storm."""
_OVERSIZE_HINT = (
    "if the venue does send messages this large, raise --max-frame-bytes (KAIROS_MAX_FRAME_BYTES)"
)


class ReconnectReason(StrEnum):
    """Why a feed reconnected; a label for counters (the log line has the full text)."""

    CONNECT = "connect"
    """Could not connect (network error, nothing listening, DNS)."""
    HANDSHAKE = "handshake"
    """The server answered the WebSocket handshake with an HTTP error."""
    DROPPED = "dropped"
    """The connection closed or failed while streaming."""
    WATCHDOG = "watchdog"
    """Silent past the watchdog and no answer to its probe."""
    ANNOUNCED = "announced"
    """The venue said it would end the connection (a shutdown event, a service-upgrade notice)."""
    OVERSIZE = "oversize"
    """A message larger than ``max_frame_bytes``."""


class WebSocketFeed(MarketFeedPort, FeedStatusPort):
    """Streams one WebSocket connection at a time into ``sink`` until stopped.

    Reconnects with backoff (see ``ReconnectPolicy``); a frame the subclass cannot use is counted
    by reason, logged with an excerpt and skipped; a connection that stays silent for ``silence``
    seconds (checked every ``poll`` seconds) and fails the subclass's ``_probe`` is replaced.
    A subclass says where to connect, what to send once connected and what a frame means.
    """

    def __init__(
        self,
        sink: TickSink,
        symbols: tuple[str, ...],
        *,
        connector: WebSocketConnector | None,
        policy: ReconnectPolicy | None,
        silence: float,
        poll: float,
        refused_hint: str,
    ) -> None:
        self._sink = sink
        self.symbols = symbols
        self._tick_symbols = frozenset(symbol.upper() for symbol in symbols)
        """The subscribed symbols as ticks carry them; a trade of any other is rejected."""
        self._connector = connector or AiohttpConnector()
        self._policy = policy or ReconnectPolicy()
        self._silence = silence
        self._poll = poll
        self._refused_hint = refused_hint
        self._stopping = asyncio.Event()
        self._session: WebSocketSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._frames = 0
        self._held_back = False
        self._end_reason: str | None = None
        self._end_announced = False
        self._closing: set[asyncio.Task[None]] = set()
        self.rejected: Counter[RejectReason] = Counter()
        self.reconnects = 0
        self.reconnect_reasons: Counter[ReconnectReason] = Counter()
        self._end_kind: ReconnectReason | None = None
        self._connects = 0
        self._changed_at = time.monotonic()
        """When the connection last opened or was lost."""
        self._seen_frames, self._seen_at = 0, self._changed_at
        """The frame count ``status`` last saw change, and when: silence measured off the hot path."""
        self.on_connected: Callable[[], None] | None = None
        """Called after every connect, once subscribed (the gap guard follows up quiet symbols)."""

    @abstractmethod
    def _url(self) -> str:
        """Where each connection goes."""

    @abstractmethod
    def _on_frame(self, raw: Frame) -> None:
        """One received frame; must count it in ``self._frames`` (the watchdog reads that)."""

    @abstractmethod
    async def _probe(self, session: WebSocketSession) -> bool:
        """Is a connection that has been silent for ``silence`` seconds still alive?"""

    async def _prepare(self) -> None:
        """Once, before the first connection (e.g. check the symbols with the exchange)."""

    async def _opened(self, session: WebSocketSession) -> None:
        """After each connect, before the first frame is read (e.g. subscribe)."""

    async def start(self) -> None:
        # The work runs in its own task so that stop() can end it wherever it waits (a connect,
        # a REST check, a bus that holds the feed back), not only between frames.
        if self._stopping.is_set():
            return
        self._task = asyncio.create_task(self._run(), name=f"feed:{self.exchange}")
        try:
            await asyncio.wait({self._task})
        finally:
            self._task.cancel()
        if not self._task.cancelled():
            self._task.result()
        log.info(
            "feed.stopped", exchange=self.exchange, reconnects=self.reconnects, rejected=dict(self.rejected)
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        await self._prepare()
        while not self._stopping.is_set():
            started = time.monotonic()
            connects = self._connects
            try:
                await self._stream_once()
            except FeedDisconnected as e:
                if isinstance(e, FrameTooLarge):
                    self._oversize(e)
                if self._stopping.is_set():
                    break
                reason = self._end_reason or str(e)
                announced = self._end_announced
                kind = self._reconnect_reason(e, connected=self._connects != connects)
                self._end_reason, self._end_announced, self._end_kind = None, False, None
                uptime = time.monotonic() - started
                delay = self._policy.connection_ended(e, uptime, self._refused_hint)
                if announced and uptime >= _ANNOUNCED_MIN_UPTIME:
                    delay = 0.0  # the server told us to go: a new connection now loses the least
                self.reconnects += 1
                self.reconnect_reasons[kind] += 1
                log.warning("feed.reconnecting", exchange=self.exchange, reason=reason, delay=round(delay, 3))
                await self._sleep_unless_stopped(delay)

    async def _stream_once(self) -> None:
        session = await self._connector.connect(self._url())
        self._session = session
        self._connects += 1
        self._changed_at = time.monotonic()
        log.info("feed.connected", exchange=self.exchange, symbols=len(self.symbols))
        watchdog = asyncio.create_task(self._watch(session))
        try:
            if self._stopping.is_set():
                return
            await self._opened(session)
            if self.on_connected is not None:
                self.on_connected()
            await session.pump(self._on_frame, self._ready)
        finally:
            watchdog.cancel()
            self._session = None
            self._changed_at = time.monotonic()
            await session.close()

    async def _ready(self) -> None:
        """Between batches of frames: wait for room on the bus, then let the consumers run."""
        self._held_back = True
        try:
            await self._sink.writable()
        finally:
            self._held_back = False
        await asyncio.sleep(0)

    def _rejected(self, error: FrameRejected) -> None:
        self.rejected[error.reason] += 1
        count = self.rejected[error.reason]
        if count <= _LOGGED_PER_REASON or count % 1000 == 0:
            log.warning(
                "frame.rejected",
                exchange=self.exchange,
                reason=error.reason,
                detail=error.detail,
                excerpt=error.excerpt,
                count=count,
            )

    def _oversize(self, error: FrameTooLarge) -> None:
        """The client closed the connection on a message over the limit, unread: one rejected frame.

        Each one costs a reconnect (with the ordinary backoff), so each is logged.
        """
        self.rejected[RejectReason.OVERSIZE] += 1
        log.warning(
            "frame.rejected",
            exchange=self.exchange,
            reason=RejectReason.OVERSIZE,
            detail=str(error),
            limit=error.limit,
            size=error.size,
            hint=_OVERSIZE_HINT,
            count=self.rejected[RejectReason.OVERSIZE],
        )

    def _unsubscribed(self, symbol: str, raw: Frame) -> None:
        detail = f"a trade of {symbol[:64]}, which this feed did not subscribe to"
        self._rejected(FrameRejected(RejectReason.UNKNOWN_SYMBOL, raw, detail))

    def _end(self, reason: str, *, announced: bool = False) -> None:
        """Close the current connection from inside the frame callback; ``start`` reconnects.

        ``announced``: the server asked us to go, so the next connection is opened at once.
        """
        self._end_reason = reason
        self._end_announced = announced
        self._end_kind = ReconnectReason.ANNOUNCED
        if self._session is not None:
            closing = asyncio.get_running_loop().create_task(self._session.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _watch(self, session: WebSocketSession) -> None:
        # Counting quiet polls rather than timing the last frame keeps the clock off the hot path.
        needed = max(1, round(self._silence / self._poll))
        seen, quiet = self._frames, 0
        while True:
            await asyncio.sleep(self._poll)
            if self._frames != seen or self._held_back:  # frames came, or the bus is holding us back
                seen, quiet = self._frames, 0
                continue
            quiet += 1
            if quiet < needed:
                continue
            if not await self._probe(session):
                self._end_reason = f"watchdog: no frame for {self._silence:g} s and no pong"
                self._end_kind = ReconnectReason.WATCHDOG
                await session.close()
                return
            seen, quiet = self._frames, 0

    def _reconnect_reason(self, error: FeedDisconnected, *, connected: bool) -> ReconnectReason:
        if isinstance(error, FrameTooLarge):
            return ReconnectReason.OVERSIZE
        if isinstance(error, HandshakeRejected):
            return ReconnectReason.HANDSHAKE
        if not connected:
            return ReconnectReason.CONNECT
        return self._end_kind or ReconnectReason.DROPPED

    def status(self) -> FeedStatus:
        now = time.monotonic()
        if self._frames != self._seen_frames or self._held_back:
            self._seen_frames, self._seen_at = self._frames, now
        up = self._session is not None
        connection = ConnectionStatus(
            exchange=self.exchange,
            name=urlsplit(self._url()).netloc,
            up=up,
            state_seconds=now - self._changed_at,
            silent_seconds=now - max(self._seen_at, self._changed_at) if up else 0.0,
            watchdog_seconds=self._silence,
        )
        return FeedStatus(
            exchange=self.exchange,
            connections=(connection,),
            reconnects={str(reason): count for reason, count in self.reconnect_reasons.items()},
            rejected={str(reason): count for reason, count in self.rejected.items()},
        )

    async def _sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
