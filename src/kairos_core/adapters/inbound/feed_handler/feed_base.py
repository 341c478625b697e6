"""What every exchange's WebSocket feed does alike: shards, connections, back-pressure, rejects.

A feed splits its symbols into shards under the venue's limits (``ConnectionPlanner``) and runs
one ``FeedLink`` per shard: each keeps one connection streaming, reconnects it with its own
backoff, watches it, and rotates it make-before-break before the venue ends it. A subclass says
where a shard connects, what to send once connected, and what a frame means.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

import structlog

from kairos_core.domain import FeedDisconnected, FrameRejected, MarketFeedPort, RejectReason, TickSink
from kairos_core.domain.status import ConnectionStatus, FeedStatus, FeedStatusPort

from .aiohttp_client import AiohttpConnector
from .connection import Frame, FrameTooLarge, HandshakeRejected, WebSocketConnector, WebSocketSession
from .link import FeedLink, PacedSession, RotationReason
from .planner import ConnectionPlanner
from .reconnect import ReconnectPolicy, ReconnectReason

log = structlog.get_logger(__name__)

_LOGGED_PER_REASON = 10  # then one rejected-frame log line per 1000, so garbage cannot flood the log
_OVERSIZE_HINT = (
    "if the venue does send messages this large, raise --max-frame-bytes (KAIROS_MAX_FRAME_BYTES)"
)


class WebSocketFeed(MarketFeedPort, FeedStatusPort):
    """Streams every shard of ``symbols`` over its own connection into ``sink`` until stopped.

    A frame the subclass cannot use is counted by reason, logged with an excerpt and skipped. A
    connection silent for ``silence`` seconds (checked every ``poll`` seconds) that fails the
    subclass's ``_probe`` is replaced at once; one that passes it is rotated if
    ``rotate_when_silent`` (a venue whose streams never go quiet for that long).
    """

    rotate_when_silent = False

    def __init__(
        self,
        sink: TickSink,
        symbols: tuple[str, ...],
        *,
        connector: WebSocketConnector | None,
        policy: ReconnectPolicy | None,
        planner: ConnectionPlanner,
        silence: float,
        poll: float,
        refused_hint: str,
    ) -> None:
        self._sink = sink
        self.symbols = symbols
        self._tick_symbols = frozenset(symbol.upper() for symbol in symbols)
        """The subscribed symbols as ticks carry them; a trade of any other is rejected."""
        self.connector: WebSocketConnector = connector or AiohttpConnector()
        self.planner = planner
        self.silence = silence
        self.poll = poll
        self.refused_hint = refused_hint
        self.on_frame = self._on_frame
        """The subclass's frame handler, as links hand it to their connections."""
        template = policy or ReconnectPolicy()
        shards = planner.shards(symbols)
        self.links = tuple(
            FeedLink(
                self, shard, index, len(shards), replace(template, rng=random.Random(template.rng.random()))
            )
            for index, shard in enumerate(shards)
        )
        self.pumps: dict[asyncio.Task[None], tuple[FeedLink, PacedSession]] = {}
        """Every running pump and the link and connection it reads, to place a control frame."""
        self.releasing: FeedLink | None = None
        """The link whose rotation is releasing held-back frames, while it does."""
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.held_back = False
        self.rejected: Counter[RejectReason] = Counter()
        self.reconnects = 0
        self.reconnect_reasons: Counter[ReconnectReason] = Counter()
        self.rotations: Counter[RotationReason] = Counter()
        self.on_connected: Callable[[], None] | None = None
        """Called after every connect once subscribed, and after every rotation (the gap guard
        follows up quiet symbols)."""

    @abstractmethod
    def _url(self, shard: tuple[str, ...]) -> str:
        """Where a connection for ``shard`` goes."""

    @abstractmethod
    def _on_frame(self, raw: Frame) -> None:
        """One received frame."""

    @abstractmethod
    async def _probe(self, session: WebSocketSession) -> bool:
        """Is a connection that has been silent for ``silence`` seconds still alive?"""

    async def _prepare(self) -> None:
        """Once, before the first connection (e.g. check the symbols with the exchange)."""

    async def _opened(self, session: WebSocketSession, shard: tuple[str, ...]) -> None:
        """After each connect, before the first frame is read (e.g. subscribe ``shard``)."""

    # -- what links use ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def url_for(self, shard: tuple[str, ...]) -> str:
        return self._url(shard)

    async def opened(self, session: PacedSession, shard: tuple[str, ...]) -> None:
        await self._opened(session, shard)

    async def probe(self, session: PacedSession) -> bool:
        return await self._probe(session)

    async def ready(self) -> None:
        """Between batches of frames: wait for room on the bus, then let the consumers run."""
        self.held_back = True
        try:
            await self._sink.writable()
        finally:
            self.held_back = False
        await asyncio.sleep(0)

    def link_connected(self, link: FeedLink) -> None:
        log.info("feed.connected", exchange=self.exchange, connection=link.index, symbols=len(link.shard))
        if self.on_connected is not None:
            self.on_connected()

    def link_reconnecting(
        self,
        link: FeedLink,
        error: FeedDisconnected,
        *,
        connected: bool,
        kind: ReconnectReason | None,
        reason: str,
        delay: float,
    ) -> None:
        if isinstance(error, FrameTooLarge):
            kind = ReconnectReason.OVERSIZE
        elif isinstance(error, HandshakeRejected):
            kind = ReconnectReason.HANDSHAKE
        elif not connected:
            kind = ReconnectReason.CONNECT
        self.reconnects += 1
        self.reconnect_reasons[kind or ReconnectReason.DROPPED] += 1
        log.warning(
            "feed.reconnecting",
            exchange=self.exchange,
            connection=link.index,
            reason=reason,
            delay=round(delay, 3),
        )

    def rotated(self, reason: RotationReason) -> None:
        """A link switched connections. The gap guard follows quiet symbols up as after a connect:
        a connection replaced for silence kept trades back that no later trade may reveal."""
        self.rotations[reason] += 1
        if self.on_connected is not None:
            self.on_connected()

    async def sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    # -- the port ---------------------------------------------------------------------------------

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
            "feed.stopped",
            exchange=self.exchange,
            reconnects=self.reconnects,
            rotations=dict(self.rotations),
            rejected=dict(self.rejected),
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        await self._prepare()
        if len(self.links) > 1:
            log.info(
                "feed.sharded",
                exchange=self.exchange,
                symbols=len(self.symbols),
                connections=len(self.links),
                per_connection=self.planner.limits.streams_per_connection,
            )
        try:
            async with asyncio.TaskGroup() as links:
                for link in self.links:
                    links.create_task(link.run(), name=f"link:{self.exchange}:{link.index}")
        except BaseExceptionGroup as group:  # a feed ends on its first real error, as one did
            raise group.exceptions[0] from None

    # -- frames -----------------------------------------------------------------------------------

    def _announced(self, reason: str) -> None:
        """The venue announced the end of the connection this frame came over: rotate it."""
        task = asyncio.current_task()
        placed = self.pumps.get(task) if task is not None else None
        # Not from a pump: a rotation is releasing the frames its new connection held back.
        link, session = placed if placed is not None else (self.releasing or self.links[0], None)
        log.info("feed.end_announced", exchange=self.exchange, connection=link.index, reason=reason)
        link.ask_rotation(RotationReason.ANNOUNCED, session)

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

    def oversize(self, error: FrameTooLarge) -> None:
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

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> FeedStatus:
        now = time.monotonic()
        connections = []
        for link in self.links:
            session = link.current
            up = session is not None
            frames = session.frames if session is not None else 0
            if frames != link.seen_frames or self.held_back:
                link.seen_frames, link.seen_at = frames, now
            connections.append(
                ConnectionStatus(
                    exchange=self.exchange,
                    name=self._connection_name(link),
                    up=up,
                    state_seconds=now - link.changed_at,
                    silent_seconds=now - max(link.seen_at, link.changed_at) if up else 0.0,
                    watchdog_seconds=self.silence,
                )
            )
        return FeedStatus(
            exchange=self.exchange,
            connections=tuple(connections),
            reconnects={str(reason): count for reason, count in self.reconnect_reasons.items()},
            rejected={str(reason): count for reason, count in self.rejected.items()},
            rotations={str(reason): count for reason, count in self.rotations.items()},
        )

    def _connection_name(self, link: FeedLink) -> str:
        netloc = urlsplit(self._url(link.shard)).netloc
        return netloc if len(self.links) == 1 else f"{netloc}#{link.index}"
