"""Binance spot aggTrade feed over the public combined stream (no API keys)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlencode

import msgspec
import structlog

from kairos_core.domain import ConfigurationError, Exchange, FrameRejected, MarketTick, TickSink

from .binance_rest import check_symbols_trading
from .binance_wire import ErrorReply, ServerShutdown, SubscriptionReply, parse_frame
from .connection import Frame, WebSocketConnector, WebSocketSession
from .feed_base import WebSocketFeed
from .planner import BINANCE_LIMITS, ConnectionPlanner
from .reconnect import ReconnectPolicy

log = structlog.get_logger(__name__)

DEFAULT_URL = "wss://stream.binance.com:9443/stream"
DEFAULT_REST_URL = "https://api.binance.com"
_SYMBOL = re.compile(r"[A-Za-z0-9]{2,20}")
_REFUSED_HINT = "use --binance-url (and --binance-rest-url) for another endpoint"
_URL_STREAMS_MAX_CHARS = 2000
"""A shard whose stream names fit in this much of the URL subscribes in the handshake itself;
a larger one connects bare and sends SUBSCRIBE requests (servers cap the request line)."""
_STREAMS_PER_REQUEST = 200
"""Streams per SUBSCRIBE request, keeping each well under any message size limit."""


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


class BinanceFeedHandler(WebSocketFeed):
    """Streams ``<symbol>@aggTrade`` for every symbol into ``sink`` until stopped.

    More than 1024 symbols are sharded over several connections (``ConnectionPlanner``), each
    rotated make-before-break before Binance's 24 h limit and on a ``serverShutdown`` event.
    Reconnects with backoff (see ``ReconnectPolicy``); a frame it cannot use is counted by reason,
    logged with an excerpt and skipped; a connection that stays silent past ``watchdog`` seconds
    is replaced at once if it does not answer a ping, and rotated if it does (aggTrade streams of
    trading symbols are not silent that long: the connection has stopped delivering).
    """

    rotate_when_silent = True

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
        planner: ConnectionPlanner | None = None,
        watchdog: float = 60.0,
    ) -> None:
        # ``credentials`` is accepted for the port's shape; public market streams need no keys.
        del credentials
        super().__init__(
            sink,
            binance_symbols(symbols),
            connector=connector,
            policy=policy,
            planner=planner or ConnectionPlanner(BINANCE_LIMITS),
            silence=watchdog,
            poll=watchdog,
            refused_hint=_REFUSED_HINT,
        )
        self._url_base = url
        self._rest_url = rest_url
        self._watchdog = watchdog

    @property
    def exchange(self) -> Exchange:
        return Exchange.BINANCE

    def _url(self, shard: tuple[str, ...]) -> str:
        streams = "/".join(_streams(shard))
        if len(streams) > _URL_STREAMS_MAX_CHARS:
            return self._url_base
        separator = "&" if "?" in self._url_base else "?"
        return f"{self._url_base}{separator}{urlencode({'streams': streams}, safe='@/')}"

    async def _opened(self, session: WebSocketSession, shard: tuple[str, ...]) -> None:
        if self._url(shard) != self._url_base:
            return  # subscribed in the handshake
        streams = _streams(shard)
        for number, start in enumerate(range(0, len(streams), _STREAMS_PER_REQUEST), 1):
            request = {
                "method": "SUBSCRIBE",
                "params": streams[start : start + _STREAMS_PER_REQUEST],
                "id": number,
            }
            await session.send(msgspec.json.encode(request).decode())

    async def _prepare(self) -> None:
        if self._rest_url is not None:
            await check_symbols_trading(self._rest_url, self.symbols)

    def _on_frame(self, raw: Frame) -> None:
        try:
            item = parse_frame(raw)
        except FrameRejected as e:
            self._rejected(e)
            return
        if type(item) is MarketTick:
            if item.symbol in self._tick_symbols:
                self._sink.publish(item)
            else:
                self._unsubscribed(item.symbol, raw)
        elif isinstance(item, ServerShutdown):
            log.info("feed.server_shutdown", exchange=self.exchange, event_time_ms=item.event_time_ms)
            self._announced("server announced shutdown")
        elif isinstance(item, ErrorReply):
            log.error("feed.error_reply", exchange=self.exchange, code=item.code, message=item.message)
        elif isinstance(item, SubscriptionReply):
            log.debug("feed.reply", exchange=self.exchange, request_id=item.request_id, result=item.result)

    async def _probe(self, session: WebSocketSession) -> bool:
        return await session.is_alive(timeout=min(10.0, self._watchdog))


def _streams(shard: Iterable[str]) -> list[str]:
    return [f"{symbol}@aggTrade" for symbol in shard]
