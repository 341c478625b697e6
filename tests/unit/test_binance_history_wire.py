"""Binance's REST aggTrades answer: mapped exactly as the stream maps the same trade, as backfill."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kairos_core.adapters.inbound.feed_handler.binance_wire import (
    encode_agg_trade,
    encode_agg_trades,
    parse_agg_trades,
    parse_frame,
)
from kairos_core.domain import Exchange, FrameRejected, MarketTick, RejectReason, Side, TickSource
from tests.strategies import agg_trade_data, binance_symbols, market_ticks, received_at_ns

EXCERPT_CHARS = 200
STREAM_ONLY = ("e", "E", "s")  # what a REST item lacks; it keeps "M", which is ignored

# The first three items of a real answer to GET /api/v3/aggTrades for BTCUSDT, 2021-10-22
# (nautilus_trader's http_spot_market_agg_trades.json, LGPL-3.0; see shared/data/real/SOURCES.md).
RECORDED = (
    b'[{"a":966492862,"p":"60759.60000000","q":"0.00841000","f":1111480471,"l":1111480471,'
    b'"T":1634944096633,"m":false,"M":true},'
    b'{"a":966492863,"p":"60759.60000000","q":"0.00189000","f":1111480472,"l":1111480472,'
    b'"T":1634944096848,"m":false,"M":true},'
    b'{"a":966492864,"p":"60759.59000000","q":"0.00037000","f":1111480473,"l":1111480473,'
    b'"T":1634944096877,"m":true,"M":true}]'
)


def rest_item(data: dict[str, Any]) -> dict[str, Any]:
    """The REST form of a stream event's data: the same trade without e, E and s."""
    return {key: value for key, value in data.items() if key not in STREAM_ONLY}


def backfill(tick: MarketTick) -> MarketTick:
    """What a live tick of a trade becomes when the trade is fetched instead: no event time."""
    return tick._replace(source=TickSource.BACKFILL, event_time_ms=None)


def test_a_recorded_answer_maps_to_exactly_its_trades() -> None:
    written_out = [  # price, quantity, taker side (m true: the buyer was the maker), a, f = l, T
        ("60759.60000000", "0.00841000", Side.BUY, 966492862, 1111480471, 1634944096633),
        ("60759.60000000", "0.00189000", Side.BUY, 966492863, 1111480472, 1634944096848),
        ("60759.59000000", "0.00037000", Side.SELL, 966492864, 1111480473, 1634944096877),
    ]
    ticks = parse_agg_trades(RECORDED, "BTCUSDT", 42)
    assert ticks == [
        MarketTick(
            symbol="BTCUSDT",
            exchange=Exchange.BINANCE,
            price=Decimal(price),
            volume=Decimal(quantity),
            side=side,
            trade_id=trade_id,
            first_trade_id=first_and_last,
            last_trade_id=first_and_last,
            timestamp_ms=trade_time,
            event_time_ms=None,
            received_at_ns=42,
            source=TickSource.BACKFILL,
        )
        for price, quantity, side, trade_id, first_and_last, trade_time in written_out
    ]
    assert [(str(tick.price), str(tick.volume)) for tick in ticks] == [row[:2] for row in written_out]


@given(st.lists(agg_trade_data(st.just("BTCUSDT")), max_size=5), received_at_ns, st.booleans())
def test_each_item_maps_as_the_stream_maps_the_same_trade(
    events: list[dict[str, Any]], receipt: int, to_bytes: bool
) -> None:
    answer = json.dumps([rest_item(data) for data in events])
    live = [parse_frame(json.dumps(data), receipt) for data in events]
    assert parse_agg_trades(answer.encode() if to_bytes else answer, "BTCUSDT", receipt) == [
        backfill(tick) for tick in live if isinstance(tick, MarketTick)
    ]


@given(st.lists(market_ticks(st.just("ETHUSDT")), max_size=5), received_at_ns)
def test_encode_then_parse_gives_back_the_ticks_as_backfill(ticks: list[MarketTick], receipt: int) -> None:
    parsed = parse_agg_trades(encode_agg_trades(ticks), "ETHUSDT", receipt)
    assert parsed == [backfill(tick._replace(received_at_ns=receipt)) for tick in ticks]


@given(market_ticks())
def test_an_answer_item_is_the_stream_event_without_e_big_e_and_s(tick: MarketTick) -> None:
    (item,) = json.loads(encode_agg_trades([tick]))
    event = json.loads(encode_agg_trade(tick, combined=False))
    assert item == rest_item(event)
    assert list(item) == ["a", "p", "q", "f", "l", "T", "m", "M"]  # Binance's key order


def test_an_empty_answer_is_no_ticks() -> None:
    assert parse_agg_trades(b"[]", "BTCUSDT") == []


def test_the_symbol_comes_from_the_request() -> None:
    assert {tick.symbol for tick in parse_agg_trades(RECORDED, "ETHBTC")} == {"ETHBTC"}


def test_an_error_body_is_a_schema_rejection() -> None:
    body = b'{"code":-1121,"msg":"Invalid symbol."}'
    with pytest.raises(FrameRejected) as rejected:
        parse_agg_trades(body, "BTCUSDT")
    assert rejected.value.reason is RejectReason.SCHEMA
    assert rejected.value.excerpt == body.decode()


VALID = json.loads(RECORDED)[0]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"p": "0"}, RejectReason.VALUE),
        ({"q": "NaN"}, RejectReason.VALUE),
        ({"f": 1111480472, "l": 1111480471}, RejectReason.VALUE),
        ({"a": -1}, RejectReason.VALUE),
        ({"a": "966492862"}, RejectReason.TYPE),
        ({"m": 0}, RejectReason.TYPE),
        ({"T": None}, RejectReason.TYPE),
    ],
)
def test_one_bad_item_rejects_the_answer(change: dict[str, Any], reason: RejectReason) -> None:
    answer = json.dumps([VALID, VALID | change, VALID])
    with pytest.raises(FrameRejected) as rejected:
        parse_agg_trades(answer, "BTCUSDT")
    assert rejected.value.reason is reason


def test_a_rejected_value_points_at_its_item() -> None:
    bad = VALID | {"a": 966492863, "p": "-1"}
    with pytest.raises(FrameRejected, match="aggregate trade 966492863") as rejected:
        parse_agg_trades(json.dumps([VALID, bad]), "BTCUSDT")
    assert json.loads(rejected.value.excerpt) == {key: bad[key] for key in "apqflTm"}  # as decoded


@pytest.mark.parametrize("missing", ["a", "p", "q", "f", "l", "T", "m"])
def test_a_missing_field_is_a_schema_rejection(missing: str) -> None:
    item = {key: value for key, value in VALID.items() if key != missing}
    with pytest.raises(FrameRejected) as rejected:
        parse_agg_trades(json.dumps([item]), "BTCUSDT")
    assert rejected.value.reason is RejectReason.SCHEMA


@given(st.binary(max_size=300) | st.text(max_size=300), binance_symbols)
@example(b"[", "BTCUSDT")
@example(RECORDED[:-20], "BTCUSDT")
@example(b"\xff", "BTCUSDT")
@example('[{"a":1,"p":"1","q":"1","f":1,"l":1,"T":1,"m":true,"M":true}, 1]', "BTCUSDT")
def test_anything_is_ticks_or_a_rejection_never_another_error(raw: bytes | str, symbol: str) -> None:
    outcome: list[MarketTick] | FrameRejected
    try:
        outcome = parse_agg_trades(raw, symbol, 0)
    except FrameRejected as rejected:
        outcome = rejected
    if isinstance(outcome, FrameRejected):
        assert type(outcome.reason) is RejectReason
        assert len(outcome.excerpt) <= EXCERPT_CHARS
        return
    for tick in outcome:
        assert tick.source is TickSource.BACKFILL
        assert tick.symbol == symbol
        assert tick.price > 0
        assert tick.volume > 0
        assert tick.first_trade_id <= tick.last_trade_id
