"""cryptofeed (3.0.1): ``FeedHandler`` + ``Binance`` feed, channel ``TRADES`` (Binance ``@aggTrade``).

API: the documented pattern, ``fh.add_feed(Binance(symbols=[...], channels=[TRADES],
callbacks={TRADES: cb}))`` then ``fh.run()``. cryptofeed opens one combined-stream connection
(``/stream?streams=btcusdt@aggTrade/...``), decodes every frame with msgspec (floats as
``Decimal``), and builds a Cython ``Trade`` per frame (symbol ``BTC-USDT``, ``id`` = the aggregate
trade id as ``str``, price and amount as ``Decimal``), awaited by the async callback inline on the
reader task: no thread, no queue of its own (only the websockets library's receive queue,
``max_queue=1024``, which applies back-pressure and drops nothing).

URL: a ``Binance`` subclass whose ``websocket_endpoints`` name ``wss://127.0.0.1:<port>`` (so
``_address()`` builds the usual path). cryptofeed accepts only ``wss://`` (``WSAsyncConn`` raises
on anything else), so the subclass's ``_wrap_connection`` hook (the one cryptofeed's own capture
playback uses to swap connections) turns the connection's address into ``ws://`` before it opens.
Its other websocket options stay the defaults (client pings every 20 s, permessage-deflate offered).

Seeded: cryptofeed loads Binance's symbol list from ``/api/v3/exchangeInfo`` before streaming
unless ``Symbols`` already holds it; the client sets it from ``--symbols`` (``BTC-USDT`` ->
``BTCUSDT``), as cryptofeed's playback does from a capture, so no REST request is made.

Loop and stop: the subclass's ``_pre_connect`` hook (run just before the connections open)
starts a 5 s stall watchdog task. ``FeedHandler.run()`` uses uvloop by default
(config ``uvloop: True``; uvloop is one of cryptofeed's dependencies) and installs signal
handlers. When the count is reached (or no trade came for 5 s) the client calls
``fh.request_stop()``, which closes the connection and lets ``run()`` return. Logging:
cryptofeed's default config also writes ``feedhandler.log`` into the working directory; the
client gives ``log.filename`` empty, leaving its WARNING stream on stderr.

Needs Python >= 3.13 (cryptofeed 3.x declares ``Requires-Python >=3.13``).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from cryptofeed import FeedHandler
from cryptofeed.connection import AsyncConnection, WebsocketEndpoint
from cryptofeed.defines import SPOT, TRADES
from cryptofeed.exchanges import Binance
from cryptofeed.symbols import Symbol, Symbols
from cryptofeed.types import Trade

from clients.common import Tally, options, watch_for_stall

_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB")


def seed_symbols(symbols: list[str]) -> list[str]:
    """Put the symbols in cryptofeed's table (no exchangeInfo request); return them as ``BTC-USDT``."""
    normalized: dict[str, str] = {}
    for s in (s.upper() for s in symbols):
        quote = next(q for q in _QUOTES if s.endswith(q) and len(s) > len(q))
        normalized[Symbol(s[: -len(quote)], quote).normalized] = s
    Symbols.set(Binance.id, normalized, {"instrument_type": dict.fromkeys(normalized, SPOT)})
    return list(normalized)


def main() -> None:
    opts = options()
    tally = Tally(opts.count, keep_arrivals=opts.recv_log is not None)
    std_symbols = seed_symbols(opts.symbols)

    class LocalBinance(Binance):
        websocket_endpoints: ClassVar[list[WebsocketEndpoint]] = [
            WebsocketEndpoint(f"wss://127.0.0.1:{opts.port}")
        ]

        def _wrap_connection(self, conn: AsyncConnection) -> AsyncConnection:
            conn.address = conn.address.replace("wss://", "ws://", 1)
            return conn

        async def _pre_connect(self) -> None:
            await super()._pre_connect()
            self._bench_watchdog = asyncio.get_running_loop().create_task(watch_for_stall(tally))

    async def on_trade(trade: Trade, receipt_timestamp: float) -> None:
        tally.record(trade.symbol.replace("-", ""), int(trade.id))

    fh = FeedHandler(config={"log": {"filename": ""}})
    tally.on_done = fh.request_stop
    fh.add_feed(LocalBinance(symbols=std_symbols, channels=[TRADES], callbacks={TRADES: on_trade}))
    fh.run()
    tally.report(opts.recv_log)


if __name__ == "__main__":
    main()
