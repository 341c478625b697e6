"""Hypothesis strategies shared by the unit tests: Binance aggTrade and OKX trades fields, and their ticks.

Built from the documented wire format only, never from the parser or its encoder, so a test that
feeds these to ``parse_frame`` checks the parser against an independent description.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from kairos_core.domain import Exchange, MarketTick, Side, TickSource

MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last millisecond datetime holds
MAX_ID = 2**63 - 1  # Binance ids are stored as bigint

binance_symbols = st.from_regex(r"[A-Z0-9]{2,20}", fullmatch=True)
epoch_ms = st.integers(0, MAX_EPOCH_MS)
trade_ids = st.integers(0, MAX_ID)
received_at_ns = st.integers(0, 2**63 - 1)
tick_sources = st.sampled_from(TickSource)

_integer_parts = st.one_of(st.just("0"), st.integers(1, 10**15).map(str))  # many "0.xxx" values
_fraction_digits = st.text("0123456789", max_size=18)


@st.composite
def decimal_strings(draw: st.DrawFn) -> str:
    """A positive decimal as Binance writes it: "58001.03000000", "0.00000010", "7" (any scale)."""
    integer, fraction = draw(_integer_parts), draw(_fraction_digits)
    if integer == "0" and not fraction.strip("0"):
        fraction = fraction[:-1] + draw(st.sampled_from("123456789"))  # keep it positive
    return f"{integer}.{fraction}" if fraction else integer


@st.composite
def agg_trade_data(draw: st.DrawFn, symbol: st.SearchStrategy[str] = binance_symbols) -> dict[str, Any]:
    """The ``data`` object of a valid aggTrade event, as ``json.loads`` would return it."""
    first, last = sorted((draw(trade_ids), draw(trade_ids)))
    return {
        "e": "aggTrade",
        "E": draw(epoch_ms),
        "s": draw(symbol),
        "a": draw(trade_ids),
        "p": draw(decimal_strings()),
        "q": draw(decimal_strings()),
        "f": first,
        "l": last,
        "T": draw(epoch_ms),
        "m": draw(st.booleans()),
        "M": draw(st.booleans()),
    }


def tick_from_agg_trade(
    data: dict[str, Any], received_at_ns: int, source: TickSource = TickSource.LIVE
) -> MarketTick:
    """The tick a valid aggTrade ``data`` object stands for, written out from Binance's docs."""
    return MarketTick(
        symbol=data["s"],
        exchange=Exchange.BINANCE,
        price=Decimal(data["p"]),
        volume=Decimal(data["q"]),
        side=Side.SELL if data["m"] else Side.BUY,  # m: the buyer is the maker, so the taker sold
        trade_id=data["a"],
        first_trade_id=data["f"],
        last_trade_id=data["l"],
        timestamp_ms=data["T"],
        event_time_ms=data["E"],
        received_at_ns=received_at_ns,
        source=source,
    )


@st.composite
def market_ticks(
    draw: st.DrawFn,
    symbol: st.SearchStrategy[str] = binance_symbols,
    source: st.SearchStrategy[TickSource] = tick_sources,
) -> MarketTick:
    """A valid Binance MarketTick: every field a real aggTrade frame could carry."""
    return tick_from_agg_trade(draw(agg_trade_data(symbol)), draw(received_at_ns), draw(source))


def numbered_tick(seq: int, symbol: str = "BTCUSDT", exchange: Exchange = Exchange.BINANCE) -> MarketTick:
    """A plain valid tick whose ids and times are ``seq``: for tests that track ticks by number."""
    return MarketTick(
        symbol=symbol,
        exchange=exchange,
        price=Decimal("58001.00000000") + seq,
        volume=Decimal("0.02200000"),
        side=Side.BUY,
        trade_id=seq,
        first_trade_id=seq,
        last_trade_id=seq,
        timestamp_ms=1_700_000_000_000 + seq,
        event_time_ms=1_700_000_000_000 + seq,
        received_at_ns=1_700_000_000_000_000_000 + seq,
    )


# OKX v5 trades channel -------------------------------------------------------------------------

okx_inst_ids = st.from_regex(r"[A-Z0-9]{1,6}(-[A-Z0-9]{1,6}){1,4}", fullmatch=True)  # BTC-USDT, ...-C


@st.composite
def okx_trade_items(
    draw: st.DrawFn, inst_id: st.SearchStrategy[str] = okx_inst_ids, newer: bool | None = None
) -> dict[str, Any]:
    """One item of a valid trades push, as ``json.loads`` would return it.

    ``newer``: with OKX's newer fields (``count``, ``source``, ``seqId``); None draws either.
    """
    trade_id = draw(trade_ids)
    item: dict[str, Any] = {
        "instId": draw(inst_id),
        "tradeId": str(trade_id),
        "px": draw(decimal_strings()),
        "sz": draw(decimal_strings()),
        "side": draw(st.sampled_from(["buy", "sell"])),
        "ts": str(draw(epoch_ms)),
    }
    if newer if newer is not None else draw(st.booleans()):
        item["count"] = str(draw(st.integers(1, min(trade_id + 1, 1_000_000))))
        item["source"] = draw(st.sampled_from(["0", "1"]))
        item["seqId"] = draw(st.integers(0, 2**63 - 1))
    return item


@st.composite
def okx_trades_pushes(draw: st.DrawFn, newer: bool | None = None) -> dict[str, Any]:
    """A valid trades push of one instrument with one to four trades."""
    inst_id = draw(okx_inst_ids)
    items = draw(st.lists(okx_trade_items(st.just(inst_id), newer), min_size=1, max_size=4))
    return {"arg": {"channel": "trades", "instId": inst_id}, "data": items}


def tick_from_okx_trade(
    item: dict[str, Any], received_at_ns: int, source: TickSource = TickSource.LIVE
) -> MarketTick:
    """The tick a valid trades item stands for, written out from OKX's docs."""
    trade_id = int(item["tradeId"])  # the last trade of an aggregation of ``count`` (absent: 1)
    return MarketTick(
        symbol=item["instId"],
        exchange=Exchange.OKX,
        price=Decimal(item["px"]),
        volume=Decimal(item["sz"]),
        side=Side(item["side"]),  # the taker's side
        trade_id=trade_id,
        first_trade_id=trade_id - int(item.get("count", "1")) + 1,
        last_trade_id=trade_id,
        timestamp_ms=int(item["ts"]),
        event_time_ms=None,
        received_at_ns=received_at_ns,
        source=source,
    )


@st.composite
def okx_market_ticks(
    draw: st.DrawFn,
    inst_id: st.SearchStrategy[str] = okx_inst_ids,
    source: st.SearchStrategy[TickSource] = tick_sources,
) -> MarketTick:
    """A valid OKX MarketTick: every field a real trades item could carry."""
    return tick_from_okx_trade(draw(okx_trade_items(inst_id)), draw(received_at_ns), draw(source))
