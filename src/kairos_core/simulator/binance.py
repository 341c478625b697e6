"""A local Binance spot server: raw and combined aggTrade streams, ``exchangeInfo`` and ``aggTrades``.

``/ws/<stream>`` sends the ``data`` object alone, ``/stream?streams=a/b`` wraps it as
``{"stream":...,"data":...}``; either may open bare and change its streams with live requests
(``subscriptions.py``). Clients are pinged every ``ping_interval`` seconds and dropped after a
minute without a pong, as Binance does.
Trades come from a seeded random walk at ``rate`` frames per second (spread over the symbols),
endless or a planned run of ``trades`` (its ids written to ``expected_file`` first), or from a
recording, replayed once from the moment the first client connects. Aggregate ids start
from a wall-clock base (microseconds since the epoch) so they keep rising across restarts, as a
real exchange's do; ``id_base`` pins them for tests.
Every trade produced is kept (the newest ``history`` per symbol, the whole of a planned run) and
served by ``GET /api/v3/aggTrades`` as Binance's REST answers it: only trades that have happened,
ascending. REST answers carry ``X-MBX-USED-WEIGHT-1M``; past ``weight_limit`` per
``weight_window`` seconds they are 429 with ``Retry-After``, as Binance's are.
Test hooks: ``inject`` sends any frame, ``drop_connections`` cuts every client,
``handshake_status`` answers every stream handshake with that HTTP status instead, and
``refuse_rest`` answers the next REST requests 429 or 418 with ``Retry-After``. Faults on a
schedule (drops, withheld, duplicated, garbage and oversize frames, REST 429s, and per connection
shutdown notices, lifetime closes and silence): see ``BinanceSimulator`` and ``faults.py``.
Binance's documented limits hold: at most 1024 streams a connection, 5 incoming messages a second
(requests, PING and PONG frames) a connection, and, when given, a budget of new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kairos_core.simulator.binance_rest import REST_PATHS, BinanceRest, TradeHistory
from kairos_core.simulator.binance_walk import RandomWalk, data_of, write_expected
from kairos_core.simulator.faults import (
    OVERSIZE_BYTES,
    ConnectionFaults,
    drop_intervals,
    garbage_frame,
    oversize_frame,
    positive,
)
from kairos_core.simulator.recordings import recorded_agg_trades
from kairos_core.simulator.subscriptions import MAX_STREAMS, Subscriptions
from kairos_core.simulator.venue import ConnectionLimits, Pacer, SimulatedVenue, VenueConnection

log = structlog.get_logger(__name__)

_PONG_TIMEOUT = 60.0  # Binance drops a connection that has not answered a ping within a minute
MESSAGES_PER_SECOND = 5  # Binance's limit of incoming messages (requests, PING and PONG frames)


class BinanceSimulator(SimulatedVenue[Subscriptions]):
    """Serves ``/ws/<symbol>@aggTrade``, ``/stream?streams=...``, ``GET /api/v3/exchangeInfo`` and
    ``GET /api/v3/aggTrades``.

    ``ping_interval=None`` turns the server's pings off.

    A planned run (``trades=N``) makes exactly N trades of the random walk, from the moment the
    first client connects, then stops producing and goes on serving; ``expected_file`` receives
    every one of them (``binance,BTCUSDT,<id>`` lines, as ``market_ticks`` stores them) before the
    server listens. A finite run stands in for an endless market, whose next trade would reveal a
    gap: the last trade of each symbol is never withheld.

    Faults (each a counter in ``stats()``): every client is cut ``drop_every`` seconds (at random
    intervals of that mean with ``drop_random``) after the first to come since the previous cut,
    so a reconnect always gets its interval and a cut never falls on an empty server (the wait
    starts again if everybody left meanwhile); the trades made while nobody is connected (or
    subscribed to their symbol) go out on no socket (``trades_unsent``), only into the history.
    After every ``garbage_every``-th trade a broken frame (``faults.Garbage``, the kinds taking
    turns), after every ``oversize_every``-th one a frame of ``oversize_bytes`` (one due on a trade no
    socket takes, withheld or unsent, follows the next trade sent, those due meanwhile merged into
    one, so a fault is not lost to a moment when nobody listened); every
    ``duplicate_every``-th trade is sent twice; every ``rest_429_every``-th REST request is
    answered 429 with ``Retry-After: 1``. Those count the trades made over all symbols;
    ``withhold_every`` keeps every k-th trade of each symbol off the sockets.

    Each connection, on its own clock (``faults.ConnectionFaults``): every ``shutdown_every``
    seconds a ``serverShutdown`` event, and the close ``shutdown_grace`` seconds after the first
    (trades flow until then); at ``lifetime`` a close without warning (Binance's is 24 h); at
    ``silent_after`` it goes silent: no trade, reply or notice is sent on it again (counted per
    trade in ``trades_silenced``) while the protocol still answers its pings, until the client
    leaves. Limits (``venue.ConnectionLimits``), Binance's by default: past
    ``streams_per_connection`` streams a SUBSCRIBE is refused and a handshake answered 400
    (``streams_refused``); past ``messages_per_second`` the connection is closed 1008
    (``rate_limited``); past ``connection_budget`` handshakes in ``budget_window`` seconds (off
    unless given) the next ones are answered 429 (``handshakes_refused``).
    """

    def __init__(
        self,
        symbols: Iterable[str] = ("btcusdt", "ethusdt"),
        *,
        rate: float = 10.0,
        seed: int | None = None,
        id_base: int | None = None,
        replay: Path | None = None,
        handshake_status: int | None = None,
        ping_interval: float | None = 20.0,
        history: int = 100_000,
        withhold_every: int | None = None,
        weight_limit: int = 6000,
        weight_window: float = 60.0,
        trades: int | None = None,
        expected_file: Path | None = None,
        drop_every: float | None = None,
        drop_random: bool = False,
        garbage_every: int | None = None,
        oversize_every: int | None = None,
        oversize_bytes: int = OVERSIZE_BYTES,
        duplicate_every: int | None = None,
        rest_429_every: int | None = None,
        shutdown_every: float | None = None,
        shutdown_grace: float = 1.0,
        lifetime: float | None = None,
        silent_after: float | None = None,
        silent_every: int = 1,
        connection_budget: int | None = None,
        budget_window: float = 300.0,
        streams_per_connection: int = MAX_STREAMS,
        messages_per_second: int | None = MESSAGES_PER_SECOND,
    ) -> None:
        super().__init__(
            rate=rate,
            handshake_status=handshake_status,
            faults=ConnectionFaults(
                shutdown_every=shutdown_every,
                shutdown_grace=shutdown_grace,
                lifetime=lifetime,
                silent_after=silent_after,
                silent_every=silent_every,
            ),
            limits=ConnectionLimits(
                messages_per_second=messages_per_second,
                connection_budget=connection_budget,
                budget_window=budget_window,
            ),
        )
        for name, value in (
            ("trades", trades),
            ("drop_every", drop_every),
            ("withhold_every", withhold_every),
            ("garbage_every", garbage_every),
            ("oversize_every", oversize_every),
            ("duplicate_every", duplicate_every),
            ("rest_429_every", rest_429_every),
            ("streams_per_connection", streams_per_connection),
        ):
            positive(name, value)
        if (trades is not None or expected_file is not None) and replay is not None:
            raise ValueError("trades and expected_file plan a random walk, not a replay")
        if expected_file is not None and trades is None:
            raise ValueError("expected_file needs a planned run: give trades too")
        self.ping_interval = ping_interval
        self.streams_per_connection = streams_per_connection
        self._history = TradeHistory(max(history, trades or 0))
        self.withhold_every = withhold_every
        """Keep every k-th trade of each symbol (counted while this is set) off the sockets."""
        self._since_withheld: dict[str, int] = {}
        self.drop_every = drop_every
        self.drop_random = drop_random
        self.garbage_every = garbage_every
        self.oversize_every = oversize_every
        self.duplicate_every = duplicate_every
        self._oversize = oversize_frame(oversize_bytes)
        self._fault_rng = random.Random(seed)  # apart from the walk's: faults never change the trades
        self.trades_withheld = 0
        self.trades_made = 0
        self.trades_unsent = 0
        self.drops = 0
        self.garbage_sent = 0
        self.oversize_sent = 0
        self._garbage_due = False
        self._oversize_due = False
        self.duplicates_sent = 0
        self.trades_silenced = 0
        self.streams_refused = 0
        self.trades = trades
        self.finished = asyncio.Event()
        """Set once a planned run (or a replay) has made its last trade."""
        self._expected_file = expected_file
        self._plan: dict[str, range] = {}
        self._replaying = replay is not None
        if replay is not None:
            recorded = list(recorded_agg_trades(replay))
            if not recorded:
                raise ValueError(f"{replay} holds no Binance aggTrade or trade frames to replay")
            self.symbols = tuple(dict.fromkeys(symbol for symbol, _ in recorded))
            self._frames: Iterator[tuple[str, bytes]] = iter(recorded)
        else:
            self.symbols = tuple(symbol.lower() for symbol in symbols)
            base = id_base if id_base is not None else time.time_ns() // 1000
            if trades is not None:
                seed = seed if seed is not None else random.SystemRandom().getrandbits(64)
                counts = RandomWalk(self.symbols, seed, base).trades_per_symbol(trades)
                self._plan = {symbol: range(base, base + n) for symbol, n in counts.items() if n}
            self._frames = RandomWalk(self.symbols, seed, base).frames()
            if trades is not None:
                self._frames = itertools.islice(self._frames, trades)
        self._first_client = asyncio.Event()
        self._client_joined = asyncio.Event()
        self._rest = BinanceRest(
            self.symbols,
            self._history,
            weight_limit=weight_limit,
            weight_window=weight_window,
            refuse_every=rest_429_every,
        )

    @property
    def rest_requests(self) -> int:
        return self._rest.requests

    @property
    def rest_refused(self) -> int:
        """REST requests answered 429 or 418."""
        return self._rest.refused

    @property
    def rest_429_every(self) -> int | None:
        return self._rest.refuse_every

    @rest_429_every.setter
    def rest_429_every(self, every: int | None) -> None:
        self._rest.refuse_every = every

    @property
    def expected(self) -> dict[str, range]:
        """A planned run's trade ids per symbol (lower case), empty otherwise."""
        return dict(self._plan)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._expected_file is not None:
            write_expected(self._expected_file, self._plan)
            log.info("simulator.expected_written", path=str(self._expected_file), trades=self.trades)
        return await super().start(host, port)

    def stats(self) -> dict[str, int]:
        return {
            "trades_made": self.trades_made,
            **super().stats(),
            "trades_unsent": self.trades_unsent,
            "trades_withheld": self.trades_withheld,
            "trades_silenced": self.trades_silenced,
            "streams_refused": self.streams_refused,
            "drops": self.drops,
            "garbage_sent": self.garbage_sent,
            "oversize_sent": self.oversize_sent,
            "duplicates_sent": self.duplicates_sent,
            "rest_requests": self.rest_requests,
            "rest_refused": self.rest_refused,
        }

    def _serve_options(self) -> dict[str, Any]:
        return {"ping_interval": self.ping_interval, "ping_timeout": _PONG_TIMEOUT}

    async def ping_clients(self, timeout: float = 5.0) -> int:
        """Ping every client as Binance does every 20 s; how many answered within ``timeout``."""
        answered = 0
        for client in list(self._clients):
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                await asyncio.wait_for(await client.ping(), timeout)
                answered += 1
        return answered

    def refuse_rest(
        self, count: int, *, status: int = HTTPStatus.TOO_MANY_REQUESTS, retry_after: int = 1
    ) -> None:
        """Answer the next ``count`` REST requests (any path) ``status``, 429 (rate limit) or 418 (IP
        banned), with ``Retry-After: retry_after`` and Binance's -1003 error body."""
        self._rest.refuse(count, status=status, retry_after=retry_after)

    @property
    def used_weight(self) -> int:
        """The request weight the last REST answer reported as used."""
        return self._rest.used_weight

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path in REST_PATHS:
            return self._rest.answer(connection, url.path, parse_qs(url.query))
        subscriptions = Subscriptions.for_target(request.path, self.symbols, self.streams_per_connection)
        if subscriptions is None:
            return self._not_found(connection, "use /ws/<stream> or /stream")
        if subscriptions.too_many:
            self.streams_refused += 1
            return connection.respond(
                HTTPStatus.BAD_REQUEST,
                f"a connection listens to at most {self.streams_per_connection} streams: ask for fewer\n",
            )
        return self._handshake(connection)

    def _withheld(self, symbol: str, trade_id: int) -> bool:
        every = self.withhold_every
        if not every:
            return False
        planned = self._plan.get(symbol)
        if planned is not None and trade_id == planned[-1]:
            return False  # nothing after it would reveal the gap: see the class docstring
        count = self._since_withheld.get(symbol, 0) + 1
        self._since_withheld[symbol] = count % every
        if count < every:
            return False
        self.trades_withheld += 1
        return True

    async def _session(self, connection: VenueConnection) -> None:
        target = connection.request.path if connection.request else ""
        subscriptions = Subscriptions.for_target(target, self.symbols, self.streams_per_connection)
        if subscriptions is None:  # _route lets only stream paths through
            return
        self._clients[connection] = subscriptions
        self._first_client.set()
        self._client_joined.set()
        try:
            async for request in connection:
                # answer() applies the request at once: a frame sent after the reply follows it.
                reply = subscriptions.answer(request)
                if not connection.silent:
                    await connection.send(reply, text=True)
        except ConnectionClosed:
            pass
        finally:
            self._clients.pop(connection, None)  # a drop may have let it go already

    async def _produce(self) -> None:
        if self._replaying or self.trades is not None:  # a finite run starts when somebody listens
            await self._first_client.wait()
        pacer = Pacer(self.rate)
        dropping = asyncio.create_task(self._drop_connections_now_and_then()) if self.drop_every else None
        try:
            for symbol, frame in self._frames:
                await pacer.next()
                self.trades_made += 1
                # Kept before it is sent: a client that saw it can ask for it.
                trade_id = self._history.record(symbol, frame)
                self._garbage_due |= _falls_on(self.trades_made, self.garbage_every)
                self._oversize_due |= _falls_on(self.trades_made, self.oversize_every)
                if not self._withheld(symbol, trade_id):
                    await self._send_trade(symbol, frame, self.trades_made)
        finally:
            if dropping is not None:
                dropping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dropping
        self.finished.set()
        done = "simulator.replay_done" if self._replaying else "simulator.run_done"
        log.info(done, frames=pacer.count, trades_made=self.trades_made)

    async def _send_trade(self, symbol: str, frame: bytes, nth: int) -> None:
        """Send the ``nth`` trade made to its subscribers, with the faults that fall on it."""
        duplicate = _falls_on(nth, self.duplicate_every)
        raw_frame: bytes | None = None
        receivers = []
        for client, subscriptions in list(self._clients.items()):
            if symbol not in subscriptions.symbols:
                continue
            if client.silent:
                self.trades_silenced += 1
                continue
            if subscriptions.combined:
                payload = frame
            else:  # a raw stream: the data object, cut out once per frame
                payload = raw_frame = raw_frame or data_of(frame)
            with contextlib.suppress(ConnectionClosed):
                await client.send(payload, text=True)  # Binance sends text frames
                self.frames_sent += 1
                self.trades_sent += 1
                receivers.append(client)
                if duplicate:
                    await client.send(payload, text=True)
                    self.duplicates_sent += 1
        if not receivers:
            self.trades_unsent += 1
            return
        if self._garbage_due:
            garbage, text = garbage_frame(self.garbage_sent, frame)
            sent = await _send_to(receivers, garbage, text=text)
            self.garbage_sent += sent
            self._garbage_due = not sent
        if self._oversize_due:
            sent = await _send_to(receivers, self._oversize, text=True)
            self.oversize_sent += sent
            self._oversize_due = not sent
            if sent:
                log.info("simulator.oversize_sent", after_trade=nth, bytes=len(self._oversize))

    async def _announce_shutdown(self, connection: VenueConnection) -> bool:
        subscriptions = self._clients.get(connection)
        if subscriptions is None:
            return False
        event = {"e": "serverShutdown", "E": time.time_ns() // 1_000_000}
        notice = {"stream": "!serverShutdown", "data": event} if subscriptions.combined else event
        try:
            await connection.send(msgspec.json.encode(notice), text=True)
        except ConnectionClosed:
            return False
        log.info("simulator.server_shutdown_sent", clients=self.clients)
        return True

    async def _drop_connections_now_and_then(self) -> None:
        assert self.drop_every is not None
        for pause in drop_intervals(self.drop_every, at_random=self.drop_random, rng=self._fault_rng):
            clients: list[VenueConnection] = []
            while not clients:  # the clock starts once somebody is connected
                while not self._clients:
                    self._client_joined.clear()
                    await self._client_joined.wait()
                await asyncio.sleep(pause)
                clients = list(self._clients)
            self._clients.clear()  # nothing more is sent to them, even before they notice
            for client in clients:
                client.transport.abort()
            self.drops += 1
            log.info(
                "simulator.dropped", clients=len(clients), drops=self.drops, after_trade=self.trades_made
            )


def _falls_on(nth: int, every: int | None) -> bool:
    return every is not None and nth % every == 0


async def _send_to(clients: list[VenueConnection], frame: bytes, *, text: bool) -> int:
    """Send ``frame`` to each of ``clients``; how many it went out to."""
    sent = 0
    for client in clients:
        with contextlib.suppress(ConnectionClosed):
            await client.send(frame, text=text)
            sent += 1
    return sent
