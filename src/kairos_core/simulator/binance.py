"""A local Binance spot server: raw and combined aggTrade streams, ``exchangeInfo`` and ``aggTrades``.

``/ws/<stream>`` sends the ``data`` object alone, ``/stream?streams=a/b`` wraps it as
``{"stream":...,"data":...}``; either may open bare and change its streams with live requests
(``subscriptions.py``). Clients are pinged every ``ping_interval`` seconds and dropped after a
minute without a pong, as Binance does.
Trades come from a seeded random walk at ``rate`` frames per second (spread over the symbols) or
from a recording, replayed once from the moment the first client connects. Aggregate ids start
from a wall-clock base (microseconds since the epoch) so they keep rising across restarts, as a
real exchange's do; ``id_base`` pins them for tests.
Every trade produced is kept (the newest ``history`` per symbol) and served by
``GET /api/v3/aggTrades`` as Binance's REST answers it: only trades that have happened, ascending.
REST answers carry ``X-MBX-USED-WEIGHT-1M``; past ``weight_limit`` per ``weight_window`` seconds
they are 429 with ``Retry-After``, as Binance's are.
Test hooks: ``inject`` sends any frame, ``drop_connections`` cuts every client,
``handshake_status`` answers every stream handshake with that HTTP status instead,
``refuse_rest`` answers the next REST requests 429 or 418 with ``Retry-After``, and
``withhold_every`` keeps every k-th trade of a symbol off the sockets (still in the history).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator
from decimal import Decimal
from http import HTTPStatus
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kairos_core.adapters.inbound.feed_handler.binance_wire import (
    encode_agg_trade,
    encode_agg_trades,
    parse_frame,
)
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
_EXCHANGE_INFO, _AGG_TRADES = "/api/v3/exchangeInfo", "/api/v3/aggTrades"
_REST_WEIGHTS = {_EXCHANGE_INFO: 20, _AGG_TRADES: 4}  # request weights in Binance's spot REST docs
_AGG_TRADES_LIMIT = 500, 1000  # default and maximum ``limit``
_THROTTLED = {
    HTTPStatus.TOO_MANY_REQUESTS: "Too much request weight used; current limit is {limit} request weight "
    "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
    HTTPStatus.IM_A_TEAPOT: "Way too much request weight used; IP banned until {until}. "
    "Please use WebSocket Streams for live updates to avoid bans.",
}  # Binance's -1003 messages


class _Envelope(msgspec.Struct):
    data: msgspec.Raw


class _AggregateId(msgspec.Struct):
    a: int


class _IdOfFrame(msgspec.Struct):
    data: _AggregateId


_envelope = msgspec.json.Decoder(_Envelope)
_id_of_frame = msgspec.json.Decoder(_IdOfFrame)


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


class _TradeHistory:
    """The combined frames produced so far, the newest ``size`` per symbol, by ascending id."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._trades: dict[str, deque[tuple[int, bytes]]] = {}

    def record(self, symbol: str, frame: bytes) -> None:
        trades = self._trades.get(symbol)
        if trades is None:
            trades = self._trades[symbol] = deque(maxlen=self._size)
        trades.append((_id_of_frame.decode(frame).data.a, frame))

    def answer(self, symbol: str, from_id: int | None, limit: int) -> bytes:
        """Binance's aggTrades answer: ``limit`` trades from ``from_id`` on, or the newest ``limit``."""
        trades = self._trades.get(symbol, deque())
        if from_id is None:
            start = max(0, len(trades) - limit)
        else:
            start = bisect.bisect_left(trades, from_id, key=itemgetter(0))
        parsed = (parse_frame(frame) for _, frame in itertools.islice(trades, start, start + limit))
        return encode_agg_trades(tick for tick in parsed if isinstance(tick, MarketTick))  # all are


class _WeightMeter:
    """Request weight used in the current window, counted as Binance counts an IP's per minute."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._current = -1
        self.used = 0

    def charge(self, weight: int) -> int:
        current = int(time.time() // self._window)
        if current != self._current:
            self._current, self.used = current, 0
        self.used += weight
        return self.used

    def seconds_left(self) -> int:
        return math.ceil(self._window - time.time() % self._window)


class BinanceSimulator(SimulatedVenue[Subscriptions]):
    """Serves ``/ws/<symbol>@aggTrade``, ``/stream?streams=...``, ``GET /api/v3/exchangeInfo`` and
    ``GET /api/v3/aggTrades``.

    ``ping_interval=None`` turns the server's pings off. Beyond ``SimulatedVenue``'s counters:
    ``rest_requests``, ``rest_refused`` (answered 429/418) and ``trades_withheld``.
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
        history: int = 100_000,
        withhold_every: int | None = None,
        weight_limit: int = 6000,
        weight_window: float = 60.0,
    ) -> None:
        super().__init__(rate=rate, handshake_status=handshake_status)
        self.ping_interval = ping_interval
        self._history = _TradeHistory(history)
        self.withhold_every = withhold_every
        """Keep every k-th trade of each symbol (counted while this is set) off the sockets."""
        self._since_withheld: dict[str, int] = {}
        self.weight_limit = weight_limit
        self._weight = _WeightMeter(weight_window)
        self._refusals: deque[tuple[HTTPStatus, int]] = deque()
        self.rest_requests = 0
        self.rest_refused = 0
        self.trades_withheld = 0
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

    def refuse_rest(
        self, count: int, *, status: int = HTTPStatus.TOO_MANY_REQUESTS, retry_after: int = 1
    ) -> None:
        """Answer the next ``count`` REST requests (any path) ``status``, 429 (rate limit) or 418 (IP
        banned), with ``Retry-After: retry_after`` and Binance's -1003 error body."""
        if status not in _THROTTLED:
            raise ValueError(f"Binance throttles with 429 or 418, not {status}")
        self._refusals.extend([(HTTPStatus(status), retry_after)] * count)

    @property
    def used_weight(self) -> int:
        """The request weight the last REST answer reported as used."""
        return self._weight.used

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path in _REST_WEIGHTS:
            return self._rest(connection, url.path, parse_qs(url.query))
        if Subscriptions.for_target(request.path, self.symbols) is None:
            return self._not_found(connection, "use /ws/<stream> or /stream")
        return self._handshake(connection)

    def _rest(self, connection: ServerConnection, path: str, query: dict[str, list[str]]) -> Response:
        self.rest_requests += 1
        used = self._weight.charge(_REST_WEIGHTS[path])
        retry_after: int | None = None
        if self._refusals or used > self.weight_limit:
            self.rest_refused += 1
            if self._refusals:
                status, retry_after = self._refusals.popleft()
            else:
                status, retry_after = HTTPStatus.TOO_MANY_REQUESTS, self._weight.seconds_left()
            until = time.time_ns() // 1_000_000 + retry_after * 1000
            message = _THROTTLED[status].format(limit=self.weight_limit, until=until)
            body = msgspec.json.encode({"code": -1003, "msg": message}).decode()
        elif path == _AGG_TRADES:
            status, body = self._agg_trades(query)
        else:
            status, body = self._exchange_info(query)
        response = _json(connection, status, body)
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(used)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    def _exchange_info(self, query: dict[str, list[str]]) -> tuple[HTTPStatus, str]:
        if "symbols" in query:
            asked = [str(s).lower() for s in msgspec.json.decode(query["symbols"][0])]
        elif "symbol" in query:
            asked = [query["symbol"][0].lower()]
        else:
            asked = list(self.symbols)
        if any(symbol not in self.symbols for symbol in asked):
            return HTTPStatus.BAD_REQUEST, _INVALID_SYMBOL
        body = {"timezone": "UTC", "symbols": [{"symbol": s.upper(), "status": "TRADING"} for s in asked]}
        return HTTPStatus.OK, msgspec.json.encode(body).decode()

    def _agg_trades(self, query: dict[str, list[str]]) -> tuple[HTTPStatus, str]:
        symbol = query.get("symbol", [""])[0].lower()
        if not symbol:
            return _bad_request(
                -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            )
        if symbol not in self.symbols:
            return HTTPStatus.BAD_REQUEST, _INVALID_SYMBOL
        try:
            from_id = int(query["fromId"][0]) if "fromId" in query else None
            limit = int(query["limit"][0]) if "limit" in query else _AGG_TRADES_LIMIT[0]
        except ValueError:
            return _bad_request(-1100, "Illegal characters found in a parameter.")
        limit = min(max(limit, 1), _AGG_TRADES_LIMIT[1])
        return HTTPStatus.OK, self._history.answer(symbol, from_id, limit).decode()

    def _withheld(self, symbol: str) -> bool:
        every = self.withhold_every
        if not every:
            return False
        count = self._since_withheld.get(symbol, 0) + 1
        self._since_withheld[symbol] = count % every
        if count < every:
            return False
        self.trades_withheld += 1
        return True

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
            self._history.record(symbol, frame)  # before it is sent: a client that saw it can ask for it
            if self._withheld(symbol):
                continue
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
                    self.trades_sent += 1
        log.info("simulator.replay_done", frames=pacer.count)


def _json(connection: ServerConnection, status: HTTPStatus, body: str) -> Response:
    response = connection.respond(status, body)
    del response.headers["Content-Type"]  # respond()'s text/plain; setting a header adds another
    response.headers["Content-Type"] = "application/json"
    return response


def _bad_request(code: int, message: str) -> tuple[HTTPStatus, str]:
    return HTTPStatus.BAD_REQUEST, msgspec.json.encode({"code": code, "msg": message}).decode()
