"""OKX v5 REST trade history wire format (``GET /api/v5/market/history-trades``): answer to ticks.

An answer with ``type=1`` (paged by trade id), as OKX documents it: at most ``limit`` (100) items,
newest first, each ONE fill (no ``count``: a push's aggregation of ``count`` fills is ``count``
items here, ids ``tradeId - count + 1`` .. ``tradeId``)::

    {"code":"0","msg":"","data":[{"instId":"BTC-USDT","side":"sell","sz":"0.00001","source":"0",
     "px":"29963.2","tradeId":"242720720","ts":"1654161646974"},{"instId":"BTC-USDT",
     "side":"sell","sz":"0.00001","source":"0","px":"29964.1","tradeId":"242720719",
     "ts":"1654161641568"}]}

A refusal has a code other than ``"0"`` (a string) and empty ``data``, whatever its HTTP status:
``{"code":"51001","msg":"Instrument ID, Instrument ID code or Spread ID doesn't exist.","data":[]}``
(HTTP 200), ``{"code":"50011","msg":"Too Many Requests","data":[]}`` (HTTP 429; with HTTP 200 its
message is "Rate limit reached. ...").
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from kairos_core.domain import FrameRejected, MarketTick, RejectReason, TickSource

from .okx_wire import Trade, trade_tick

OK = "0"
"""The code of an answer that carries data."""
RATE_LIMITED = "50011"
"""Too many requests from this IP (HTTP 429, or 200 with "Rate limit reached")."""
NO_SUCH_INSTRUMENT = "51001"
"""The instrument id does not exist."""
_BACKFILL = TickSource.BACKFILL
_MAX_MESSAGE = 500  # characters of an error's text kept (it goes into logs and exceptions)


@dataclass(frozen=True, slots=True, kw_only=True)
class VenueError:
    """OKX answered with an error code instead of data."""

    code: str
    message: str


class _Answer(msgspec.Struct, gc=False):
    code: str  # "0", or the error code
    data: list[Trade]  # the fills, newest first; [] with an error
    msg: str = ""  # the error's text; "" with data


_answer_decoder = msgspec.json.Decoder(_Answer)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def parse_history_trades(
    raw: bytes | str, inst_id: str, received_at_ns: int | None = None
) -> list[MarketTick] | VenueError:
    """The ticks of one history answer for ``inst_id``, in the answer's order, or its error code.

    Every tick is one fill (``first_trade_id == last_trade_id == trade_id``) with ``source =
    BACKFILL``; the rest is mapped exactly as ``okx_wire.parse_frame`` maps a push's trade. One
    item that cannot be used, or that names another instrument or several fills, rejects the whole
    answer (``FrameRejected``, its excerpt the item): a page with a hole is no page.
    """
    if received_at_ns is None:
        received_at_ns = time.time_ns()
    try:
        answer = _answer_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeError, RecursionError):
        return _parse_uncommon(raw, inst_id, received_at_ns)
    if answer.code != OK:
        return VenueError(code=answer.code, message=answer.msg[:_MAX_MESSAGE])
    return [_fill(trade, raw, inst_id, received_at_ns) for trade in answer.data]


def _parse_uncommon(raw: bytes | str, inst_id: str, received_at_ns: int) -> list[MarketTick] | VenueError:
    try:
        answer = _any_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeError) as e:
        raise FrameRejected(RejectReason.JSON, raw, str(e)) from None
    except RecursionError:  # msgspec stops at the interpreter's recursion limit, at once
        raise FrameRejected(RejectReason.JSON, raw, "nested deeper than the JSON decoder goes") from None
    if not isinstance(answer, dict) or "code" not in answer:
        raise FrameRejected(RejectReason.SCHEMA, raw, "an OKX answer is a JSON object with a 'code'")
    code, message = answer["code"], answer.get("msg")
    if isinstance(code, int) and not isinstance(code, bool):
        code = str(code)  # OKX writes codes as strings; a number is taken as the same code
    if not isinstance(code, str):
        raise FrameRejected(RejectReason.TYPE, raw, "'code' must be a string")
    if code != OK:
        return VenueError(code=code, message=message[:_MAX_MESSAGE] if isinstance(message, str) else "")
    data = answer.get("data")
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise FrameRejected(RejectReason.SCHEMA, raw, "'data' must be an array of trade objects")
    return [_fill(item, raw, inst_id, received_at_ns) for item in data]


def _fill(item: Trade | dict[str, Any], raw: bytes | str, inst_id: str, received_at_ns: int) -> MarketTick:
    try:
        tick = trade_tick(item, raw, received_at_ns, _BACKFILL)
    except FrameRejected as e:  # point at the item, not at the start of a 100-item answer
        raise FrameRejected(e.reason, _encoder.encode(item), f"trade {_trade_id(item)}: {e.detail}") from None
    if tick.symbol != inst_id:
        detail = f"trade {tick.trade_id} is of {tick.symbol!r}, not of {inst_id!r} as asked"
        raise FrameRejected(RejectReason.VALUE, _encoder.encode(item), detail)
    if tick.first_trade_id != tick.trade_id:
        detail = f"trade {tick.trade_id}: a history item is one fill, its count must be 1"
        raise FrameRejected(RejectReason.VALUE, _encoder.encode(item), detail)
    return tick


def _trade_id(item: Trade | dict[str, Any]) -> object:
    return item.tradeId if isinstance(item, Trade) else item.get("tradeId")


# Encoders: what OKX answers (for the simulator, and parse's inverse).


def encode_history_trades(fills: Iterable[MarketTick]) -> bytes:
    """OKX's answer carrying ``fills`` in the order given (OKX's: newest first), with OKX's key
    order. Raises ``ValueError`` for a tick that is not one fill (an aggregation of several)."""
    items = []
    for tick in fills:
        if not tick.first_trade_id == tick.last_trade_id == tick.trade_id:
            raise ValueError(
                f"a history item is one fill, not ids {tick.first_trade_id}..{tick.last_trade_id}"
            )
        items.append(
            {
                "instId": tick.symbol,
                "side": tick.side.value,
                "sz": f"{tick.volume:f}",  # str() would write 1E-7 style exponents, which OKX never sends
                "source": "0",
                "px": f"{tick.price:f}",
                "tradeId": str(tick.trade_id),
                "ts": str(tick.timestamp_ms),
            }
        )
    return _encoder.encode({"code": OK, "msg": "", "data": items})


def encode_error(code: str, message: str) -> bytes:
    """OKX's answer refusing a request with ``code`` (a string, as OKX writes it)."""
    return _encoder.encode({"code": code, "msg": message, "data": []})
