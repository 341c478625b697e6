"""A venue's connection limits, owned in one place.

Every connection a feed opens, every message it sends and the moment it retires a connection
before the venue ends it go through one ``ConnectionPlanner`` per venue, so no part of a feed can
break a limit on its own: a venue that sees its limits broken disconnects, and then bans.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class VenueLimits:
    """What a venue allows one client, as it documents it."""

    streams_per_connection: int
    """Streams (symbols, here) one connection may carry."""
    sends_per_window: int
    """Messages a connection may send per ``send_window`` seconds: requests and pings alike."""
    send_window: float
    reserved_sends: int
    """Of ``sends_per_window``, how many are left to pongs, which the client library answers."""
    connections_per_window: int
    """New connections the process may open per ``connection_window`` seconds."""
    connection_window: float
    lifetime: float | None
    """Seconds the venue keeps a connection before it ends it; None if it names no limit."""


BINANCE_LIMITS = VenueLimits(
    streams_per_connection=1024,
    sends_per_window=5,
    send_window=1.0,
    reserved_sends=1,
    connections_per_window=300,
    connection_window=300.0,
    lifetime=86_400.0,
)
"""Binance spot market streams: 1024 streams a connection, 5 incoming messages a second (pings,
pongs and requests all count), 300 connections per 5 minutes per IP, 24 hours a connection."""

OKX_LIMITS = VenueLimits(
    streams_per_connection=1024,
    sends_per_window=480,
    send_window=3600.0,
    reserved_sends=0,
    connections_per_window=3,
    connection_window=1.0,
    lifetime=None,
)
"""OKX public channels: 3 connection requests a second per IP, 480 subscribe requests an hour per
connection (our ``ping`` texts are counted against it too, to stay on the safe side). OKX names no
stream limit per connection; 1024 is our own bound, so one request never grows huge."""

ROTATE_FROM, ROTATE_UNTIL = 0.900, 0.975
"""A connection is rotated between these fractions of the venue's lifetime: the latest leaves
time for a retry, and the spread keeps connections from all rotating at once."""


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds; ``admit`` waits for room."""

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1:
            raise ValueError(f"a window must admit at least one event, not {limit}")
        self._limit = limit
        self._window = window
        self._times: deque[float] = deque(maxlen=limit)
        self._turn = asyncio.Lock()

    def wait_seconds(self) -> float:
        """How long until one more event fits (0 when it fits now)."""
        if len(self._times) < self._limit:
            return 0.0
        return max(0.0, self._times[0] + self._window - time.monotonic())

    async def admit(self, on_wait: Callable[[float], None] | None = None) -> None:
        """Take room for one event, waiting for it; ``on_wait`` hears of a wait before it starts."""
        async with self._turn:  # one waiter at a time, so two cannot both take the last room
            delay = self.wait_seconds()
            if delay > 0 and on_wait is not None:
                on_wait(delay)
            await asyncio.sleep(delay)
            self._times.append(time.monotonic())


class ConnectionPlanner:
    """Shards streams over connections and holds every limit of ``VenueLimits`` for one venue.

    One planner serves all of a venue's connections in the process: the connection budget is
    shared, the send pace is per connection, and each connection's rotation time is staggered by
    its place among the shards and jittered so that rotations do not bunch up.
    """

    def __init__(self, limits: VenueLimits, *, rng: random.Random | None = None) -> None:
        self.limits = limits
        self._rng = rng or random.Random()
        self._connections = SlidingWindow(limits.connections_per_window, limits.connection_window)
        self.connection_waits = 0
        """Times a connection had to wait for the budget (a rotation storm would show here)."""

    def shards(self, streams: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        """``streams`` split into the fewest connections, evenly (1025 streams: 513 and 512)."""
        count = max(1, math.ceil(len(streams) / self.limits.streams_per_connection))
        size, extra = divmod(len(streams), count)
        shards, start = [], 0
        for index in range(count):
            end = start + size + (1 if index < extra else 0)
            shards.append(streams[start:end])
            start = end
        return tuple(shards)

    async def admit_connection(self, venue: str) -> None:
        """Wait until the venue's connection budget has room for one more, and take it."""

        def waiting(delay: float) -> None:
            self.connection_waits += 1
            log.warning(
                "feed.connection_budget",
                exchange=venue,
                wait_seconds=round(delay, 3),
                limit=self.limits.connections_per_window,
                window_seconds=self.limits.connection_window,
            )

        await self._connections.admit(waiting)

    def send_pace(self) -> SlidingWindow:
        """A new connection's own pace for what we send on it."""
        limits = self.limits
        return SlidingWindow(max(1, limits.sends_per_window - limits.reserved_sends), limits.send_window)

    def rotate_after(self, shard: int, shards: int) -> float | None:
        """Seconds after opening that shard ``shard`` of ``shards`` is rotated; None: never."""
        lifetime = self.limits.lifetime
        if lifetime is None:
            return None
        spread = (ROTATE_UNTIL - ROTATE_FROM) / 2
        staggered = ROTATE_UNTIL - spread * shard / shards
        return lifetime * (staggered - spread * self._rng.random())
