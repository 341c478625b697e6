"""The parser against real Binance recordings (cryptofeed sample_data, 2021): every trade, exactly.

Expected numbers are written out from the recordings' documentation (shared/data/real/SOURCES.md),
never counted by code under test. Trade frames are picked out by their stream name with a plain
byte search, so a parser that drops or misroutes a trade shows up as a wrong count.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest

from kairos_core.adapters.inbound.feed_handler.binance_wire import (
    ErrorReply,
    ServerShutdown,
    SubscriptionReply,
    parse_frame,
)
from kairos_core.domain import Exchange, FrameRejected, MarketTick, RejectReason, Side, TickSource

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"
COMBINED = "BINANCE-ee25be.0"  # BTCUSDT, ETHUSDT, DOTUSDT; 2021-04-04, ~90 s
MIXED = "BINANCE.ws.1.0"  # four illiquid symbols, with bookTicker; 2021-10-12, ~30 s
TRADE = b'@aggTrade"'
OTHER_KINDS = (b'@depth@100ms"', b'@kline_1m"', b'@bookTicker"')

# From SOURCES.md. BINANCE-ee25be.0: 4720 lines = 1910 aggTrade + 2688 depth@100ms + 118 kline_1m
# + 3 REST snapshots + 1 connection line. BINANCE.ws.1.0: 267 lines = 2 aggTrade + 84 bookTicker
# + 177 depth@100ms + 2 kline_1m + 1 connection line + 1 empty last line.
DOCUMENTED = {
    COMBINED: {
        "frames": 4716,
        "trades": {"BTCUSDT": 1227, "ETHUSDT": 506, "DOTUSDT": 177},
        "other": {b'@depth@100ms"': 2688, b'@kline_1m"': 118, b'@bookTicker"': 0},
    },
    MIXED: {
        "frames": 265,
        "trades": {"NKNUSDT": 1, "LRCBTC": 1},  # "2 aggTrade"; the symbols read off the file
        "other": {b'@depth@100ms"': 177, b'@kline_1m"': 2, b'@bookTicker"': 84},
    },
}
RECORDINGS = sorted(DOCUMENTED)
_TIMESTAMP = re.compile(rb"\d+\.\d+")


@cache
def recorded_frames(name: str) -> tuple[tuple[int, bytes], ...]:
    """(receipt time in epoch ns, payload) of every inbound frame, in recorded order.

    A frame line is ``<ts>: <payload>``, split on the first ``": "`` (payloads contain more).
    Connection lines (``<url> <-> <ts>``), REST lines (``<url> -> <ts>: <body>``) and
    ``configuration:`` lines have no bare timestamp before that separator and are skipped.
    """
    frames = []
    for line in (FIXTURES / name).read_bytes().split(b"\n"):
        head, separator, payload = line.partition(b": ")
        if separator and _TIMESTAMP.fullmatch(head):
            frames.append((int(Decimal(head.decode()) * 10**9), payload))
    return tuple(frames)


def recorded_ticks(name: str) -> list[MarketTick]:
    """Every aggTrade frame parsed, in order; a rejection or a non-tick fails the test."""
    ticks = []
    for received_at_ns, payload in recorded_frames(name):
        if TRADE in payload:
            tick = parse_frame(payload, received_at_ns, TickSource.REPLAY)
            assert type(tick) is MarketTick, payload
            ticks.append(tick)
    return ticks


@pytest.mark.parametrize("name", RECORDINGS)
def test_the_recording_is_framed_as_documented(name: str) -> None:
    frames = [payload for _, payload in recorded_frames(name)]
    documented = DOCUMENTED[name]

    assert len(frames) == documented["frames"]
    assert sum(TRADE in payload for payload in frames) == sum(documented["trades"].values())
    for kind, count in documented["other"].items():
        assert sum(kind in payload for payload in frames) == count


@pytest.mark.parametrize("name", RECORDINGS)
def test_every_recorded_trade_parses_with_no_rejection(name: str) -> None:
    ticks = recorded_ticks(name)

    assert Counter(tick.symbol for tick in ticks) == DOCUMENTED[name]["trades"]
    for tick, (received_at_ns, payload) in zip(
        ticks, [frame for frame in recorded_frames(name) if TRADE in frame[1]], strict=True
    ):
        assert payload.startswith(b'{"stream":"' + tick.symbol.lower().encode() + TRADE)
        assert tick.exchange is Exchange.BINANCE
        assert tick.source is TickSource.REPLAY
        assert tick.received_at_ns == received_at_ns
        assert parse_frame(payload.decode(), received_at_ns, TickSource.REPLAY) == tick  # str input too


def test_aggregate_ids_are_gap_free_per_symbol() -> None:
    """Documented: ``a`` is gap-free per symbol, ``f``/``l`` chain with no gaps, 169 have l > f."""
    previous: dict[str, MarketTick] = {}
    for tick in recorded_ticks(COMBINED):
        before = previous.get(tick.symbol)
        if before is not None:
            assert tick.trade_id == before.trade_id + 1, tick
            assert tick.first_trade_id == before.last_trade_id + 1, tick
        previous[tick.symbol] = tick

    assert sorted(previous) == ["BTCUSDT", "DOTUSDT", "ETHUSDT"]
    assert sum(tick.last_trade_id > tick.first_trade_id for tick in recorded_ticks(COMBINED)) == 169


@pytest.mark.parametrize("name", RECORDINGS)
def test_every_other_frame_is_unknown_event_or_a_control_value(name: str) -> None:
    reasons: Counter[RejectReason] = Counter()
    kinds: Counter[bytes] = Counter()
    for received_at_ns, payload in recorded_frames(name):
        if TRADE in payload:
            continue
        try:
            result = parse_frame(payload, received_at_ns)
        except FrameRejected as e:
            reasons[e.reason] += 1
            kinds.update(kind for kind in OTHER_KINDS if kind in payload)
            continue
        assert isinstance(result, SubscriptionReply | ErrorReply | ServerShutdown), payload

    other = DOCUMENTED[name]["other"]
    assert reasons == {RejectReason.UNKNOWN_EVENT: sum(other.values())}
    assert kinds == {kind: count for kind, count in other.items() if count}


def test_the_first_btcusdt_trade_has_exactly_its_recorded_values() -> None:
    received_at_ns, payload = next(
        frame for frame in recorded_frames(COMBINED) if b'"btcusdt@aggTrade"' in frame[1]
    )
    assert payload == (
        b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1617566591315,"s":"BTCUSDT",'
        b'"a":665076760,"p":"58001.03000000","q":"0.08620500","f":745522877,"l":745522877,'
        b'"T":1617566591314,"m":true,"M":true}}'
    )

    tick = parse_frame(payload, received_at_ns)

    assert tick == MarketTick(
        symbol="BTCUSDT",
        exchange=Exchange.BINANCE,
        price=Decimal("58001.03000000"),
        volume=Decimal("0.08620500"),
        side=Side.SELL,  # m true: the buyer was the maker
        trade_id=665076760,
        first_trade_id=745522877,
        last_trade_id=745522877,
        timestamp_ms=1617566591314,
        event_time_ms=1617566591315,
        received_at_ns=1617566592629139000,  # the recorder's 1617566592.629139
        source=TickSource.LIVE,
    )
    assert str(tick.price) == "58001.03000000"
    assert str(tick.volume) == "0.08620500"
    assert tick.timestamp == datetime(2021, 4, 4, 20, 3, 11, 314000, tzinfo=UTC)
    assert tick.event_time == datetime(2021, 4, 4, 20, 3, 11, 315000, tzinfo=UTC)


def test_the_recorded_lrcbtc_trade_keeps_its_small_price_exactly() -> None:
    received_at_ns, payload = next(
        frame for frame in recorded_frames(MIXED) if b'"lrcbtc@aggTrade"' in frame[1]
    )

    tick = parse_frame(payload, received_at_ns)

    assert isinstance(tick, MarketTick)
    assert (tick.symbol, str(tick.price), str(tick.volume)) == ("LRCBTC", "0.00000638", "177.00000000")
    assert tick.side is Side.BUY  # m false: the buyer took the offer
    assert (tick.trade_id, tick.first_trade_id, tick.last_trade_id) == (9213679, 12368013, 12368013)
    assert tick.timestamp == datetime(2021, 10, 12, 0, 28, 54, 486000, tzinfo=UTC)
