"""The simulator at benchmark speed: pre-encoded WebSocket frames written straight to the socket.

Every client gets the same ``count`` aggTrade frames (ids consecutive per symbol), either as fast
as its socket drains (``rate=None``) or paced at ``rate`` frames per second. The frames are
encoded and WebSocket-framed before the first client connects, and written in large chunks past
the library's per-message ``send``, so one core pushes far more than a Python client can read.

Clients of other libraries connect the way those libraries do, so the paths and requests are
Binance's: ``/stream?streams=...`` gets combined frames, ``/ws`` and ``/ws/<stream>`` the ``data``
object alone, and a connection that names no streams gets nothing until its ``SUBSCRIBE``
requests cover every symbol served (answered as Binance does, and so are later requests). The
frames carry every symbol whatever the connection asked for: a benchmark client subscribes to all.
With ``send_log``, each frame's send time is written as ``symbol,trade_id,send_ns`` lines (paced
runs only: latency is measured at a steady rate, not while blasting).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve

from kairos_core.simulator.binance_walk import RandomWalk, data_of
from kairos_core.simulator.subscriptions import Subscriptions
from kairos_core.simulator.venue import Pacer

log = structlog.get_logger(__name__)

_CHUNK_FRAMES = 512
_WRITE_LIMITS = (4 << 20, 1 << 20)  # transport buffer: pause writing above 4 MiB, resume below 1 MiB


class _Frame(msgspec.Struct):
    stream: str
    data: _Data


class _Data(msgspec.Struct):
    a: int


class _Framings:
    """The same frames two ways: combined (``{"stream":...,"data":...}``) and raw (``data`` alone)."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.frames = [websocket_text_frame(p) for p in payloads]
        self.chunks = [
            b"".join(self.frames[i : i + _CHUNK_FRAMES]) for i in range(0, len(self.frames), _CHUNK_FRAMES)
        ]


def websocket_text_frame(payload: bytes) -> bytes:
    """An unmasked final text frame (server to client, RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class BenchmarkServer:
    """Serves ``/stream`` (any query) with the prepared frames; one run per connection."""

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        count: int,
        rate: float | None = None,
        send_log: Path | None = None,
        seed: int = 1,
        id_base: int = 1,
    ) -> None:
        self._symbols = [s.lower() for s in symbols]
        walk = RandomWalk(self._symbols, seed, id_base).frames()
        decode = msgspec.json.Decoder(_Frame).decode
        self._keys: list[tuple[str, int]] = []
        combined: list[bytes] = []
        for _, (symbol, payload) in zip(range(count), walk, strict=False):
            self._keys.append((symbol.upper(), decode(payload).data.a))
            combined.append(payload)
        self._combined = _Framings(combined)
        self._raw = _Framings([data_of(p) for p in combined])
        self.rate = rate
        self._send_log = send_log
        self._server: Server | None = None

    @property
    def count(self) -> int:
        return len(self._keys)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        # No keepalive pings from this side: nothing else may write to the socket mid-chunk.
        self._server = await serve(
            self._session, host, port, ping_interval=None, compression=None, write_limit=_WRITE_LIMITS
        )
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "simulator.benchmark_ready",
            port=bound,
            frames=self.count,
            bytes=sum(map(len, self._combined.chunks)),
            rate=self.rate,
        )
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        subscriptions = Subscriptions.for_target(connection.request.path, self._symbols)
        if subscriptions is None:
            await connection.close(1008, "use /stream or /ws")
            return
        while not subscriptions.symbols.issuperset(self._symbols):
            await connection.send(subscriptions.answer(await connection.recv()), text=True)
        answering = asyncio.create_task(self._answer(connection, subscriptions))
        framings = self._combined if subscriptions.combined else self._raw
        started = time.perf_counter()
        if self.rate is None:
            await self._blast(connection, framings)
        else:
            await self._paced(connection.transport, framings, self.rate)
        log.info(
            "simulator.benchmark_sent",
            frames=self.count,
            seconds=round(time.perf_counter() - started, 3),
        )
        await connection.wait_closed()
        answering.cancel()

    @staticmethod
    async def _answer(connection: ServerConnection, subscriptions: Subscriptions) -> None:
        """Requests sent while the frames stream; each reply is a whole frame between chunks."""
        async for message in connection:
            await connection.send(subscriptions.answer(message), text=True)

    async def _blast(self, connection: ServerConnection, framings: _Framings) -> None:
        transport = connection.transport
        for chunk in framings.chunks:
            if transport.is_closing():
                return
            transport.write(chunk)
            await connection.drain()  # waits only while the transport is above its high-water mark

    async def _paced(self, transport: asyncio.WriteTransport, framings: _Framings, rate: float) -> None:
        """One frame at each one's turn, ``1 / rate`` apart: even only on a loop whose short timers
        fire on time (``fine_timers``, which ``simulate`` runs on)."""
        send_ns = [0] * self.count
        pacer = Pacer(rate)
        for sent, frame in enumerate(framings.frames):
            await pacer.next()
            if transport.is_closing():
                break
            transport.write(frame)
            send_ns[sent] = time.time_ns()
        if self._send_log is not None:
            lines = (
                f"{symbol},{trade_id},{ns}\n"
                for (symbol, trade_id), ns in zip(self._keys, send_ns, strict=True)
            )
            await asyncio.to_thread(self._send_log.write_text, "".join(lines))
