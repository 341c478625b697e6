"""OKX's past trades over REST (``GET /api/v5/market/history-trades``): what repairs an OKX gap."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from collections.abc import AsyncIterator

import aiohttp
import structlog

from kairos_core.domain import Exchange, FrameRejected, HistoryUnavailable, MarketTick, TradeHistoryPort

from .okx_history_wire import NO_SUCH_INSTRUMENT, RATE_LIMITED, VenueError, parse_history_trades
from .rest_history import RestHistoryClient, failure_of

log = structlog.get_logger(__name__)

DEFAULT_REST_URL = "https://www.okx.com"
PATH = "/api/v5/market/history-trades"
MAX_LIMIT = 100  # OKX: "The maximum and default both are 100"
RATE_LIMIT = 20  # requests per RATE_WINDOW seconds per IP (OKX's limit for this endpoint)
RATE_WINDOW = 2.0
_SHORT_WAIT = 0.05  # of a window: a wait for the window to slide on by a request or two
_MAX_THROTTLES = 10  # throttled answers in a row for one page before giving up
# Worth another try: service unavailable (503), endpoint timeout, systems busy (429), system error (500).
_TRANSIENT = frozenset({"50001", "50004", "50013", "50026"})
_NO_SUCH_INSTRUMENT_HINT = "use OKX's instrument id, e.g. BTC-USDT or BTC-USDT-SWAP, and check --okx-rest-url"


class OkxTradeHistory(RestHistoryClient, TradeHistoryPort):
    """Pages of an instrument's fills from OKX's REST trade history, as backfill ticks.

    OKX pages by trade id only backwards (``after``: the ``limit`` newest fills older than an id,
    newest first), so each page asks for the window of ids just above the last one yielded,
    ``after = next + limit``, and yields its fills ascending: memory is one page, whatever the
    range, and every page reaches the caller as soon as it arrives. Spot trade ids run without
    gaps per instrument (the recordings show it); an id the history lacks inside the range ends
    the call, after the good pages, with ``HistoryUnavailable`` naming it. A window OKX has no
    fill in costs one more request, for its newest fill: none that new means it has not traded
    that far yet (the call ends early, as the port allows); a newer one means the window's ids
    are lost (``HistoryUnavailable``), older than OKX keeps (three months) or missing.

    Polite by construction (``RestHistoryClient``: one request at a time, the session, retries):
    at most ``rate_limit`` requests per ``rate_window`` seconds (OKX allows 20 per 2 s per IP on
    this endpoint), waiting for the window when they are spent (``backfill.throttled``, reason
    ``rate``). A throttled answer (HTTP 429, or code 50011) pauses every request for its
    ``Retry-After`` seconds or, without one (OKX documents none), ``rate_window`` doubled at each
    throttle in a row; longer than ``max_retry_after`` (or ten throttles in a row) gives up with
    ``HistoryUnavailable``. Network errors, timeouts, 5xx and OKX's transient codes are retried
    ``max_attempts`` times in all; any other refusal is final, with OKX's message and code.
    """

    def __init__(
        self,
        rest_url: str = DEFAULT_REST_URL,
        *,
        session: aiohttp.ClientSession | None = None,
        limit: int = MAX_LIMIT,
        rate_limit: int = RATE_LIMIT,
        rate_window: float = RATE_WINDOW,
        timeout: float = 10.0,
        max_attempts: int = 5,
        max_retry_after: float = 60.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
        if rate_limit < 1 or rate_window <= 0:
            raise ValueError(f"the rate must allow a request: {rate_limit} per {rate_window:g} s")
        super().__init__(
            f"{rest_url.rstrip('/')}{PATH}",
            Exchange.OKX,
            session=session,
            timeout=timeout,
            max_attempts=max_attempts,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            rng=rng,
        )
        self._limit = limit
        self._window = rate_window
        self._ended_at: deque[float] = deque(maxlen=rate_limit)  # when the last requests ended, monotonic
        self._max_retry_after = max_retry_after

    @property
    def exchange(self) -> Exchange:
        return Exchange.OKX

    @property
    def spans_fills(self) -> bool:
        """True: a live OKX tick aggregates ``count`` fills and covers the history's ids
        ``first_trade_id``..``trade_id``, each one item (one tick) here."""
        return True

    async def trades(
        self, symbol: str, from_id: int, to_id: int | None = None
    ) -> AsyncIterator[list[MarketTick]]:
        if from_id < 0 or (to_id is not None and to_id < from_id):
            raise ValueError(f"no trade ids from {from_id} to {to_id}")
        inst_id = symbol.upper()
        next_id = from_id
        while to_id is None or next_id <= to_id:
            end = next_id + self._limit if to_id is None else min(next_id + self._limit, to_id + 1)
            page = await self._page(inst_id, next_id, end)
            window = _window(page, inst_id, next_id, end)
            if not window:
                await self._check_nothing_newer(inst_id, next_id, end, older_kept=bool(page))
                return  # nothing at or above next_id yet
            good = _consecutive(window)
            log.debug(
                "backfill.page",
                exchange=Exchange.OKX,
                symbol=inst_id,
                first_id=good[0].trade_id,
                last_id=good[-1].trade_id,
                ticks=len(good),
            )
            yield good
            if len(good) < len(window):
                raise HistoryUnavailable(
                    f"{inst_id} trade ids {good[-1].trade_id + 1}..{window[len(good)].trade_id - 1} "
                    "are missing from OKX's history"
                )
            next_id = good[-1].trade_id + 1
            if next_id < end:
                return  # OKX had no more at that moment

    async def _page(self, inst_id: str, first: int, after: int) -> list[MarketTick]:
        """The ``after - first`` newest fills with ids below ``after``, newest first."""
        params = {"instId": inst_id, "type": "1", "after": str(after), "limit": str(after - first)}
        return await self._fills(inst_id, params, f"{inst_id} trade ids {first}..{after - 1}")

    async def _check_nothing_newer(self, inst_id: str, first: int, end: int, *, older_kept: bool) -> None:
        """OKX has no fill in ``first..end - 1``: fine if it has none newer either (it has not traded
        that far yet), else those ids are lost, which one request for its newest fill tells."""
        newest = await self._fills(inst_id, {"instId": inst_id, "limit": "1"}, f"{inst_id}'s newest trade")
        if not newest or newest[0].trade_id < first:
            return
        if older_kept:
            reason = f"ids {first}..{end - 1} are missing from OKX's history"
        else:  # nothing older than them either: the history starts after them
            reason = f"OKX no longer serves ids {first}..{end - 1}"
        raise HistoryUnavailable(
            f"{inst_id} trades from id {first}: {reason} (its newest is {newest[0].trade_id})"
        )

    async def _fills(self, inst_id: str, params: dict[str, str], what: str) -> list[MarketTick]:
        failures = throttles = 0
        while True:
            try:
                response = await self._get(params)
            except (aiohttp.ClientError, TimeoutError) as e:
                failure = failure_of(e)
            else:
                status = response.status
                try:
                    answer: list[MarketTick] | VenueError | FrameRejected = parse_history_trades(
                        response.body, inst_id
                    )
                except FrameRejected as e:
                    answer = e
                code = answer.code if isinstance(answer, VenueError) else None
                if status == 429 or code == RATE_LIMITED:
                    throttles += 1
                    self._pause(what, status, answer, response.retry_after, throttles)
                    continue
                if status == 200 and not isinstance(answer, VenueError):
                    return _usable(answer, what)
                failure = f"HTTP {status}: {_message(answer)}"
                if status < 500 and code not in _TRANSIENT:
                    hint = f": {_NO_SUCH_INSTRUMENT_HINT}" if code == NO_SUCH_INSTRUMENT else ""
                    raise HistoryUnavailable(f"OKX refused {what}: {failure}{hint}")
            failures += 1
            await self._retry(failures, failure, what, inst_id)

    async def _pace(self) -> None:
        """At most ``rate_limit`` requests reach OKX in any ``rate_window``: a request goes out only
        once the oldest of the last ``rate_limit`` ended a window ago. OKX counts arrivals; an end
        is after its request's arrival and a send before its own, so latency cannot crowd a window."""
        if len(self._ended_at) == self._ended_at.maxlen:
            delay = self._ended_at[0] + self._window - time.monotonic()
            if delay > 0:
                # The requests of a window go out together, so the wait for the next window is one
                # line; the short waits behind it (the window sliding on) only show when debugging.
                record = log.info if delay >= _SHORT_WAIT * self._window else log.debug
                record(
                    "backfill.throttled",
                    exchange=Exchange.OKX,
                    reason="rate",
                    requests=len(self._ended_at),
                    window=self._window,
                    delay=round(delay, 3),
                )
                await asyncio.sleep(delay)

    def _ended(self) -> None:
        self._ended_at.append(time.monotonic())

    def _pause(
        self,
        what: str,
        status: int,
        answer: list[MarketTick] | VenueError | FrameRejected,
        retry_after: float | None,
        throttles: int,
    ) -> None:
        """Hold every request back as a throttled answer asks; raise when that is too long or too often."""
        wait = retry_after if retry_after is not None else self._window * 2.0 ** (throttles - 1)
        if wait > self._max_retry_after or throttles > _MAX_THROTTLES:
            raise HistoryUnavailable(
                f"OKX throttles {what}: HTTP {status}: {_message(answer)}, Retry-After {wait:g} s "
                f"(answer {throttles} in a row); giving up on this range rather than wait"
            )
        log.warning(
            "backfill.throttled",
            exchange=Exchange.OKX,
            reason="rate limit",
            status=status,
            retry_after=wait,
            announced=retry_after is not None,
        )
        self._hold(wait)


def _usable(answer: list[MarketTick] | FrameRejected, what: str) -> list[MarketTick]:
    if isinstance(answer, FrameRejected):
        raise HistoryUnavailable(
            f"OKX's answer for {what} cannot be used ({answer.reason}): {answer.detail}: {answer.excerpt!r}"
        )
    return answer


def _window(page: list[MarketTick], inst_id: str, first: int, end: int) -> list[MarketTick]:
    """The page's fills with ``first <= id < end``, ascending; ``HistoryUnavailable`` when OKX
    lacks ``first`` although it has fills after it (or its answer is not newest first below ``end``)."""
    ids = [tick.trade_id for tick in page]
    if any(newer <= older for newer, older in itertools.pairwise(ids)) or (ids and ids[0] >= end):
        raise HistoryUnavailable(
            f"OKX's answer for {inst_id} trades before id {end} is not newest first below it: "
            f"ids {ids[0]}..{ids[-1]}"
        )
    window = [tick for tick in reversed(page) if tick.trade_id >= first]
    if window and window[0].trade_id != first:
        if ids[-1] >= first:  # the oldest fill OKX has is younger than the range
            reason = f"OKX no longer serves ids {first}..{window[0].trade_id - 1}"
        else:
            reason = f"ids {first}..{window[0].trade_id - 1} are missing from OKX's history"
        raise HistoryUnavailable(f"{inst_id} trades from id {first}: {reason}")
    return window


def _consecutive(window: list[MarketTick]) -> list[MarketTick]:
    """The leading run of ``window`` whose ids follow each other without a hole."""
    first = window[0].trade_id
    for offset, tick in enumerate(window):
        if tick.trade_id != first + offset:
            return window[:offset]
    return window


def _message(answer: list[MarketTick] | VenueError | FrameRejected) -> str:
    if isinstance(answer, VenueError):
        return f"{answer.message} (code {answer.code})"
    if isinstance(answer, FrameRejected):
        return repr(answer.excerpt)
    return "an answer with data"
