"""python-binance (``python-binance==1.0.37``): ``BinanceSocketManager.multiplex_socket`` on ``AsyncClient``.

API: the documented async pattern: ``bm = BinanceSocketManager(client)``,
``bm.multiplex_socket(["btcusdt@aggTrade", ...])``, ``async with socket as s: await s.recv()``; each
``recv()`` returns the combined frame as a dict (``{"stream": ..., "data": {"s": ..., "a": ...}}``),
decoded by the library with ``json.loads`` (it prefers orjson, which this venv does not have).

URL: after constructing the manager, its ``STREAM_URL`` instance attribute (which it fills from
``"wss://stream.binance.{tld}:9443/"``) is set to ``ws://127.0.0.1:<port>/``; the socket then opens
``ws://127.0.0.1:<port>/stream?streams=...`` with the library's own ``websockets.connect`` call.

Seeding: none is needed for the streams, but ``AsyncClient`` is built with its plain constructor,
not the documented ``await AsyncClient.create()``, because ``create()`` calls REST ``ping`` and
``time`` first. The constructor makes only an aiohttp session (never used, closed at the end).

Library behaviour that matters: one asyncio task reads the socket (``asyncio.wait_for`` per
message), decodes it and puts it on an ``asyncio.Queue`` that ``recv()`` reads in the same event
loop, with no extra thread. ``max_queue_size`` (default 100, kept) is not a bound that waits: once
100 messages wait, the reader raises ``BinanceWebsocketQueueOverflow``, puts an ``{"e": "error"}``
dict on the queue and stops for good, so a consumer that falls behind loses the rest of the stream
(this client then counts the rest as lost). It does not happen with the bare ``await recv()`` loop
used here, but wrapping ``recv()`` in ``asyncio.wait_for`` was enough to make it overflow after
~100 trades, so the 5 s stall check runs in a separate watchdog task instead.

Stopping: leaving ``async with`` is the library's own close, but it first waits for its reader,
which sits in ``recv()`` for up to its 10 s ``TIMEOUT`` once the simulator has nothing more to
send. So as the block is left, a task closes the socket's websocket connection (``socket.ws``),
which ends that wait at once (the library logs the ``ConnectionClosedOK`` as an error on stderr).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from binance import AsyncClient, BinanceSocketManager
from binance.exceptions import ReadLoopClosed
from binance.ws.reconnecting_websocket import ReconnectingWebsocket

from clients.common import Options, Tally, options

_STALL_S = 5.0
_WATCH_S = 0.25


async def _consume(stream: ReconnectingWebsocket, tally: Tally) -> None:
    while not tally.done:
        try:
            message = await stream.recv()
        except ReadLoopClosed:
            tally.stalled()
            return
        if message.get("e") == "error":
            print(f"python-binance stream error: {message}", file=sys.stderr)
            tally.stalled()
            return
        trade = message["data"]
        tally.record(trade["s"], trade["a"])


async def _watch(consumer: asyncio.Task[None], tally: Tally) -> None:
    """Ends the run when no trade came for ``_STALL_S`` seconds."""
    loop = asyncio.get_running_loop()
    seen, since = tally.received, loop.time()
    while not consumer.done():
        await asyncio.wait({consumer}, timeout=_WATCH_S)
        if tally.received != seen:
            seen, since = tally.received, loop.time()
        elif not consumer.done() and loop.time() - since >= _STALL_S:
            tally.stalled()
            consumer.cancel()
            await asyncio.wait({consumer})


async def _close_socket_connection(stream: ReconnectingWebsocket) -> None:
    if stream.ws is not None:
        await stream.ws.close()


async def _stream(opts: Options, tally: Tally) -> None:
    client = AsyncClient()  # not AsyncClient.create(): that pings the REST API
    try:
        manager = BinanceSocketManager(client)
        manager.STREAM_URL = f"ws://127.0.0.1:{opts.port}/"
        socket = manager.multiplex_socket(opts.stream_names())
        async with socket as stream:
            consumer = asyncio.create_task(_consume(stream, tally))
            await _watch(consumer, tally)
            if not consumer.cancelled():
                consumer.result()  # re-raise what the consumer raised, if anything
            # runs once __aexit__ has marked the socket as exiting and waits for its reader
            closing = asyncio.create_task(_close_socket_connection(stream))
        await closing
    finally:
        await client.close_connection()


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    opts = options()
    tally = Tally(opts.count, keep_arrivals=opts.recv_log is not None)
    asyncio.run(_stream(opts, tally))
    tally.report(opts.recv_log)


if __name__ == "__main__":
    main()
