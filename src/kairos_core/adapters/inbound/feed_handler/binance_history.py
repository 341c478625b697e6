"""Binance's past aggregate trades over REST (``GET /api/v3/aggTrades``): what repairs a gap."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import structlog

from kairos_core.domain import (
    Exchange,
    FrameRejected,
    HistoryUnavailable,
    MarketTick,
    TradeHistoryPort,
)

from .binance import DEFAULT_REST_URL
from .binance_wire import parse_agg_trades
from .rest_history import RestAnswer, RestHistoryClient, failure_of

log = structlog.get_logger(__name__)

PATH = "/api/v3/aggTrades"
MAX_LIMIT = 1000  # Binance: "Default 500; max 1000"
PAGE_WEIGHT = 4  # request weight of aggTrades, whatever its limit (Binance spot REST docs)
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"  # the IP's weight used in the current minute, this request included
_THROTTLED = {429: "rate limit", 418: "IP banned"}  # both carry Retry-After, in seconds
_WINDOW_MARGIN = 0.05  # of a window: wait a little past its end so the venue has rolled over too
_MAX_THROTTLES = 10  # 429/418 answers in a row for one page before giving up


class _ErrorBody(msgspec.Struct):
    code: int
    msg: str = ""


_error_body = msgspec.json.Decoder(_ErrorBody)


class BinanceTradeHistory(RestHistoryClient, TradeHistoryPort):
    """Pages of a symbol's aggregate trades from Binance's REST API, as backfill ticks.

    Polite by construction (``RestHistoryClient``: one request at a time, the session, retries):
    before each request the IP's used weight, read from every answer's ``X-MBX-USED-WEIGHT-1M``,
    is kept under ``weight_budget`` per ``weight_window`` seconds by waiting for the next window
    (``backfill.throttled``); the default budget is half of Binance's 6,000 a minute per IP, the
    rest left to the feed and whatever else shares the IP. A 429 or 418 pauses every request for
    its ``Retry-After`` seconds, or gives up (``HistoryUnavailable``) when that is more than
    ``max_retry_after``. Network errors, timeouts and 5xx are retried ``max_attempts`` times
    with capped exponential backoff and jitter; any other 4xx is final, with Binance's message.
    """

    def __init__(
        self,
        rest_url: str = DEFAULT_REST_URL,
        *,
        session: aiohttp.ClientSession | None = None,
        limit: int = MAX_LIMIT,
        weight_budget: int = 3000,
        weight_window: float = 60.0,
        timeout: float = 10.0,
        max_attempts: int = 5,
        max_retry_after: float = 300.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
        if weight_budget < PAGE_WEIGHT:
            raise ValueError(
                f"weight_budget must allow one request (weight {PAGE_WEIGHT}), got {weight_budget}"
            )
        super().__init__(
            f"{rest_url.rstrip('/')}{PATH}",
            Exchange.BINANCE,
            session=session,
            timeout=timeout,
            max_attempts=max_attempts,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            rng=rng,
        )
        self._limit = limit
        self._budget = weight_budget
        self._window_length = weight_window
        self._max_retry_after = max_retry_after
        self._window = -1
        self.used_weight = 0
        """The IP's used weight in the current window, as Binance last reported it."""

    @property
    def exchange(self) -> Exchange:
        return Exchange.BINANCE

    @property
    def spans_fills(self) -> bool:
        return False  # a live aggTrade's ``a`` is the history's id; ``f``..``l`` are another series

    async def trades(
        self, symbol: str, from_id: int, to_id: int | None = None
    ) -> AsyncIterator[list[MarketTick]]:
        if from_id < 0 or (to_id is not None and to_id < from_id):
            raise ValueError(f"no trade ids from {from_id} to {to_id}")
        symbol = symbol.upper()
        next_id = from_id
        while to_id is None or next_id <= to_id:
            # aggTrades weighs the same whatever its limit: a smaller last page only saves bytes.
            limit = self._limit if to_id is None else min(self._limit, to_id - next_id + 1)
            page = await self._page(symbol, next_id, limit)
            if not page:
                return  # nothing that new yet
            _check_consecutive(page, symbol, next_id)
            log.debug(
                "backfill.page",
                exchange=Exchange.BINANCE,
                symbol=symbol,
                first_id=page[0].trade_id,
                last_id=page[-1].trade_id,
                ticks=len(page),
                used_weight=self.used_weight,
            )
            yield page
            next_id = page[-1].trade_id + 1
            if len(page) < limit:
                return  # Binance had no more at that moment

    async def _page(self, symbol: str, from_id: int, limit: int) -> list[MarketTick]:
        params = {"symbol": symbol, "fromId": str(from_id), "limit": str(limit)}
        failures = throttles = 0
        while True:
            try:
                answer = await self._get(params)
            except (aiohttp.ClientError, TimeoutError) as e:
                failure = failure_of(e)
            else:
                status = answer.status
                if status == 200:
                    return _ticks(answer.body, symbol, from_id)
                if status in _THROTTLED:
                    throttles += 1
                    self._pause(status, answer.retry_after, symbol, throttles)
                    continue
                if 400 <= status < 500:
                    raise HistoryUnavailable(
                        f"Binance refused {symbol} aggregate trades from id {from_id}: "
                        f"HTTP {status}: {_venue_message(answer.body)}"
                    )
                failure = f"HTTP {status}: {_venue_message(answer.body)}"
            failures += 1
            await self._retry(failures, failure, f"{symbol} aggregate trades from id {from_id}", symbol)

    async def _pace(self) -> None:
        """Wait for the next weight window when this request would take the IP past the budget."""
        self._roll_window()
        if self.used_weight + PAGE_WEIGHT > self._budget:
            delay = self._window_left() + _WINDOW_MARGIN * self._window_length
            log.warning(
                "backfill.throttled",
                exchange=Exchange.BINANCE,
                reason="weight",
                used_weight=self.used_weight,
                budget=self._budget,
                delay=round(delay, 3),
            )
            await asyncio.sleep(delay)
            self._roll_window()

    def _answered(self, answer: RestAnswer) -> None:
        self._roll_window()
        header = answer.headers.get(WEIGHT_HEADER)
        try:
            self.used_weight = int(header) if header is not None else self.used_weight + PAGE_WEIGHT
        except ValueError:
            self.used_weight += PAGE_WEIGHT

    def _pause(self, status: int, retry_after: float | None, symbol: str, throttles: int) -> None:
        """Hold every request back as a 429/418 asks; raise when that is too long or too often."""
        wait = retry_after if retry_after is not None else self._window_left()
        why = f"HTTP {status} ({_THROTTLED[status]})"
        if wait > self._max_retry_after or throttles > _MAX_THROTTLES:
            raise HistoryUnavailable(
                f"Binance throttles {symbol} aggregate trades: {why}, Retry-After {wait:g} s "
                f"(answer {throttles} in a row); giving up on this range rather than wait"
            )
        log.warning(
            "backfill.throttled",
            exchange=Exchange.BINANCE,
            symbol=symbol,
            reason=_THROTTLED[status],
            status=status,
            retry_after=wait,
        )
        self._hold(wait)

    # Binance counts weight per clock minute, so the window is wall-clock time, not monotonic.
    def _roll_window(self) -> None:
        window = int(time.time() // self._window_length)
        if window != self._window:
            self._window, self.used_weight = window, 0

    def _window_left(self) -> float:
        return self._window_length - time.time() % self._window_length


def _ticks(body: bytes, symbol: str, from_id: int) -> list[MarketTick]:
    try:
        return parse_agg_trades(body, symbol)
    except FrameRejected as e:
        raise HistoryUnavailable(
            f"Binance's answer for {symbol} aggregate trades from id {from_id} cannot be used "
            f"({e.reason}): {e.detail}: {e.excerpt!r}"
        ) from e


def _check_consecutive(page: list[MarketTick], symbol: str, from_id: int) -> None:
    """Binance's aggregate ids run without gaps per symbol: anything else is a hole."""
    for offset, tick in enumerate(page):
        if tick.trade_id != from_id + offset:
            expected = from_id + offset
            if offset == 0 and tick.trade_id > from_id:
                reason = f"Binance no longer serves ids {from_id}..{tick.trade_id - 1}"
            else:
                reason = f"id {tick.trade_id} came where {expected} was due"
            raise HistoryUnavailable(f"{symbol} aggregate trades from id {from_id}: {reason}")


def _venue_message(body: bytes) -> str:
    try:
        error = _error_body.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return repr(body[:200].decode("utf-8", errors="replace"))
    return f"{error.msg} (code {error.code})"
