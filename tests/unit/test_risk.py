"""The risk engine: each limit on both sides of its edge, the circuit breaker, and properties."""

from __future__ import annotations

import asyncio
import math
import statistics
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from kairos_core.adapters.outbound.paper_broker import PaperBroker
from kairos_core.application.risk import RiskEngine, RiskLimits
from kairos_core.domain import (
    Exchange,
    GapDetected,
    GapEvent,
    GapRepaired,
    GapUnrecoverable,
    MarketTick,
    OrderIntent,
    Position,
    PositionBook,
    RiskDecision,
    RiskRejection,
    Side,
    TickSource,
)
from tests.trading import order, priced

T0_NS = 1_700_000_000_000_000_000
"""The fake clock's start, epoch nanoseconds; ticks are received then unless told otherwise."""

LIMITS = RiskLimits(
    max_order_notional=Decimal(300),
    max_position=Decimal(2),
    price_band_pct=Decimal(5),
    stale_after_s=5.0,
    breaker_move_pct=Decimal(10),
    breaker_window_s=60.0,
    breaker_cooldown_s=300.0,
)


def tick(
    price: int | str,
    at_ms: int = 0,
    *,
    symbol: str = "BTCUSDT",
    received_ns: int = T0_NS,
    source: TickSource = TickSource.LIVE,
) -> MarketTick:
    return priced(price, 0, symbol, timestamp_ms=at_ms, received_at_ns=received_ns, source=source)


def intent(
    quantity: str = "1", side: Side = Side.BUY, limit: str | None = None, symbol: str = "BTCUSDT"
) -> OrderIntent:
    """An order, quantity first: what the limits below are mostly about."""
    return order(side, quantity, limit, symbol=symbol)


@dataclass
class FakeClock:
    now: int = T0_NS

    def __call__(self) -> int:
        return self.now


class FakePositionBook(PositionBook):
    def __init__(self, held: str = "0") -> None:
        self.held = Decimal(held)

    def position(self, exchange: Exchange, symbol: str) -> Position:
        return Position(exchange=exchange, symbol=symbol, quantity=self.held)


def engine(held: str = "0", limits: RiskLimits = LIMITS, clock: FakeClock | None = None) -> RiskEngine:
    return RiskEngine(FakePositionBook(held), limits, clock=clock or FakeClock())


def approved() -> RiskDecision:
    return RiskDecision.approve()


# --- one limit at a time ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "order", "rejection"),
    [
        pytest.param("0", intent("1"), None, id="small market order"),
        pytest.param("-1", intent("3"), None, id="notional at the limit"),
        pytest.param("-1", intent("3.01"), RiskRejection.ORDER_NOTIONAL, id="notional over the limit"),
        pytest.param("-1", intent("2.8", limit="105"), None, id="limit notional priced at the limit"),
        pytest.param(
            "-1", intent("2.9", limit="105"), RiskRejection.ORDER_NOTIONAL, id="limit notional over"
        ),
        pytest.param("0", intent("1", limit="105"), None, id="limit at the top of the band"),
        pytest.param("0", intent("1", limit="105.01"), RiskRejection.PRICE_BAND, id="limit above the band"),
        pytest.param("0", intent("1", Side.SELL, "95"), None, id="limit at the bottom of the band"),
        pytest.param(
            "0", intent("1", Side.SELL, "94.99"), RiskRejection.PRICE_BAND, id="limit below the band"
        ),
        pytest.param("1.5", intent("0.5"), None, id="position up to the limit"),
        pytest.param("1.5", intent("0.6"), RiskRejection.POSITION_LIMIT, id="position over the limit"),
        pytest.param("-2", intent("0.1", Side.SELL), RiskRejection.POSITION_LIMIT, id="short over the limit"),
        pytest.param("1", intent("3", Side.SELL), None, id="flip to the short limit"),
        pytest.param(
            "0.9", intent("2.95", Side.SELL), RiskRejection.POSITION_LIMIT, id="flip past the limit"
        ),
        pytest.param("3", intent("0.5", Side.SELL), None, id="reducing an oversized position"),
        pytest.param("3", intent("0.1"), RiskRejection.POSITION_LIMIT, id="growing an oversized position"),
        pytest.param("0", intent("1", symbol="ETHUSDT"), RiskRejection.NO_MARKET_DATA, id="never traded"),
    ],
)
def test_each_limit(held: str, order: OrderIntent, rejection: RiskRejection | None) -> None:
    risk = engine(held)
    risk.update_market_data(tick(100))

    decision = risk.check(order)

    assert (decision.approved, decision.reason) == (rejection is None, rejection)
    assert bool(decision.detail) == (rejection is not None)


@pytest.mark.parametrize(
    ("age_ns", "rejection"),
    [(0, None), (5_000_000_000, None), (5_000_000_001, RiskRejection.STALE_DATA)],
    ids=["fresh", "at the limit", "stale"],
)
def test_stale_data_is_measured_on_receipt_time(age_ns: int, rejection: RiskRejection | None) -> None:
    clock = FakeClock()
    risk = engine(clock=clock)
    risk.update_market_data(tick(100))
    clock.now += age_ns

    assert risk.check(intent()).reason == rejection


def test_checks_report_the_most_fundamental_failure_first() -> None:
    clock = FakeClock()
    risk = engine("2", clock=clock)
    risk.update_market_data(tick(100, 0))
    risk.update_market_data(tick(150, 1_000))  # trips the breaker
    too_much = intent("100", limit="200")  # outside the band, over notional and position

    assert risk.check(too_much).reason is RiskRejection.HALTED
    clock.now += 10**10
    assert risk.check(too_much).reason is RiskRejection.STALE_DATA


def test_backfilled_ticks_are_not_market_data() -> None:
    risk = engine()
    risk.update_market_data(tick(100, source=TickSource.BACKFILL))
    assert risk.check(intent()).reason is RiskRejection.NO_MARKET_DATA

    risk.update_market_data(tick(100, 0))
    risk.update_market_data(tick(500, 1, source=TickSource.BACKFILL))

    assert risk.check(intent()) == approved()
    state = risk.state(Exchange.BINANCE, "BTCUSDT")
    assert state is not None
    assert state.last_price == Decimal(100)


def test_state_keeps_last_price_and_rolling_volatility() -> None:
    risk = engine(limits=RiskLimits(volatility_window=2))
    assert risk.state(Exchange.BINANCE, "BTCUSDT") is None
    for at_ms, price in enumerate([100, 101, 99, 100]):
        risk.update_market_data(tick(price, at_ms, received_ns=T0_NS + at_ms))

    state = risk.state(Exchange.BINANCE, "BTCUSDT")

    assert state is not None
    assert (state.last_price, state.last_trade_ms, state.last_received_ns) == (Decimal(100), 3, T0_NS + 3)
    assert state.volatility == statistics.stdev([math.log(99 / 101), math.log(100 / 99)])
    assert state.halted_until_ms is None


@pytest.mark.parametrize(
    "limits",
    [
        {"max_order_notional": Decimal(0)},
        {"max_position": Decimal(-1)},
        {"price_band_pct": Decimal(0)},
        {"stale_after_s": 0.0},
        {"breaker_move_pct": Decimal(0)},
        {"breaker_window_s": -1.0},
        {"breaker_cooldown_s": 0.0},
        {"volatility_window": 1},
    ],
    ids=str,
)
def test_limits_that_cannot_work_are_refused(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RiskLimits(**limits)


# --- circuit breaker ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "halted"),
    [
        pytest.param([(100, 0), (110, 1_000)], False, id="up by exactly the limit"),
        pytest.param([(100, 0), ("110.01", 1_000)], True, id="up by more"),
        pytest.param([(100, 0), (90, 1_000)], False, id="down by exactly the limit"),
        pytest.param([(100, 0), ("89.99", 1_000)], True, id="down by more"),
        pytest.param([(100, 0), (111, 59_999)], True, id="inside the window"),
        pytest.param([(100, 0), (111, 60_000)], False, id="the move's start has left the window"),
        pytest.param([(100, 0), (105, 30_000), (111, 60_000)], False, id="slow drift"),
        pytest.param([(100, 0), (120, 1_000), (100, 2_000)], True, id="a spike stays halted"),
    ],
)
def test_circuit_breaker_trips_on_a_move_within_the_window(
    path: list[tuple[int | str, int]], halted: bool
) -> None:
    risk = engine()
    for price, at_ms in path:
        risk.update_market_data(tick(price, at_ms))

    assert risk.halted(Exchange.BINANCE, "BTCUSDT") is halted
    assert (risk.check(intent()).reason is RiskRejection.HALTED) is halted


def test_circuit_breaker_halts_and_resumes_after_the_cooldown_with_one_event_each() -> None:
    risk = engine()
    with capture_logs() as logs:
        risk.update_market_data(tick(100, 0))
        risk.update_market_data(tick(115, 1_000))  # halts until 301_000
        risk.update_market_data(tick(130, 2_000))  # still moving: the halt runs from here
        risk.update_market_data(tick(130, 301_999))
        halted_before = risk.check(intent("0.1")).reason
        risk.update_market_data(tick(130, 302_000))
        after = risk.check(intent("0.1"))

    assert halted_before is RiskRejection.HALTED
    assert after == approved()
    assert [entry["event"] for entry in logs] == ["risk.halted", "risk.resumed"]
    assert logs[0] == {
        "event": "risk.halted",
        "log_level": "warning",
        "exchange": Exchange.BINANCE,
        "symbol": "BTCUSDT",
        "price": "115",
        "reference": "100",
        "move_pct": "15.00",
        "window_s": 60.0,
        "cooldown_s": 300.0,
        "volatility": None,
    }
    assert logs[1] == {
        "event": "risk.resumed",
        "log_level": "info",
        "exchange": Exchange.BINANCE,
        "symbol": "BTCUSDT",
        "price": "130",
    }


def test_circuit_breaker_is_per_symbol() -> None:
    risk = engine()
    for symbol, price in [("BTCUSDT", 100), ("ETHUSDT", 100), ("BTCUSDT", 50), ("ETHUSDT", 101)]:
        risk.update_market_data(tick(price, symbol=symbol))

    assert risk.halted(Exchange.BINANCE, "BTCUSDT")
    assert risk.check(intent("0.1", symbol="ETHUSDT")) == approved()


breaker_limits = st.builds(
    RiskLimits,
    max_order_notional=st.just(Decimal(10**9)),
    max_position=st.just(Decimal(10**9)),
    price_band_pct=st.just(Decimal(100)),
    stale_after_s=st.just(1e9),
    breaker_move_pct=st.integers(1, 20).map(Decimal),
    breaker_window_s=st.integers(1, 20).map(float),
    breaker_cooldown_s=st.integers(1, 20).map(float),
)
price_paths = st.lists(st.tuples(st.integers(0, 5_000), st.integers(80, 120)), min_size=1, max_size=60)
"""(milliseconds since the previous tick, price) steps."""


@given(limits=breaker_limits, steps=price_paths)
def test_breaker_never_approves_while_halted_and_always_resumes_after_the_cooldown(
    limits: RiskLimits, steps: list[tuple[int, int]]
) -> None:
    risk = engine(limits=limits)
    window_ms, cooldown_ms = limits.breaker_window_s * 1000, limits.breaker_cooldown_s * 1000
    pct = limits.breaker_move_pct
    seen: list[tuple[int, int]] = []
    halted_until = -1
    at_ms = 0
    for elapsed, price in steps:
        at_ms += elapsed
        seen.append((at_ms, price))
        risk.update_market_data(tick(price, at_ms))
        in_window = [old for old_ms, old in seen if old_ms > at_ms - window_ms]
        if any(abs(price - old) * 100 > pct * old for old in in_window):
            halted_until = max(halted_until, at_ms + int(cooldown_ms))
        expected_halt = at_ms < halted_until

        decision = risk.check(intent("1", Side.BUY if price % 2 else Side.SELL))

        assert risk.halted(Exchange.BINANCE, "BTCUSDT") is expected_halt
        assert decision.approved is not expected_halt
        if expected_halt:
            assert decision.reason is RiskRejection.HALTED


# --- position limit, whatever the intents -------------------------------------------------------

intents = st.builds(
    intent,
    quantity=st.decimals("0.01", "3", places=2).map(str),
    side=st.sampled_from(Side),
    limit=st.one_of(st.none(), st.integers(95, 105).map(str)),
)


@given(
    max_position=st.decimals("0.5", "5", places=1),
    steps=st.lists(st.tuples(st.integers(97, 103), intents), max_size=40),
)
def test_a_position_never_exceeds_its_limit(
    max_position: Decimal, steps: list[tuple[int, OrderIntent]]
) -> None:
    broker = PaperBroker()
    risk = RiskEngine(broker, RiskLimits(max_position=max_position), clock=FakeClock())

    async def trade() -> None:
        for at_ms, (price, wish) in enumerate(steps):
            market = tick(price, at_ms)
            risk.update_market_data(market)
            broker.on_market_tick(market)
            if risk.check(wish).approved:
                await broker.submit(wish)
            assert abs(broker.position(Exchange.BINANCE, "BTCUSDT").quantity) <= max_position

    with capture_logs():
        asyncio.run(trade())


def gap_event(kind: type[GapEvent], open_gaps: int, symbol: str = "BTCUSDT") -> GapEvent:
    where = {"exchange": Exchange.BINANCE, "symbol": symbol, "from_id": 5, "open_gaps": open_gaps}
    if kind is GapDetected:
        return GapDetected(**where, to_id=9)
    if kind is GapRepaired:
        return GapRepaired(**where, to_id=9, backfilled=5, seconds=0.1)
    return GapUnrecoverable(**where, to_id=9, missing=5, reason="test")


def test_a_symbol_is_halted_while_its_data_has_an_open_gap() -> None:
    risk = engine()
    risk.update_market_data(tick(100))
    risk.update_market_data(tick(100, symbol="ETHUSDT"))
    with capture_logs() as logs:
        risk.update_continuity(gap_event(GapDetected, 1))
        risk.update_continuity(gap_event(GapDetected, 2))
        first = risk.check(intent("0.1"))
        risk.update_continuity(gap_event(GapRepaired, 1))
        second = risk.check(intent("0.1"))
        other = risk.check(intent("0.1", symbol="ETHUSDT"))
        risk.update_continuity(gap_event(GapUnrecoverable, 0))
        after = risk.check(intent("0.1"))

    assert (first.reason, second.reason) == (RiskRejection.HALTED, RiskRejection.HALTED)
    assert "data gap" in first.detail
    assert other == approved()
    assert after == approved()
    assert not risk.halted(Exchange.BINANCE, "BTCUSDT")
    assert [(entry["event"], entry.get("reason")) for entry in logs] == [
        ("risk.halted", "data_gap"),
        ("risk.resumed", "data_gap_closed"),
    ]


def test_a_lost_gap_event_is_set_right_by_the_next() -> None:
    risk = engine()
    risk.update_market_data(tick(100))
    risk.update_continuity(gap_event(GapRepaired, 1))  # its GapDetected was lost (a lagging reader)
    assert risk.halted(Exchange.BINANCE, "BTCUSDT")
    risk.update_continuity(gap_event(GapRepaired, 0))
    assert risk.check(intent("0.1")) == approved()
