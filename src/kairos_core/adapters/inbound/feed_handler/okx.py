"""OKX v5 public trades feed (no API keys): one connection, the ``trades`` channel of every instrument.

``sz`` is stored as OKX sends it: base currency for spot, a number of contracts for swaps, futures
and options (their contract value is not applied here).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

import structlog

from kairos_core.domain import ConfigurationError, Exchange, FeedDisconnected, FrameRejected, TickSink

from .connection import Frame, WebSocketConnector, WebSocketSession
from .feed_base import WebSocketFeed
from .okx_wire import (
    PING,
    SERVICE_UPGRADE,
    ErrorReply,
    Notice,
    SubscribeAck,
    parse_frame,
    subscribe_requests,
)
from .planner import OKX_LIMITS, ConnectionPlanner
from .reconnect import ReconnectPolicy

log = structlog.get_logger(__name__)

DEFAULT_URL = "wss://ws.okx.com:8443/ws/v5/public"
_INSTRUMENT = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+){1,4}")  # BTC-USDT ... BTC-USD-240628-60000-C
_MAX_INSTRUMENT = 40
_REFUSED_HINT = "use --okx-url for another endpoint"
_REJECTED_HINT = (
    "check the instrument id (OKX's form, e.g. BTC-USDT or BTC-USDT-SWAP) "
    "and that --okx-url is the public endpoint (.../ws/v5/public)"
)


def okx_symbols(symbols: Iterable[str]) -> tuple[str, ...]:
    """Validated, upper-cased, de-duplicated OKX instrument ids; raises ``ConfigurationError``."""
    normalised: dict[str, None] = {}
    for symbol in symbols:
        if len(symbol) > _MAX_INSTRUMENT or not _INSTRUMENT.fullmatch(symbol):
            raise ConfigurationError(
                f"symbol {symbol!r} is invalid for OKX: use OKX's instrument id, up to "
                f"{_MAX_INSTRUMENT} characters, e.g. BTC-USDT (spot), BTC-USDT-SWAP, BTC-USD-240628"
            )
        normalised[symbol.upper()] = None  # OKX's ids are upper case
    if not normalised:
        raise ConfigurationError("no symbols given for OKX: name at least one, e.g. --symbols okx:BTC-USDT")
    return tuple(normalised)


class OkxFeedHandler(WebSocketFeed):
    """Streams the ``trades`` channel of every instrument into ``sink`` until stopped.

    Subscribes after each (re)connect, in requests kept under OKX's size limit. An instrument OKX
    refuses is logged (``feed.symbol_rejected``) and left out of later subscriptions while the
    others stream; when OKX has refused all of them the feed fails with ``ConfigurationError``.
    A connection quiet for ``idle_ping`` seconds is sent the text ``ping`` (OKX closes one that
    has pushed nothing for 30 s); no frame within ``pong_timeout`` seconds after it means the
    connection is dead and is replaced. A notice of a service upgrade (64008) opens a new
    connection at once. Rejected frames are counted by reason, logged with an excerpt, skipped.
    """

    def __init__(
        self,
        sink: TickSink,
        symbols: Iterable[str],
        credentials: object | None = None,
        *,
        url: str = DEFAULT_URL,
        connector: WebSocketConnector | None = None,
        policy: ReconnectPolicy | None = None,
        planner: ConnectionPlanner | None = None,
        idle_ping: float = 25.0,
        pong_timeout: float = 10.0,
    ) -> None:
        # ``credentials`` is accepted for the port's shape; public channels need no login.
        del credentials
        if not 0 < idle_ping < 30:
            raise ConfigurationError(
                f"idle_ping {idle_ping:g} s cannot keep an OKX connection: OKX closes one quiet for 30 s; "
                "use 0 < idle_ping < 30, e.g. 25"
            )
        super().__init__(
            sink,
            okx_symbols(symbols),
            connector=connector,
            policy=policy,
            planner=planner or ConnectionPlanner(OKX_LIMITS),
            silence=idle_ping,
            poll=min(1.0, idle_ping / 10),
            refused_hint=_REFUSED_HINT,
        )
        self._ws_url = url
        self._pong_timeout = pong_timeout
        self.rejected_symbols: dict[str, str] = {}
        """Instruments OKX refused, with its message; not subscribed again."""

    @property
    def exchange(self) -> Exchange:
        return Exchange.OKX

    def _url(self, shard: tuple[str, ...]) -> str:
        return self._ws_url

    async def _opened(self, session: WebSocketSession, shard: tuple[str, ...]) -> None:
        wanted = [symbol for symbol in shard if symbol not in self.rejected_symbols]
        for request in subscribe_requests(wanted):
            await session.send(request)

    def _on_frame(self, raw: Frame) -> None:
        try:
            item = parse_frame(raw)
        except FrameRejected as e:
            self._rejected(e)
            return
        if type(item) is tuple:
            publish = self._sink.publish
            for tick in item:
                if tick.symbol in self._tick_symbols:
                    publish(tick)
                else:
                    self._unsubscribed(tick.symbol, raw)
                    return
        elif isinstance(item, ErrorReply):
            self._error_reply(item)
        elif isinstance(item, Notice):
            log.warning("feed.notice", exchange=self.exchange, code=item.code, message=item.message)
            if item.code == SERVICE_UPGRADE:
                self._announced(f"notice {item.code}: {item.message}")
        elif isinstance(item, SubscribeAck):
            log.debug("feed.subscribed", exchange=self.exchange, op=item.event, symbol=item.inst_id)

    def _error_reply(self, error: ErrorReply) -> None:
        symbol = error.inst_id
        if symbol is None or symbol not in self.symbols:
            log.error("feed.error_reply", exchange=self.exchange, code=error.code, message=error.message)
            return
        self.rejected_symbols[symbol] = error.message
        log.error(
            "feed.symbol_rejected",
            exchange=self.exchange,
            symbol=symbol,
            code=error.code,
            message=error.message,
            hint=_REJECTED_HINT,
            streaming=len(self.symbols) - len(self.rejected_symbols),
        )
        if len(self.rejected_symbols) == len(self.symbols):
            refused = "; ".join(f"{s!r}: {message}" for s, message in self.rejected_symbols.items())
            raise ConfigurationError(f"OKX refused every instrument ({refused}): {_REJECTED_HINT}")

    async def _probe(self, session: WebSocketSession) -> bool:
        """Send ``ping``; any frame within ``pong_timeout`` (the ``pong`` first of all) says alive."""
        seen = session.frames
        try:
            await session.send(PING)
        except FeedDisconnected:
            return False
        for _ in range(max(1, round(self._pong_timeout / self.poll))):
            await asyncio.sleep(self.poll)
            if session.frames != seen or self.held_back:
                return True
        return False
