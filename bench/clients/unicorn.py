"""Benchmark client: unicorn-binance-websocket-api (UBWA) 2.16.1, aggTrade for all symbols on one stream.

API: ``BinanceWebSocketApiManager(exchange="binance.com", output_default="dict")`` and one
multiplexed ``create_stream(channels=["aggTrade"], markets=[...], process_asyncio_queue=...)``.
The README calls the asyncio-queue consumer the "generally recommended" way and the docstring
says it gives "the fastest possible asynchronous processing ... in the correct receiving
sequence": the coroutine runs in the stream's own event loop, no thread hand-off. The queue is
an unbounded ``asyncio.Queue``, so nothing is dropped. Decoding: ``output="dict"`` (orjson of the
combined frame), the trade is ``msg["data"]`` with ``"s"`` and ``"a"``; the ``{"result":null}``
reply to SUBSCRIBE reaches the queue too and is skipped. ("UnicornFy" would reshape the dict.)

URL: the documented constructor option ``websocket_base_uri="ws://127.0.0.1:<port>/"``. Nothing
is seeded: public streams use no REST. ``warn_on_update=False``: the default asks the GitHub API
for the latest release at start-up and prints to stdout.

What matters for the figures: ``create_stream()`` builds the URL ``/stream?streams=<one
market>@aggTrade`` and, before connecting, tries to send the SUBSCRIBE for all markets on the not
yet open socket, waiting ``send_with_stream``'s 5 s timeout; it then connects, sends the queued
SUBSCRIBE and sleeps 1/3 s (its Binance rate-limit guard) before the first read. Both (~5.35 s)
come before the first trade, where the figures start; the frames of that 1/3 s wait in the socket
(they show in the paced run's latency). UBWA runs a housekeeping thread (every 0.5 s, psutil CPU
check) and a thread with its own event loop per stream, keeps per-message statistics, and uses
``websockets`` (``picows`` is an opt-in extra, not used). Its stream loop checks for a stop
request only when a message arrives and never closes the socket itself, so after the last frame
``stop_manager()`` cannot end the stream thread: after ``JOIN_S`` the client reports and leaves
with ``os._exit``.
Stdout goes to stderr while UBWA runs, so its ``print`` calls cannot corrupt the JSON result.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any

from unicorn_binance_websocket_api import BinanceWebSocketApiManager

from clients.common import Tally, options

STALL_S = 5.0
JOIN_S = 1.0  # how long stop_manager() may take before the process exits anyway


def main() -> None:
    opts = options()
    tally = Tally(opts.count, keep_arrivals=opts.recv_log is not None)
    done = threading.Event()
    tally.on_done = done.set

    with contextlib.redirect_stdout(sys.stderr):
        ubwa = BinanceWebSocketApiManager(
            exchange="binance.com",
            output_default="dict",
            websocket_base_uri=f"ws://127.0.0.1:{opts.port}/",
            warn_on_update=False,
        )

        async def consume(stream_id: str | None = None) -> None:
            record = tally.record
            while not tally.done and not ubwa.is_stop_request(stream_id):
                message: Any = await ubwa.get_stream_data_from_asyncio_queue(stream_id)
                trade = message.get("data") if isinstance(message, dict) else None
                if trade is not None:
                    record(trade["s"], trade["a"])
                ubwa.asyncio_queue_task_done(stream_id)

        ubwa.create_stream(
            channels=["aggTrade"],
            markets=opts.symbols,
            stream_label="aggTrade",
            process_asyncio_queue=consume,
        )
        seen, last_progress = -1, time.monotonic()
        while not done.wait(0.25):
            if tally.received != seen:
                seen, last_progress = tally.received, time.monotonic()
            elif time.monotonic() - last_progress >= STALL_S:
                tally.stalled()
        stuck = stop(ubwa)
    tally.report(opts.recv_log)
    if stuck:
        sys.stdout.flush()
        os._exit(0)


def stop(ubwa: BinanceWebSocketApiManager) -> bool:
    """``stop_manager()``; True if a UBWA thread is still running after ``JOIN_S`` (exit hard then).

    UBWA's stream loop checks for a stop request only between messages and never closes the
    socket itself, so once the simulator has sent its last frame the stream thread stays in
    ``recv()`` (against Binance the next trade would wake it). The housekeeping thread ends.
    """
    ubwa.stop_manager()
    deadline = time.monotonic() + JOIN_S
    threads = [ubwa, *ubwa.stream_threads.values()]
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        print(f"unicorn client: still in UBWA after stop_manager(), exiting anyway: {stuck}", file=sys.stderr)
    return bool(stuck)


if __name__ == "__main__":
    main()
