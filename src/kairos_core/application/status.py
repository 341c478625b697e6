"""The service's counters read into one snapshot, and whether the service is ready."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer
from kairos_core.application.consumers.risk_engine import RiskEngineConsumer
from kairos_core.application.consumers.strategy_engine import StrategyEngine
from kairos_core.application.continuity import ContinuityGuard, ContinuityStats
from kairos_core.application.tick_counter import TickCounter
from kairos_core.domain import Exchange, OrderExecutionPort
from kairos_core.domain.status import (
    FeedStatus,
    FeedStatusPort,
    PersistenceStatus,
    Readiness,
    ServiceSnapshot,
    StatusSource,
    SubscriberStatus,
    SymbolStatus,
    TradingStatus,
)

DEFAULT_DOWN_GRACE = 5.0
DEFAULT_STALE_AFTER = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    down_grace: float = DEFAULT_DOWN_GRACE
    """Seconds a feed connection may be down (a reconnect) before the service is not ready."""
    stale_after: float = DEFAULT_STALE_AFTER
    """Seconds without a live tick before a symbol is reported stale (not a readiness failure:
    a quiet market is not a sick service)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Trading:
    """The trading consumers and the book whose counters the snapshot reads."""

    strategy: StrategyEngine
    risk: RiskEngineConsumer
    book: OrderExecutionPort


class ServiceStatusReader(StatusSource):
    """Copies every component's plain counters into a ``ServiceSnapshot``; nothing here is on the
    hot path, it runs once per scrape, probe or dashboard refresh.

    ``symbols`` are the configured ones in the ticks' form: each is reported from the start, one
    with no tick yet as silent since the reader was made. ``clock`` is wall-clock epoch
    nanoseconds, the clock ticks' ``received_at_ns`` is read with.
    """

    def __init__(
        self,
        *,
        bus: BroadcastBus,
        counter: TickCounter,
        feeds: Sequence[FeedStatusPort] = (),
        guards: Sequence[ContinuityGuard] = (),
        symbols: Sequence[tuple[Exchange, str]] = (),
        persistence: PersistenceConsumer | None = None,
        trading: Trading | None = None,
        policy: HealthPolicy | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._bus = bus
        self._counter = counter
        self._feeds = tuple(feeds)
        self._guards = tuple(guards)
        self._persistence = persistence
        self._trading = trading
        self._policy = policy or HealthPolicy()
        self._clock = clock
        self._expected = tuple(symbols)
        self._started_ns = clock()

    def snapshot(self) -> ServiceSnapshot:
        feeds = tuple(feed.status() for feed in self._feeds)
        persistence = self._persistence_status()
        return ServiceSnapshot(
            feeds=feeds,
            symbols=self._symbols(),
            subscribers=self._subscribers(),
            persistence=persistence,
            trading=self._trading_status(),
            trade_to_receipt={
                exchange: histogram.snapshot()
                for exchange, histogram in self._counter.trade_to_receipt.items()
            },
            readiness=self._readiness(feeds, persistence),
            stale_after=self._policy.stale_after,
        )

    def _symbols(self) -> tuple[SymbolStatus, ...]:
        now = self._clock()
        continuity: dict[tuple[Exchange, str], ContinuityStats] = {
            (guard.exchange, symbol): stats for guard in self._guards for symbol, stats in guard.stats.items()
        }
        counted = self._counter.symbols
        keys = sorted({*self._expected, *counted, *continuity})
        symbols = []
        for key in keys:
            count = counted.get(key)
            tick = None if count is None else count.last
            gaps = continuity.get(key) or ContinuityStats()
            age = max(0.0, (now - (self._started_ns if tick is None else tick.received_at_ns)) / 1e9)
            symbols.append(
                SymbolStatus(
                    exchange=key[0],
                    symbol=key[1],
                    ticks=0 if count is None else count.count,
                    backfilled=gaps.backfilled,
                    last_price=None if tick is None else tick.price,
                    last_trade_ms=None if tick is None else tick.timestamp_ms,
                    seconds_since_last_tick=age,
                    stale=age > self._policy.stale_after,
                    duplicates=gaps.duplicates,
                    gaps=gaps.gaps,
                    unrecoverable=gaps.unrecoverable,
                    unrecovered_ids=gaps.unrecovered_ids,
                    repair_seconds_max=gaps.repair_seconds_max,
                )
            )
        return tuple(symbols)

    def _subscribers(self) -> tuple[SubscriberStatus, ...]:
        latency = self._bus.latency()
        return tuple(
            SubscriberStatus(
                name=stats.name,
                lossless=stats.lossless,
                received=stats.received,
                depth=stats.depth,
                lag=stats.lag,
                lost=stats.lost,
                latency=latency[stats.name].snapshot() if stats.name in latency else None,
            )
            for stats in self._bus.stats()
        )

    def _persistence_status(self) -> PersistenceStatus | None:
        consumer = self._persistence
        if consumer is None:
            return None
        stats = consumer.stats
        return PersistenceStatus(
            stored=stats.stored,
            duplicates=stats.duplicates,
            batches=stats.batches,
            retries=stats.retries,
            buffered=consumer.buffered,
            buffer_limit=consumer.buffer_limit,
            failing=stats.failing,
            batch_seconds=consumer.batch_seconds.snapshot(),
        )

    def _trading_status(self) -> TradingStatus | None:
        trading = self._trading
        if trading is None:
            return None
        return TradingStatus(
            intents=trading.strategy.intents,
            approved=trading.risk.approved,
            rejected=dict(trading.risk.rejected),
            fills=trading.risk.fills,
            positions=tuple(trading.book.positions()),
        )

    def _readiness(self, feeds: Sequence[FeedStatus], persistence: PersistenceStatus | None) -> Readiness:
        problems = []
        for feed in feeds:
            for connection in feed.connections:
                where = f"{connection.exchange} connection {connection.name}"
                if not connection.up and connection.state_seconds > self._policy.down_grace:
                    problems.append(f"{where} down for {connection.state_seconds:.0f} s")
                elif connection.up and connection.silent_seconds >= connection.watchdog_seconds:
                    problems.append(
                        f"{where} silent for {connection.silent_seconds:.0f} s "
                        f"(watchdog {connection.watchdog_seconds:g} s)"
                    )
        if (
            persistence is not None
            and persistence.failing
            and persistence.buffered * 2 >= persistence.buffer_limit
        ):
            problems.append(
                f"database writes failing and the persistence buffer {persistence.buffered} of "
                f"{persistence.buffer_limit} ticks is at least half full"
            )
        return Readiness(ready=not problems, problems=tuple(problems))
