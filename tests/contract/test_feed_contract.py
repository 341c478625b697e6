"""The contract every exchange adapter passes, against its venue's simulator and its real recordings.

Exactness comes from the simulators' accounting: they send trades only to connections subscribed
to them and count every one they send (``trades_sent``), and ``halt()`` returns once all of those
are on their way. So once a test has halted the simulator, the ticks on the bus must be exactly
the trades sent, whenever the feed subscribed; nothing sent before a subscription is counted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kairos_core.adapters.inbound.feed_handler.connection import WebSocketConnector
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy
from kairos_core.application.bus import BroadcastBus
from kairos_core.domain import MarketTick, RejectReason
from kairos_core.simulator.venue import SimulatedVenue
from tests.contract.cases import ExchangeCase, ExpectedTrade
from tests.contract.harness import (
    STOP_WITHIN,
    FeedRun,
    Tape,
    assert_once_in_order,
    assert_required_fields,
    eventually,
    everything_sent_arrived,
    fast_policy,
    streaming,
    wait_until,
)
from tests.contract.recordings import ReplayServer, read_recording

Simulator = SimulatedVenue[Any]


def start(
    case: ExchangeCase,
    simulator: Simulator,
    connector: WebSocketConnector,
    policy: ReconnectPolicy | None = None,
) -> tuple[Tape, FeedRun]:
    """The case's feed on every symbol of the simulator, into a bus read by a ``Tape``."""
    bus = BroadcastBus()
    tape = Tape(bus)
    feed = case.feed(
        bus, simulator.port, case.symbols, connector=connector, policy=policy or fast_policy(), replay=False
    )
    return tape, FeedRun(feed)


async def all_sent_once_in_order(simulator: Simulator, tape: Tape, run: FeedRun) -> list[MarketTick]:
    """Halt the simulator, wait for what it sent, stop the feed; the ticks, checked against the sends."""
    await everything_sent_arrived(simulator, tape)
    await run.stop()
    ticks = await tape.close()
    assert len(ticks) == simulator.trades_sent, "a trade sent is missing or doubled"
    assert_once_in_order(ticks)
    return ticks


async def test_every_trade_sent_arrives_once_in_order_with_every_field(
    case: ExchangeCase, simulator: Simulator, connector: WebSocketConnector
) -> None:
    since = time.time_ns()
    tape, run = start(case, simulator, connector)
    await streaming(tape, case)
    ticks = await all_sent_once_in_order(simulator, tape, run)

    assert {tick.symbol for tick in ticks} == set(case.tick_symbols)
    assert_required_fields(ticks, case, since_ns=since)
    now_ms = time.time_ns() // 1_000_000
    assert all(abs(tick.timestamp_ms - now_ms) < 60_000 for tick in ticks), (
        "trade time is the simulator's now"
    )
    assert run.feed.rejected.total() == 0
    assert run.feed.reconnects == 0
    assert simulator.handshakes == 1


async def test_a_dropped_connection_is_reconnected_and_resubscribed(
    case: ExchangeCase, simulator: Simulator, connector: WebSocketConnector
) -> None:
    since = time.time_ns()
    tape, run = start(case, simulator, connector)
    await streaming(tape, case)
    # Halted and drained first, so the drop cuts no frame in flight and the count stays exact.
    await everything_sent_arrived(simulator, tape)
    await simulator.drop_connections()
    await eventually(lambda: simulator.handshakes == 2 and simulator.clients == 1, "a new connection")
    simulator.resume()
    # The simulators send a symbol's trades only to a connection subscribed to it.
    await streaming(tape, case)
    ticks = await all_sent_once_in_order(simulator, tape, run)  # on either connection

    assert run.feed.reconnects == 1
    assert simulator.handshakes == 2
    assert_required_fields(ticks, case, since_ns=since)


async def test_garbage_and_unknown_frames_are_counted_and_skipped(
    case: ExchangeCase, simulator: Simulator, connector: WebSocketConnector
) -> None:
    tape, run = start(case, simulator, connector)
    await streaming(tape, case, at_least=10)
    await simulator.inject(case.garbage.decode())  # text frames, as exchanges send
    await simulator.inject(case.unknown.decode())
    await simulator.inject(b"\x00\xff not even UTF-8")  # a binary frame
    await simulator.inject(case.foreign.decode())
    await eventually(lambda: run.feed.rejected.total() == 4, "four frames rejected")
    await streaming(tape, case)  # the stream goes on
    await all_sent_once_in_order(simulator, tape, run)  # no trade around the bad frames was lost

    assert run.feed.rejected == {
        RejectReason.JSON: 2,
        RejectReason.UNKNOWN_EVENT: 1,
        RejectReason.UNKNOWN_SYMBOL: 1,
    }
    assert run.feed.reconnects == 0


@pytest.mark.parametrize("moment", ["streaming", "held-back-by-the-bus", "waiting-to-reconnect"])
async def test_stop_returns_promptly_and_leaves_no_task_running(
    case: ExchangeCase, simulator: Simulator, connector: WebSocketConnector, moment: str
) -> None:
    slow = ReconnectPolicy(initial_delay=30.0, max_delay=30.0)  # a reconnect would wait 15-30 s
    tape, run = start(case, simulator, connector, slow)
    await streaming(tape, case, at_least=10)
    if moment == "held-back-by-the-bus":
        # A lossless subscriber that never reads (a store that is down): the bus holds the feed
        # back, it stops reading, and frames pile up unread in its socket while it is stopped.
        tape.bus.subscribe("stalled", lossless=True)
        await eventually(lambda: simulator.trades_sent > tape.bus.published + 500, "frames left unread")
    elif moment == "waiting-to-reconnect":
        await simulator.drop_connections()
        await eventually(lambda: run.feed.reconnects == 1, "the feed noticed the drop")

    took = await run.stop()  # fails itself past STOP_WITHIN, naming any task left pending
    await tape.close()

    assert took < STOP_WITHIN
    assert run.created, "the feed's tasks were seen (else this test would prove nothing)"
    await eventually(lambda: simulator.clients == 0, "the feed's connection closed", timeout=STOP_WITHIN)


async def test_a_real_recording_replayed_byte_for_byte_gives_exactly_its_trades(
    case: ExchangeCase, recording: Path, connector: WebSocketConnector
) -> None:
    recorded = read_recording(recording)
    expected = case.read(recorded)
    assert expected.trades, "a recording with trades in it"
    since = time.time_ns()
    bus = BroadcastBus()
    tape = Tape(bus)
    async with ReplayServer(recorded, after_request=case.subscribes_by_request) as server:
        feed = case.feed(
            bus, server.port, expected.symbols, connector=connector, policy=fast_policy(), replay=True
        )
        run = FeedRun(feed)
        # Waited for without failing: on a mismatch, the comparisons below say what differs.
        await wait_until(
            lambda: (
                server.replayed == 1
                and len(tape.ticks) >= len(expected.trades)
                and run.feed.rejected.total() >= expected.ignored
            )
        )
        await run.stop()
    ticks = await tape.close()

    assert [ExpectedTrade.of(tick) for tick in ticks] == list(expected.trades)
    assert run.feed.rejected == {RejectReason.UNKNOWN_EVENT: expected.ignored}
    assert run.feed.reconnects == 0
    assert len(server.paths) == 1
    asked = server.paths[0] + "".join(str(message) for message in server.received)
    assert all(symbol in asked for symbol in expected.symbols), "the feed asked for every symbol"
    assert_required_fields(ticks, case, since_ns=since)
