"""A local Binance spot market-stream server: raw and combined aggTrade streams and ``exchangeInfo``.

``/ws/<stream>`` sends the ``data`` object alone, ``/stream?streams=a/b`` wraps it as
``{"stream":...,"data":...}``; either may open bare and change its streams with live requests
(``subscriptions.py``). Clients are pinged every ``ping_interval`` seconds and dropped after a
minute without a pong, as Binance does.
Trades come from a seeded random walk at ``rate`` frames per second (spread over the symbols) or
from a recording, replayed once from the moment the first client connects. Aggregate ids start
from a wall-clock base (microseconds since the epoch) so they keep rising across restarts, as a
real exchange's do; ``id_base`` pins them for tests.
Test hooks: ``inject`` sends any frame, ``drop_connections`` cuts every client, and
``handshake_status`` answers every stream handshake with that HTTP status instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kairos_core.adapters.inbound.feed_handler.binance_wire import encode_agg_trade
from kairos_core.domain import Exchange, MarketTick, Side
from kairos_core.simulator.recordings import recorded_agg_trades
from kairos_core.simulator.subscriptions import Subscriptions
from kairos_core.simulator.venue import Pacer, SimulatedVenue

log = structlog.get_logger(__name__)

_PRICE_STEP = Decimal("0.01")
_QUANTITY_STEP = Decimal("0.00000001")
_STARTING_PRICES = {"btcusdt": 60_000, "ethusdt": 3_000, "bnbusdt": 500, "solusdt": 150}
_INVALID_SYMBOL = msgspec.json.encode({"code": -1121, "msg": "Invalid symbol."}).decode()
_PONG_TIMEOUT = 60.0  # Binance drops a connection that has not answered a ping within a minute


class _Envelope(msgspec.Struct):
    data: msgspec.Raw


_envelope = msgspec.json.Decoder(_Envelope)


def _data_of(combined_frame: bytes) -> bytes:
    """A combined frame's raw-stream form: its ``data`` object, the bytes as they are."""
    return bytes(_envelope.decode(combined_frame).data)


class _RandomWalk:
    """Per-symbol prices moving a few ticks at a time; deterministic for a given seed."""

    def __init__(self, symbols: Iterable[str], seed: int | None, id_base: int) -> None:
        self._rng = random.Random(seed)
        self._symbols = list(symbols)
        self._cents = {s: _STARTING_PRICES.get(s, 100) * 100 for s in self._symbols}
        self._next_id = dict.fromkeys(self._symbols, id_base)

    def frames(self) -> Iterator[tuple[str, bytes]]:
        rng = self._rng
        while True:
            symbol = rng.choice(self._symbols)
            cents = max(1, self._cents[symbol] + rng.randint(-5, 5))
            self._cents[symbol] = cents
            trade_id = self._next_id[symbol]
            self._next_id[symbol] = trade_id + 1
            trades_in_aggregate = rng.choice((1, 1, 1, 2, 3))
            now_ms = time.time_ns() // 1_000_000
            tick = MarketTick(
                symbol=symbol.upper(),
                exchange=Exchange.BINANCE,
                price=(Decimal(cents) * _PRICE_STEP).quantize(_QUANTITY_STEP),
                volume=(Decimal(rng.randint(1, 50_000_000)) * _QUANTITY_STEP).quantize(_QUANTITY_STEP),
                side=Side.SELL if rng.random() < 0.5 else Side.BUY,
                trade_id=trade_id,
                first_trade_id=trade_id * 4,
                last_trade_id=trade_id * 4 + trades_in_aggregate - 1,
                timestamp_ms=now_ms,
                event_time_ms=now_ms + 1,
                received_at_ns=0,
            )
            yield symbol, encode_agg_trade(tick)


class BinanceSimulator(SimulatedVenue[Subscriptions]):
    """Serves ``/ws/<symbol>@aggTrade``, ``/stream?streams=...`` and ``GET /api/v3/exchangeInfo``.

    ``ping_interval=None`` turns the server's pings off.
    """

    def __init__(
        self,
        symbols: Iterable[str] = ("btcusdt", "ethusdt"),
        *,
        rate: float = 10.0,
        seed: int | None = None,
        id_base: int | None = None,
        replay: Path | None = None,
        handshake_status: int | None = None,
        ping_interval: float | None = 20.0,
    ) -> None:
        super().__init__(rate=rate, handshake_status=handshake_status)
        self.ping_interval = ping_interval
        self._replaying = replay is not None
        if replay is not None:
            recorded = list(recorded_agg_trades(replay))
            if not recorded:
                raise ValueError(f"{replay} holds no Binance aggTrade or trade frames to replay")
            self.symbols = tuple(dict.fromkeys(symbol for symbol, _ in recorded))
            self._frames: Iterator[tuple[str, bytes]] = iter(recorded)
        else:
            self.symbols = tuple(symbol.lower() for symbol in symbols)
            base = id_base if id_base is not None else time.time_ns() // 1000
            self._frames = _RandomWalk(self.symbols, seed, base).frames()
        self._first_client = asyncio.Event()

    def _serve_options(self) -> dict[str, Any]:
        return {"ping_interval": self.ping_interval, "ping_timeout": _PONG_TIMEOUT}

    async def ping_clients(self, timeout: float = 5.0) -> int:
        """Ping every client as Binance does every 20 s; how many answered within ``timeout``."""
        answered = 0
        for client in list(self._clients):
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                await asyncio.wait_for(await client.ping(), timeout)
                answered += 1
        return answered

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/api/v3/exchangeInfo":
            return self._exchange_info(connection, parse_qs(url.query))
        if Subscriptions.for_target(request.path, self.symbols) is None:
            return self._not_found(connection, "use /ws/<stream> or /stream")
        return self._handshake(connection)

    def _exchange_info(self, connection: ServerConnection, query: dict[str, list[str]]) -> Response:
        if "symbols" in query:
            asked = [str(s).lower() for s in msgspec.json.decode(query["symbols"][0])]
        elif "symbol" in query:
            asked = [query["symbol"][0].lower()]
        else:
            asked = list(self.symbols)
        if any(symbol not in self.symbols for symbol in asked):
            return _json(connection, HTTPStatus.BAD_REQUEST, _INVALID_SYMBOL)
        body = {"timezone": "UTC", "symbols": [{"symbol": s.upper(), "status": "TRADING"} for s in asked]}
        return _json(connection, HTTPStatus.OK, msgspec.json.encode(body).decode())

    async def _session(self, connection: ServerConnection) -> None:
        target = connection.request.path if connection.request else ""
        subscriptions = Subscriptions.for_target(target, self.symbols)
        if subscriptions is None:  # _route lets only stream paths through
            return
        self._clients[connection] = subscriptions
        self._first_client.set()
        try:
            async for request in connection:
                # answer() applies the request at once: a frame sent after the reply follows it.
                await connection.send(subscriptions.answer(request), text=True)
        except ConnectionClosed:
            pass
        finally:
            del self._clients[connection]

    async def _produce(self) -> None:
        if self._replaying:  # a recording is finite: start it when somebody listens
            await self._first_client.wait()
        pacer = Pacer(self.rate)
        for symbol, frame in self._frames:
            await pacer.next()
            raw_frame: bytes | None = None
            for client, subscriptions in list(self._clients.items()):
                if symbol not in subscriptions.symbols:
                    continue
                if subscriptions.combined:
                    payload = frame
                else:  # a raw stream: the data object, cut out once per frame
                    payload = raw_frame = raw_frame or _data_of(frame)
                with contextlib.suppress(ConnectionClosed):
                    await client.send(payload, text=True)  # Binance sends text frames
                    self.frames_sent += 1
        log.info("simulator.replay_done", frames=pacer.count)


def _json(connection: ServerConnection, status: HTTPStatus, body: str) -> Response:
    response = connection.respond(status, body)
    response.headers["Content-Type"] = "application/json"
    return response
