"""OKX's REST trade history answer: each item one fill, mapped exactly as the stream maps it, as backfill."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kairos_core.adapters.inbound.feed_handler.okx_history_wire import (
    VenueError,
    encode_error,
    encode_history_trades,
    parse_history_trades,
)
from kairos_core.adapters.inbound.feed_handler.okx_wire import parse_frame
from kairos_core.domain import Exchange, FrameRejected, MarketTick, RejectReason, Side, TickSource
from tests.strategies import (
    okx_inst_ids,
    okx_market_ticks,
    okx_trade_items,
    received_at_ns,
    tick_from_okx_trade,
)
from tests.wire_checks import assert_identical

EXCERPT_CHARS = 200
RECORDING = Path(__file__).resolve().parents[1] / "fixtures" / "okx" / "OKX.ws.1.0"
BTC_USDT_PUSH = b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":'

# OKX's documented answer (docs-v5, "GET / Trades history"), as it writes it.
DOCUMENTED = (
    b'{"code":"0","msg":"","data":['
    b'{"instId":"BTC-USDT","side":"sell","sz":"0.00001","source":"0","px":"29963.2",'
    b'"tradeId":"242720720","ts":"1654161646974"},'
    b'{"instId":"BTC-USDT","side":"sell","sz":"0.00001","source":"0","px":"29964.1",'
    b'"tradeId":"242720719","ts":"1654161641568"}]}'
)
VALID = json.loads(DOCUMENTED)["data"][0]


def answer(items: list[dict[str, Any]]) -> str:
    return json.dumps({"code": "0", "msg": "", "data": items})


def backfill(tick: MarketTick) -> MarketTick:
    """What a live tick of a single fill becomes when the fill is fetched from the history."""
    return tick._replace(source=TickSource.BACKFILL)


def single_fills(tick: MarketTick) -> MarketTick:
    return tick._replace(first_trade_id=tick.trade_id)


def fills(raw: bytes | str, inst_id: str = "BTC-USDT", receipt: int = 0) -> list[MarketTick]:
    parsed = parse_history_trades(raw, inst_id, receipt)
    assert isinstance(parsed, list), parsed
    return parsed


def pushed(push: bytes, receipt: int) -> tuple[MarketTick, ...]:
    ticks = parse_frame(push, receipt)
    assert isinstance(ticks, tuple), ticks
    return ticks


def test_the_documented_answer_maps_to_exactly_its_fills_newest_first() -> None:
    written_out = [  # price, size, taker side, tradeId, ts
        ("29963.2", "0.00001", Side.SELL, 242720720, 1654161646974),
        ("29964.1", "0.00001", Side.SELL, 242720719, 1654161641568),
    ]
    assert parse_history_trades(DOCUMENTED, "BTC-USDT", 42) == [
        MarketTick(
            symbol="BTC-USDT",
            exchange=Exchange.OKX,
            price=Decimal(price),
            volume=Decimal(size),
            side=side,
            trade_id=trade_id,
            first_trade_id=trade_id,
            last_trade_id=trade_id,
            timestamp_ms=ts,
            event_time_ms=None,
            received_at_ns=42,
            source=TickSource.BACKFILL,
        )
        for price, size, side, trade_id, ts in written_out
    ]


def test_recorded_fills_map_as_their_live_pushes_did() -> None:
    """The 69 BTC-USDT pushes of the 2022 recording (one fill each, no count: the fields of a history
    item), listed as the history lists them, give the stream's ticks, as backfill, newest first."""
    pushes = [
        line.split(b": ", 1)[1] for line in RECORDING.read_bytes().splitlines() if BTC_USDT_PUSH in line
    ]
    items = [item for push in pushes for item in json.loads(push)["data"]]
    assert len(items) == 69
    live = [tick for push in pushes for tick in pushed(push, 7)]

    fetched = fills(answer(items[::-1]), "BTC-USDT", 7)

    for got, want in zip(fetched, live[::-1], strict=True):
        assert_identical(got, backfill(want))
    ids = [tick.trade_id for tick in reversed(fetched)]
    assert ids == list(range(338476307, 338476307 + 69)), "spot ids run without gaps per instrument"


@given(st.lists(okx_trade_items(st.just("ETH-USDT"), newer=False), max_size=5), received_at_ns, st.booleans())
def test_each_item_maps_as_the_stream_maps_the_same_fill(
    items: list[dict[str, Any]], receipt: int, to_bytes: bool
) -> None:
    raw = answer(items)
    fetched = parse_history_trades(raw.encode() if to_bytes else raw, "ETH-USDT", receipt)
    assert fetched == [tick_from_okx_trade(item, receipt, TickSource.BACKFILL) for item in items]


@given(st.lists(okx_market_ticks(st.just("BTC-USDT-SWAP")).map(single_fills), max_size=5), received_at_ns)
def test_encode_then_parse_gives_back_the_fills_as_backfill(ticks: list[MarketTick], receipt: int) -> None:
    parsed = fills(encode_history_trades(ticks), "BTC-USDT-SWAP", receipt)
    for got, want in zip(parsed, ticks, strict=True):
        assert_identical(got, backfill(want._replace(received_at_ns=receipt)))


def test_an_item_is_written_with_okx_keys_in_okx_order() -> None:
    tick = fills(DOCUMENTED)[0]
    assert json.loads(encode_history_trades([tick]))["data"] == [VALID]
    assert list(json.loads(encode_history_trades([tick]))) == ["code", "msg", "data"]


def test_an_aggregation_of_several_fills_cannot_be_written_as_one_item() -> None:
    tick = fills(DOCUMENTED)[0]
    with pytest.raises(ValueError, match="one fill"):
        encode_history_trades([tick._replace(first_trade_id=tick.trade_id - 2)])


def test_an_empty_answer_is_no_fills() -> None:
    assert parse_history_trades(b'{"code":"0","msg":"","data":[]}', "BTC-USDT") == []


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        (
            encode_error("51001", "Instrument ID, Instrument ID code or Spread ID doesn't exist."),
            "51001",
            "Instrument ID, Instrument ID code or Spread ID doesn't exist.",
        ),
        (encode_error("50011", "Too Many Requests"), "50011", "Too Many Requests"),
        (b'{"msg":"Too Many Requests","code":"50011"}', "50011", "Too Many Requests"),  # no data
        (b'{"code":50011,"msg":"Too Many Requests","data":[]}', "50011", "Too Many Requests"),  # a number
        (b'{"code":"50014","data":[{"not":"a trade"}]}', "50014", ""),
    ],
)
def test_an_error_code_is_the_venues_error_not_an_empty_page(raw: bytes, code: str, message: str) -> None:
    assert parse_history_trades(raw, "BTC-USDT") == VenueError(code=code, message=message)


def test_a_long_error_text_is_cut_for_the_log() -> None:
    error = parse_history_trades(encode_error("50000", "x" * 100_000), "BTC-USDT")
    assert error == VenueError(code="50000", message="x" * 500)


def test_another_instrument_rejects_the_answer() -> None:
    with pytest.raises(
        FrameRejected, match="trade 242720720 is of 'BTC-USDT', not of 'ETH-USDT'"
    ) as rejected:
        parse_history_trades(DOCUMENTED, "ETH-USDT")
    assert rejected.value.reason is RejectReason.VALUE


def test_an_item_of_several_fills_rejects_the_answer() -> None:
    with pytest.raises(FrameRejected, match="one fill") as rejected:
        parse_history_trades(answer([VALID | {"count": "3"}]), "BTC-USDT")
    assert rejected.value.reason is RejectReason.VALUE


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"px": "0"}, RejectReason.VALUE),
        ({"sz": "NaN"}, RejectReason.VALUE),
        ({"side": "hold"}, RejectReason.VALUE),
        ({"tradeId": "-1"}, RejectReason.VALUE),
        ({"tradeId": 242720720}, RejectReason.TYPE),
        ({"ts": None}, RejectReason.TYPE),
    ],
)
def test_one_bad_item_rejects_the_answer_pointing_at_the_item(
    change: dict[str, Any], reason: RejectReason
) -> None:
    bad = VALID | {"tradeId": "242720721"} | change
    with pytest.raises(FrameRejected) as rejected:
        parse_history_trades(answer([bad, VALID]), "BTC-USDT")
    assert rejected.value.reason is reason
    assert f"trade {bad['tradeId']}" in rejected.value.detail
    assert json.loads(rejected.value.excerpt)["px"] == bad["px"]  # the item, not the answer's start


@pytest.mark.parametrize("missing", ["instId", "tradeId", "px", "sz", "side", "ts"])
def test_a_missing_field_is_a_schema_rejection(missing: str) -> None:
    item = {key: value for key, value in VALID.items() if key != missing}
    with pytest.raises(FrameRejected) as rejected:
        parse_history_trades(answer([item]), "BTC-USDT")
    assert rejected.value.reason is RejectReason.SCHEMA


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", RejectReason.JSON),
        (b"<html>502 Bad Gateway</html>", RejectReason.JSON),
        (b"[]", RejectReason.SCHEMA),
        (b'{"msg":""}', RejectReason.SCHEMA),
        (b'{"code":"0","msg":""}', RejectReason.SCHEMA),
        (b'{"code":"0","data":{"tradeId":"1"}}', RejectReason.SCHEMA),
        (b'{"code":"0","data":[1]}', RejectReason.SCHEMA),
        (b'{"code":true,"data":[]}', RejectReason.TYPE),
        (b"[" * 100_000 + b"]" * 100_000, RejectReason.JSON),  # nested deeper than any decoder goes
    ],
)
def test_an_answer_that_is_not_okxs_is_rejected(raw: bytes, reason: RejectReason) -> None:
    with pytest.raises(FrameRejected) as rejected:
        parse_history_trades(raw, "BTC-USDT")
    assert rejected.value.reason is reason


@given(st.binary(max_size=300) | st.text(max_size=300), okx_inst_ids)
@example(DOCUMENTED[:-20], "BTC-USDT")
@example(b"\xff", "BTC-USDT")
@example(
    '{"code":"0","data":[{"instId":"A-B","tradeId":"1","px":"1","sz":"1","side":"buy","ts":"1"}, 1]}', "A-B"
)
def test_anything_is_fills_an_error_or_a_rejection_never_another_exception(
    raw: bytes | str, inst_id: str
) -> None:
    outcome: list[MarketTick] | VenueError | FrameRejected
    try:
        outcome = parse_history_trades(raw, inst_id, 0)
    except FrameRejected as rejected:
        outcome = rejected
    if isinstance(outcome, FrameRejected):
        assert type(outcome.reason) is RejectReason
        assert len(outcome.excerpt) <= EXCERPT_CHARS
        return
    if isinstance(outcome, VenueError):
        assert outcome.code != "0"
        return
    for tick in outcome:
        assert tick.source is TickSource.BACKFILL
        assert tick.symbol == inst_id
        assert tick.price > 0
        assert tick.volume > 0
        assert tick.first_trade_id == tick.last_trade_id == tick.trade_id
