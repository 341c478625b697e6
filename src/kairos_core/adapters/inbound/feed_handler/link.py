"""One shard's connection: opened under the venue's limits, watched, rotated make-before-break.

A venue ends every connection sooner or later: at its lifetime (Binance: 24 h), after announcing
it (Binance's ``serverShutdown``, OKX's notice 64008), or silently. Waiting for the end and then
reconnecting loses whatever trades happen in between, and leans on the venue's REST history to
get them back. A ``FeedLink`` instead opens the next connection while the current one still
streams, holds the new one's frames back until it switches, lets the old one drain, closes it,
and only then lets the held frames through: the overlap reaches the gap guard in id order and is
dropped there as duplicates, so a rotation loses nothing even when REST is unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog

from kairos_core.domain import FeedDisconnected

from .connection import READY_EVERY, Frame, FrameHandler, FrameTooLarge, Ready, WebSocketSession
from .planner import SlidingWindow
from .reconnect import ReconnectPolicy, ReconnectReason

if TYPE_CHECKING:
    from .feed_base import WebSocketFeed

log = structlog.get_logger(__name__)

SWITCH_TIMEOUT = 5.0
"""Seconds a rotation waits for the new connection's first frame; quiet symbols may send none."""
DRAIN = 0.5
"""Seconds the old connection keeps streaming after the new one delivered (time the bus holds the
feed back does not count), so frames already on their way over it still arrive. Whatever a
slower old connection would still have delivered reaches the guard as a gap, repaired from REST."""
_SWITCH_POLL = 0.005


class RotationReason(StrEnum):
    """Why a connection was replaced make-before-break; a label for counters."""

    LIFETIME = "lifetime"
    """It neared the venue's connection lifetime."""
    ANNOUNCED = "announced"
    """The venue announced its end (a shutdown event, a service-upgrade notice)."""
    SILENT = "silent"
    """No frame for the watchdog's time, though it still answered a ping."""


class PacedSession:
    """A session whose sends (requests, pings) keep to the venue's per-connection pace."""

    def __init__(self, session: WebSocketSession, pace: SlidingWindow) -> None:
        self._session = session
        self._pace = pace
        self.opened_at = time.monotonic()

    @property
    def frames(self) -> int:
        return self._session.frames

    async def pump(self, on_frame: FrameHandler, ready: Ready) -> None:
        await self._session.pump(on_frame, ready)

    def hand_over(self, on_frame: FrameHandler) -> None:
        self._session.hand_over(on_frame)

    async def is_alive(self, timeout: float) -> bool:
        await self._pace.admit()
        return await self._session.is_alive(timeout)

    async def send(self, text: str) -> None:
        await self._pace.admit()
        await self._session.send(text)

    async def close(self) -> None:
        await self._session.close()


class _Holdback:
    """A new connection's frame handler during a rotation: holds frames until ``release``."""

    def __init__(self, on_frame: FrameHandler) -> None:
        self._on_frame = on_frame
        self._held: list[Frame] = []
        self._released = False

    def frame(self, raw: Frame) -> None:
        if self._released:
            self._on_frame(raw)
        else:
            self._held.append(raw)

    async def release(self, ready: Ready, releasing: Callable[[bool], None]) -> int:
        """Let the held frames through in order, yielding to the bus between batches; then pass
        new ones straight on. ``releasing`` brackets each batch. Returns how many were held."""
        held, on_frame = self._held, self._on_frame
        released = 0
        while released < len(held):  # the new connection's pump may append while we yield
            releasing(True)
            try:
                for raw in held[released : released + READY_EVERY]:
                    on_frame(raw)
                    released += 1
            finally:
                releasing(False)
            await ready()
        self._released = True  # no await since the list ran dry: nothing can slip in between
        held.clear()
        return released


class FeedLink:
    """Streams one shard of a feed's symbols over one connection at a time, rotating it."""

    def __init__(
        self, feed: WebSocketFeed, shard: tuple[str, ...], index: int, count: int, policy: ReconnectPolicy
    ) -> None:
        self.feed = feed
        self.shard = shard
        self.index = index
        self._count = count
        self._policy = policy
        self.current: PacedSession | None = None
        self._rotate_at: float | None = None
        self.changed_at = time.monotonic()
        """When the connection last opened or was lost."""
        self._rotation = asyncio.Event()
        self._rotation_asked: tuple[RotationReason, PacedSession | None] | None = None
        self._quick_rotations = 0
        self._end_kind: ReconnectReason | None = None
        self._end_reason: str | None = None
        self.seen_frames, self.seen_at = 0, self.changed_at
        """What ``status`` last saw of the current connection's frame count, and when."""

    # -- the connection's life --------------------------------------------------------------------

    async def run(self) -> None:
        feed = self.feed
        while not feed.stopping:
            started = time.monotonic()
            connected = False
            try:
                session = await self.open()
                connected = True
                feed.link_connected(self)
                await self._stream(session)
            except FeedDisconnected as e:
                if isinstance(e, FrameTooLarge):
                    feed.oversize(e)
                if feed.stopping:
                    break
                reason, kind = self._end_reason or str(e), self._end_kind
                self._end_reason = self._end_kind = None
                delay = self._policy.connection_ended(e, time.monotonic() - started, feed.refused_hint)
                feed.link_reconnecting(self, e, connected=connected, kind=kind, reason=reason, delay=delay)
                await feed.sleep_unless_stopped(delay)

    async def open(self) -> PacedSession:
        """A new connection for this shard, subscribed, within the venue's limits."""
        feed = self.feed
        await feed.planner.admit_connection(feed.exchange)
        session = PacedSession(
            await feed.connector.connect(feed.url_for(self.shard)), feed.planner.send_pace()
        )
        try:
            await feed.opened(session, self.shard)
        except BaseException:
            await session.close()
            raise
        return session

    async def _stream(self, session: PacedSession) -> None:
        """Serve ``session`` and its successors until one ends without a rotation replacing it."""
        pump = self._pump(session, self.feed.on_frame)
        retry_in: float | None = None
        try:
            while True:
                self._serving(session)
                timeout = retry_in if retry_in is not None else self._rotation_due()
                watchdog = asyncio.create_task(self._watch(session))
                asked = asyncio.create_task(self._rotation.wait())
                try:
                    done, _ = await asyncio.wait(
                        {pump, asked}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    asked.cancel()
                    watchdog.cancel()
                if pump in done:
                    pump.result()  # raises the connection's end
                    raise FeedDisconnected("connection closed")
                reason = self._take_rotation(session)
                if reason is None:
                    continue  # asked by a connection that is gone since
                rotated = await self._rotate(session, pump, reason)
                if rotated is None:
                    retry_in = self._retry_delay()
                    self._rotation_asked = (reason, session)
                    continue
                session, pump, retry_in = *rotated, None
        finally:
            self.current = None
            self.changed_at = time.monotonic()
            await _shut(pump, session)

    def _serving(self, session: PacedSession) -> None:
        if self.current is not session:
            self.current = session
            self.changed_at = time.monotonic()
            after = self.feed.planner.rotate_after(self.index, self._count)
            self._rotate_at = None if after is None else session.opened_at + after

    def _pump(self, session: PacedSession, on_frame: FrameHandler) -> asyncio.Task[None]:
        task = asyncio.create_task(session.pump(on_frame, self.feed.ready), name=f"pump:{self.feed.exchange}")
        self.feed.pumps[task] = (self, session)
        task.add_done_callback(self.feed.pumps.pop)
        return task

    def _rotation_due(self) -> float | None:
        """Seconds until the current connection's rotation, drawn once when it began serving."""
        return None if self._rotate_at is None else max(0.0, self._rotate_at - time.monotonic())

    # -- rotation -----------------------------------------------------------------------------------

    def ask_rotation(self, reason: RotationReason, session: PacedSession | None) -> None:
        """Replace the connection ``session`` (None: whichever is current) make-before-break."""
        self._rotation_asked = (reason, session)
        self._rotation.set()

    def _take_rotation(self, current: PacedSession) -> RotationReason | None:
        self._rotation.clear()
        asked, self._rotation_asked = self._rotation_asked, None
        if asked is None:
            return RotationReason.LIFETIME  # the timer ran out
        reason, session = asked
        return reason if session is None or session is current else None

    async def _rotate(
        self, old: PacedSession, old_pump: asyncio.Task[None], reason: RotationReason
    ) -> tuple[PacedSession, asyncio.Task[None]] | None:
        """The new connection and its pump once switched; None if it could not be opened (the old
        one stays and the rotation is retried)."""
        feed = self.feed
        await self._space_out(old)
        began = time.monotonic()
        log.info("feed.rotating", exchange=feed.exchange, connection=self.index, reason=reason)
        try:
            new = await self.open()
        except FeedDisconnected as e:
            log.warning("feed.rotation_failed", exchange=feed.exchange, connection=self.index, error=str(e))
            return None
        holdback = _Holdback(feed.on_frame)
        new_pump = self._pump(new, holdback.frame)
        try:
            await self._first_frame(new, new_pump, old_pump)
            if new_pump.done() and not old_pump.done():
                await _shut(new_pump, new)
                log.warning(
                    "feed.rotation_failed",
                    exchange=feed.exchange,
                    connection=self.index,
                    error="it closed at once",
                )
                return None
            await self._drain(old_pump)
            await old.close()
            await self._retired(old_pump)
            held = await holdback.release(feed.ready, self._releasing)
        except BaseException:  # stopped mid-rotation: the caller shuts the old one
            await _shut(new_pump, new)
            raise
        new.hand_over(feed.on_frame)
        feed.rotated(reason)
        log.info(
            "feed.rotated",
            exchange=feed.exchange,
            connection=self.index,
            reason=reason,
            seconds=round(time.monotonic() - began, 3),
            held_frames=held,
        )
        return new, new_pump

    def _retry_delay(self) -> float:
        ceiling = self._policy.max_delay
        return ceiling / 2 + self._policy.rng.uniform(0, ceiling / 2)

    def _releasing(self, on: bool) -> None:
        """Tell the feed whose held-back frames it is handed now (a control frame among them
        concerns this link)."""
        self.feed.releasing = self if on else None

    async def _space_out(self, old: PacedSession) -> None:
        """A venue that announces the end of every fresh connection must not get a rotation storm:
        the second and later rotations in a row of short-lived connections wait out the backoff."""
        uptime = time.monotonic() - old.opened_at
        if uptime >= self._policy.stable_after:
            self._quick_rotations = 0
            return
        self._quick_rotations += 1
        if self._quick_rotations == 1:
            return
        policy = self._policy
        wait = min(policy.max_delay, policy.initial_delay * 2.0 ** min(self._quick_rotations - 2, 30))
        await asyncio.sleep(max(0.0, wait - uptime))

    @staticmethod
    async def _first_frame(
        new: PacedSession, new_pump: asyncio.Task[None], old_pump: asyncio.Task[None]
    ) -> None:
        for _ in range(round(SWITCH_TIMEOUT / _SWITCH_POLL)):
            if new.frames or new_pump.done() or old_pump.done():
                return
            await asyncio.sleep(_SWITCH_POLL)

    async def _drain(self, old_pump: asyncio.Task[None]) -> None:
        drained = 0.0
        while drained < DRAIN and not old_pump.done():
            await asyncio.sleep(_SWITCH_POLL * 10)
            if not self.feed.held_back:
                drained += _SWITCH_POLL * 10

    async def _retired(self, old_pump: asyncio.Task[None]) -> None:
        """Wait for the old connection's pump to see the close; its end is expected."""
        try:
            await old_pump
        except FrameTooLarge as e:
            self.feed.oversize(e)
        except FeedDisconnected:
            pass

    # -- the watchdog -------------------------------------------------------------------------------

    async def _watch(self, session: PacedSession) -> None:
        # Counting quiet polls rather than timing the last frame keeps the clock off the hot path.
        feed = self.feed
        needed = max(1, round(feed.silence / feed.poll))
        seen, quiet = session.frames, 0
        while True:
            await asyncio.sleep(feed.poll)
            if session.frames != seen or feed.held_back:  # frames came, or the bus holds us back
                seen, quiet = session.frames, 0
                continue
            quiet += 1
            if quiet < needed:
                continue
            if not await feed.probe(session):
                self._end_reason = f"watchdog: no frame for {feed.silence:g} s and no pong"
                self._end_kind = ReconnectReason.WATCHDOG
                await session.close()
                return
            if feed.rotate_when_silent:
                self.ask_rotation(RotationReason.SILENT, session)
                return
            seen, quiet = session.frames, 0


async def _shut(pump: asyncio.Task[None], session: PacedSession) -> None:
    """Stop reading ``session`` first, then close it: a close while its pump still runs would
    wait for the server's close frame behind every frame left unread."""
    pump.cancel()
    await asyncio.wait({pump})
    if not pump.cancelled():
        with contextlib.suppress(Exception):
            pump.result()
    with contextlib.suppress(Exception):
        await session.close()
