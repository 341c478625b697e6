"""What every simulated exchange shares: the server's lifecycle, its clients, pacing and test hooks."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from http import HTTPStatus
from typing import Any, Generic, TypeVar

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = structlog.get_logger(__name__)

_Client = TypeVar("_Client")


class Pacer:
    """Spaces events ``rate`` a second from its creation; one that falls behind goes at once."""

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
        self.count += 1


class SimulatedVenue(ABC, Generic[_Client]):
    """A local WebSocket server standing in for one exchange; ``_Client`` is a connection's state.

    Test hooks: ``inject`` sends any frame to every client, ``drop_connections`` cuts them all,
    ``halt`` stops producing and ``resume`` starts again, and ``handshake_status`` answers every
    stream handshake with that HTTP status instead. ``frames_sent`` counts the market frames that
    went out, ``trades_sent`` the trades in them.
    """

    symbols: tuple[str, ...]

    def __init__(self, *, rate: float, handshake_status: int | None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.handshake_status = handshake_status
        self._clients: dict[ServerConnection, _Client] = {}
        self._server: Server | None = None
        self._producer: asyncio.Task[None] | None = None
        self.handshakes = 0
        self.frames_sent = 0
        self.trades_sent = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen and start producing; returns the bound port."""
        self._server = await serve(
            self._session, host, port, process_request=self._route, compression=None, **self._serve_options()
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
        """Send ``frame`` as it is to every connected client."""
        for client in list(self._clients):
            with contextlib.suppress(ConnectionClosed):
                await client.send(frame)

    async def drop_connections(self) -> None:
        """Cut every client's TCP connection without a closing handshake."""
        for client in list(self._clients):
            client.transport.abort()

    def _handshake(self, connection: ServerConnection) -> Response | None:
        """Count a handshake to a stream path; refuse it when ``handshake_status`` says so."""
        self.handshakes += 1
        if self.handshake_status is not None:
            return connection.respond(self.handshake_status, "refused by the simulator\n")
        return None

    @staticmethod
    def _not_found(connection: ServerConnection, hint: str) -> Response:
        return connection.respond(HTTPStatus.NOT_FOUND, f"unknown path: {hint}\n")

    def _serve_options(self) -> dict[str, Any]:
        """Extra ``websockets.serve`` options (keepalive pings)."""
        return {"ping_interval": None}

    @abstractmethod
    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        """An HTTP answer instead of the handshake (REST, not found, refused), or None to accept."""

    @abstractmethod
    async def _session(self, connection: ServerConnection) -> None:
        """Serve one accepted connection until it closes."""

    @abstractmethod
    async def _produce(self) -> None:
        """Send market frames to the clients until halted."""
