"""What a venue's REST trade-history client needs whatever the venue: session, turns, pauses, retries."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiohttp
import structlog

from kairos_core.domain import Exchange, HistoryUnavailable

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RestAnswer:
    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def retry_after(self) -> float | None:
        """``Retry-After`` in seconds, if the answer carries a usable one."""
        try:
            seconds = float(self.headers.get("Retry-After", "nan"))
        except ValueError:
            return None
        return seconds if seconds >= 0 else None  # NaN compares false: absent


class RestHistoryClient:
    """One venue's REST endpoint, asked politely: one request at a time per instance (concurrent
    callers share it, and its limits), none while a pause the venue asked for runs (``_hold``),
    and a failed request retried ``max_attempts`` times in all with capped exponential backoff and
    jitter (``_retry``, logged ``backfill.retrying``) before ``HistoryUnavailable``.

    ``session``: an aiohttp session to use (its owner closes it); without one the instance makes
    its own on first use and ``aclose`` (or ``async with``) closes it.
    """

    def __init__(
        self,
        url: str,
        exchange: Exchange,
        *,
        session: aiohttp.ClientSession | None,
        timeout: float,
        max_attempts: int,
        initial_backoff: float,
        max_backoff: float,
        rng: random.Random | None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self._url = url
        self._venue = exchange
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_attempts = max_attempts
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._rng = rng or random.Random()
        self._turn = asyncio.Lock()
        self._resume_at = 0.0  # monotonic time before which no request goes out
        self.requests = 0
        """Requests sent, retries and throttled ones included."""

    async def aclose(self) -> None:
        """Close the session this instance made, if any."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _get(self, params: Mapping[str, str]) -> RestAnswer:
        """One request, on this instance's turn, once any pause is over and ``_pace`` lets it go."""
        async with self._turn:
            pause = self._resume_at - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            await self._pace()
            if self._session is None:
                self._session = aiohttp.ClientSession()
            self.requests += 1
            try:
                async with self._session.get(self._url, params=params, timeout=self._timeout) as response:
                    answer = RestAnswer(response.status, await response.read(), response.headers)
            finally:
                self._ended()
            self._answered(answer)
            return answer

    async def _pace(self) -> None:
        """The venue's own request budget, waited for on the turn: none by default."""

    def _ended(self) -> None:
        """A request has ended, answered or not (still on its turn): the venue has seen it by now."""

    def _answered(self, answer: RestAnswer) -> None:
        """A request has been answered (still on its turn, so before the next one is paced): what
        the answer says of the venue's budget, e.g. a used-weight header. Nothing by default."""

    def _hold(self, seconds: float) -> None:
        """No request goes out for ``seconds`` from now (a venue's throttle), whoever asks."""
        self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    async def _retry(self, failures: int, failure: str, what: str, symbol: str) -> None:
        """After ``failures`` failed attempts at ``what``: wait before the next, or give up."""
        if failures >= self._max_attempts:
            raise HistoryUnavailable(
                f"{what} could not be fetched from {self._url} in {failures} attempts: {failure}"
            )
        ceiling = min(self._max_backoff, self._initial_backoff * 2.0 ** (failures - 1))
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        log.warning(
            "backfill.retrying", exchange=self._venue, symbol=symbol, error=failure, delay=round(delay, 3)
        )
        await asyncio.sleep(delay)


def failure_of(error: BaseException) -> str:
    """How a network error or timeout reads in a log line and a ``HistoryUnavailable``."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
