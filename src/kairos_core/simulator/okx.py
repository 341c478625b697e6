"""A local OKX v5 public WebSocket server: the ``trades`` channel, text ping/pong, notices, idle close.

``/ws/v5/public`` takes ``{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}``
(and ``unsubscribe``) and answers each arg on its own: an acknowledgement, or for a channel or
instrument it does not serve error 60018 worded as OKX words it, while the others stream. A
malformed request gets error 60012, the text ``ping`` gets ``pong``. A connection on which
nothing has gone either way for ``idle_timeout`` seconds (30, as OKX) is closed.
Trades come from a seeded random walk, ``rate`` pushes a second spread over the instruments. As
on newer OKX a push may carry several trades, each an aggregation of ``count`` trades whose
``tradeId`` is the last, with ``source`` and ``seqId``; ids run on without gaps per instrument.
They start from a wall-clock base (microseconds since the epoch) so they keep rising across
restarts; ``id_base`` pins them for tests. Swaps, futures and options trade whole contracts.
Test hooks: those of ``SimulatedVenue`` and ``announce_upgrade`` (notice 64008 to every client).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any, TypeGuard

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kairos_core.adapters.inbound.feed_handler.okx_wire import (
    NOT_FOUND,
    PING,
    SERVICE_UPGRADE,
    encode_event,
    encode_subscribe_ack,
    encode_trades_push,
)
from kairos_core.domain import Exchange, MarketTick, Side
from kairos_core.simulator.venue import Pacer, SimulatedVenue

log = structlog.get_logger(__name__)

PATH = "/ws/v5/public"
_PRICE_STEP = Decimal("0.1")
_SPOT_STEP = Decimal("0.00000001")
_STARTING_PRICES = {"BTC": 60_000, "ETH": 3_000, "SOL": 150, "OKB": 50}
_INVALID_REQUEST = "60012"
_UPGRADE_MESSAGE = "The connection will soon be closed for a service upgrade. Please reconnect."


class _Client:
    """One connection: its id as OKX reports it, its subscribed instruments, when it last spoke."""

    def __init__(self, conn_id: str, now: float) -> None:
        self.conn_id = conn_id
        self.inst_ids: set[str] = set()
        self.last_activity = now


class _TradeWalk:
    """Per-instrument prices moving a few steps at a time; deterministic for a given seed."""

    def __init__(self, inst_ids: Iterable[str], seed: int | None, id_base: int) -> None:
        self._rng = random.Random(seed)
        self._inst_ids = list(inst_ids)
        self._steps = {i: _STARTING_PRICES.get(i.split("-")[0], 100) * 10 for i in self._inst_ids}
        self._next_id = dict.fromkeys(self._inst_ids, id_base)
        self._seq = dict.fromkeys(self._inst_ids, 0)

    def pushes(self) -> Iterator[tuple[str, int, bytes]]:
        """``(instrument, trades in it, push)`` forever."""
        rng = self._rng
        while True:
            inst_id = rng.choice(self._inst_ids)
            now_ms = time.time_ns() // 1_000_000
            ticks = [self._trade(inst_id, now_ms) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
            self._seq[inst_id] += 1
            yield inst_id, len(ticks), encode_trades_push(ticks, seq_id=self._seq[inst_id])

    def _trade(self, inst_id: str, now_ms: int) -> MarketTick:
        rng = self._rng
        steps = self._steps[inst_id] = max(1, self._steps[inst_id] + rng.randint(-5, 5))
        first = self._next_id[inst_id]
        last = first + rng.choice((1, 1, 1, 2, 3)) - 1
        self._next_id[inst_id] = last + 1
        if inst_id.count("-") >= 2:  # a swap, future or option: sz is a number of contracts
            size = Decimal(rng.randint(1, 500))
        else:
            size = Decimal(rng.randint(1, 50_000_000)) * _SPOT_STEP
        return MarketTick(
            symbol=inst_id,
            exchange=Exchange.OKX,
            price=Decimal(steps) * _PRICE_STEP,
            volume=size,
            side=Side.SELL if rng.random() < 0.5 else Side.BUY,
            trade_id=last,
            first_trade_id=first,
            last_trade_id=last,
            timestamp_ms=now_ms,
            event_time_ms=None,
            received_at_ns=0,
        )


class OkxSimulator(SimulatedVenue[_Client]):
    """Serves OKX's public WebSocket (``/ws/v5/public``): trades subscriptions, ping/pong, notices.

    Beyond ``SimulatedVenue``'s counters: ``pings`` (text pings answered) and ``idle_closes``
    (connections closed as idle).
    """

    def __init__(
        self,
        symbols: Iterable[str] = ("BTC-USDT", "ETH-USDT"),
        *,
        rate: float = 10.0,
        seed: int | None = None,
        id_base: int | None = None,
        handshake_status: int | None = None,
        idle_timeout: float = 30.0,
    ) -> None:
        super().__init__(rate=rate, handshake_status=handshake_status)
        self.symbols = tuple(dict.fromkeys(symbol.upper() for symbol in symbols))
        self.idle_timeout = idle_timeout
        base = id_base if id_base is not None else time.time_ns() // 1000
        self._pushes = _TradeWalk(self.symbols, seed, base).pushes()
        self._conn_ids = (f"{n:08x}" for n in itertools.count(0x5EED0000))
        self.pings = 0
        self.idle_closes = 0

    async def announce_upgrade(self) -> None:
        """Tell every client, as OKX does before a service upgrade, that its connection will close."""
        for connection, client in list(self._clients.items()):
            notice = encode_event("notice", SERVICE_UPGRADE, _UPGRADE_MESSAGE, client.conn_id)
            await self._send(connection, client, notice)

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0].rstrip("/") != PATH:
            return self._not_found(connection, f"use {PATH}")
        return self._handshake(connection)

    async def _session(self, connection: ServerConnection) -> None:
        client = _Client(next(self._conn_ids), asyncio.get_running_loop().time())
        self._clients[connection] = client
        idle = asyncio.create_task(self._close_when_idle(connection, client))
        try:
            async for message in connection:
                client.last_activity = asyncio.get_running_loop().time()
                await self._answer(connection, client, message)
        except ConnectionClosed:
            pass
        finally:
            idle.cancel()
            del self._clients[connection]

    async def _answer(self, connection: ServerConnection, client: _Client, message: str | bytes) -> None:
        if message in (PING, PING.encode()):
            self.pings += 1
            await self._send(connection, client, "pong")
            return
        request = _request(message)
        op, args, request_id = request.get("op"), request.get("args"), request.get("id")
        request_id = request_id if isinstance(request_id, str) else None
        if op not in ("subscribe", "unsubscribe") or not _valid_args(args):
            refusal = f"Invalid request: {_text(message)}"
            error = encode_event("error", _INVALID_REQUEST, refusal, client.conn_id, request_id=request_id)
            await self._send(connection, client, error)
            return
        for arg in args:
            channel, inst_id = arg.get("channel"), arg.get("instId")
            if channel != "trades" or inst_id not in self.symbols:
                refusal = (
                    f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist. "
                    "Please use the correct URL, channel and parameters referring to API document."
                )
                error = encode_event("error", NOT_FOUND, refusal, client.conn_id, request_id=request_id)
                await self._send(connection, client, error)
                continue
            # No push of an instrument comes before its subscribe acknowledgement or after its
            # unsubscribe acknowledgement.
            if op == "unsubscribe":
                client.inst_ids.discard(inst_id)
            ack = encode_subscribe_ack(inst_id, client.conn_id, event=op, request_id=request_id)
            await self._send(connection, client, ack)
            if op == "subscribe":
                client.inst_ids.add(inst_id)

    async def _send(self, connection: ServerConnection, client: _Client, frame: bytes | str) -> bool:
        """Send one text frame (OKX sends text frames); False if the connection is gone."""
        try:
            await connection.send(frame, text=True)
        except ConnectionClosed:
            return False
        client.last_activity = asyncio.get_running_loop().time()
        return True

    async def _close_when_idle(self, connection: ServerConnection, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        while True:  # sleeps until the moment the connection would have been quiet long enough
            quiet = loop.time() - client.last_activity
            if quiet >= self.idle_timeout:
                break
            await asyncio.sleep(self.idle_timeout - quiet)
        self.idle_closes += 1
        log.info("simulator.idle_close", conn_id=client.conn_id, seconds=self.idle_timeout)
        await connection.close(reason=f"no data for {self.idle_timeout:g} s")

    async def _produce(self) -> None:
        pacer = Pacer(self.rate)
        for inst_id, trades, push in self._pushes:
            await pacer.next()
            for connection, client in list(self._clients.items()):
                if inst_id in client.inst_ids and await self._send(connection, client, push):
                    self.frames_sent += 1
                    self.trades_sent += trades


def _request(message: str | bytes) -> dict[str, Any]:
    try:
        request = msgspec.json.decode(message)
    except (msgspec.DecodeError, UnicodeError):
        return {}
    return request if isinstance(request, dict) else {}


def _valid_args(args: object) -> TypeGuard[list[dict[str, Any]]]:
    return isinstance(args, list) and bool(args) and all(isinstance(arg, dict) for arg in args)


def _text(message: str | bytes) -> str:
    return message if isinstance(message, str) else message.decode("utf-8", errors="replace")
