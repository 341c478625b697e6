"""The tick's NATS form: pinned bytes, exact round trips, subjects and message ids."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kairos_core.adapters.outbound.nats import wire
from kairos_core.domain import ConfigurationError, Exchange, MarketTick, Side, TickSource
from tests.strategies import market_ticks, okx_market_ticks

TICK = MarketTick(
    symbol="BTCUSDT",
    exchange=Exchange.BINANCE,
    price=Decimal("60123.45000000"),
    volume=Decimal("0.00123000"),
    side=Side.BUY,
    trade_id=3123456789,
    first_trade_id=12493827156,
    last_trade_id=12493827158,
    timestamp_ms=1768835000066,
    event_time_ms=1768835000067,
    received_at_ns=1768835000071234567,
)
PINNED = (
    "9ca742544355534454a762696e616e6365ae36303132332e3435303030303030aa302e3030313233303030a3627579"
    "ceba2c2b15cf00000002e8b0ac54cf00000002e8b0ac56cf0000019bd6c82702cf0000019bd6c82703cf188c2a0f95"
    "862407a46c697665"
)


def test_the_bytes_of_a_tick_are_pinned() -> None:
    """A change here changes what every ingest and persist node in a cluster must agree on."""
    assert wire.encode(TICK).hex() == PINNED
    assert len(wire.encode(TICK)) == 102


def test_the_payload_is_the_fields_in_order_with_exact_decimal_strings() -> None:
    assert msgspec.msgpack.decode(wire.encode(TICK)) == [
        "BTCUSDT",
        "binance",
        "60123.45000000",
        "0.00123000",
        "buy",
        3123456789,
        12493827156,
        12493827158,
        1768835000066,
        1768835000067,
        1768835000071234567,
        "live",
    ]


@given(st.one_of(market_ticks(), okx_market_ticks()))
def test_every_field_comes_back_exactly(tick: MarketTick) -> None:
    back = wire.decode(wire.encode(tick))
    assert back == tick
    assert [type(value) for value in back] == [type(value) for value in tick]
    assert str(back.price) == str(tick.price)
    assert str(back.volume) == str(tick.volume)


def test_no_event_time_and_every_source_survive() -> None:
    for source in TickSource:
        tick = TICK._replace(event_time_ms=None, source=source, exchange=Exchange.OKX, symbol="BTC-USDT")
        assert wire.decode(wire.encode(tick)) == tick


UNKNOWN_EXCHANGE = msgspec.msgpack.encode(
    ["BTCUSDT", "kraken", *msgspec.msgpack.decode(wire.encode(TICK))[2:]]
)


@pytest.mark.parametrize("payload", [b"", b"\x93\x01\x02\x03", b"not msgpack at all", UNKNOWN_EXCHANGE])
def test_anything_else_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        wire.decode(payload)


def test_subjects_and_message_ids() -> None:
    assert wire.subject("kairos.ticks", Exchange.BINANCE, "BTCUSDT") == "kairos.ticks.binance.BTCUSDT"
    assert wire.subject("kairos.ticks", Exchange.OKX, "BTC-USDT") == "kairos.ticks.okx.BTC-USDT"
    assert wire.exchange_subjects("kairos.ticks", Exchange.BINANCE) == "kairos.ticks.binance.>"
    assert wire.exchange_subjects("kairos.ticks") == "kairos.ticks.>"
    assert wire.message_id(TICK) == "binance:BTCUSDT:3123456789"
    with pytest.raises(ValueError, match="subject token"):
        wire.subject("kairos.ticks", Exchange.BINANCE, "BTC.USDT")
    with pytest.raises(ConfigurationError, match=r"e\.g\. kairos\.ticks"):
        wire.checked_prefix("kairos.>")
