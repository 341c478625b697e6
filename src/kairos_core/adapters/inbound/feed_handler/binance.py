"""Binance spot aggTrade feed over the public combined stream (no API keys)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Iterable
from urllib.parse import urlencode

import structlog

from kairos_core.domain import (
    ConfigurationError,
    Exchange,
    FeedDisconnected,
    FrameRejected,
    MarketFeedPort,
    MarketTick,
    RejectReason,
    TickSink,
)

from .aiohttp_client import AiohttpConnector
from .binance_rest import check_symbols_trading
from .binance_wire import ErrorReply, ServerShutdown, SubscriptionReply, parse_frame
from .connection import Frame, WebSocketConnector, WebSocketSession
from .reconnect import ReconnectPolicy

log = structlog.get_logger(__name__)

DEFAULT_URL = "wss://stream.binance.com:9443/stream"
DEFAULT_REST_URL = "https://api.binance.com"
_SYMBOL = re.compile(r"[A-Za-z0-9]{2,20}")
_REFUSED_HINT = "use --binance-url (and --binance-rest-url) for another endpoint"
_LOGGED_PER_REASON = 10  # then one rejected-frame log line per 1000, so garbage cannot flood the log


def binance_symbols(symbols: Iterable[str]) -> tuple[str, ...]:
    """Validated, lower-cased, de-duplicated stream symbols; raises ``ConfigurationError``."""
    normalised: dict[str, None] = {}
    for symbol in symbols:
        if not _SYMBOL.fullmatch(symbol):
            raise ConfigurationError(
                f"symbol {symbol!r} is invalid for Binance: "
                "use 2-20 letters and digits, e.g. --symbols btcusdt"
            )
        normalised[symbol.lower()] = None
    if not normalised:
        raise ConfigurationError("no symbols given for Binance: name at least one, e.g. --symbols btcusdt")
    return tuple(normalised)


class BinanceFeedHandler(MarketFeedPort):
    """Streams ``<symbol>@aggTrade`` for every symbol into ``sink`` until stopped.

    Reconnects with backoff (see ``ReconnectPolicy``); a frame it cannot use is counted by reason,
    logged with an excerpt and skipped; a connection that stays silent past ``watchdog`` seconds
    and does not answer a ping is replaced.
    """

    def __init__(
        self,
        sink: TickSink,
        symbols: Iterable[str],
        credentials: object | None = None,
        *,
        url: str = DEFAULT_URL,
        rest_url: str | None = DEFAULT_REST_URL,
        connector: WebSocketConnector | None = None,
        policy: ReconnectPolicy | None = None,
        watchdog: float = 60.0,
    ) -> None:
        # ``credentials`` is accepted for the port's shape; public market streams need no keys.
        del credentials
        self._sink = sink
        self.symbols = binance_symbols(symbols)
        self._url = url
        self._rest_url = rest_url
        self._connector = connector or AiohttpConnector()
        self._policy = policy or ReconnectPolicy()
        self._watchdog = watchdog
        self._stopping = asyncio.Event()
        self._session: WebSocketSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._frames = 0
        self._held_back = False
        self._end_reason: str | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.rejected: Counter[RejectReason] = Counter()
        self.reconnects = 0

    @property
    def exchange(self) -> Exchange:
        return Exchange.BINANCE

    @property
    def stream_url(self) -> str:
        streams = "/".join(f"{symbol}@aggTrade" for symbol in self.symbols)
        separator = "&" if "?" in self._url else "?"
        return f"{self._url}{separator}{urlencode({'streams': streams}, safe='@/')}"

    async def start(self) -> None:
        # The work runs in its own task so that stop() can end it wherever it waits (a connect,
        # the REST check, a bus that holds the feed back), not only between frames.
        if self._stopping.is_set():
            return
        self._task = asyncio.create_task(self._run(), name=f"feed:{self.exchange}")
        try:
            await asyncio.wait({self._task})
        finally:
            self._task.cancel()
        if not self._task.cancelled():
            self._task.result()
        log.info(
            "feed.stopped", exchange=self.exchange, reconnects=self.reconnects, rejected=dict(self.rejected)
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        if self._rest_url is not None:
            await check_symbols_trading(self._rest_url, self.symbols)
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._stream_once()
            except FeedDisconnected as e:
                if self._stopping.is_set():
                    break
                reason = self._end_reason or str(e)
                self._end_reason = None
                delay = self._policy.connection_ended(e, time.monotonic() - started, _REFUSED_HINT)
                self.reconnects += 1
                log.warning("feed.reconnecting", exchange=self.exchange, reason=reason, delay=round(delay, 3))
                await self._sleep_unless_stopped(delay)

    async def _stream_once(self) -> None:
        session = await self._connector.connect(self.stream_url)
        self._session = session
        log.info("feed.connected", exchange=self.exchange, symbols=len(self.symbols))
        watchdog = asyncio.create_task(self._watch(session))
        try:
            if self._stopping.is_set():
                return
            await session.pump(self._on_frame, self._ready)
        finally:
            watchdog.cancel()
            self._session = None
            await session.close()

    async def _ready(self) -> None:
        """Between batches of frames: wait for room on the bus, then let the consumers run."""
        self._held_back = True
        try:
            await self._sink.writable()
        finally:
            self._held_back = False
        await asyncio.sleep(0)

    def _on_frame(self, raw: Frame) -> None:
        self._frames += 1
        try:
            item = parse_frame(raw)
        except FrameRejected as e:
            self._rejected(e)
            return
        if type(item) is MarketTick:
            self._sink.publish(item)
        elif isinstance(item, ServerShutdown):
            log.info("feed.server_shutdown", exchange=self.exchange, event_time_ms=item.event_time_ms)
            self._end("server announced shutdown")
        elif isinstance(item, ErrorReply):
            log.error("feed.error_reply", exchange=self.exchange, code=item.code, message=item.message)
        elif isinstance(item, SubscriptionReply):
            log.debug("feed.reply", exchange=self.exchange, request_id=item.request_id, result=item.result)

    def _rejected(self, error: FrameRejected) -> None:
        self.rejected[error.reason] += 1
        count = self.rejected[error.reason]
        if count <= _LOGGED_PER_REASON or count % 1000 == 0:
            log.warning(
                "frame.rejected",
                exchange=self.exchange,
                reason=error.reason,
                detail=error.detail,
                excerpt=error.excerpt,
                count=count,
            )

    def _end(self, reason: str) -> None:
        """Close the current connection from inside the frame callback; ``start`` reconnects."""
        self._end_reason = reason
        if self._session is not None:
            closing = asyncio.get_running_loop().create_task(self._session.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _watch(self, session: WebSocketSession) -> None:
        while True:
            seen = self._frames
            await asyncio.sleep(self._watchdog)
            if self._frames != seen or self._held_back:  # frames came, or the bus is holding us back
                continue
            if not await session.is_alive(timeout=min(10.0, self._watchdog)):
                self._end_reason = f"watchdog: no frame for {self._watchdog:g} s and no pong"
                await session.close()
                return

    async def _sleep_unless_stopped(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
