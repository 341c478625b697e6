"""The parser against real OKX v5 recordings (cryptofeed sample_data, 2021 and 2022): every trade, exactly.

Expected numbers are written out from the recordings' documentation (shared/data/real/SOURCES.md)
or, where it gives none, read off the file by hand; never counted by code under test. Trades pushes
are picked out by their channel with a plain byte search, so a parser that drops or misroutes a
trade shows up as a wrong count.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest

from kairos_core.adapters.inbound.feed_handler.okx_wire import (
    ErrorReply,
    Notice,
    Pong,
    SubscribeAck,
    parse_frame,
    subscribe_requests,
)
from kairos_core.domain import Exchange, FrameRejected, MarketTick, RejectReason, Side, TickSource

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "okx"
OKX = "OKX.ws.1.0"  # ws.okx.com, 2022-05-13, ~11 s: spot, a future and a swap
OKEX_1 = "OKEX.ws.1.0"  # ws.okex.com, 2021-07-22, ~30 s: nine instruments of every kind
OKEX_2 = "OKEX.ws.2.0"  # a second connection recorded at the same moment as OKEX_1
TRADES = b'{"arg":{"channel":"trades",'
OTHER_KINDS = (
    b'{"arg":{"channel":"tickers",',
    b'{"arg":{"channel":"books",',
    b'{"arg":{"channel":"books-l2-tbt",',
)
ACK = b'{"event":"subscribe",'

# From SOURCES.md. OKX.ws.1.0: 414 lines = 74 trades + 28 tickers + 290 books + 18 subscribe acks
# + 3 sent subscribe requests + 1 connection line. OKEX.ws.1.0: 1618 lines = 36 trades + 46 tickers
# + 1504 books-l2-tbt + 30 acks + 1 sent request + 1 connection line. OKEX.ws.2.0 holds the same
# 36 trades; its other counts (1561 lines: 47 tickers, 1446 books-l2-tbt, 30 acks) are read off the
# file. Per-instrument counts of the OKEX recordings are read off the files too.
OKEX_TRADES = {
    "OKT-BTC": 8,
    "PAY-BTC": 7,
    "FUN-BTC": 6,
    "XMR-USDT-SWAP": 6,
    "ONT-USDT": 3,
    "AUCTION-USDT": 2,
    "TRX-USDT-210924": 2,
    "BTC-USD-210924-66000-C": 1,
    "DHT-USDT": 1,
}
DOCUMENTED = {
    OKX: {
        "frames": 410,
        "trades": {"BTC-USDT": 69, "BTC-USD-220527": 4, "UNI-USD-SWAP": 1},
        "acks": 18,
        "other": {OTHER_KINDS[0]: 28, OTHER_KINDS[1]: 290, OTHER_KINDS[2]: 0},
    },
    OKEX_1: {
        "frames": 1616,
        "trades": OKEX_TRADES,
        "acks": 30,
        "other": {OTHER_KINDS[0]: 46, OTHER_KINDS[1]: 0, OTHER_KINDS[2]: 1504},
    },
    OKEX_2: {
        "frames": 1559,
        "trades": OKEX_TRADES,
        "acks": 30,
        "other": {OTHER_KINDS[0]: 47, OTHER_KINDS[1]: 0, OTHER_KINDS[2]: 1446},
    },
}
RECORDINGS = sorted(DOCUMENTED)
_TIMESTAMP = re.compile(rb"\d+\.\d+")


@cache
def recorded_frames(name: str) -> tuple[tuple[int, bytes], ...]:
    """(receipt time in epoch ns, payload) of every inbound frame, in recorded order.

    A frame line is ``<ts>: <payload>``, split on the first ``": "``. Connection lines
    (``<url> <-> <ts>``) and sent requests (``<url> <- <ts>: <payload>``) have no bare timestamp
    before that separator and are skipped.
    """
    frames = []
    for line in (FIXTURES / name).read_bytes().split(b"\n"):
        head, separator, payload = line.partition(b": ")
        if separator and _TIMESTAMP.fullmatch(head):
            frames.append((int(Decimal(head.decode()) * 10**9), payload))
    return tuple(frames)


def recorded_ticks(name: str) -> list[MarketTick]:
    """Every trades push parsed, in order; a rejection, a control value or an empty push fails."""
    ticks: list[MarketTick] = []
    for received_at_ns, payload in recorded_frames(name):
        if payload.startswith(TRADES):
            pushed = parse_frame(payload, received_at_ns, TickSource.REPLAY)
            assert type(pushed) is tuple, payload
            assert len(pushed) == 1, "SOURCES.md: each recorded trades push has one item"
            ticks.extend(pushed)
    return ticks


@pytest.mark.parametrize("name", RECORDINGS)
def test_the_recording_is_framed_as_documented(name: str) -> None:
    frames = [payload for _, payload in recorded_frames(name)]
    documented = DOCUMENTED[name]

    assert len(frames) == documented["frames"]
    assert sum(payload.startswith(TRADES) for payload in frames) == sum(documented["trades"].values())
    assert sum(payload.startswith(ACK) for payload in frames) == documented["acks"]
    for kind, count in documented["other"].items():
        assert sum(payload.startswith(kind) for payload in frames) == count


@pytest.mark.parametrize("name", RECORDINGS)
def test_every_recorded_trade_parses_with_no_rejection(name: str) -> None:
    ticks = recorded_ticks(name)

    assert Counter(tick.symbol for tick in ticks) == DOCUMENTED[name]["trades"]
    pushes = [frame for frame in recorded_frames(name) if frame[1].startswith(TRADES)]
    for tick, (received_at_ns, payload) in zip(ticks, pushes, strict=True):
        assert payload.startswith(TRADES + b'"instId":"' + tick.symbol.encode() + b'"}')
        assert tick.exchange is Exchange.OKX
        assert tick.source is TickSource.REPLAY
        assert tick.received_at_ns == received_at_ns
        assert tick.first_trade_id == tick.last_trade_id == tick.trade_id, "no count: one trade each"
        assert tick.event_time_ms is None
        assert parse_frame(payload.decode(), received_at_ns, TickSource.REPLAY) == (tick,)  # str input too


def test_the_two_parallel_connections_carry_the_same_trades() -> None:
    """SOURCES.md: OKEX.ws.2.0 holds the same 36 trades as .1.0, received at other moments."""
    first, second = recorded_ticks(OKEX_1), recorded_ticks(OKEX_2)

    def key(tick: MarketTick) -> tuple[str, int]:
        return tick.symbol, tick.trade_id

    assert len(first) == len(second) == 36
    assert sorted(map(key, first)) == sorted(map(key, second))
    assert {key(t): t._replace(received_at_ns=0) for t in first} == {
        key(t): t._replace(received_at_ns=0) for t in second
    }
    assert [t.received_at_ns for t in first] != [t.received_at_ns for t in second]


@pytest.mark.parametrize("name", RECORDINGS)
def test_trade_ids_only_rise_per_instrument(name: str) -> None:
    last: dict[str, int] = {}
    for tick in recorded_ticks(name):
        assert tick.trade_id > last.get(tick.symbol, -1), tick
        last[tick.symbol] = tick.trade_id


@pytest.mark.parametrize("name", RECORDINGS)
def test_every_other_frame_is_unknown_event_or_an_acknowledgement(name: str) -> None:
    reasons: Counter[RejectReason] = Counter()
    kinds: Counter[bytes] = Counter()
    acks: list[SubscribeAck] = []
    for received_at_ns, payload in recorded_frames(name):
        if payload.startswith(TRADES):
            continue
        try:
            result = parse_frame(payload, received_at_ns)
        except FrameRejected as e:
            reasons[e.reason] += 1
            kinds.update(kind for kind in OTHER_KINDS if payload.startswith(kind))
            continue
        assert isinstance(result, SubscribeAck), payload
        assert not isinstance(result, ErrorReply | Notice | Pong)
        acks.append(result)

    other = DOCUMENTED[name]["other"]
    assert reasons == {RejectReason.UNKNOWN_EVENT: sum(other.values())}
    assert kinds == {kind: count for kind, count in other.items() if count}
    assert len(acks) == DOCUMENTED[name]["acks"]
    # every instrument that traded was acknowledged first (OKEX's BTC-USD-210924-42000-P never traded)
    assert set(DOCUMENTED[name]["trades"]) <= {ack.inst_id for ack in acks if ack.channel == "trades"}


def test_the_first_btc_usdt_trade_has_exactly_its_recorded_values() -> None:
    received_at_ns, payload = next(
        frame for frame in recorded_frames(OKX) if frame[1].startswith(TRADES + b'"instId":"BTC-USDT"}')
    )
    assert payload == (
        b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
        b'"tradeId":"338476307","px":"30236","sz":"0.0002","side":"buy","ts":"1652459224818"}]}'
    )

    assert parse_frame(payload, received_at_ns) == (
        MarketTick(
            symbol="BTC-USDT",
            exchange=Exchange.OKX,
            price=Decimal("30236"),
            volume=Decimal("0.0002"),
            side=Side.BUY,  # the taker bought
            trade_id=338476307,
            first_trade_id=338476307,
            last_trade_id=338476307,
            timestamp_ms=1652459224818,
            event_time_ms=None,
            received_at_ns=1652459225507260300,  # the recorder's 1652459225.5072603
        ),
    )


@pytest.mark.parametrize(
    ("inst_id", "price", "size", "side", "trade_id", "when"),
    [
        # An option, a price below 1E-6 and a future, as recorded on 2021-07-22.
        ("BTC-USD-210924-66000-C", "0.0065", "2", Side.SELL, 206, datetime(2021, 7, 22, 3, 1, 33, 155000)),
        ("PAY-BTC", "0.00000138", "2351.35", Side.SELL, 6071311, datetime(2021, 7, 22, 23, 15, 51, 369000)),
        ("TRX-USDT-210924", "0.0545", "4", Side.SELL, 1200052, datetime(2021, 7, 22, 23, 15, 52, 334000)),
    ],
)
def test_recorded_instruments_of_every_kind_keep_their_digits(
    inst_id: str, price: str, size: str, side: Side, trade_id: int, when: datetime
) -> None:
    tick = next(t for t in recorded_ticks(OKEX_1) if t.symbol == inst_id)

    assert (f"{tick.price:f}", f"{tick.volume:f}", tick.side, tick.trade_id) == (price, size, side, trade_id)
    assert tick.price.as_tuple() == Decimal(price).as_tuple()
    assert tick.timestamp == when.replace(tzinfo=UTC)


def test_the_recorded_subscribe_request_names_the_trades_channels_we_would_send() -> None:
    """The request cryptofeed sent in OKX.ws.1.0, less its tickers and books args, is ours."""
    sent = next(line for line in (FIXTURES / OKX).read_bytes().split(b"\n") if b'"channel":"books"' in line)
    args = re.findall(rb'\{"channel":"trades","instId":"[^"]+"\}', sent)

    assert subscribe_requests(["BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT"]) == [
        '{"op":"subscribe","args":[' + b",".join(args).decode() + "]}"
    ]
