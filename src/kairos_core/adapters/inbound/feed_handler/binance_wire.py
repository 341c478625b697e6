"""Binance spot market-stream wire format: the only way from a Binance frame to the domain.

A combined-stream aggTrade frame, as received from ``/stream?streams=btcusdt@aggTrade``::

    {"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1617566591315,"s":"BTCUSDT",
     "a":665076760,"p":"58001.03000000","q":"0.08620500","f":745522877,"l":745522877,
     "T":1617566591314,"m":true,"M":true}}

Raw streams (``/ws/<stream>``) send the ``data`` object alone. Control frames are replies to
requests (``{"result":null,"id":1}``), error replies (flat, ``{"code":2,"msg":"...","id":1}``, as
Binance's table of errors shows them, or nested, ``{"error":{"code":2,"msg":"..."},"id":1}``, as the
live server sends some) and the ``serverShutdown`` event that announces a disconnect.

The REST history, ``GET /api/v3/aggTrades?symbol=BTCUSDT&fromId=966492862&limit=1000``, answers a
list of the same trades without ``e``, ``E`` and ``s`` (a real BTCUSDT answer, 2021-10-22)::

    [{"a":966492862,"p":"60759.60000000","q":"0.00841000","f":1111480471,"l":1111480471,
      "T":1634944096633,"m":false,"M":true}, ...]

``parse_agg_trades`` maps it with the stream's own mapping, source ``BACKFILL``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

import msgspec

from kairos_core.domain import Exchange, FrameRejected, MarketTick, RejectReason, Side, TickSource

_MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant datetime holds
_MAX_ID = 2**63 - 1  # ids are stored as bigint
_MAX_TEXT = 64  # characters in a symbol or a decimal string; Binance's are under 25
_MIN_AMOUNT, _MAX_AMOUNT = Decimal("1E-30"), Decimal("1E+30")
"""Prices and quantities outside are absurd, and "1E+999999999" would be a billion digits to print
or store: a positive finite decimal is not enough."""
_MAX_MESSAGE = 500  # characters of an error reply's text kept for the log
_TOO_DEEP = "nested deeper than the JSON decoder goes"


# Range checks live in the decoder (C) rather than in Python on every frame.
_EpochMs = Annotated[int, msgspec.Meta(ge=0, le=_MAX_EPOCH_MS)]
_Id = Annotated[int, msgspec.Meta(ge=0, le=_MAX_ID)]
_Amount = Annotated[str, msgspec.Meta(max_length=_MAX_TEXT)]


class RestAggTrade(msgspec.Struct, gc=False):
    """One aggregate trade: an item of a ``GET /api/v3/aggTrades`` answer, and the core of an event."""

    a: _Id  # aggregate trade id: consecutive per symbol
    p: _Amount  # price, a decimal string
    q: _Amount  # quantity, a decimal string
    f: _Id  # first trade id in the aggregate
    l: _Id  # last trade id in the aggregate
    T: _EpochMs  # trade time, epoch ms
    m: bool  # buyer is the maker: the taker sold


class AggTrade(RestAggTrade, tag_field="e", tag="aggTrade", gc=False):
    """The ``data`` of an aggTrade event. Extra fields (``M``, future ones) are ignored."""

    E: _EpochMs  # event time, epoch ms
    s: Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_TEXT)]  # symbol, uppercase


class ServerShutdownEvent(msgspec.Struct, tag_field="e", tag="serverShutdown", gc=False):
    """``{"e":"serverShutdown","E":...}``: the server will close this connection soon."""

    E: _EpochMs  # event time, epoch ms


class _CombinedFrame(msgspec.Struct, gc=False):
    stream: str
    data: AggTrade | ServerShutdownEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionReply:
    """Reply to SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS and friends."""

    request_id: int | str | None
    result: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """The server refused a request on this connection (bad method, bad stream name, ...)."""

    request_id: int | str | None
    code: int | None
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerShutdown:
    """The server announced it will close this connection; reconnect soon."""

    event_time_ms: int


ControlFrame = SubscriptionReply | ErrorReply | ServerShutdown
_Event = TypeVar("_Event", AggTrade, ServerShutdownEvent)

_combined_decoder = msgspec.json.Decoder(_CombinedFrame)
_raw_decoder = msgspec.json.Decoder(AggTrade | ServerShutdownEvent)  # /ws/<stream>: data alone
_any_decoder = msgspec.json.Decoder()
_rest_decoder = msgspec.json.Decoder(list[RestAggTrade])
_encoder = msgspec.json.Encoder()
_SELL, _BUY, _BINANCE, _BACKFILL = Side.SELL, Side.BUY, Exchange.BINANCE, TickSource.BACKFILL
_new_tuple = tuple.__new__
_BOUND_VIOLATED = re.compile(r"` (?:>=|<=|of length [<>]=) ")  # msgspec: "Expected `int` >= 0 - at `$.a`"


def parse_frame(
    raw: bytes | str,
    received_at_ns: int | None = None,
    source: TickSource = TickSource.LIVE,
) -> MarketTick | ControlFrame:
    """Turn one Binance frame into a tick or a control value; raise ``FrameRejected`` otherwise.

    The common case (a combined aggTrade frame) is one typed decode; everything else takes the
    slower path that works out what the frame is and why it cannot be used.
    """
    if received_at_ns is None:
        received_at_ns = time.time_ns()
    try:
        payload = _combined_decoder.decode(raw).data
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeError, RecursionError):
        try:
            payload = _raw_decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeError, RecursionError):
            return _parse_uncommon(raw, received_at_ns, source)
    if type(payload) is AggTrade:
        return _tick_from(payload, payload.s, payload.E, raw, received_at_ns, source)
    return ServerShutdown(event_time_ms=payload.E)


def _tick_from(
    trade: RestAggTrade,
    symbol: str,
    event_time_ms: int | None,
    raw: bytes | str,
    received_at_ns: int,
    source: TickSource,
) -> MarketTick:
    """The one mapping from a Binance aggregate trade to a tick, streamed or fetched."""
    try:
        price, volume = Decimal(trade.p), Decimal(trade.q)
        valid_amounts = _MIN_AMOUNT <= price < _MAX_AMOUNT and _MIN_AMOUNT <= volume < _MAX_AMOUNT
    except InvalidOperation:  # not a number, or NaN in a comparison
        valid_amounts = False
    if not valid_amounts:
        raise FrameRejected(
            RejectReason.VALUE, raw, "price and quantity must be decimals from 1E-30 to below 1E+30"
        )
    if trade.f > trade.l:
        raise FrameRejected(RejectReason.VALUE, raw, "first trade id f is after last trade id l")
    # tuple.__new__ skips NamedTuple's generated Python __new__: 0.3 us a tick, same immutable value.
    return _new_tuple(
        MarketTick,
        (
            symbol,
            _BINANCE,
            price,
            volume,
            _SELL if trade.m else _BUY,
            trade.a,
            trade.f,
            trade.l,
            trade.T,
            event_time_ms,
            received_at_ns,
            source,
        ),
    )


def _parse_uncommon(raw: bytes | str, received_at_ns: int, source: TickSource) -> MarketTick | ControlFrame:
    try:
        frame = _any_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeError) as e:  # bad UTF-8 in a string, lone surrogates
        raise FrameRejected(RejectReason.JSON, raw, str(e)) from None
    except RecursionError:  # msgspec stops at the interpreter's recursion limit, at once
        raise FrameRejected(RejectReason.JSON, raw, _TOO_DEEP) from None
    if not isinstance(frame, dict):
        raise FrameRejected(RejectReason.SCHEMA, raw, "a frame must be a JSON object")
    if "result" in frame and "id" in frame:
        return SubscriptionReply(request_id=_request_id(frame), result=_flat(frame["result"], raw))
    error = frame.get("error", frame)
    if isinstance(error, dict) and "code" in error and "msg" in error:
        if not isinstance(error["msg"], str):
            raise FrameRejected(RejectReason.TYPE, raw, "an error reply's 'msg' must be a string")
        return ErrorReply(
            request_id=_request_id(frame),
            code=_int_or_none(error["code"]),
            message=error["msg"][:_MAX_MESSAGE],
        )
    combined = "stream" in frame
    payload = frame.get("data") if combined else frame
    if not isinstance(payload, dict):
        raise FrameRejected(RejectReason.SCHEMA, raw, "a combined frame needs a 'data' object")
    event = payload.get("e")
    if event == "aggTrade":
        trade = _convert(payload, AggTrade, raw)
        return _tick_from(trade, trade.s, trade.E, raw, received_at_ns, source)
    if event == "serverShutdown":
        return ServerShutdown(event_time_ms=_convert(payload, ServerShutdownEvent, raw).E)
    if "e" in payload and not isinstance(event, str):
        raise FrameRejected(RejectReason.TYPE, raw, "the event type 'e' must be a string")
    stream = frame.get("stream")
    if not isinstance(stream, str | None):
        raise FrameRejected(RejectReason.TYPE, raw, "the stream name must be a string")
    # bookTicker data has no 'e'; a frame on an aggTrade stream without one is a broken trade
    if event is None and (stream is None or stream.endswith("@aggTrade")):
        raise FrameRejected(RejectReason.SCHEMA, raw, "no event type 'e', result or error")
    name = str(event if event is not None else stream)  # a string either way by now
    raise FrameRejected(RejectReason.UNKNOWN_EVENT, raw, f"not consumed here: {name[:_MAX_TEXT]!r}")


def _flat(result: Any, raw: bytes | str) -> Any:
    """A reply's result as Binance sends them (null, a scalar, a list of stream names), never a
    structure deep enough to trouble whoever prints it."""
    items = result if isinstance(result, list) else (result,)
    if any(isinstance(item, list | dict) for item in items):
        raise FrameRejected(
            RejectReason.SCHEMA, raw, "a reply's result must be null, a scalar or a list of them"
        )
    return result


def _convert(payload: dict[str, Any], kind: type[_Event], raw: bytes | str) -> _Event:
    try:
        return msgspec.convert(payload, kind)
    except msgspec.ValidationError as e:
        raise FrameRejected(_reason_of(e), raw, str(e)) from None


def _reason_of(error: msgspec.ValidationError) -> RejectReason:
    message = str(error)
    if message.startswith("Object missing required field"):
        return RejectReason.SCHEMA
    if message.startswith("Expected") and not _BOUND_VIOLATED.search(message):
        return RejectReason.TYPE
    return RejectReason.VALUE


def parse_agg_trades(raw: bytes | str, symbol: str, received_at_ns: int | None = None) -> list[MarketTick]:
    """The ticks of one ``GET /api/v3/aggTrades`` answer for ``symbol``, in the answer's order.

    ``symbol`` is Binance's upper-case form, as the stream names it (the answer names none).
    Every tick has ``source = BACKFILL`` and no event time; the rest is mapped exactly as
    ``parse_frame`` maps the same trade. One item that cannot be used rejects the whole answer
    (``FrameRejected``): a page with a hole is no page.
    """
    if received_at_ns is None:
        received_at_ns = time.time_ns()
    try:
        items = _rest_decoder.decode(raw)
    except msgspec.ValidationError as e:
        if " - at `$" in str(e):  # an item; at the root it is an object (an error body), not a list
            raise FrameRejected(_reason_of(e), raw, str(e)) from None
        raise FrameRejected(RejectReason.SCHEMA, raw, "an aggTrades answer is a JSON array") from None
    except (msgspec.DecodeError, UnicodeError) as e:
        raise FrameRejected(RejectReason.JSON, raw, str(e)) from None
    ticks: list[MarketTick] = []
    for item in items:
        try:
            ticks.append(_tick_from(item, symbol, None, raw, received_at_ns, _BACKFILL))
        except FrameRejected as e:  # point at the item, not at the start of a long answer
            detail = f"aggregate trade {item.a}: {e.detail}"
            raise FrameRejected(e.reason, _encoder.encode(item), detail) from None
    return ticks


def _request_id(frame: dict[str, Any]) -> int | str | None:
    request_id = frame.get("id")
    return request_id if isinstance(request_id, int | str) else None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _trade_fields(tick: MarketTick) -> dict[str, Any]:
    """What an aggTrade event and a REST aggTrades item share, in Binance's key order."""
    return {
        "a": tick.trade_id,
        "p": f"{tick.price:f}",  # str() would write 1E-7 style exponents, which Binance never sends
        "q": f"{tick.volume:f}",
        "f": tick.first_trade_id,
        "l": tick.last_trade_id,
        "T": tick.timestamp_ms,
        "m": tick.side is Side.SELL,
        "M": True,
    }


def encode_agg_trade(tick: MarketTick, *, combined: bool = True) -> bytes:
    """The frame Binance would send for ``tick``; the simulator's encoder and parse's inverse."""
    data = {
        "e": "aggTrade",
        "E": tick.event_time_ms if tick.event_time_ms is not None else tick.timestamp_ms,
        "s": tick.symbol,
        **_trade_fields(tick),
    }
    if not combined:
        return _encoder.encode(data)
    return _encoder.encode({"stream": f"{tick.symbol.lower()}@aggTrade", "data": data})


def encode_agg_trades(ticks: Iterable[MarketTick]) -> bytes:
    """The ``GET /api/v3/aggTrades`` answer Binance gives for ``ticks``; ``parse_agg_trades`` inverted."""
    return _encoder.encode([_trade_fields(tick) for tick in ticks])
