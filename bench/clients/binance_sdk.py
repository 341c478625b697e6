"""Benchmark client for Binance's official Spot SDK (PyPI ``binance-sdk-spot``, WebSocket Streams).

API: ``Spot(config_ws_streams=ConfigurationWebSocketStreams(stream_url=...))``, then
``await client.websocket_streams.create_connection()``, ``await connection.agg_trade(symbol=s)``
for each symbol and ``stream.on("message", callback)``, as the SDK's README and
``examples/websocket_streams/agg_trade.py`` show. The callback gets an ``AggTradeResponse``
pydantic model; its ``s`` ("BTCUSDT") and ``a`` go to the tally.

URL: the documented ``stream_url`` option (the SDK's examples read it from ``STREAM_URL``) set to
``ws://127.0.0.1:<port>``; the SDK appends ``/stream`` and subscribes with ``SUBSCRIBE`` requests
on that one connection (default ``single`` mode). Nothing is seeded: the SDK makes no REST call.

What matters for the figures:
- One asyncio loop, no threads; aiohttp reads the socket and the SDK calls the callback inline.
- Per frame the SDK does ``json.loads`` of the combined frame, then ``json.dumps`` of ``data`` and
  ``AggTradeResponse.model_validate_json`` of that string: decoding costs two JSON parses, one JSON
  encode and a pydantic model per trade. No queue, nothing dropped.
- The SDK sleeps 0.5 s before every ``SUBSCRIBE`` (``SUBSCRIBE_MESSAGE_DELAY_SECONDS``, Binance's
  request-rate limit), so one ``agg_trade`` per symbol takes about 0.5 s x symbols before the
  first trade (written to stderr; the figures start at the first trade). The stall watchdog
  starts after the last subscription.
- The SDK logs through the root ``logging`` logger at INFO; it is left unconfigured (warnings only,
  to stderr). At the end the connection is closed with ``close_connection(close_session=True)``.
"""

from __future__ import annotations

import asyncio
import sys
import time

from binance_common.configuration import ConfigurationWebSocketStreams
from binance_sdk_spot.spot import Spot
from binance_sdk_spot.websocket_streams.models import AggTradeResponse

from clients.common import Tally, options

STALL_SECONDS = 5.0
POLL_SECONDS = 0.25


async def run() -> None:
    opts = options()
    tally = Tally(opts.count, keep_arrivals=opts.recv_log is not None)
    done = asyncio.Event()
    tally.on_done = done.set

    def on_trade(trade: AggTradeResponse) -> None:
        tally.record(trade.s, trade.a)

    config = ConfigurationWebSocketStreams(stream_url=f"ws://127.0.0.1:{opts.port}")
    client = Spot(config_ws_streams=config)
    began = time.perf_counter()
    connection = await client.websocket_streams.create_connection()
    if connection is None:  # the SDK logs the connect error and returns None
        tally.stalled()
        tally.report(opts.recv_log)
        return
    try:
        for symbol in opts.symbols:
            stream = await connection.agg_trade(symbol=symbol)
            stream.on("message", on_trade)
        print(f"binance_sdk: subscribed after {time.perf_counter() - began:.3f} s", file=sys.stderr)
        await watch(tally, done)
    finally:
        await connection.close_connection(close_session=True)
    tally.report(opts.recv_log)


async def watch(tally: Tally, done: asyncio.Event) -> None:
    """Wait for the count; call ``tally.stalled()`` once no trade came for ``STALL_SECONDS``."""
    seen, quiet_since = tally.received, time.monotonic()
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), POLL_SECONDS)
        except TimeoutError:
            now = time.monotonic()
            if tally.received != seen:
                seen, quiet_since = tally.received, now
            elif now - quiet_since >= STALL_SECONDS:
                tally.stalled()


if __name__ == "__main__":
    asyncio.run(run())
