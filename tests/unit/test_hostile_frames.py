"""Bad input of every kind the issue names, on both venues' parsers: each is counted by its reason.

Invalid UTF-8 and nesting deeper than the decoder goes are ``json`` (no JSON value can be read);
numbers where strings belong are ``type``; zero, negative, absurd amounts and over-long strings
are ``value``; events the feed does not consume are ``unknown_event``. Whatever the frame, the
excerpt and the detail that reach the log are short, and no frame costs more than milliseconds.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from kairos_core.adapters.inbound.feed_handler import binance_wire, okx_wire
from kairos_core.domain import FrameRejected, MarketTick, RejectReason
from kairos_core.domain.errors import EXCERPT_LIMIT

DEEP = 100_000

BINANCE_TRADE: dict[str, Any] = {
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
OKX_TRADE: dict[str, Any] = {
    "instId": "BTC-USDT",
    "tradeId": "130639474",
    "px": "42219.9",
    "sz": "0.12060306",
    "side": "buy",
    "ts": "1630048897897",
    "count": "3",
}


def binance(**fields: Any) -> bytes:
    """A combined aggTrade frame with ``fields`` changed; a value of ``...`` removes the field."""
    data = {key: value for key, value in {**BINANCE_TRADE, **fields}.items() if value is not ...}
    return json.dumps({"stream": "btcusdt@aggTrade", "data": data}).encode()


def okx(**fields: Any) -> bytes:
    """A trades push of one trade with ``fields`` changed; a value of ``...`` removes the field."""
    item = {key: value for key, value in {**OKX_TRADE, **fields}.items() if value is not ...}
    return json.dumps({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [item]}).encode()


PLACEHOLDER = "\x00"


def raw_value(frame: bytes, field: str | None, json_text: bytes) -> bytes:
    """``frame`` with the value of a trade's ``field`` (or of ``data`` itself, for None) replaced
    by raw JSON text."""
    marked = json.loads(frame)
    if field is None:
        marked["data"] = PLACEHOLDER
    else:
        trade = marked["data"][0] if isinstance(marked["data"], list) else marked["data"]
        trade[field] = PLACEHOLDER
    return json.dumps(marked).encode().replace(json.dumps(PLACEHOLDER).encode(), json_text)


Parse = Callable[[bytes], object]
VENUES: dict[str, tuple[Parse, Callable[..., bytes], str, str]] = {
    # parser, frame builder, price field, quantity field
    "binance": (lambda raw: binance_wire.parse_frame(raw, 0), binance, "p", "q"),
    "okx": (lambda raw: okx_wire.parse_frame(raw, 0), okx, "px", "sz"),
}
NESTINGS = {
    "arrays": b"[" * DEEP + b"]" * DEEP,
    "arrays, unclosed": b"[" * DEEP,
    "objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
}


def rejection(parse: Parse, raw: bytes) -> FrameRejected:
    # A guard against work that explodes with the input (backtracking, quadratic copies), not a
    # speed figure: this thread's CPU, not wall time, and a bound 1,000 times what a frame costs, so
    # a slow or busy machine cannot fail it (wall time under 50 ms did, once, on a loaded CI run).
    # The collector is off meanwhile: a full collection of the test run's heap, which any
    # allocation may start, took 0.5 s of CPU once, at the end of a CI run, and says nothing of
    # the parser.
    gc.disable()
    try:
        started = time.thread_time()
        with pytest.raises(FrameRejected) as caught:
            parse(raw)
        spent = time.thread_time() - started
    finally:
        gc.enable()
    assert spent < 0.5, "one frame may not cost more than milliseconds of CPU"
    assert len(caught.value.excerpt) <= EXCERPT_LIMIT
    assert len(caught.value.detail) <= EXCERPT_LIMIT
    return caught.value


@pytest.fixture(params=sorted(VENUES))
def venue(request: pytest.FixtureRequest) -> tuple[Parse, Callable[..., bytes], str, str]:
    return VENUES[request.param]


# Invalid UTF-8 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\xff not even UTF-8",  # a binary frame of garbage
        b"\xff\xfe",
        b'{"e":"aggTrade","s":"\xc3"}',  # cut inside a two-byte sequence
        b'{"arg":{"channel":"\xed\xa0\x80"},"data":[]}',  # an encoded surrogate, where it is read
        '{"e":"aggTrade","s":"\ud800"}',  # a str with a lone surrogate cannot be UTF-8
    ],
)
def test_invalid_utf8_is_a_json_rejection(venue: tuple[Parse, Any, str, str], raw: bytes | str) -> None:
    parse = venue[0]

    assert rejection(parse, raw).reason is RejectReason.JSON  # type: ignore[arg-type]


def test_invalid_utf8_in_a_trade_field_is_a_json_rejection(venue: tuple[Parse, Any, str, str]) -> None:
    parse, build, price, _ = venue
    raw = raw_value(build(), price, b'"1.5\xff"')

    assert rejection(parse, raw).reason is RejectReason.JSON


# Deep nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("nesting", sorted(NESTINGS))
def test_nesting_deeper_than_the_decoder_goes_is_a_json_rejection(
    venue: tuple[Parse, Any, str, str], nesting: str
) -> None:
    rejected = rejection(venue[0], NESTINGS[nesting])

    assert rejected.reason is RejectReason.JSON
    assert "nested" in rejected.detail


@pytest.mark.parametrize("where", ["price", "extra field", "data"])
def test_deep_nesting_anywhere_in_a_trade_frame_is_rejected_without_recursion_error(
    venue: tuple[Parse, Any, str, str], where: str
) -> None:
    parse, build, price, _ = venue
    deep = NESTINGS["arrays"]
    if where == "price":
        raw = raw_value(build(), price, deep)
    elif where == "extra field":
        raw = raw_value(build(extra="x"), "extra", deep)
    else:
        raw = raw_value(build(), None, deep)

    assert rejection(parse, raw).reason is RejectReason.JSON


@pytest.mark.parametrize("depth", [50, 500, 900])
@pytest.mark.parametrize(
    "frame",
    [
        '{"result":%s,"id":1}',  # Binance: a reply
        '{"code":2,"msg":%s,"id":1}',  # Binance: an error reply
        '{"stream":%s,"data":{"x":1}}',
        '{"e":%s}',
        '{"event":%s}',  # OKX: an event
        '{"event":"error","code":"60018","msg":%s}',
        '{"arg":{"channel":%s},"data":[]}',
    ],
)
def test_nesting_the_decoder_can_hold_never_becomes_a_control_value_or_a_log_line(
    venue: tuple[Parse, Any, str, str], frame: str, depth: int
) -> None:
    """Nested values a control frame would carry to the log (where printing them recurses) are
    rejected: the shape of a field, never its depth, decides."""
    raw = (frame % ("[" * depth + "]" * depth)).encode()

    assert rejection(venue[0], raw).reason in (RejectReason.SCHEMA, RejectReason.TYPE, RejectReason.JSON)


# Numbers where strings belong, and other wrong types -----------------------------------------------


@pytest.mark.parametrize("number", [b"1.5", b"58001.03", b"0", b"-1", b"1e400", b"100000000000000000000"])
def test_a_number_where_a_decimal_string_belongs_is_a_type_rejection(
    venue: tuple[Parse, Any, str, str], number: bytes
) -> None:
    parse, build, price, quantity = venue
    for field in (price, quantity):
        rejected = rejection(parse, raw_value(build(), field, number))
        assert rejected.reason is (RejectReason.JSON if number == b"1e400" else RejectReason.TYPE), field


@pytest.mark.parametrize(
    ("builder", "field", "value"),
    [
        (binance, "s", 12345),
        (binance, "a", "665076760"),  # and a string where a number belongs
        (binance, "m", "true"),
        (okx, "instId", 12345),
        (okx, "tradeId", 130639474),
        (okx, "ts", 1630048897897),
    ],
)
def test_other_fields_of_the_wrong_type_are_type_rejections(
    builder: Callable[..., bytes], field: str, value: Any
) -> None:
    parse = VENUES["binance" if builder is binance else "okx"][0]

    assert rejection(parse, builder(**{field: value})).reason is RejectReason.TYPE


# Zero, negative and absurd values --------------------------------------------------------------


@pytest.mark.parametrize(
    "amount",
    [
        "0",
        "0.00000000",
        "-0",
        "-1",
        "-0.5",
        "NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
        "1e999999999",  # finite, and a billion digits to print
        "1E-999999999",
        "1E+30",
        "1E-31",
        "9" * 70,  # past the longest decimal string a venue sends
        "",
        "abc",
    ],
)
def test_a_zero_negative_or_absurd_amount_is_a_value_rejection(
    venue: tuple[Parse, Any, str, str], amount: str
) -> None:
    parse, build, price, quantity = venue
    for field in (price, quantity):
        assert rejection(parse, build(**{field: amount})).reason is RejectReason.VALUE, field


@pytest.mark.parametrize("amount", ["1E-30", "0.000000000000000000000000000001", "9" * 30, "9" * 30 + ".99"])
def test_amounts_at_the_bounds_are_taken(venue: tuple[Parse, Any, str, str], amount: str) -> None:
    parse, build, price, quantity = venue
    for field in (price, quantity):
        result = parse(build(**{field: amount}))
        tick = result[0] if type(result) is tuple else result
        assert isinstance(tick, MarketTick)
        assert (tick.price if field == price else tick.volume) == Decimal(amount)


@pytest.mark.parametrize(
    ("builder", "field", "value"),
    [
        (binance, "s", "X" * 65),
        (binance, "s", ""),
        (binance, "a", 2**63),
        (binance, "a", -1),
        (binance, "T", 10**17),
        (okx, "instId", "X" * 65),
        (okx, "tradeId", "9" * 20),
        (okx, "tradeId", "-1"),
        (okx, "ts", "1" * 5_000),
        (okx, "count", "0"),
        (okx, "side", "hold"),
    ],
)
def test_other_impossible_values_are_value_rejections(
    builder: Callable[..., bytes], field: str, value: Any
) -> None:
    parse = VENUES["binance" if builder is binance else "okx"][0]

    assert rejection(parse, builder(**{field: value})).reason is RejectReason.VALUE


# Unknown events ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "raw"),
    [
        (VENUES["binance"][0], b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1}}'),
        (VENUES["binance"][0], b'{"e":"' + b"x" * 1_000_000 + b'","E":1}'),
        (VENUES["binance"][0], b'{"stream":"' + b"y" * 1_000_000 + b'","data":{"b":"1"}}'),
        (VENUES["okx"][0], b'{"arg":{"channel":"books","instId":"BTC-USDT"},"data":[]}'),
        (VENUES["okx"][0], b'{"event":"' + b"x" * 1_000_000 + b'"}'),
        (VENUES["okx"][0], b'{"arg":{"channel":"' + b"x" * 1_000_000 + b'"},"data":[]}'),
    ],
    ids=[
        "binance-depth",
        "binance-long-event",
        "binance-long-stream",
        "okx-books",
        "okx-long-event",
        "okx-long-channel",
    ],
)
def test_an_unknown_event_is_counted_as_such_and_its_name_is_cut_short(parse: Parse, raw: bytes) -> None:
    rejected = rejection(parse, raw)

    assert rejected.reason is RejectReason.UNKNOWN_EVENT
    assert len(rejected.detail) < 100  # the name is quoted, cut to 64 characters


# Control frames keep only what a log line can hold -------------------------------------------------


def test_an_error_reply_keeps_500_characters_of_its_message() -> None:
    long = "m" * 100_000
    binance_reply = binance_wire.parse_frame(json.dumps({"code": 2, "msg": long, "id": 1}), 0)
    okx_reply = okx_wire.parse_frame(json.dumps({"event": "error", "code": "60012", "msg": long}), 0)
    okx_notice = okx_wire.parse_frame(json.dumps({"event": "notice", "code": "64008", "msg": long}), 0)

    assert isinstance(binance_reply, binance_wire.ErrorReply)
    assert isinstance(okx_reply, okx_wire.ErrorReply)
    assert isinstance(okx_notice, okx_wire.Notice)
    assert binance_reply.message == okx_reply.message == okx_notice.message == "m" * 500


def test_okx_finds_the_refused_instrument_past_the_part_of_the_message_it_keeps() -> None:
    message = "x" * 1_000 + " channel:trades,instId:FOO-BAR doesn't exist"
    reply = okx_wire.parse_frame(json.dumps({"event": "error", "code": "60018", "msg": message}), 0)

    assert isinstance(reply, okx_wire.ErrorReply)
    assert reply.inst_id == "FOO-BAR"


def test_a_detail_quoting_the_frame_is_cut_like_the_excerpt() -> None:
    rejected = FrameRejected(RejectReason.UNKNOWN_EVENT, b"x" * 10_000, "y" * 10_000)

    assert rejected.excerpt == "x" * EXCERPT_LIMIT
    assert rejected.detail == "y" * EXCERPT_LIMIT
    assert len(str(rejected)) < 3 * EXCERPT_LIMIT


def test_oversize_is_a_reject_reason_of_its_own() -> None:
    assert RejectReason.OVERSIZE == "oversize"
    assert len(set(RejectReason)) == len({reason.value for reason in RejectReason})
