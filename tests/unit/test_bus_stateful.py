"""The broadcast bus against a plain model: every try_recv, Lagged count, stat and writable state."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from kairos_core.application.bus import BroadcastBus, SubscriberStats, Subscription
from kairos_core.domain import BusClosed, Lagged, MarketTick
from tests.strategies import numbered_tick as tick
from tests.unit.test_bus import completes_at_once


@dataclass(slots=True)
class SubscriberModel:
    """What one subscriber should see: ``next`` indexes the list of everything published."""

    name: str
    lossless: bool
    next: int
    received: int = 0
    lost: int = 0
    full: bool = False
    """A lossless subscriber that reached capacity and has not yet drained to half."""


class BusMachine(RuleBasedStateMachine):
    """Publishes, subscribes, reads and closes at random; the model predicts every outcome."""

    subscriptions = Bundle("subscriptions")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.bus = BroadcastBus()
        self.capacity = self.bus.capacity
        self.published: list[MarketTick] = []
        self.closed = False
        self.models: dict[Subscription, SubscriberModel] = {}
        self.names = itertools.count()

    def teardown(self) -> None:
        self.loop.close()

    @initialize(
        target=subscriptions,
        capacity=st.integers(min_value=1, max_value=16),
        kinds=st.lists(st.booleans(), min_size=1, max_size=4),
    )
    def make_bus(self, capacity: int, kinds: list[bool]) -> MultipleResults[Subscription]:
        """A bus with its first subscribers, so that runs that close early still have readers."""
        self.bus = BroadcastBus(capacity=capacity)
        self.capacity = capacity
        return multiple(*(self.attach(lossless) for lossless in kinds))

    @precondition(lambda self: not self.closed)
    @rule(target=subscriptions, lossless=st.booleans())
    def subscribe(self, lossless: bool) -> Subscription:
        return self.attach(lossless)

    def attach(self, lossless: bool) -> Subscription:
        name = f"{'lossless' if lossless else 'ordinary'}-{next(self.names)}"
        subscription = self.bus.subscribe(name, lossless=lossless)
        self.models[subscription] = SubscriberModel(name=name, lossless=lossless, next=len(self.published))
        return subscription

    @precondition(lambda self: self.closed)
    @rule(lossless=st.booleans())
    def subscribe_after_close(self, lossless: bool) -> None:
        with pytest.raises(BusClosed):
            self.bus.subscribe("late", lossless=lossless)

    @rule(count=st.integers(min_value=1, max_value=40))
    def publish(self, count: int) -> None:
        for _ in range(count):
            item = tick(len(self.published))
            if self.closed:
                with pytest.raises(BusClosed):
                    self.bus.publish(item)
                return
            self.bus.publish(item)
            self.published.append(item)
            filled = False
            for model in self.models.values():
                if model.lossless and not model.full and len(self.published) - model.next >= self.capacity:
                    model.full = filled = True
            if filled:  # check the back-pressure at the tick that fills a queue, not only after the burst
                self.writable_matches_model()

    @rule(extra=st.integers(min_value=0, max_value=8))
    def overrun(self, extra: int) -> None:
        """Publish more than the capacity at once: every subscriber that does not read now lags."""
        self.publish(self.capacity + extra)

    @rule(subscription=subscriptions)
    def try_recv(self, subscription: Subscription) -> None:
        self.check_one_recv(subscription)

    @rule(subscription=subscriptions)
    def drain(self, subscription: Subscription) -> None:
        while self.check_one_recv(subscription):
            pass

    @rule(subscription=consumes(subscriptions))
    def close_subscription(self, subscription: Subscription) -> None:
        subscription.close()
        del self.models[subscription]

    # Closing ends publishing: allowed only after some traffic, else many runs close before
    # anyone can lag or fill up.
    @precondition(lambda self: not self.closed and len(self.published) >= self.capacity)
    @rule()
    def close(self) -> None:
        self.bus.close()
        self.closed = True

    def check_one_recv(self, subscription: Subscription) -> bool:
        """One try_recv checked against the model; whether a tick or Lagged came back."""
        model = self.models[subscription]
        seq = len(self.published)
        oldest = seq - self.capacity
        if model.next < seq and not model.lossless and model.next < oldest:
            with pytest.raises(Lagged) as lagged:
                subscription.try_recv()
            assert lagged.value.missed == oldest - model.next
            model.lost += oldest - model.next
            model.next = oldest
            return True
        if model.next < seq:
            assert subscription.try_recv() is self.published[model.next]
            model.next += 1
            model.received += 1
            if model.full:  # check every step of the drain that must release the producer
                model.full = seq - model.next > self.capacity // 2
                self.writable_matches_model()
            return True
        if self.closed:
            with pytest.raises(BusClosed):
                subscription.try_recv()
        else:
            assert subscription.try_recv() is None
        return False

    @invariant()
    def stats_match_model(self) -> None:
        seq = len(self.published)
        expected = []
        for model in self.models.values():
            lag = seq - model.next
            depth = lag if model.lossless else min(lag, self.capacity)
            overwritten = lag - depth
            expected.append(
                SubscriberStats(
                    name=model.name,
                    lossless=model.lossless,
                    received=model.received,
                    depth=depth,
                    lag=lag,
                    lost=model.lost + overwritten,
                )
            )
        assert self.bus.stats() == expected
        assert self.bus.published == seq
        assert self.bus.closed == self.closed

    @invariant()
    def writable_matches_model(self) -> None:
        blocked = not self.closed and any(model.full for model in self.models.values())
        assert self.loop.run_until_complete(completes_at_once(self.bus.writable())) is not blocked


TestBusMachine = BusMachine.TestCase
