"""OKX v5 public WebSocket wire format (``trades`` channel): the only way from an OKX frame to the domain.

A trades push, as received on ``wss://ws.okx.com:8443/ws/v5/public`` after
``{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}`` (OKX's documented example)::

    {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",
     "tradeId":"130639474","px":"42219.9","sz":"0.12060306","side":"buy","ts":"1630048897897",
     "count":"3","source":"0","seqId":1234}]}

A push may carry several trades; each is one tick. Pushes recorded in 2021-2022 have no ``count``,
``source`` or ``seqId``. Control frames: the acknowledgement of each subscribed channel
(``{"event":"subscribe","arg":{...},"connId":"..."}``), error replies
(``{"event":"error","code":"60018","msg":"...instId:FOO-BAR doesn't exist...","connId":"..."}``),
notices (``{"event":"notice","code":"64008",...}``: the connection closes soon for a service
upgrade) and the text ``pong`` that answers the client's text ``ping``.

A push is taken whole or rejected whole: one bad trade rejects the frame, so a tick never comes
from a frame that is partly wrong.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import msgspec

from kairos_core.domain import Exchange, FrameRejected, MarketTick, RejectReason, Side, TickSource

_MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant datetime holds
_MAX_ID = 2**63 - 1  # ids are stored as bigint
_MAX_DIGITS = 19  # len(str(_MAX_ID)); longer digit strings are out of range before int() reads them
_MAX_TEXT = 64  # characters in an instrument id or a decimal string; OKX's are under 40
_MIN_AMOUNT, _MAX_AMOUNT = Decimal("1E-30"), Decimal("1E+30")
"""Prices and sizes outside are absurd, and "1E+999999999" would be a billion digits to print or
store: a positive finite decimal is not enough."""
_MAX_MESSAGE = 500  # characters of an error's or a notice's text kept for the log
_TOO_DEEP = "nested deeper than the JSON decoder goes"
_Amount = Annotated[str, msgspec.Meta(max_length=_MAX_TEXT)]

PING = "ping"
"""What the client sends when the connection has been quiet; OKX answers the text ``pong``."""
SUBSCRIBE_LIMIT_BYTES = 4096
"""Largest subscribe request we send. OKX documents 64 KB for the args of one request today
(4096 bytes in older versions of its docs); staying under the older limit satisfies both."""
NOT_FOUND = "60018"
"""OKX's error code for a channel or instrument that does not exist."""
SERVICE_UPGRADE = "64008"
"""OKX's notice code: this connection will be closed for a service upgrade; reconnect."""


class _TradesArg(msgspec.Struct, gc=False):
    channel: Literal["trades"]  # the subscribed channel: only trades pushes take the fast path


class Trade(msgspec.Struct, gc=False):
    """One item of a trades push. ``source`` (0 normal, 1 Enhanced Liquidity Program order) and
    ``seqId`` (the message's sequence number) are not read: they change nothing in a tick."""

    instId: Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_TEXT)]  # BTC-USDT, BTC-USDT-SWAP, ...
    tradeId: str  # the last trade id of the aggregation, a string of digits
    px: _Amount  # price, a decimal string
    sz: _Amount  # quantity, a decimal string: base currency for spot, contracts for swaps/futures/options
    side: Side  # the taker's side, "buy" or "sell"
    ts: str  # trade time, epoch ms as a string of digits
    count: str = "1"  # trades aggregated into this one (ids tradeId-count+1 .. tradeId); absent: 1


class _TradesPush(msgspec.Struct, gc=False):
    arg: _TradesArg
    data: list[Trade]


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeAck:
    """OKX accepted a subscribe (or unsubscribe) of one channel of one instrument."""

    event: str
    """``subscribe`` or ``unsubscribe``."""
    channel: str
    inst_id: str | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """OKX refused a request; ``inst_id`` is the instrument it names, if it names one."""

    code: str
    message: str
    inst_id: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """An announcement about this connection; code 64008: it will soon close for a service upgrade."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Pong:
    """The text ``pong``: the answer to our ``ping``."""


PONG = Pong()
ControlFrame = SubscribeAck | ErrorReply | Notice | Pong

_push_decoder = msgspec.json.Decoder(_TradesPush)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_OKX = Exchange.OKX
_new_tuple = tuple.__new__
_NAMED_INSTRUMENT = re.compile(r"instId:([^,\s]+)")  # "...channel:trades,instId:FOO-BAR doesn't exist..."
_WRONG_TYPE = re.compile(r"Expected `\w+`, got `\w+`")  # msgspec: "Expected `str`, got `int` - at `$.px`"


def parse_frame(
    raw: bytes | str,
    received_at_ns: int | None = None,
    source: TickSource = TickSource.LIVE,
) -> tuple[MarketTick, ...] | ControlFrame:
    """Turn one OKX frame into its ticks or a control value; raise ``FrameRejected`` otherwise.

    The common case (a trades push) is one typed decode; everything else takes a slower path
    that works out what the frame is and why it cannot be used.
    """
    if received_at_ns is None:
        received_at_ns = time.time_ns()
    try:
        push = _push_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeError, RecursionError):
        return _parse_uncommon(raw, received_at_ns, source)
    if not push.data:
        raise FrameRejected(RejectReason.SCHEMA, raw, "a trades push needs at least one trade")
    return tuple([_tick_from(trade, raw, received_at_ns, source) for trade in push.data])


def trade_tick(
    item: Trade | dict[str, Any], raw: bytes | str, received_at_ns: int, source: TickSource
) -> MarketTick:
    """One trade item (decoded, or a JSON object as decoded) mapped exactly as a push maps it; raises
    ``FrameRejected`` naming ``raw``. For the other answers that carry OKX trades (REST history)."""
    return _tick_from(item if isinstance(item, Trade) else _convert(item, raw), raw, received_at_ns, source)


def _tick_from(trade: Trade, raw: bytes | str, received_at_ns: int, source: TickSource) -> MarketTick:
    trade_id = _digits(trade.tradeId, _MAX_ID, "tradeId", raw)
    count = _digits(trade.count, _MAX_ID, "count", raw)
    if not 0 < count <= trade_id + 1:
        raise FrameRejected(RejectReason.VALUE, raw, "count must be at least 1 and at most tradeId + 1")
    try:
        price, volume = Decimal(trade.px), Decimal(trade.sz)
        valid_amounts = _MIN_AMOUNT <= price < _MAX_AMOUNT and _MIN_AMOUNT <= volume < _MAX_AMOUNT
    except InvalidOperation:  # not a number, or NaN in a comparison
        valid_amounts = False
    if not valid_amounts:
        raise FrameRejected(RejectReason.VALUE, raw, "px and sz must be decimals from 1E-30 to below 1E+30")
    # tuple.__new__ skips NamedTuple's generated Python __new__: the same immutable value, cheaper.
    return _new_tuple(
        MarketTick,
        (
            trade.instId,
            _OKX,
            price,
            volume,
            trade.side,
            trade_id,
            trade_id - count + 1,
            trade_id,
            _digits(trade.ts, _MAX_EPOCH_MS, "ts", raw),
            None,  # OKX sends no event time
            received_at_ns,
            source,
        ),
    )


def _digits(text: str, limit: int, name: str, raw: bytes | str) -> int:
    """A string of ASCII digits as an int up to ``limit`` (int() alone would take " 1", "+1", "1_0")."""
    if len(text) <= _MAX_DIGITS and text.isdigit() and text.isascii():
        value = int(text)
        if value <= limit:
            return value
    raise FrameRejected(RejectReason.VALUE, raw, f"{name} must be a string of digits up to {limit}")


def _parse_uncommon(
    raw: bytes | str, received_at_ns: int, source: TickSource
) -> tuple[MarketTick, ...] | ControlFrame:
    if raw == b"pong" or raw == "pong":
        return PONG
    try:
        frame = _any_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeError) as e:  # bad UTF-8 in a string, lone surrogates
        raise FrameRejected(RejectReason.JSON, raw, str(e)) from None
    except RecursionError:  # msgspec stops at the interpreter's recursion limit, at once
        raise FrameRejected(RejectReason.JSON, raw, _TOO_DEEP) from None
    if not isinstance(frame, dict):
        raise FrameRejected(RejectReason.SCHEMA, raw, "a frame must be a JSON object or the text pong")
    if "event" in frame:
        return _control(frame, raw)
    arg, data = frame.get("arg"), frame.get("data")
    if not isinstance(arg, dict) or "data" not in frame:
        raise FrameRejected(RejectReason.SCHEMA, raw, "neither an event nor a push with 'arg' and 'data'")
    channel = _required(arg, "channel", raw)
    if channel != "trades":
        raise FrameRejected(
            RejectReason.UNKNOWN_EVENT, raw, f"not consumed here: channel {channel[:_MAX_TEXT]!r}"
        )
    if not isinstance(data, list) or not data or not all(isinstance(item, dict) for item in data):
        raise FrameRejected(RejectReason.SCHEMA, raw, "a trades push needs a non-empty array of objects")
    return tuple([_tick_from(_convert(item, raw), raw, received_at_ns, source) for item in data])


def _control(frame: dict[str, Any], raw: bytes | str) -> ControlFrame:
    event = frame["event"]
    request_id = frame.get("id") if isinstance(frame.get("id"), str) else None
    if event in ("subscribe", "unsubscribe"):
        arg = frame.get("arg")
        if not isinstance(arg, dict):
            raise FrameRejected(RejectReason.SCHEMA, raw, f"a {event} acknowledgement needs an 'arg' object")
        return SubscribeAck(
            event=event,
            channel=_required(arg, "channel", raw),
            inst_id=_text(arg, "instId", raw),
            request_id=request_id,
        )
    if event == "error":
        code, message = _code(frame, raw), _required(frame, "msg", raw)
        return ErrorReply(
            code=code,
            message=message[:_MAX_MESSAGE],
            inst_id=_named_instrument(frame, message),
            request_id=request_id,
        )
    if event == "notice":
        return Notice(code=_code(frame, raw), message=_required(frame, "msg", raw)[:_MAX_MESSAGE])
    if not isinstance(event, str):
        raise FrameRejected(RejectReason.TYPE, raw, "the event type must be a string")
    raise FrameRejected(RejectReason.UNKNOWN_EVENT, raw, f"not consumed here: event {event[:_MAX_TEXT]!r}")


def _named_instrument(frame: dict[str, Any], message: str) -> str | None:
    """The instrument an error is about: its ``arg``, if it has one, else the one its text names."""
    arg = frame.get("arg")
    if isinstance(arg, dict) and isinstance(arg.get("instId"), str):
        return str(arg["instId"])
    named = _NAMED_INSTRUMENT.search(message)
    return named[1] if named else None


def _text(obj: dict[str, Any], key: str, raw: bytes | str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise FrameRejected(RejectReason.TYPE, raw, f"{key!r} must be a string")


def _required(obj: dict[str, Any], key: str, raw: bytes | str) -> str:
    value = _text(obj, key, raw)
    if value is None:
        raise FrameRejected(RejectReason.SCHEMA, raw, f"missing {key!r}")
    return value


def _code(frame: dict[str, Any], raw: bytes | str) -> str:
    """OKX codes are strings ("60018"); a JSON integer is taken as the same code."""
    code = frame.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        return str(code)
    return _required(frame, "code", raw)


def _convert(item: dict[str, Any], raw: bytes | str) -> Trade:
    try:
        return msgspec.convert(item, Trade)
    except msgspec.ValidationError as e:
        message = str(e)
        if message.startswith("Object missing required field"):
            reason = RejectReason.SCHEMA
        elif _WRONG_TYPE.match(message):
            reason = RejectReason.TYPE
        else:  # an empty instId, a side that is neither buy nor sell
            reason = RejectReason.VALUE
        raise FrameRejected(reason, raw, message) from None


# Encoders: what OKX sends (for the simulator, and parse's inverse) and what the client sends.


def encode_trades_push(ticks: Sequence[MarketTick], *, seq_id: int | None = None) -> bytes:
    """The push OKX would send for ``ticks``, trades of one instrument in order, as newer OKX does
    (with ``count``, ``source`` and, when given, ``seqId``). Raises ``ValueError`` for ticks no
    OKX push can carry (mixed instruments, a trade id that is not the last of its aggregation)."""
    if not ticks:
        raise ValueError("a trades push carries at least one trade")
    inst_id = ticks[0].symbol
    items = []
    for tick in ticks:
        if tick.symbol != inst_id:
            raise ValueError(f"one push carries one instrument: {inst_id!r} and {tick.symbol!r}")
        if tick.trade_id != tick.last_trade_id or tick.first_trade_id > tick.last_trade_id:
            raise ValueError(f"OKX's tradeId is the last id of its aggregation: {tick!r}")
        item: dict[str, Any] = {
            "instId": inst_id,
            "tradeId": str(tick.trade_id),
            "px": f"{tick.price:f}",  # str() would write 1E-7 style exponents, which OKX never sends
            "sz": f"{tick.volume:f}",
            "side": tick.side.value,
            "ts": str(tick.timestamp_ms),
            "count": str(tick.last_trade_id - tick.first_trade_id + 1),
            "source": "0",
        }
        if seq_id is not None:
            item["seqId"] = seq_id
        items.append(item)
    return _encoder.encode({"arg": {"channel": "trades", "instId": inst_id}, "data": items})


def encode_subscribe_ack(
    inst_id: str, conn_id: str, *, event: str = "subscribe", request_id: str | None = None
) -> bytes:
    """OKX's acknowledgement of one (un)subscribed trades channel; ``id`` echoes the request's."""
    arg = {"channel": "trades", "instId": inst_id}
    return _encoder.encode({**_id(request_id), "event": event, "arg": arg, "connId": conn_id})


def encode_event(
    event: Literal["error", "notice"], code: str, message: str, conn_id: str, *, request_id: str | None = None
) -> bytes:
    """An error reply or a notice as OKX writes them (``code`` is a string)."""
    return _encoder.encode(
        {**_id(request_id), "event": event, "code": code, "msg": message, "connId": conn_id}
    )


def _id(request_id: str | None) -> dict[str, str]:
    return {} if request_id is None else {"id": request_id}


def subscribe_requests(
    inst_ids: Iterable[str], *, op: str = "subscribe", limit: int = SUBSCRIBE_LIMIT_BYTES
) -> list[str]:
    """Requests to (un)subscribe the trades of ``inst_ids``: as few as fit in ``limit`` bytes each."""
    empty = len(_request(op, []))
    requests: list[str] = []
    batch: list[bytes] = []
    size = empty
    for inst_id in inst_ids:
        arg = _encoder.encode({"channel": "trades", "instId": inst_id})
        if batch and size + 1 + len(arg) > limit:  # 1: the comma before it
            requests.append(_request(op, batch))
            batch, size = [], empty
        size += len(arg) + (1 if batch else 0)
        batch.append(arg)
    if batch:
        requests.append(_request(op, batch))
    return requests


def _request(op: str, args: list[bytes]) -> str:
    return _encoder.encode({"op": op, "args": [msgspec.Raw(arg) for arg in args]}).decode()
