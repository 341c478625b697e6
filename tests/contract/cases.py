"""The exchange adapters under the contract: one ``ExchangeCase`` each, listed in ``CASES``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qs, urlsplit

from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.inbound.feed_handler.connection import WebSocketConnector
from kairos_core.adapters.inbound.feed_handler.feed_base import WebSocketFeed
from kairos_core.adapters.inbound.feed_handler.okx import OkxFeedHandler
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy
from kairos_core.domain import Exchange, MarketTick, TickSink
from kairos_core.simulator.binance import BinanceSimulator
from kairos_core.simulator.okx import PATH, OkxSimulator
from kairos_core.simulator.venue import SimulatedVenue
from tests.contract.recordings import FIXTURES, Recording

RATE = 2_000
"""Simulated market frames a second, spread over the symbols."""


class ExpectedTrade(NamedTuple):
    """A trade as the test reads it off a raw recording: the exchange's own strings and numbers."""

    symbol: str
    trade_id: int
    first_trade_id: int
    last_trade_id: int
    price: str
    volume: str
    side: str
    timestamp_ms: int

    @classmethod
    def of(cls, tick: MarketTick) -> ExpectedTrade:
        """The same view of a tick; ``:f`` writes a Decimal's digits as they are, never 1E-7."""
        return cls(
            tick.symbol,
            tick.trade_id,
            tick.first_trade_id,
            tick.last_trade_id,
            f"{tick.price:f}",
            f"{tick.volume:f}",
            tick.side.value,
            tick.timestamp_ms,
        )


@dataclass(frozen=True, slots=True)
class Expected:
    """What a recording holds, read with ``json.loads`` and dict access alone, never our parser."""

    symbols: tuple[str, ...]
    """The trade streams the recorder subscribed, in the feed's form of the symbols."""
    trades: tuple[ExpectedTrade, ...]
    """Every trade received, in order."""
    ignored: int
    """Frames of other channels (books, tickers, klines): the feed counts them as ``unknown_event``."""


class FeedFactory(Protocol):
    def __call__(
        self,
        sink: TickSink,
        port: int,
        symbols: tuple[str, ...],
        *,
        connector: WebSocketConnector,
        policy: ReconnectPolicy,
        replay: bool,
    ) -> WebSocketFeed:
        """The adapter streaming ``symbols`` from 127.0.0.1:``port`` into ``sink``.

        ``replay``: the server is a ``ReplayServer``, a WebSocket endpoint and nothing else (no
        REST), that accepts any path.
        """
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeCase:
    """One exchange adapter and what the contract suite needs to know to test it.

    Putting a new adapter under the contract is adding one of these to ``CASES``; every test in
    ``tests/contract`` then runs for it, over both WebSocket clients. It needs:

    - ``simulator``: the venue's bundled simulator (``simulator/<venue>.py``) serving ``symbols``,
      seeded, at ``RATE``. It must count what it sends (``frames_sent``, ``trades_sent``), send
      trades only to connections subscribed to them, and support the ``SimulatedVenue`` hooks
      (``inject``, ``drop_connections``, ``halt``, ``resume``).
    - ``feed``: the adapter pointed at a local port (see ``FeedFactory``).
    - ``symbols`` (several, as the feed is configured) and ``tick_symbols`` (the same, as its ticks
      name them).
    - ``garbage``: a frame of the venue's protocol cut short, counted as ``RejectReason.JSON``;
      ``unknown``: a well-formed frame of a channel the feed does not consume, counted as
      ``RejectReason.UNKNOWN_EVENT``; ``foreign``: a well-formed trade of a symbol the feed did not
      subscribe to, counted as ``RejectReason.UNKNOWN_SYMBOL``.
    - ``trade_id_is_last``: the venue's trade id is the last id of its aggregation
      (``first_trade_id <= last_trade_id == trade_id``); otherwise it is an id of its own and only
      ``first_trade_id <= last_trade_id`` holds.
    - ``subscribes_by_request``: the feed subscribes with a message after connecting rather than
      by the URL, so a replay waits for that message before sending.
    - ``recordings``: real recordings of the venue in ``tests/fixtures/<venue>/`` (copied from
      ``../shared/data/real/``), replayed byte for byte; ``read`` lists what one holds in a few
      independent lines (``json.loads`` and dict access, not the adapter's parser).
    - ``parallel_recordings``: two connections recorded at once, carrying the same trades, if the
      venue has such a pair; both replayed into one store must store each trade once.
    """

    name: str
    exchange: Exchange
    symbols: tuple[str, ...]
    tick_symbols: tuple[str, ...]
    simulator: Callable[[tuple[str, ...]], SimulatedVenue[Any]]
    feed: FeedFactory
    garbage: bytes
    unknown: bytes
    foreign: bytes
    trade_id_is_last: bool
    subscribes_by_request: bool
    recordings: tuple[Path, ...]
    read: Callable[[Recording], Expected]
    parallel_recordings: tuple[Path, Path] | None = None


# Binance ------------------------------------------------------------------------------------------


def _binance_feed(
    sink: TickSink,
    port: int,
    symbols: tuple[str, ...],
    *,
    connector: WebSocketConnector,
    policy: ReconnectPolicy,
    replay: bool,
) -> WebSocketFeed:
    return BinanceFeedHandler(
        sink,
        symbols,
        url=f"ws://127.0.0.1:{port}/stream",
        rest_url=None if replay else f"http://127.0.0.1:{port}",
        connector=connector,
        policy=policy,
    )


def _binance_recorded(recording: Recording) -> Expected:
    streams = parse_qs(urlsplit(recording.url).query)["streams"][0].split("/")
    trades, ignored = [], 0
    for frame in recording.frames:
        message = json.loads(frame)
        if not message["stream"].endswith("@aggTrade"):
            ignored += 1
            continue
        data = message["data"]
        side = "sell" if data["m"] else "buy"  # m: the buyer was the maker, so the taker sold
        trades.append(
            ExpectedTrade(data["s"], data["a"], data["f"], data["l"], data["p"], data["q"], side, data["T"])
        )
    symbols = tuple(stream.removesuffix("@aggTrade") for stream in streams if stream.endswith("@aggTrade"))
    return Expected(symbols, tuple(trades), ignored)


BINANCE = ExchangeCase(
    name="binance",
    exchange=Exchange.BINANCE,
    symbols=("btcusdt", "ethusdt", "solusdt"),
    tick_symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"),
    simulator=lambda symbols: BinanceSimulator(symbols, rate=RATE, seed=7, id_base=5_000),
    feed=_binance_feed,
    garbage=b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":16175665913',
    unknown=b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","b":[],"a":[]}}',
    foreign=b'{"stream":"xrpusdt@aggTrade","data":{"e":"aggTrade","E":1700000000001,"s":"XRPUSDT","a":1,'
    b'"p":"0.5","q":"10","f":1,"l":1,"T":1700000000000,"m":true,"M":true}}',
    trade_id_is_last=False,  # the aggregate trade id a; f..l are the ids of the trades it aggregates
    subscribes_by_request=False,  # the combined stream's URL names the streams
    recordings=(FIXTURES / "binance" / "BINANCE-ee25be.0", FIXTURES / "binance" / "BINANCE.ws.1.0"),
    read=_binance_recorded,
)


# OKX ----------------------------------------------------------------------------------------------


def _okx_feed(
    sink: TickSink,
    port: int,
    symbols: tuple[str, ...],
    *,
    connector: WebSocketConnector,
    policy: ReconnectPolicy,
    replay: bool,
) -> WebSocketFeed:
    del replay  # OKX's feed asks nothing over REST
    return OkxFeedHandler(
        sink, symbols, url=f"ws://127.0.0.1:{port}{PATH}", connector=connector, policy=policy
    )


def _okx_recorded(recording: Recording) -> Expected:
    args = [arg for request in recording.sent for arg in json.loads(request)["args"]]
    trades, ignored = [], 0
    for frame in recording.frames:
        message = json.loads(frame)
        if "event" in message:  # acknowledgements: control frames, neither ticks nor rejected
            continue
        if message["arg"]["channel"] != "trades":
            ignored += 1
            continue
        for item in message["data"]:
            last = int(item["tradeId"])
            first = last - int(item.get("count", "1")) + 1  # count: trades aggregated; absent before 2023
            trades.append(
                ExpectedTrade(
                    item["instId"], last, first, last, item["px"], item["sz"], item["side"], int(item["ts"])
                )
            )
    symbols = tuple(dict.fromkeys(arg["instId"] for arg in args if arg["channel"] == "trades"))
    return Expected(symbols, tuple(trades), ignored)


_OKEX_PAIR = (FIXTURES / "okx" / "OKEX.ws.1.0", FIXTURES / "okx" / "OKEX.ws.2.0")

OKX = ExchangeCase(
    name="okx",
    exchange=Exchange.OKX,
    symbols=("BTC-USDT", "ETH-USDT", "BTC-USDT-SWAP"),
    tick_symbols=("BTC-USDT", "ETH-USDT", "BTC-USDT-SWAP"),
    simulator=lambda symbols: OkxSimulator(symbols, rate=RATE, seed=7, id_base=7_000),
    feed=_okx_feed,
    garbage=b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-U',
    unknown=b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[]}',
    foreign=b'{"arg":{"channel":"trades","instId":"XRP-USDT"},"data":[{"instId":"XRP-USDT","tradeId":"1",'
    b'"px":"0.5","sz":"10","side":"buy","ts":"1700000000000","count":"1"}]}',
    trade_id_is_last=True,  # tradeId is the last trade of the aggregation; count says how many
    subscribes_by_request=True,  # {"op":"subscribe",...} after connecting
    recordings=(FIXTURES / "okx" / "OKX.ws.1.0", *_OKEX_PAIR),
    read=_okx_recorded,
    parallel_recordings=_OKEX_PAIR,  # two connections recorded at once, the same 36 trades
)

CASES = (BINANCE, OKX)
