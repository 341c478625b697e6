"""The OKX simulator's REST trade history: ``GET /api/v5/market/history-trades`` from the fills made.

Answers as OKX does with ``type=1``: each fill one item (a push's aggregation of ``count`` fills is
``count`` items), newest first, at most ``limit`` (100); ``after`` keeps ids below it, ``before``
ids above it, both the ids between. Past ``rate_limit`` requests in any ``rate_window`` seconds,
and for every request ``refuse`` queued, the answer is 429 with code 50011 (OKX sends no
``Retry-After``; a queued refusal may). An instrument it does not trade is code 51001.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from operator import attrgetter

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from kairos_core.adapters.inbound.feed_handler.okx_history import MAX_LIMIT
from kairos_core.adapters.inbound.feed_handler.okx_history_wire import (
    NO_SUCH_INSTRUMENT,
    RATE_LIMITED,
    encode_error,
    encode_history_trades,
)
from kairos_core.domain import MarketTick

_NO_SUCH_INSTRUMENT = "Instrument ID, Instrument ID code or Spread ID doesn't exist."
_TOO_MANY = {  # OKX's two forms of 50011
    HTTPStatus.TOO_MANY_REQUESTS: "Too Many Requests",
    HTTPStatus.OK: "Rate limit reached. Please refer to API documentation and throttle requests accordingly.",
}
_ARRIVALS_KEPT = 100_000
_MISSING, _INVALID = "50014", "51000"  # "Parameter {0} can not be empty", "Parameter {0} error"
_trade_id = attrgetter("trade_id")


class FillHistory:
    """The fills made so far, the newest ``size`` per instrument, ascending by id."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._fills: dict[str, deque[MarketTick]] = {}

    def record(self, inst_id: str, fills: Iterable[MarketTick]) -> None:
        kept = self._fills.get(inst_id)
        if kept is None:
            kept = self._fills[inst_id] = deque(maxlen=self._size)
        kept.extend(fills)

    def newest_first(
        self, inst_id: str, after: int | None, before: int | None, limit: int
    ) -> list[MarketTick]:
        """Up to ``limit`` of the newest fills with ``before < id < after``, newest first."""
        fills = self._fills.get(inst_id, deque())
        high = len(fills) if after is None else bisect.bisect_left(fills, after, key=_trade_id)
        low = 0 if before is None else bisect.bisect_right(fills, before, key=_trade_id)
        found = list(itertools.islice(fills, max(low, high - limit), high))
        found.reverse()
        return found


@dataclass(frozen=True, slots=True)
class Answer:
    status: HTTPStatus
    body: bytes
    retry_after: int | None = None

    def response(self, connection: ServerConnection) -> Response:
        response = connection.respond(self.status, self.body.decode())
        del response.headers["Content-Type"]  # respond()'s text/plain; setting a header adds another
        response.headers["Content-Type"] = "application/json"
        if self.retry_after is not None:
            response.headers["Retry-After"] = str(self.retry_after)
        return response


class HistoryEndpoint:
    """Answers history requests from a ``FillHistory``; counts them (``requests``, ``refused``,
    ``arrivals``: the monotonic time of each) and throttles as OKX does."""

    def __init__(
        self, history: FillHistory, inst_ids: Iterable[str], *, rate_limit: int, rate_window: float
    ) -> None:
        self._history = history
        self._inst_ids = frozenset(inst_ids)
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self._refusals: deque[tuple[HTTPStatus, int | None]] = deque()
        self.requests = 0
        self.refused = 0
        self.arrivals: deque[float] = deque(maxlen=_ARRIVALS_KEPT)

    def refuse(self, count: int, status: HTTPStatus, retry_after: int | None) -> None:
        self._refusals.extend([(status, retry_after)] * count)

    def answer(self, query: dict[str, list[str]]) -> Answer:
        now = time.monotonic()
        self.requests += 1
        self.arrivals.append(now)
        recent = len(self.arrivals) - bisect.bisect_right(self.arrivals, now - self.rate_window)
        if self._refusals or recent > self.rate_limit:
            self.refused += 1
            status, retry_after = (
                self._refusals.popleft() if self._refusals else (HTTPStatus.TOO_MANY_REQUESTS, None)
            )
            return Answer(status, encode_error(RATE_LIMITED, _TOO_MANY[status]), retry_after)
        inst_id = query.get("instId", [""])[0]
        if not inst_id:
            return _refusal(HTTPStatus.BAD_REQUEST, _MISSING, "Parameter instId can not be empty.")
        if inst_id not in self._inst_ids:
            return _refusal(HTTPStatus.OK, NO_SUCH_INSTRUMENT, _NO_SUCH_INSTRUMENT)
        if query.get("type", ["1"])[0] != "1":
            return _refusal(
                HTTPStatus.BAD_REQUEST, _INVALID, "Parameter type error"
            )  # 2 (by time): not served
        try:
            after, before, limit = (_number(query, name) for name in ("after", "before", "limit"))
        except ValueError as e:
            return _refusal(HTTPStatus.BAD_REQUEST, _INVALID, f"Parameter {e} error")
        limit = MAX_LIMIT if limit is None else min(max(limit, 1), MAX_LIMIT)
        fills = self._history.newest_first(inst_id, after, before, limit)
        return Answer(HTTPStatus.OK, encode_history_trades(fills))


def _number(query: dict[str, list[str]], name: str) -> int | None:
    if name not in query:
        return None
    text = query[name][0]
    if not (text.isascii() and text.isdigit()):
        raise ValueError(name)
    return int(text)


def _refusal(status: HTTPStatus, code: str, message: str) -> Answer:
    return Answer(status, encode_error(code, message))
