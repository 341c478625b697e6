"""The Binance simulator's REST side: ``exchangeInfo``, ``aggTrades`` from its own history, throttling.

Answers carry ``X-MBX-USED-WEIGHT-1M``; past ``weight_limit`` per ``weight_window`` seconds they
are 429 with ``Retry-After``, as Binance's are. ``refuse`` answers the next requests 429 or 418;
``refuse_every`` answers every k-th request 429 with ``Retry-After: 1``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import deque
from http import HTTPStatus
from operator import itemgetter

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from kairos_core.adapters.inbound.feed_handler.binance_wire import encode_agg_trades, parse_frame
from kairos_core.domain import MarketTick

log = structlog.get_logger(__name__)

_INVALID_SYMBOL = msgspec.json.encode({"code": -1121, "msg": "Invalid symbol."}).decode()
_EXCHANGE_INFO, _AGG_TRADES = "/api/v3/exchangeInfo", "/api/v3/aggTrades"
_REST_WEIGHTS = {_EXCHANGE_INFO: 20, _AGG_TRADES: 4}  # request weights in Binance's spot REST docs
REST_PATHS = frozenset(_REST_WEIGHTS)
_AGG_TRADES_LIMIT = 500, 1000  # default and maximum ``limit``
_THROTTLED = {
    HTTPStatus.TOO_MANY_REQUESTS: "Too much request weight used; current limit is {limit} request weight "
    "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
    HTTPStatus.IM_A_TEAPOT: "Way too much request weight used; IP banned until {until}. "
    "Please use WebSocket Streams for live updates to avoid bans.",
}  # Binance's -1003 messages


class _AggregateId(msgspec.Struct):
    a: int


class _IdOfFrame(msgspec.Struct):
    data: _AggregateId


_id_of_frame = msgspec.json.Decoder(_IdOfFrame)


class TradeHistory:
    """The combined frames produced so far, the newest ``size`` per symbol, by ascending id."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._trades: dict[str, deque[tuple[int, bytes]]] = {}

    def record(self, symbol: str, frame: bytes) -> int:
        """Keep ``frame``; returns its trade id."""
        trades = self._trades.get(symbol)
        if trades is None:
            trades = self._trades[symbol] = deque(maxlen=self._size)
        trade_id = _id_of_frame.decode(frame).data.a
        trades.append((trade_id, frame))
        return trade_id

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


class BinanceRest:
    """Answers ``GET /api/v3/exchangeInfo`` and ``GET /api/v3/aggTrades`` for ``symbols`` from
    ``history``; ``requests`` and ``refused`` (answered 429/418) count them."""

    def __init__(
        self,
        symbols: tuple[str, ...],
        history: TradeHistory,
        *,
        weight_limit: int,
        weight_window: float,
        refuse_every: int | None = None,
    ) -> None:
        self._symbols = symbols
        self._history = history
        self.weight_limit = weight_limit
        self._weight = _WeightMeter(weight_window)
        self._refusals: deque[tuple[HTTPStatus, int]] = deque()
        self.refuse_every = refuse_every
        self.requests = 0
        self.refused = 0

    @property
    def used_weight(self) -> int:
        return self._weight.used

    def refuse(self, count: int, *, status: int, retry_after: int) -> None:
        if status not in _THROTTLED:
            raise ValueError(f"Binance throttles with 429 or 418, not {status}")
        self._refusals.extend([(HTTPStatus(status), retry_after)] * count)

    def answer(self, connection: ServerConnection, path: str, query: dict[str, list[str]]) -> Response:
        self.requests += 1
        if self.refuse_every and self.requests % self.refuse_every == 0:
            self._refusals.appendleft((HTTPStatus.TOO_MANY_REQUESTS, 1))
            log.debug("simulator.rest_refused", path=path, requests=self.requests)
        used = self._weight.charge(_REST_WEIGHTS[path])
        retry_after: int | None = None
        if self._refusals or used > self.weight_limit:
            self.refused += 1
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
            asked = list(self._symbols)
        if any(symbol not in self._symbols for symbol in asked):
            return HTTPStatus.BAD_REQUEST, _INVALID_SYMBOL
        body = {"timezone": "UTC", "symbols": [{"symbol": s.upper(), "status": "TRADING"} for s in asked]}
        return HTTPStatus.OK, msgspec.json.encode(body).decode()

    def _agg_trades(self, query: dict[str, list[str]]) -> tuple[HTTPStatus, str]:
        symbol = query.get("symbol", [""])[0].lower()
        if not symbol:
            return _bad_request(
                -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            )
        if symbol not in self._symbols:
            return HTTPStatus.BAD_REQUEST, _INVALID_SYMBOL
        try:
            from_id = int(query["fromId"][0]) if "fromId" in query else None
            limit = int(query["limit"][0]) if "limit" in query else _AGG_TRADES_LIMIT[0]
        except ValueError:
            return _bad_request(-1100, "Illegal characters found in a parameter.")
        limit = min(max(limit, 1), _AGG_TRADES_LIMIT[1])
        return HTTPStatus.OK, self._history.answer(symbol, from_id, limit).decode()


def _json(connection: ServerConnection, status: HTTPStatus, body: str) -> Response:
    response = connection.respond(status, body)
    del response.headers["Content-Type"]  # respond()'s text/plain; setting a header adds another
    response.headers["Content-Type"] = "application/json"
    return response


def _bad_request(code: int, message: str) -> tuple[HTTPStatus, str]:
    return HTTPStatus.BAD_REQUEST, msgspec.json.encode({"code": code, "msg": message}).decode()
