"""A local OKX v5 server: the public WebSocket's ``trades`` channel, text ping/pong, notices, idle
close, and the REST trade history.

``/ws/v5/public`` takes ``{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}``
(and ``unsubscribe``) and answers each arg on its own: an acknowledgement, or for a channel or
instrument it does not serve error 60018 worded as OKX words it, while the others stream. A
malformed request gets error 60012, the text ``ping`` gets ``pong``. A connection on which
nothing has gone either way for ``idle_timeout`` seconds (30, as OKX) is closed.
Trades come from a seeded random walk, ``rate`` pushes a second spread over the instruments. As
on newer OKX a push may carry several trades, each an aggregation of ``count`` fills (same price,
side and time, sizes summed) whose ``tradeId`` is the last, with ``source`` and ``seqId``; fill ids
run on without gaps per instrument. They start from a wall-clock base (microseconds since the
epoch) so they keep rising across restarts; ``id_base`` pins them for tests. Swaps, futures and
options trade whole contracts.
Every fill made is kept (the newest ``history`` per instrument) and served one item each by
``GET /api/v5/market/history-trades`` (``okx_history.py``): only fills that have happened.
Test hooks: those of ``SimulatedVenue``, ``announce_upgrade`` (notice 64008 to every client) and
``refuse_rest`` (the next REST requests answered 429, code 50011, with ``Retry-After``). On a
schedule, each connection on its own clock: notice 64008 every ``notice_every`` seconds, closed
``shutdown_grace`` seconds after the first; closed without warning at ``lifetime``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from typing import Any, TypeGuard
from urllib.parse import parse_qs, urlsplit

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kairos_core.adapters.inbound.feed_handler.okx_history import PATH as HISTORY_PATH
from kairos_core.adapters.inbound.feed_handler.okx_history import RATE_LIMIT, RATE_WINDOW
from kairos_core.adapters.inbound.feed_handler.okx_wire import (
    NOT_FOUND,
    PING,
    SERVICE_UPGRADE,
    encode_event,
    encode_subscribe_ack,
    encode_trades_push,
)
from kairos_core.domain import Exchange, MarketTick, Side
from kairos_core.simulator.faults import ConnectionFaults
from kairos_core.simulator.okx_history import FillHistory, HistoryEndpoint
from kairos_core.simulator.venue import Pacer, SimulatedVenue, VenueConnection

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


@dataclass(frozen=True, slots=True)
class _Push:
    inst_id: str
    trades: int
    """Trades (aggregations) in the push."""
    fills: list[MarketTick]
    """Every fill of those trades, one tick each, ascending."""
    frame: bytes


class _TradeWalk:
    """Per-instrument prices moving a few steps at a time; deterministic for a given seed."""

    def __init__(self, inst_ids: Iterable[str], seed: int | None, id_base: int) -> None:
        self._rng = random.Random(seed)
        self._inst_ids = list(inst_ids)
        self._steps = {i: _STARTING_PRICES.get(i.split("-")[0], 100) * 10 for i in self._inst_ids}
        self._next_id = dict.fromkeys(self._inst_ids, id_base)
        self._seq = dict.fromkeys(self._inst_ids, 0)

    def push(self) -> _Push:
        """The next push, made now: its trades happen at this moment."""
        rng = self._rng
        inst_id = rng.choice(self._inst_ids)
        now_ms = time.time_ns() // 1_000_000
        trades, fills = [], []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            trade_fills = self._fills(inst_id, now_ms)
            fills += trade_fills
            volume = sum((fill.volume for fill in trade_fills), Decimal(0))
            trades.append(trade_fills[-1]._replace(first_trade_id=trade_fills[0].trade_id, volume=volume))
        self._seq[inst_id] += 1
        return _Push(inst_id, len(trades), fills, encode_trades_push(trades, seq_id=self._seq[inst_id]))

    def _fills(self, inst_id: str, now_ms: int) -> list[MarketTick]:
        """The fills of one trade: one price, side and time, consecutive ids, sizes of their own."""
        rng = self._rng
        steps = self._steps[inst_id] = max(1, self._steps[inst_id] + rng.randint(-5, 5))
        first = self._next_id[inst_id]
        count = rng.choice((1, 1, 1, 2, 3))
        self._next_id[inst_id] = first + count
        contracts = inst_id.count("-") >= 2  # a swap, future or option: sz is a number of contracts
        side = Side.SELL if rng.random() < 0.5 else Side.BUY
        fills = []
        for trade_id in range(first, first + count):
            if contracts:
                size = Decimal(rng.randint(1, 500))
            else:
                size = Decimal(rng.randint(1, 50_000_000)) * _SPOT_STEP
            fill = MarketTick(
                symbol=inst_id,
                exchange=Exchange.OKX,
                price=Decimal(steps) * _PRICE_STEP,
                volume=size,
                side=side,
                trade_id=trade_id,
                first_trade_id=trade_id,
                last_trade_id=trade_id,
                timestamp_ms=now_ms,
                event_time_ms=None,
                received_at_ns=0,
            )
            fills.append(fill)
        return fills


class OkxSimulator(SimulatedVenue[_Client]):
    """Serves OKX's public WebSocket (``/ws/v5/public``): trades subscriptions, ping/pong, notices.

    Also ``GET /api/v5/market/history-trades`` from the newest ``history`` fills per instrument,
    at most ``rest_rate_limit`` requests per ``rest_rate_window`` seconds (OKX's 20 per 2 s).
    Beyond ``SimulatedVenue``'s counters: ``pings`` (text pings answered), ``idle_closes``
    (connections closed as idle), ``rest_requests``, ``rest_refused`` (answered code 50011) and
    ``rest_arrivals`` (when each REST request came, monotonic seconds). ``notice_every``,
    ``shutdown_grace`` and ``lifetime`` are ``faults.ConnectionFaults``' ``shutdown_every``,
    ``shutdown_grace`` and ``lifetime``, the notice being OKX's 64008.
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
        history: int = 100_000,
        rest_rate_limit: int = RATE_LIMIT,
        rest_rate_window: float = RATE_WINDOW,
        notice_every: float | None = None,
        shutdown_grace: float = 1.0,
        lifetime: float | None = None,
    ) -> None:
        super().__init__(
            rate=rate,
            handshake_status=handshake_status,
            faults=ConnectionFaults(
                shutdown_every=notice_every, shutdown_grace=shutdown_grace, lifetime=lifetime
            ),
        )
        self.symbols = tuple(dict.fromkeys(symbol.upper() for symbol in symbols))
        self.idle_timeout = idle_timeout
        base = id_base if id_base is not None else time.time_ns() // 1000
        self._walk = _TradeWalk(self.symbols, seed, base)
        self._history = FillHistory(history)
        self._rest = HistoryEndpoint(
            self._history, self.symbols, rate_limit=rest_rate_limit, rate_window=rest_rate_window
        )
        self._conn_ids = (f"{n:08x}" for n in itertools.count(0x5EED0000))
        self.pings = 0
        self.idle_closes = 0

    async def announce_upgrade(self) -> None:
        """Tell every client, as OKX does before a service upgrade, that its connection will close."""
        for connection in list(self._clients):
            await self._announce_shutdown(connection)

    def stats(self) -> dict[str, int]:
        return {
            **super().stats(),
            "pings": self.pings,
            "idle_closes": self.idle_closes,
            "rest_requests": self.rest_requests,
            "rest_refused": self.rest_refused,
        }

    def refuse_rest(
        self, count: int, *, retry_after: int | None = 1, status: int = HTTPStatus.TOO_MANY_REQUESTS
    ) -> None:
        """Answer the next ``count`` REST requests with code 50011, as OKX throttles: HTTP 429 (or 200,
        OKX's other form), with ``Retry-After: retry_after`` unless it is None."""
        if status not in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.OK):
            raise ValueError(f"OKX throttles with HTTP 429 or 200 and code 50011, not {status}")
        self._rest.refuse(count, HTTPStatus(status), retry_after)

    @property
    def rest_requests(self) -> int:
        return self._rest.requests

    @property
    def rest_refused(self) -> int:
        return self._rest.refused

    @property
    def rest_arrivals(self) -> list[float]:
        return list(self._rest.arrivals)

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == HISTORY_PATH:
            return self._rest.answer(parse_qs(url.query)).response(connection)
        if url.path.rstrip("/") != PATH:
            return self._not_found(connection, f"use {PATH} or {HISTORY_PATH}")
        return self._handshake(connection)

    async def _session(self, connection: VenueConnection) -> None:
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

    async def _answer(self, connection: VenueConnection, client: _Client, message: str | bytes) -> None:
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

    async def _announce_shutdown(self, connection: VenueConnection) -> bool:
        client = self._clients.get(connection)
        if client is None:
            return False
        notice = encode_event("notice", SERVICE_UPGRADE, _UPGRADE_MESSAGE, client.conn_id)
        return await self._send(connection, client, notice)

    async def _send(self, connection: VenueConnection, client: _Client, frame: bytes | str) -> bool:
        """Send one text frame (OKX sends text frames); False if the connection is gone or silent."""
        if connection.silent:
            return False
        try:
            await connection.send(frame, text=True)
        except ConnectionClosed:
            return False
        client.last_activity = asyncio.get_running_loop().time()
        return True

    async def _close_when_idle(self, connection: VenueConnection, client: _Client) -> None:
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
        while True:
            await pacer.next()
            push = self._walk.push()  # made on its turn: a halt while waiting for it loses no fill
            self._history.record(push.inst_id, push.fills)  # before it is sent: a client that saw it can ask
            for connection, client in list(self._clients.items()):
                if push.inst_id in client.inst_ids and await self._send(connection, client, push.frame):
                    self.frames_sent += 1
                    self.trades_sent += push.trades


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
