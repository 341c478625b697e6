"""The OKX wire parser: exact values, only ``FrameRejected`` for bad frames, round trips."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kairos_core.adapters.inbound.feed_handler.okx_wire import (
    PONG,
    SUBSCRIBE_LIMIT_BYTES,
    ErrorReply,
    Notice,
    SubscribeAck,
    encode_event,
    encode_subscribe_ack,
    encode_trades_push,
    parse_frame,
    subscribe_requests,
)
from kairos_core.domain import Exchange, FrameRejected, MarketTick, RejectReason, Side, TickSource
from tests.strategies import (
    MAX_EPOCH_MS,
    MAX_ID,
    okx_inst_ids,
    okx_market_ticks,
    okx_trade_items,
    okx_trades_pushes,
    received_at_ns,
    tick_from_okx_trade,
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
CONTROL_TYPES = (SubscribeAck, ErrorReply, Notice, type(PONG))
STR_FIELDS = ("instId", "tradeId", "px", "sz", "side", "ts")
REQUIRED_FIELDS = STR_FIELDS  # count, source and seqId are newer and optional

# OKX's documented push example (docs-v5, "WS / Trades channel").
SAMPLE_ITEM: dict[str, Any] = {
    "instId": "BTC-USDT",
    "tradeId": "130639474",
    "px": "42219.9",
    "sz": "0.12060306",
    "side": "buy",
    "ts": "1630048897897",
    "count": "3",
    "source": "0",
    "seqId": 1234,
}
SAMPLE: dict[str, Any] = {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [SAMPLE_ITEM]}
# Frames of channels this adapter does not consume, verbatim from the recordings.
TICKERS_FRAME = (
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT","instId":"BTC-USDT",'
    '"last":"30236","lastSz":"0.0002","askPx":"30228.7","askSz":"1.55896972","bidPx":"30228.6",'
    '"bidSz":"0.23393","open24h":"29700.4","high24h":"31073","low24h":"28020.3","sodUtc0":"29028.8",'
    '"sodUtc8":"30337.7","volCcy24h":"525802090.62716611","vol24h":"17602.13085371","ts":"1652459224956"}]}'
)
BOOKS_FRAME = (
    '{"arg":{"channel":"books","instId":"UNI-USD-SWAP"},"action":"update","data":[{"asks":[["5.158","129",'
    '"0","2"],["5.233","240","0","1"]],"bids":[["5.14","427","0","4"],["5.138","26","0","2"],["5.117","0",'
    '"0","0"]],"ts":"1652459225464","checksum":1361161687}]}'
)

as_bytes = st.booleans()
separators = st.sampled_from([(",", ":"), (", ", ": ")])


def wire(frame: Any, *, to_bytes: bool, seps: tuple[str, str] = (",", ":")) -> bytes | str:
    """A frame built with the standard library, independent of the module's encoder."""
    text = json.dumps(frame, separators=seps)
    return text.encode() if to_bytes else text


def push_of(*items: dict[str, Any]) -> dict[str, Any]:
    inst_id = items[0].get("instId") if isinstance(items[0].get("instId"), str) else "BTC-USDT"
    return {"arg": {"channel": "trades", "instId": inst_id}, "data": list(items)}


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
    if isinstance(result, tuple):  # whatever gets through has passed the value checks
        assert result, "a push is never empty"
        for tick in result:
            assert type(tick) is MarketTick
            assert tick.exchange is Exchange.OKX
            assert tick.price.is_finite()
            assert tick.price > 0
            assert tick.volume.is_finite()
            assert tick.volume > 0
            assert 0 <= tick.first_trade_id <= tick.last_trade_id == tick.trade_id <= MAX_ID
            assert 0 <= tick.timestamp_ms <= MAX_EPOCH_MS
            assert tick.event_time_ms is None
            assert tick.symbol
    else:
        assert isinstance(result, CONTROL_TYPES)
    return result


def reject_reason(raw: bytes | str) -> RejectReason:
    result = parse_or_rejection(raw)
    assert isinstance(result, FrameRejected), f"accepted: {result!r}"
    return result.reason


def reason_after(item: dict[str, Any], mutation: tuple[str, Any], to_bytes: bool) -> RejectReason:
    """Why a push is rejected whose trade is ``item`` with ``mutation`` (key, value) applied."""
    key, value = mutation
    return reject_reason(wire(push_of({**item, key: value}), to_bytes=to_bytes))  # a copy: examples share it


# Valid pushes ---------------------------------------------------------------------------------


@given(okx_trades_pushes(), as_bytes, separators, received_at_ns, tick_sources)
@example(SAMPLE, True, (",", ":"), 1630048898000000000, TickSource.LIVE)
@example(push_of(dict(SAMPLE_ITEM, px="0.000000454", sz="11.83")), False, (",", ":"), 0, TickSource.REPLAY)
def test_a_valid_push_parses_to_exactly_its_trades(
    push: dict[str, Any], to_bytes: bool, seps: tuple[str, str], received_ns: int, source: TickSource
) -> None:
    ticks = parse_frame(wire(push, to_bytes=to_bytes, seps=seps), received_ns, source)

    assert type(ticks) is tuple
    assert len(ticks) == len(push["data"])
    for tick, item in zip(ticks, push["data"], strict=True):
        assert type(tick) is MarketTick
        assert tick.symbol == item["instId"]
        assert tick.exchange is Exchange.OKX
        # Digit for digit; the plain-notation form is what must equal the wire string (str() of a
        # Decimal switches to exponents below 1E-6).
        assert f"{tick.price:f}" == item["px"]
        assert f"{tick.volume:f}" == item["sz"]
        assert tick.price.as_tuple() == Decimal(item["px"]).as_tuple()
        assert tick.volume.as_tuple() == Decimal(item["sz"]).as_tuple()
        assert tick.side is Side(item["side"])
        assert tick.trade_id == tick.last_trade_id == int(item["tradeId"])
        assert tick.first_trade_id == int(item["tradeId"]) - int(item.get("count", 1)) + 1
        assert tick.timestamp_ms == int(item["ts"])
        assert tick.timestamp == EPOCH + timedelta(milliseconds=int(item["ts"]))
        assert tick.timestamp.tzinfo is UTC
        assert tick.event_time_ms is None
        assert tick.event_time is None
        assert tick.received_at_ns == received_ns
        assert tick.source is source
        assert_identical(tick, tick_from_okx_trade(item, received_ns, source))


def test_the_documented_sample_aggregates_three_trades() -> None:
    """OKX: tradeId 130639474 with count 3 aggregates trades 130639472, ...473 and ...474."""
    ticks = parse_frame(json.dumps(SAMPLE), 1630048898000000000)

    assert isinstance(ticks, tuple)
    assert ticks == (
        MarketTick(
            symbol="BTC-USDT",
            exchange=Exchange.OKX,
            price=Decimal("42219.9"),
            volume=Decimal("0.12060306"),
            side=Side.BUY,
            trade_id=130639474,
            first_trade_id=130639472,
            last_trade_id=130639474,
            timestamp_ms=1630048897897,
            event_time_ms=None,
            received_at_ns=1630048898000000000,
        ),
    )
    assert ticks[0].timestamp == datetime(2021, 8, 27, 7, 21, 37, 897000, tzinfo=UTC)


@given(okx_trade_items(newer=False))
def test_without_count_a_trade_is_one_trade(item: dict[str, Any]) -> None:
    ticks = parse_frame(json.dumps(push_of(item)), 0)

    assert isinstance(ticks, tuple)
    (tick,) = ticks
    assert tick.first_trade_id == tick.last_trade_id == tick.trade_id == int(item["tradeId"])


@given(okx_trades_pushes())
def test_source_defaults_to_live_and_receipt_time_to_now(push: dict[str, Any]) -> None:
    before = time.time_ns()
    ticks = parse_frame(json.dumps(push).encode())
    after = time.time_ns()

    assert isinstance(ticks, tuple)
    assert all(t.source is TickSource.LIVE and before <= t.received_at_ns <= after for t in ticks)
    assert len({t.received_at_ns for t in ticks}) == 1, "one push, one receipt time"


@given(st.lists(okx_market_ticks(inst_id=st.just("BTC-USDT-SWAP")), min_size=1, max_size=4), tick_sources)
def test_encode_then_parse_is_the_identity(ticks: list[MarketTick], source: TickSource) -> None:
    ticks = [tick._replace(received_at_ns=7, source=source) for tick in ticks]
    parsed = parse_frame(encode_trades_push(ticks, seq_id=5), 7, source)

    assert isinstance(parsed, tuple)
    assert len(parsed) == len(ticks)
    for got, want in zip(parsed, ticks, strict=True):
        assert_identical(got, want)


@given(okx_trades_pushes(newer=True), st.integers(0, 2**63 - 1))
def test_parse_then_encode_gives_back_the_okx_push(push: dict[str, Any], seq_id: int) -> None:
    for item in push["data"]:
        item.update(source="0", seqId=seq_id)  # what the encoder writes for every trade
    raw = json.dumps(push)
    ticks = parse_frame(raw, 0)

    assert isinstance(ticks, tuple)
    assert json.loads(encode_trades_push(ticks, seq_id=seq_id)) == json.loads(raw)


@pytest.mark.parametrize(
    ("ticks", "match"),
    [
        ([], "at least one trade"),
        (
            [
                tick_from_okx_trade(SAMPLE_ITEM, 0),
                tick_from_okx_trade(dict(SAMPLE_ITEM, instId="ETH-USDT"), 0),
            ],
            "one instrument",
        ),
        ([tick_from_okx_trade(SAMPLE_ITEM, 0)._replace(trade_id=130639472)], "last id"),
    ],
)
def test_the_encoder_refuses_what_no_push_can_carry(ticks: list[MarketTick], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_trades_push(ticks)


# Control frames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("pong", PONG),
        (
            '{"event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT"}}',  # as recorded in 2022
            SubscribeAck(event="subscribe", channel="trades", inst_id="BTC-USDT"),
        ),
        (
            '{"id":"1512","event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT"},"connId":"a4d3ae55"}',
            SubscribeAck(event="subscribe", channel="trades", inst_id="BTC-USDT", request_id="1512"),
        ),
        (
            '{"event":"unsubscribe","arg":{"channel":"trades","instId":"ETH-USDT"},"connId":"a4d3ae55"}',
            SubscribeAck(event="unsubscribe", channel="trades", inst_id="ETH-USDT"),
        ),
        (  # as OKX answered in 2024-2025 (github.com/aiviaio/okex#76, sieblyio/okx-api#106)
            '{"event":"error","msg":"Wrong URL or channel:trades,instId:FOO-USDT doesn\'t exist. Please use '
            'the correct URL, channel and parameters referring to API document.","code":"60018",'
            '"connId":"2b5dc6ac"}',
            ErrorReply(
                code="60018",
                message="Wrong URL or channel:trades,instId:FOO-USDT doesn't exist. Please use the correct "
                "URL, channel and parameters referring to API document.",
                inst_id="FOO-USDT",
            ),
        ),
        (  # as OKX answered in 2023 (github.com/okxapi/python-okx#21)
            '{"event":"error","msg":"channel:tickers,instId:LTC-USD doesn\'t exist","code":"60018"}',
            ErrorReply(
                code="60018", message="channel:tickers,instId:LTC-USD doesn't exist", inst_id="LTC-USD"
            ),
        ),
        (
            '{"event":"error","code":"60018","msg":"Wrong URL or channel","arg":{"channel":"trades",'
            '"instId":"BTC-USDT"}}',
            ErrorReply(code="60018", message="Wrong URL or channel", inst_id="BTC-USDT"),
        ),
        (  # OKX's documented failure example: no instrument is named
            '{"id":"1512","event":"error","code":"60012","msg":"Invalid request: {\\"op\\": \\"subscribe\\", '
            '\\"argss\\":[{ \\"channel\\" : \\"trades\\", \\"instId\\" : \\"BTC-USD-191227\\"}]}",'
            '"connId":"a4d3ae55"}',
            ErrorReply(
                code="60012",
                message='Invalid request: {"op": "subscribe", "argss":[{ "channel" : "trades", '
                '"instId" : "BTC-USD-191227"}]}',
                request_id="1512",
            ),
        ),
        (
            '{"event":"error","code":60014,"msg":"Requests too frequent"}',  # an integer code: the same code
            ErrorReply(code="60014", message="Requests too frequent"),
        ),
        (
            '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service '
            'upgrade. Please reconnect.","connId":"a4d3ae55"}',
            Notice(
                code="64008",
                message="The connection will soon be closed for a service upgrade. Please reconnect.",
            ),
        ),
    ],
)
@pytest.mark.parametrize("to_bytes", [False, True])
def test_control_frames_become_control_values(frame: str, expected: object, to_bytes: bool) -> None:
    assert parse_frame(frame.encode() if to_bytes else frame, 0) == expected


@given(okx_inst_ids, st.text(max_size=12))
def test_the_encoders_of_control_frames_are_parses_inverse(inst_id: str, conn_id: str) -> None:
    ack = SubscribeAck(event="subscribe", channel="trades", inst_id=inst_id)
    assert parse_frame(encode_subscribe_ack(inst_id, conn_id), 0) == ack
    unsubscribed = SubscribeAck(event="unsubscribe", channel="trades", inst_id=inst_id, request_id=conn_id)
    assert (
        parse_frame(encode_subscribe_ack(inst_id, "c", event="unsubscribe", request_id=conn_id), 0)
        == unsubscribed
    )
    message = f"Wrong URL or channel:trades,instId:{inst_id} doesn't exist."
    assert parse_frame(encode_event("error", "60018", message, conn_id), 0) == ErrorReply(
        code="60018", message=message, inst_id=inst_id
    )
    assert parse_frame(encode_event("notice", "64008", "bye", conn_id), 0) == Notice(
        code="64008", message="bye"
    )


# Rejected frames: the reason says why ---------------------------------------------------------


@given(okx_trade_items(), st.sampled_from(REQUIRED_FIELDS), as_bytes)
def test_a_missing_field_is_a_schema_rejection(item: dict[str, Any], key: str, to_bytes: bool) -> None:
    item = {name: value for name, value in item.items() if name != key}

    assert reject_reason(wire(push_of(item), to_bytes=to_bytes)) is RejectReason.SCHEMA


@pytest.mark.parametrize(
    "frame",
    [
        {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": []},
        {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": None},
        {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": SAMPLE_ITEM},
        {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [SAMPLE_ITEM, "x"]},
        {"arg": {"channel": "trades", "instId": "BTC-USDT"}},
        {"arg": {"instId": "BTC-USDT"}, "data": [SAMPLE_ITEM]},
        {"arg": "trades", "data": [SAMPLE_ITEM]},
        {"data": [SAMPLE_ITEM]},
        {"event": "subscribe"},
        {"event": "subscribe", "arg": {"instId": "BTC-USDT"}},
        {"event": "error", "msg": "no code"},
        {"event": "notice", "code": "64008"},
        {"event": "notice", "code": None, "msg": "x"},
        {},
    ],
)
def test_a_frame_of_no_known_shape_is_a_schema_rejection(frame: dict[str, Any]) -> None:
    assert reject_reason(json.dumps(frame)) is RejectReason.SCHEMA


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
containers = st.lists(st.integers(), max_size=2) | st.dictionaries(
    st.text(max_size=3), st.integers(), max_size=2
)
not_a_string = st.none() | st.booleans() | st.integers() | finite_floats | containers
WRONG_TYPES = dict.fromkeys((*STR_FIELDS, "count"), not_a_string)


@given(
    okx_trade_items(),
    st.sampled_from(sorted(WRONG_TYPES)).flatmap(lambda k: st.tuples(st.just(k), WRONG_TYPES[k])),
    as_bytes,
)
@example(SAMPLE_ITEM, ("tradeId", 130639474), False)  # OKX sends ids as strings
@example(SAMPLE_ITEM, ("ts", 1630048897897), False)
@example(SAMPLE_ITEM, ("px", 42219.9), False)
@example(SAMPLE_ITEM, ("count", 3), True)
def test_a_field_of_the_wrong_json_type_is_a_type_rejection(
    item: dict[str, Any], mutation: tuple[str, Any], to_bytes: bool
) -> None:
    assert reason_after(item, mutation, to_bytes) is RejectReason.TYPE


@pytest.mark.parametrize(
    "frame",
    [
        {"arg": {"channel": 7}, "data": [SAMPLE_ITEM]},
        {"event": 1},
        {"event": "subscribe", "arg": {"channel": "trades", "instId": 5}},
        {"event": "error", "code": "1", "msg": 2},
        {"event": "error", "code": True, "msg": "x"},
    ],
)
def test_a_control_field_of_the_wrong_type_is_a_type_rejection(frame: dict[str, Any]) -> None:
    assert reject_reason(json.dumps(frame)) is RejectReason.TYPE


not_digits = st.sampled_from(["", " 1", "1 ", "+1", "-1", "1_000", "1e3", "1.0", "0x1f", "١٢", "abc", "12a"])
bad_amounts = st.tuples(st.sampled_from(["px", "sz"]), non_positive_decimals | not_finite_or_not_decimal)
bad_digits = st.tuples(st.sampled_from(["tradeId", "ts", "count"]), not_digits)
too_large = st.one_of(
    st.tuples(st.just("tradeId"), st.integers(MAX_ID + 1, 10**30).map(str)),
    st.tuples(st.just("ts"), st.integers(MAX_EPOCH_MS + 1, 10**30).map(str)),
)
bad_names = st.one_of(
    st.tuples(st.just("side"), st.sampled_from(["", "BUY", "Sell", "bid", "taker"])),
    st.just(("instId", "")),
)


@given(okx_trade_items(), bad_amounts | bad_digits | too_large | bad_names, as_bytes)
@example(SAMPLE_ITEM, ("px", "NaN"), False)
@example(SAMPLE_ITEM, ("px", "-1"), False)
@example(SAMPLE_ITEM, ("px", "0"), False)
@example(SAMPLE_ITEM, ("sz", "Infinity"), True)
@example(SAMPLE_ITEM, ("tradeId", str(2**63)), False)
@example(SAMPLE_ITEM, ("tradeId", "9" * 5000), False)  # past int()'s digit limit: still only rejected
@example(SAMPLE_ITEM, ("ts", str(MAX_EPOCH_MS + 1)), False)
@example(SAMPLE_ITEM, ("count", "0"), False)
@example(dict(SAMPLE_ITEM, tradeId="2"), ("count", "4"), False)  # first_trade_id would be -1
def test_an_impossible_value_is_a_value_rejection(
    item: dict[str, Any], mutation: tuple[str, Any], to_bytes: bool
) -> None:
    assert reason_after(item, mutation, to_bytes) is RejectReason.VALUE


@given(okx_trades_pushes(), st.data())
def test_one_bad_trade_rejects_the_whole_push(push: dict[str, Any], draw: st.DataObject) -> None:
    bad = dict(push["data"][0], px="-1")
    push["data"].insert(draw.draw(st.integers(0, len(push["data"]))), bad)

    assert reject_reason(json.dumps(push)) is RejectReason.VALUE


@pytest.mark.parametrize(
    "frame",
    [
        TICKERS_FRAME,
        BOOKS_FRAME,
        '{"arg":{"channel":"trades-all","instId":"BTC-USDT"},"data":[]}',
        '{"event":"login","code":"0","msg":"","connId":"a4d3ae55"}',
        '{"event":"channel-conn-count","channel":"orders","connCount":"2","connId":"abcd1234"}',
    ],
)
@pytest.mark.parametrize("to_bytes", [False, True])
def test_what_is_not_consumed_here_is_unknown_event(frame: str, to_bytes: bool) -> None:
    assert reject_reason(frame.encode() if to_bytes else frame) is RejectReason.UNKNOWN_EVENT


@given(okx_trades_pushes(), st.data())
def test_a_truncated_push_is_a_json_rejection(push: dict[str, Any], draw: st.DataObject) -> None:
    raw = wire(push, to_bytes=True)
    cut = draw.draw(st.integers(0, len(raw) - 1))

    assert reject_reason(raw[:cut]) is RejectReason.JSON


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"ping",
        b"PONG",
        b"pong\n",
        b"\xff\xfe",
        b'{"arg":{"channel":"trades"},"data":[{"instId":"\xc3"}]}',
        "\ud800",
    ],
)
def test_not_json_is_a_json_rejection(raw: bytes | str) -> None:
    assert reject_reason(raw) is RejectReason.JSON


@given(st.binary() | st.text())
@example(b"\xef\xbb\xbf{}")
@example("pong")
def test_arbitrary_input_gives_a_value_or_frame_rejected(raw: bytes | str) -> None:
    result = parse_or_rejection(raw)

    if not_json(raw) and raw not in ("pong", b"pong"):
        assert isinstance(result, FrameRejected)
        assert result.reason is RejectReason.JSON


@given(okx_trades_pushes(), st.data())
def test_a_corrupted_push_gives_a_value_or_frame_rejected(push: dict[str, Any], draw: st.DataObject) -> None:
    raw = bytearray(wire(push, to_bytes=True))
    for _ in range(draw.draw(st.integers(1, 3))):
        raw[draw.draw(st.integers(0, len(raw) - 1))] = draw.draw(st.integers(0, 255))
    result = parse_or_rejection(bytes(raw))

    if not_json(bytes(raw)):
        assert isinstance(result, FrameRejected)
        assert result.reason is RejectReason.JSON


FRAME_KEYS = st.sampled_from(["arg", "data", "event", "channel", "code", "msg", "id", "connId", *SAMPLE_ITEM])
scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=8)
names = st.sampled_from(["trades", "books", "subscribe", "error", "notice", "buy", "sell", "64008", ""])
json_values = st.recursive(
    scalars | names,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(FRAME_KEYS | st.text(max_size=4), inner, max_size=6)
    ),
    max_leaves=20,
)


@given(json_values, as_bytes)
def test_arbitrary_json_gives_a_value_or_frame_rejected(value: Any, to_bytes: bool) -> None:
    result = parse_or_rejection(wire(value, to_bytes=to_bytes))

    if not isinstance(value, dict):
        assert isinstance(result, FrameRejected)
        assert result.reason is RejectReason.SCHEMA


@given(okx_trade_items(), st.sampled_from([*SAMPLE_ITEM, "extra"]), json_values)
def test_any_mutated_push_gives_a_value_or_frame_rejected(item: dict[str, Any], key: str, value: Any) -> None:
    original = dict(item)
    item[key] = value
    result = parse_or_rejection(json.dumps(push_of(item)))

    if isinstance(result, tuple) and key in ("source", "seqId", "extra"):  # fields the parser does not read
        assert_identical(result[0], tick_from_okx_trade(original, 0))


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


# Subscribe requests ---------------------------------------------------------------------------


@given(st.lists(okx_inst_ids, max_size=300), st.integers(200, SUBSCRIBE_LIMIT_BYTES))
@example([f"BTC-USD-2406{i:02}-60000-C" for i in range(200)], SUBSCRIBE_LIMIT_BYTES)
def test_subscribe_requests_fit_the_limit_and_name_every_instrument_once_in_order(
    inst_ids: list[str], limit: int
) -> None:
    requests = subscribe_requests(inst_ids, limit=limit)

    assert all(len(request.encode()) <= limit for request in requests)
    decoded = [json.loads(request) for request in requests]
    assert all(list(r) == ["op", "args"] and r["op"] == "subscribe" and r["args"] for r in decoded)
    args = [arg for request in decoded for arg in request["args"]]
    assert args == [{"channel": "trades", "instId": inst_id} for inst_id in inst_ids]
    if len(requests) > 1:  # none could have taken the next one's first instrument
        for request, following in itertools.pairwise(decoded):
            grown = {"op": "subscribe", "args": [*request["args"], following["args"][0]]}
            assert len(json.dumps(grown, separators=(",", ":"))) > limit


def test_an_unsubscribe_request_has_the_same_shape() -> None:
    assert subscribe_requests(["BTC-USDT"], op="unsubscribe") == [
        '{"op":"unsubscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}'
    ]
