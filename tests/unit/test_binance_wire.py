"""The Binance wire parser: exact values, only ``FrameRejected`` for bad frames, round trips."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kairos_core.adapters.inbound.feed_handler.binance_wire import (
    ErrorReply,
    ServerShutdown,
    SubscriptionReply,
    encode_agg_trade,
    parse_frame,
)
from kairos_core.domain import Exchange, FrameRejected, MarketTick, RejectReason, Side, TickSource
from tests.strategies import (
    MAX_EPOCH_MS,
    MAX_ID,
    agg_trade_data,
    market_ticks,
    received_at_ns,
    tick_from_agg_trade,
    tick_sources,
)
from tests.wire_checks import (
    assert_identical,
    expected_excerpt,
    non_positive_decimals,
    not_finite_or_not_decimal,
    not_json,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EXCERPT_CHARS = 200
RESULT_TYPES = (MarketTick, SubscriptionReply, ErrorReply, ServerShutdown)
INT_FIELDS = ("E", "a", "f", "l", "T")
STR_FIELDS = ("s", "p", "q")
REQUIRED_FIELDS = ("e", *INT_FIELDS, *STR_FIELDS, "m")  # "M" is ignored, so it may go missing

# The documented sample (also the first BTCUSDT aggTrade of the 2021 recording).
SAMPLE: dict[str, Any] = {
    "e": "aggTrade",
    "E": 1617566591315,
    "s": "BTCUSDT",
    "a": 665076760,
    "p": "58001.03000000",
    "q": "0.08620500",
    "f": 745522877,
    "l": 745522877,
    "T": 1617566591314,
    "m": True,
    "M": True,
}
# Frames of events this adapter does not consume, verbatim from the recordings.
DEPTH_FRAME = (
    '{"stream":"dotusdt@depth@100ms","data":{"e":"depthUpdate","E":1617566591307,"s":"DOTUSDT",'
    '"U":1513939202,"u":1513939205,"b":[["43.50830000","7.00000000"],["43.50500000","0.00000000"],'
    '["43.49780000","0.00000000"],["43.49090000","180.00000000"]],"a":[]}}'
)
KLINE_FRAME = (
    '{"stream":"ethusdt@kline_1m","data":{"e":"kline","E":1617566591776,"s":"ETHUSDT","k":{'
    '"t":1617566580000,"T":1617566639999,"s":"ETHUSDT","i":"1m","f":346711017,"L":346711087,'
    '"o":"2063.88000000","c":"2064.73000000","h":"2065.00000000","l":"2063.88000000","v":"70.86425000",'
    '"n":71,"x":false,"q":"146321.71560700","V":"46.98201000","Q":"97009.77617410","B":"0"}}}'
)
BOOK_TICKER_FRAME = (
    '{"stream":"nknusdt@bookTicker","data":{"u":499869768,"s":"NKNUSDT","b":"0.35210000",'
    '"B":"672.00000000","a":"0.35260000","A":"3199.00000000"}}'
)

shapes = st.booleans()  # True: combined {"stream", "data"}; False: the raw data object
as_bytes = st.booleans()
separators = st.sampled_from([(",", ":"), (", ", ": ")])


def wire(data: Any, *, combined: bool, to_bytes: bool, seps: tuple[str, str] = (",", ":")) -> bytes | str:
    """A frame built with the standard library, independent of the module's encoder."""
    if combined:
        symbol = data.get("s") if isinstance(data, dict) else None
        stream = f"{symbol.lower()}@aggTrade" if isinstance(symbol, str) else "btcusdt@aggTrade"
        data = {"stream": stream, "data": data}
    text = json.dumps(data, separators=seps)
    return text.encode() if to_bytes else text


def parse_or_rejection(raw: bytes | str) -> object:
    """Parse ``raw``; return the value, or the ``FrameRejected`` after checking it. Anything else fails."""
    result: object
    try:
        result = parse_frame(raw, 0)
    except FrameRejected as rejected:
        result = rejected
    if isinstance(result, FrameRejected):
        assert type(result.reason) is RejectReason
        assert len(result.excerpt) <= EXCERPT_CHARS
        assert result.excerpt == expected_excerpt(raw)
        return result
    assert isinstance(result, RESULT_TYPES)
    if isinstance(result, MarketTick):  # whatever gets through has passed the value checks
        assert result.price.is_finite()
        assert result.price > 0
        assert result.volume.is_finite()
        assert result.volume > 0
        assert 0 <= result.first_trade_id <= result.last_trade_id <= MAX_ID
        assert 0 <= result.trade_id <= MAX_ID
        assert 0 <= result.timestamp_ms <= MAX_EPOCH_MS
        assert result.symbol
    return result


def reject_reason(raw: bytes | str) -> RejectReason:
    result = parse_or_rejection(raw)
    assert isinstance(result, FrameRejected), f"accepted: {result!r}"
    return result.reason


# Valid frames ---------------------------------------------------------------------------------


@given(agg_trade_data(), shapes, as_bytes, separators, received_at_ns, tick_sources)
@example(SAMPLE, True, True, (",", ":"), 1617566592629139000, TickSource.LIVE)
@example(dict(SAMPLE, p="0.00000010", q="1", m=False), False, False, (",", ":"), 0, TickSource.LIVE)
def test_valid_agg_trade_parses_to_exactly_its_fields(
    data: dict[str, Any],
    combined: bool,
    to_bytes: bool,
    seps: tuple[str, str],
    received_ns: int,
    source: TickSource,
) -> None:
    tick = parse_frame(wire(data, combined=combined, to_bytes=to_bytes, seps=seps), received_ns, source)

    assert type(tick) is MarketTick
    assert tick.symbol == data["s"]
    assert tick.exchange is Exchange.BINANCE
    # Digit for digit. str() of a Decimal switches to exponents below 1E-6 ("0.00000010" ->
    # "1.0E-7"), so the plain-notation form is what must equal the wire string.
    assert f"{tick.price:f}" == data["p"]
    assert f"{tick.volume:f}" == data["q"]
    assert tick.price.as_tuple() == Decimal(data["p"]).as_tuple()
    assert tick.volume.as_tuple() == Decimal(data["q"]).as_tuple()
    if Decimal(data["p"]).adjusted() >= -6:
        assert str(tick.price) == data["p"]
    assert tick.side is (Side.SELL if data["m"] else Side.BUY)
    assert (tick.trade_id, tick.first_trade_id, tick.last_trade_id) == (data["a"], data["f"], data["l"])
    assert tick.timestamp_ms == data["T"]
    assert tick.event_time_ms == data["E"]
    assert tick.timestamp == EPOCH + timedelta(milliseconds=data["T"])
    assert tick.timestamp.tzinfo is UTC
    assert tick.event_time == EPOCH + timedelta(milliseconds=data["E"])
    assert tick.received_at_ns == received_ns
    assert tick.source is source
    assert_identical(tick, tick_from_agg_trade(data, received_ns, source))


@given(agg_trade_data(), shapes)
def test_source_defaults_to_live_and_receipt_time_to_now(data: dict[str, Any], combined: bool) -> None:
    before = time.time_ns()
    tick = parse_frame(wire(data, combined=combined, to_bytes=True))
    after = time.time_ns()

    assert isinstance(tick, MarketTick)
    assert tick.source is TickSource.LIVE
    assert before <= tick.received_at_ns <= after


@given(market_ticks(), shapes)
def test_encode_then_parse_is_the_identity(tick: MarketTick, combined: bool) -> None:
    frame = encode_agg_trade(tick, combined=combined)
    parsed = parse_frame(frame, tick.received_at_ns, tick.source)

    assert isinstance(parsed, MarketTick)
    assert_identical(parsed, tick)


@given(agg_trade_data(), shapes)
@example(dict(SAMPLE, q="0.00000010"), True)
def test_parse_then_encode_gives_back_the_binance_frame(data: dict[str, Any], combined: bool) -> None:
    data = dict(data, M=True)  # Binance sends M true on every spot aggTrade; the encoder does too
    raw = wire(data, combined=combined, to_bytes=False)
    tick = parse_frame(raw, 0)

    assert isinstance(tick, MarketTick)
    assert json.loads(encode_agg_trade(tick, combined=combined)) == json.loads(raw)


# Control frames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"result":null,"id":1}', SubscriptionReply(request_id=1, result=None)),
        (
            '{"result":["btcusdt@aggTrade"],"id":"ls"}',
            SubscriptionReply(request_id="ls", result=["btcusdt@aggTrade"]),
        ),
        (
            '{"code":2,"msg":"Invalid request","id":1}',
            ErrorReply(request_id=1, code=2, message="Invalid request"),
        ),
        ('{"error":{"code":2,"msg":"x"},"id":3}', ErrorReply(request_id=3, code=2, message="x")),
        (
            '{"error":{"code":-1121,"msg":"Invalid symbol."},"id":null}',
            ErrorReply(request_id=None, code=-1121, message="Invalid symbol."),
        ),
        (
            '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1700000000000}}',
            ServerShutdown(event_time_ms=1700000000000),
        ),
        ('{"e":"serverShutdown","E":1700000000000}', ServerShutdown(event_time_ms=1700000000000)),
    ],
)
@pytest.mark.parametrize("to_bytes", [False, True])
def test_control_frames_become_control_values(frame: str, expected: object, to_bytes: bool) -> None:
    assert parse_frame(frame.encode() if to_bytes else frame, 0) == expected


@given(st.one_of(st.integers(), st.text()), st.none() | st.booleans() | st.lists(st.text(), max_size=3))
def test_any_reply_with_result_and_id_is_a_subscription_reply(request_id: int | str, result: Any) -> None:
    frame = json.dumps({"result": result, "id": request_id})

    assert parse_frame(frame, 0) == SubscriptionReply(request_id=request_id, result=result)


# Rejected frames: the reason says why ---------------------------------------------------------


@given(agg_trade_data(), st.sampled_from(REQUIRED_FIELDS), shapes, as_bytes)
def test_a_missing_field_is_a_schema_rejection(
    data: dict[str, Any], key: str, combined: bool, to_bytes: bool
) -> None:
    data = {name: value for name, value in data.items() if name != key}

    assert reject_reason(wire(data, combined=combined, to_bytes=to_bytes)) is RejectReason.SCHEMA


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
containers = st.lists(st.integers(), max_size=2) | st.dictionaries(
    st.text(max_size=3), st.integers(), max_size=2
)
WRONG_TYPES = {
    **{key: st.none() | st.booleans() | finite_floats | st.text() | containers for key in INT_FIELDS},
    **{key: st.none() | st.booleans() | st.integers() | finite_floats | containers for key in STR_FIELDS},
    "m": st.none() | st.integers() | finite_floats | st.text() | containers,
    "e": st.none() | st.booleans() | st.integers() | finite_floats | containers,
}


@given(
    agg_trade_data(),
    st.sampled_from(sorted(WRONG_TYPES)).flatmap(lambda k: st.tuples(st.just(k), WRONG_TYPES[k])),
    shapes,
    as_bytes,
)
@example(SAMPLE, ("T", 1617566591314.0), True, False)  # integral, but still a JSON float
@example(SAMPLE, ("p", 58001.03), True, False)
@example(SAMPLE, ("m", 1), False, False)
def test_a_field_of_the_wrong_json_type_is_a_type_rejection(
    data: dict[str, Any], mutation: tuple[str, Any], combined: bool, to_bytes: bool
) -> None:
    key, value = mutation
    data = {**data, key: value}  # a copy: the examples share SAMPLE

    assert reject_reason(wire(data, combined=combined, to_bytes=to_bytes)) is RejectReason.TYPE


@given(st.none() | st.booleans() | st.integers() | st.text() | st.lists(st.integers(), max_size=2), as_bytes)
def test_a_combined_frame_whose_data_is_not_an_object_is_a_schema_rejection(
    data: Any, to_bytes: bool
) -> None:
    frame = json.dumps({"stream": "btcusdt@aggTrade", "data": data})

    assert reject_reason(frame.encode() if to_bytes else frame) is RejectReason.SCHEMA


bad_amounts = st.tuples(st.sampled_from(["p", "q"]), non_positive_decimals | not_finite_or_not_decimal)
bad_ints = st.tuples(st.sampled_from(INT_FIELDS), st.integers(max_value=-1) | st.integers(min_value=2**63))
late_times = st.tuples(st.sampled_from(["T", "E"]), st.integers(MAX_EPOCH_MS + 1, 2**63 - 1))


@given(agg_trade_data(), bad_amounts | bad_ints | late_times | st.just(("s", "")), shapes, as_bytes)
@example(SAMPLE, ("p", "NaN"), True, False)
@example(SAMPLE, ("p", "-1"), True, False)
@example(SAMPLE, ("p", "0"), True, False)
@example(SAMPLE, ("q", "Infinity"), False, True)
@example(SAMPLE, ("a", 2**63), True, False)
@example(SAMPLE, ("a", 10**40), True, False)
@example(SAMPLE, ("T", MAX_EPOCH_MS + 1), True, False)
def test_an_impossible_value_is_a_value_rejection(
    data: dict[str, Any], mutation: tuple[str, Any], combined: bool, to_bytes: bool
) -> None:
    key, value = mutation
    data = {**data, key: value}  # a copy: the examples share SAMPLE

    assert reject_reason(wire(data, combined=combined, to_bytes=to_bytes)) is RejectReason.VALUE


@given(agg_trade_data().filter(lambda data: data["f"] != data["l"]), shapes)
def test_first_trade_id_after_last_is_a_value_rejection(data: dict[str, Any], combined: bool) -> None:
    data = {**data, "f": data["l"], "l": data["f"]}

    assert reject_reason(wire(data, combined=combined, to_bytes=True)) is RejectReason.VALUE


@pytest.mark.parametrize(
    "frame",
    [
        DEPTH_FRAME,
        KLINE_FRAME,
        BOOK_TICKER_FRAME,
        json.dumps({"stream": "btcusdt@trade", "data": dict(SAMPLE, e="trade", t=1)}),
        '{"stream":"!miniTicker@arr","data":{"e":"24hrMiniTicker","E":1}}',
    ],
)
@pytest.mark.parametrize("to_bytes", [False, True])
def test_events_not_consumed_here_are_unknown_event(frame: str, to_bytes: bool) -> None:
    assert reject_reason(frame.encode() if to_bytes else frame) is RejectReason.UNKNOWN_EVENT
    data = json.loads(frame)["data"]
    if "e" in data:  # a raw bookTicker has no event type at all: nothing says what it is
        assert reject_reason(json.dumps(data)) is RejectReason.UNKNOWN_EVENT


@given(agg_trade_data(), shapes, st.data())
def test_a_truncated_frame_is_a_json_rejection(
    data: dict[str, Any], combined: bool, draw: st.DataObject
) -> None:
    raw = wire(data, combined=combined, to_bytes=True)
    cut = draw.draw(st.integers(0, len(raw) - 1))

    assert reject_reason(raw[:cut]) is RejectReason.JSON


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b'{"e":"aggTrade","s":"\xc3"}',  # invalid UTF-8 inside a string
        '{"e":"aggTrade","s":"\ud800"}',  # a str with a lone surrogate cannot be UTF-8
        json.dumps(SAMPLE).replace('"58001.03000000"', "NaN"),
        json.dumps(SAMPLE).replace('"58001.03000000"', "Infinity"),
        "{'e': 'aggTrade'}",
        "ping",
    ],
)
def test_non_json_is_a_json_rejection(raw: bytes | str) -> None:
    assert reject_reason(raw) is RejectReason.JSON


# Anything at all: a value or FrameRejected, never another exception ----------------------------


@given(st.binary() | st.text())
@example(b"\xef\xbb\xbf{}")
def test_arbitrary_input_gives_a_value_or_frame_rejected(raw: bytes | str) -> None:
    result = parse_or_rejection(raw)

    if not_json(raw):
        assert isinstance(result, FrameRejected)
        assert result.reason is RejectReason.JSON


@given(agg_trade_data(), shapes, st.data())
def test_a_corrupted_frame_gives_a_value_or_frame_rejected(
    data: dict[str, Any], combined: bool, draw: st.DataObject
) -> None:
    raw = bytearray(wire(data, combined=combined, to_bytes=True))
    for _ in range(draw.draw(st.integers(1, 3))):
        raw[draw.draw(st.integers(0, len(raw) - 1))] = draw.draw(st.integers(0, 255))
    result = parse_or_rejection(bytes(raw))

    if not_json(bytes(raw)):
        assert isinstance(result, FrameRejected)
        assert result.reason is RejectReason.JSON


FRAME_KEYS = st.sampled_from(["e", "stream", "data", "result", "id", "code", "msg", "error", *SAMPLE])
scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=8)
event_names = st.sampled_from(["aggTrade", "serverShutdown", "depthUpdate", "kline", "trade", ""])
json_values = st.recursive(
    scalars | event_names,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(FRAME_KEYS | st.text(max_size=4), inner, max_size=6)
    ),
    max_leaves=20,
)


@given(json_values, as_bytes)
def test_arbitrary_json_gives_a_value_or_frame_rejected(value: Any, to_bytes: bool) -> None:
    text = json.dumps(value)
    result = parse_or_rejection(text.encode() if to_bytes else text)

    if not isinstance(value, dict):
        assert isinstance(result, FrameRejected)
        assert result.reason is RejectReason.SCHEMA


@given(agg_trade_data(), st.sampled_from([*SAMPLE, "stream", "data", "extra"]), json_values, shapes)
def test_any_mutated_agg_trade_gives_a_value_or_frame_rejected(
    data: dict[str, Any], key: str, value: Any, combined: bool
) -> None:
    frame: dict[str, Any] = {"stream": "btcusdt@aggTrade", "data": data} if combined else data
    (frame if key in ("stream", "data") else data)[key] = value
    result = parse_or_rejection(json.dumps(frame))

    if isinstance(result, MarketTick) and key in ("M", "extra", "stream"):
        assert_identical(result, tick_from_agg_trade(data, 0))  # fields the parser does not read


# The excerpt ------------------------------------------------------------------------------------


@given(st.text(min_size=1), as_bytes)
@example("x" * 10_000, False)
@example("é€😀" * 1_000, True)
def test_the_excerpt_is_the_frame_start_cut_to_200_characters(text: str, to_bytes: bool) -> None:
    frame = "~" + text  # never JSON
    raw = frame.encode() if to_bytes else frame

    with pytest.raises(FrameRejected) as caught:
        parse_frame(raw, 0)

    assert len(caught.value.excerpt) <= EXCERPT_CHARS
    assert caught.value.excerpt == expected_excerpt(raw)
    assert repr(caught.value.excerpt) in str(caught.value)
