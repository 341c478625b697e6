"""What every simulated exchange shares: the server's lifecycle, its clients, pacing, the faults and
limits of each connection, and test hooks."""

from __future__ import annotations

import asyncio
import contextlib
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Generic, TypeVar

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, State

from kairos_core.simulator.faults import ConnectionEvent, ConnectionFaults, positive

log = structlog.get_logger(__name__)

_Client = TypeVar("_Client")
_MESSAGES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG})
"""What a venue counts as an incoming message: Binance names PING and PONG frames and requests."""
_CLOSES = {
    ConnectionEvent.SHUTDOWN: (CloseCode.GOING_AWAY, "server shutdown"),
    ConnectionEvent.EXPIRE: (CloseCode.NORMAL_CLOSURE, "connection lifetime reached"),
}


class Pacer:
    """Spaces events ``rate`` a second from its creation; one that falls behind goes at once.

    Going at once still yields to the event loop every ``YIELD_EVERY`` events: a producer that
    never catches up (a slow machine, a rate above what one core can make) must not starve the
    rest of its loop. An outage test's timers once never fired that way, and the simulator streamed
    on for as long as CI let it.
    """

    YIELD_EVERY = 64

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self.count = 0
        """Events let through so far."""

    async def next(self) -> None:
        """Wait for the next event's turn."""
        delay = self._started + self.count / self._rate - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif not self.count % self.YIELD_EVERY:
            await asyncio.sleep(0)
        self.count += 1


class SlidingWindow:
    """Admits at most ``limit`` events in any ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._admitted: deque[float] = deque()

    def admit(self, now: float) -> bool:
        """Count an event at ``now`` (monotonic seconds) unless the window is full; whether it was."""
        admitted = self._admitted
        while admitted and admitted[0] <= now - self.window:
            admitted.popleft()
        if len(admitted) >= self.limit:
            return False
        admitted.append(now)
        return True

    def seconds_to_wait(self, now: float) -> float:
        """How long until the next event would be admitted."""
        admitted = self._admitted
        return max(0.0, admitted[0] + self.window - now) if len(admitted) >= self.limit else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """What a venue allows a client (None: no limit): ``messages_per_second`` on each connection
    (past it the connection is closed with 1008 "Too many requests", as Binance closes it), and
    ``connection_budget`` new connections in any ``budget_window`` seconds (past it the handshake
    is answered 429 with ``Retry-After``)."""

    messages_per_second: int | None = None
    connection_budget: int | None = None
    budget_window: float = 300.0

    def __post_init__(self) -> None:
        for name in ("messages_per_second", "connection_budget", "budget_window"):
            positive(name, getattr(self, name))


class VenueConnection(ServerConnection):
    """A simulator's server connection: when it opened, whether it went silent, and (``meter``)
    its client's messages counted as they arrive: text and binary messages, PING and PONG frames."""

    opened_at = 0.0
    """Loop time at which the handshake completed."""
    silent = False
    """Nothing more is sent on it (the protocol still answers pings) until the client leaves."""
    _meter: SlidingWindow | None = None
    _on_flood: Callable[[VenueConnection], bool] | None = None
    _flooded = False
    _cut_off = False

    def meter(self, window: SlidingWindow, on_flood: Callable[[VenueConnection], bool]) -> None:
        """Call ``on_flood`` at the first message that ``window`` does not admit; if it answers
        True (it is closing the connection), no message from then on is read."""
        self._meter, self._on_flood = window, on_flood

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame):
            if event.opcode in _MESSAGES and not self._flooded and not self._admitted():
                self._flooded = True
                assert self._on_flood is not None  # meter() sets both
                self._cut_off = self._on_flood(self)
            if self._cut_off and event.opcode in DATA_OPCODES:
                return  # closing for the flood: what came past the limit is not read
        super().process_event(event)

    def _admitted(self) -> bool:
        return self._meter is None or self._meter.admit(self.loop.time())


class SimulatedVenue(ABC, Generic[_Client]):
    """A local WebSocket server standing in for one exchange; ``_Client`` is a connection's state.

    Each connection lives through ``faults`` (``ConnectionFaults``) on its own clock and is held
    to ``limits`` (``ConnectionLimits``). Test hooks: ``inject`` sends any frame to every client,
    ``drop_connections`` cuts them all, ``halt`` stops producing and ``resume`` starts again, and
    ``handshake_status`` answers every stream handshake with that HTTP status instead.
    ``stats()`` has every counter: ``frames_sent`` (market frames that went out), ``trades_sent``
    (the trades in them), ``handshakes`` (to a stream path), ``handshakes_refused`` (429 past the
    connection budget), ``shutdown_notices``, ``shutdown_closes`` (after a notice's grace),
    ``lifetime_closes``, ``silenced`` (connections gone silent) and ``rate_limited`` (closed for
    too many messages).
    """

    symbols: tuple[str, ...]

    def __init__(
        self,
        *,
        rate: float,
        handshake_status: int | None,
        faults: ConnectionFaults | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.handshake_status = handshake_status
        self._faults = faults or ConnectionFaults()
        self._accepted = 0
        self._limits = limits or ConnectionLimits()
        budget = self._limits.connection_budget
        self._budget = None if budget is None else SlidingWindow(budget, self._limits.budget_window)
        self._clients: dict[VenueConnection, _Client] = {}
        self._server: Server | None = None
        self._producer: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.handshakes = 0
        self.handshakes_refused = 0
        self.frames_sent = 0
        self.trades_sent = 0
        self.shutdown_notices = 0
        self.shutdown_closes = 0
        self.lifetime_closes = 0
        self.silenced = 0
        self.rate_limited = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def clients(self) -> int:
        return len(self._clients)

    def stats(self) -> dict[str, int]:
        """Every counter, for the summary line at exit."""
        return {
            "frames_sent": self.frames_sent,
            "trades_sent": self.trades_sent,
            "handshakes": self.handshakes,
            "handshakes_refused": self.handshakes_refused,
            "shutdown_notices": self.shutdown_notices,
            "shutdown_closes": self.shutdown_closes,
            "lifetime_closes": self.lifetime_closes,
            "silenced": self.silenced,
            "rate_limited": self.rate_limited,
        }

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen and start producing; returns the bound port."""
        self._server = await serve(
            self._serve,
            host,
            port,
            process_request=self._route,
            compression=None,
            create_connection=VenueConnection,
            **self._serve_options(),
        )
        self._producer = asyncio.create_task(self._produce())
        log.info("simulator.listening", host=host, port=self.port, symbols=list(self.symbols), rate=self.rate)
        return self.port

    async def halt(self) -> None:
        """Stop producing, keep the connections: every frame counted in ``frames_sent`` is out."""
        if self._producer is not None:
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer

    def resume(self) -> None:
        """Produce again after ``halt``, going on from where it stopped (a frame made but not yet
        sent when it halted is skipped)."""
        if self._producer is None:
            raise RuntimeError("the simulator is not started")
        if self._producer.done():
            self._producer = asyncio.create_task(self._produce())

    async def stop(self) -> None:
        await self.halt()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def inject(self, frame: bytes | str) -> None:
        """Send ``frame`` as it is to every connected client that has not gone silent."""
        for client in list(self._clients):
            if not client.silent:
                with contextlib.suppress(ConnectionClosed):
                    await client.send(frame)

    async def drop_connections(self) -> None:
        """Cut every client's TCP connection without a closing handshake."""
        for client in list(self._clients):
            client.transport.abort()

    def _handshake(self, connection: ServerConnection) -> Response | None:
        """Count a handshake to a stream path; refuse it when ``handshake_status`` or the connection
        budget says so; meter the messages of one accepted."""
        self.handshakes += 1
        if self.handshake_status is not None:
            return connection.respond(self.handshake_status, "refused by the simulator\n")
        now = asyncio.get_running_loop().time()
        if self._budget is not None and not self._budget.admit(now):
            self.handshakes_refused += 1
            limit, window = self._budget.limit, self._budget.window
            response = connection.respond(
                HTTPStatus.TOO_MANY_REQUESTS, f"more than {limit} connections in {window:g} s: retry later\n"
            )
            response.headers["Retry-After"] = str(math.ceil(self._budget.seconds_to_wait(now)))
            log.info("simulator.handshake_refused", connections=limit, window=window)
            return response
        per_second = self._limits.messages_per_second
        if per_second is not None and isinstance(connection, VenueConnection):
            connection.meter(SlidingWindow(per_second, 1.0), self._flooded)
        return None

    @staticmethod
    def _not_found(connection: ServerConnection, hint: str) -> Response:
        return connection.respond(HTTPStatus.NOT_FOUND, f"unknown path: {hint}\n")

    def _serve_options(self) -> dict[str, Any]:
        """Extra ``websockets.serve`` options (keepalive pings)."""
        return {"ping_interval": None}

    async def _serve(self, connection: ServerConnection) -> None:
        """One accepted connection: its session, and its schedule of faults beside it."""
        assert isinstance(connection, VenueConnection)  # serve() makes them so
        connection.opened_at = asyncio.get_running_loop().time()
        self._accepted += 1
        events = self._faults.schedule(self._accepted)
        schedule = asyncio.create_task(self._keep_schedule(connection, events)) if events else None
        try:
            await self._session(connection)
        finally:
            if schedule is not None:
                schedule.cancel()

    async def _keep_schedule(
        self, connection: VenueConnection, events: list[tuple[float, ConnectionEvent]]
    ) -> None:
        loop = asyncio.get_running_loop()
        for at, event in events:
            await asyncio.sleep(connection.opened_at + at - loop.time())
            if connection.state is not State.OPEN:
                return
            if event is ConnectionEvent.SILENCE:
                connection.silent = True
                self.silenced += 1
                log.info("simulator.silenced", after=at, clients=self.clients)
                return
            if event is ConnectionEvent.NOTICE:
                if await self._announce_shutdown(connection):
                    self.shutdown_notices += 1
                continue
            code, reason = _CLOSES[event]
            if event is ConnectionEvent.SHUTDOWN:
                self.shutdown_closes += 1
            else:
                self.lifetime_closes += 1
            log.info("simulator.closing", reason=reason, after=at)
            await connection.close(code, reason)
            return

    def _flooded(self, connection: VenueConnection) -> bool:
        """Close a connection whose client sent more than ``messages_per_second`` (a silent one
        is sent nothing, not even that close); whether it is closing."""
        if connection.silent:
            return False
        self.rate_limited += 1
        log.info("simulator.rate_limited", messages_per_second=self._limits.messages_per_second)
        self._spawn(connection.close(CloseCode.POLICY_VIOLATION, "Too many requests"))
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @abstractmethod
    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        """An HTTP answer instead of the handshake (REST, not found, refused), or None to accept."""

    @abstractmethod
    async def _session(self, connection: VenueConnection) -> None:
        """Serve one accepted connection until it closes."""

    @abstractmethod
    async def _announce_shutdown(self, connection: VenueConnection) -> bool:
        """Send the venue's shutdown notice on ``connection``; whether it went out."""

    @abstractmethod
    async def _produce(self) -> None:
        """Send market frames to the clients until halted."""
