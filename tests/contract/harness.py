"""Running a feed under the contract: what it put on the bus, the tasks it made, the checks on its ticks."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from kairos_core.adapters.inbound.feed_handler.feed_base import WebSocketFeed
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy
from kairos_core.application.bus import BroadcastBus, Subscription
from kairos_core.domain import MarketTick, Side, TickSource
from kairos_core.simulator.venue import SimulatedVenue
from tests.contract.cases import ExchangeCase

STOP_WITHIN = 2.0
"""Seconds from ``stop()`` until ``start()`` has returned and every task the feed made has ended."""


class Tape:
    """Every tick on the bus from now on, read as it comes by a lossless subscriber."""

    def __init__(self, bus: BroadcastBus) -> None:
        self.ticks: list[MarketTick] = []
        self.bus = bus
        self._reader = asyncio.create_task(self._read(bus.subscribe("contract", lossless=True)))

    async def _read(self, subscription: Subscription) -> None:
        async for tick in subscription:
            self.ticks.append(tick)

    def of(self, symbol: str) -> list[MarketTick]:
        return [tick for tick in self.ticks if tick.symbol == symbol]

    async def close(self) -> list[MarketTick]:
        """Close the bus; every tick it was given."""
        self.bus.close()
        await asyncio.wait_for(self._reader, 5)
        return self.ticks


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds have passed; whether it held."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, saying ``what`` was awaited."""
    assert await wait_until(condition, timeout), f"{what}: not within {timeout:g} s"


def fast_policy() -> ReconnectPolicy:
    return ReconnectPolicy(initial_delay=0.01, max_delay=0.05)


async def streaming(tape: Tape, case: ExchangeCase, at_least: int = 50) -> None:
    """Wait until every symbol has at least ``at_least`` more ticks on the tape than now."""
    floor = {symbol: len(tape.of(symbol)) + at_least for symbol in case.tick_symbols}
    await eventually(
        lambda: all(len(tape.of(s)) >= n for s, n in floor.items()), f"{at_least} more of each symbol"
    )


async def everything_sent_arrived(simulator: SimulatedVenue[Any], tape: Tape) -> None:
    """Halt the simulator and wait until as many ticks are on the tape as it sent trades."""
    await simulator.halt()
    await eventually(lambda: len(tape.ticks) >= simulator.trades_sent, "every trade sent on the bus")


_RUN: contextvars.ContextVar[FeedRun | None] = contextvars.ContextVar("feed_run", default=None)


class FeedRuns:
    """While entered, every task created in a ``FeedRun``'s context is recorded by that run.

    Tasks inherit the context of the code that creates them, so a run's mark reaches everything
    its feed, the WebSocket client and their callbacks start; the simulator's tasks, started
    elsewhere, are not marked. A task factory on the running loop does the recording.
    """

    def __init__(self) -> None:
        self.runs: list[FeedRun] = []
        self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_task_factory()

    def __enter__(self) -> FeedRuns:
        previous = self._previous

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Future[Any]:
            task = previous(loop, coro, **options) if previous else asyncio.Task(coro, loop=loop, **options)
            run = _RUN.get()
            if run is not None:
                run.created.append(task)
            return task

        factory.runs = self  # type: ignore[attr-defined]
        self._loop.set_task_factory(factory)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.set_task_factory(self._previous)

    async def stop_all(self) -> None:
        """Stop runs a failed test left going, so one failure does not spill into the next test."""
        for run in self.runs:
            await run.feed.stop()
            run.task.cancel()
        await asyncio.gather(*(run.task for run in self.runs), return_exceptions=True)


class FeedRun:
    """``feed.start()`` in a task of its own, and every task created under it (``FeedRuns`` must
    be entered: the contract suite's conftest does it for every test)."""

    def __init__(self, feed: WebSocketFeed) -> None:
        loop = asyncio.get_running_loop()
        runs: FeedRuns | None = getattr(loop.get_task_factory(), "runs", None)
        assert runs is not None, "FeedRun needs FeedRuns entered"
        runs.runs.append(self)
        self.feed = feed
        self.created: list[asyncio.Future[Any]] = []
        context = contextvars.copy_context()
        context.run(_RUN.set, self)
        self.task = loop.create_task(feed.start(), context=context)

    async def stop(self) -> float:
        """Stop the feed; seconds until ``start()`` returned and every task it made had ended.

        Fails if that takes longer than ``STOP_WITHIN``, naming the tasks still pending.
        """
        started = time.monotonic()
        await self.feed.stop()
        await asyncio.wait_for(self.task, STOP_WITHIN)
        while self.pending() and time.monotonic() < started + STOP_WITHIN:
            await asyncio.sleep(0.001)
        assert not self.pending(), f"tasks left running after stop(): {self.pending()}"
        return time.monotonic() - started

    def pending(self) -> list[asyncio.Future[Any]]:
        return [task for task in self.created if not task.done()]


def assert_once_in_order(ticks: list[MarketTick]) -> None:
    """Per symbol, ids only rise and aggregations never overlap: a repeat or a reordering shows."""
    last: dict[str, MarketTick] = {}
    for tick in ticks:
        before = last.get(tick.symbol)
        if before is not None:
            assert tick.trade_id > before.trade_id, (
                f"{tick.symbol}: id {tick.trade_id} after {before.trade_id}"
            )
            assert tick.first_trade_id > before.last_trade_id, f"{tick.symbol}: {tick} overlaps {before}"
        last[tick.symbol] = tick


def assert_required_fields(ticks: list[MarketTick], case: ExchangeCase, *, since_ns: int) -> None:
    """Every field a consumer relies on is there and means what the domain says."""
    now_ns = time.time_ns()
    for tick in ticks:
        assert type(tick) is MarketTick, tick
        assert tick.exchange is case.exchange, tick
        assert type(tick.symbol) is str, tick
        assert tick.symbol, tick
        for amount in (tick.price, tick.volume):
            assert type(amount) is Decimal, tick
            assert amount.is_finite(), tick
            assert amount > 0, tick
        assert tick.side in (Side.BUY, Side.SELL), tick
        for trade_id in (tick.trade_id, tick.first_trade_id, tick.last_trade_id):
            assert type(trade_id) is int, tick
            assert trade_id >= 0, tick
        assert tick.first_trade_id <= tick.last_trade_id, tick
        if case.trade_id_is_last:
            assert tick.trade_id == tick.last_trade_id, tick
        assert type(tick.timestamp_ms) is int, tick
        assert tick.timestamp_ms > 0, tick
        assert tick.event_time_ms is None or type(tick.event_time_ms) is int, tick
        assert since_ns <= tick.received_at_ns <= now_ns, "received_at_ns is the local receipt time"
        assert tick.source is TickSource.LIVE, tick
