"""ccxt (ccxt.pro binance): ``watch_trades_for_symbols`` with ``params={"name": "aggTrade"}``.

API: the documented streaming loop ``while True: trades = await
exchange.watch_trades_for_symbols(symbols, params={"name": "aggTrade"})``. The ``name`` parameter
(documented on the method; default ``"trade"``) subscribes ``<symbol>@aggTrade`` instead of
``<symbol>@trade``, so ccxt reads the same frames as every client. Each call returns the trades
new since the last call (``newUpdates``, on by default) as ccxt unified trade dicts; we record
``symbol`` ("BTC/USDT" -> "BTCUSDT") and ``id`` (the frame's "a", as a string).

URL: constructor option ``{"urls": {"api": {"ws": {"spot": "ws://127.0.0.1:P/ws"}}}}`` (ccxt
deep-merges constructor config over the exchange description). ccxt appends a stream index
(``/ws/0``) and sends one ``SUBSCRIBE`` for all the streams.

Seeding: ccxt would ``load_markets()`` over REST (exchangeInfo) before the first watch; we call
``set_markets`` with one spot market per symbol (id, symbol, base/quote, lowercaseId, type
flags, the other fields None via ccxt's ``safe_market_structure``), so only the WebSocket is used.

Behaviour that matters for the figures: plain asyncio loop (ccxt depends on uvloop but does not
install it); aiohttp WebSocket; frames decoded by orjson (a ccxt dependency on CPython), then
parsed into unified trade dicts (string price/amount/cost, ISO datetime). Trades are kept in
per-symbol caches of ``options["tradesLimit"]`` = 1000 (left at the default). ccxt handles every
message aiohttp has buffered before the consumer runs, and a call returns the new trades of one
symbol only (the first of the raced per-symbol futures to resolve); the other symbols' trades wait
in their caches for a later call. When more than 1000 of a symbol pile up the oldest are evicted,
and the trades still waiting when the stream ends are never handed out: the tally counts both as
lost. Against the unpaced simulator this loses over half the trades.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import ccxt.pro as ccxtpro

from clients.common import Tally, options, watch_for_stall

_QUOTES = ("fdusd", "usdt", "usdc", "busd", "tusd", "btc", "eth", "bnb", "eur", "try")


def _market(exchange: Any, symbol: str) -> dict[str, Any]:
    """A ccxt spot market for a Binance symbol like ``btcusdt``: the fields ccxt reads, rest None."""
    quote = next((q for q in _QUOTES if symbol.endswith(q) and len(symbol) > len(q)), symbol[-4:])
    base = symbol[: -len(quote)]
    return exchange.safe_market_structure(
        {
            "id": symbol.upper(),
            "lowercaseId": symbol,
            "symbol": f"{base.upper()}/{quote.upper()}",
            "base": base.upper(),
            "quote": quote.upper(),
            "baseId": base.upper(),
            "quoteId": quote.upper(),
            "type": "spot",
            "spot": True,
            "margin": False,
            "swap": False,
            "future": False,
            "option": False,
            "contract": False,
            "active": True,
        }
    )


async def _consume(exchange: Any, symbols: list[str], tally: Tally) -> None:
    params = {"name": "aggTrade"}
    while not tally.done:
        trades = await exchange.watch_trades_for_symbols(symbols, params=params)
        for trade in trades:
            tally.record(trade["symbol"].replace("/", ""), int(trade["id"]))
            if tally.done:
                return


async def _main() -> None:
    opts = options()
    tally = Tally(opts.count, keep_arrivals=opts.recv_log is not None)
    exchange = ccxtpro.binance({"urls": {"api": {"ws": {"spot": f"ws://127.0.0.1:{opts.port}/ws"}}}})
    markets = [_market(exchange, s) for s in opts.symbols]
    exchange.set_markets(markets)
    symbols = [m["symbol"] for m in markets]
    try:
        consumer = asyncio.create_task(_consume(exchange, symbols, tally))
        watchdog = asyncio.create_task(watch_for_stall(tally, consumer.cancel))
        try:
            await consumer
        except asyncio.CancelledError:
            if not tally.done:
                raise
        except Exception as e:  # a connection error ends the run: what never came is lost
            print(f"ccxt: {type(e).__name__}: {e}", file=sys.stderr)
            tally.stalled()
        watchdog.cancel()
    finally:
        await exchange.close()
    tally.report(opts.recv_log)


if __name__ == "__main__":
    asyncio.run(_main())
