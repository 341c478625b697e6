"""The service's counters read into one snapshot, whether the service is ready, and which symbols
have gone quiet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer
from kairos_core.application.consumers.risk_engine import RiskEngineConsumer
from kairos_core.application.consumers.strategy_engine import StrategyEngine
from kairos_core.application.continuity import ContinuityGuard, ContinuityStats
from kairos_core.application.tick_counter import TickCounter
from kairos_core.domain import Exchange, MarketTick, OrderExecutionPort
from kairos_core.domain.status import (
    FeedStatus,
    FeedStatusPort,
    NatsStatus,
    NatsStatusPort,
    PersistenceStatus,
    Readiness,
    ServiceSnapshot,
    StatusSource,
    SubscriberStatus,
    SymbolStatus,
    TradingStatus,
)

log = structlog.get_logger(__name__)

DEFAULT_DOWN_GRACE = 5.0
DEFAULT_STALE_AFTER = 300.0
LOOK_EVERY_MAX, LOOK_EVERY_MIN = 1.0, 0.1
"""Seconds between the staleness watch's looks: 1, or a quarter of the shortest threshold."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    down_grace: float = DEFAULT_DOWN_GRACE
    """Seconds a feed connection may be down (a reconnect) before the service is not ready."""
    stale_after: float = DEFAULT_STALE_AFTER
    """Seconds without a live tick before a symbol is reported stale (not a readiness failure:
    a quiet market is not a sick service)."""
    stale_after_symbols: Mapping[tuple[Exchange | None, str], float] = field(default_factory=dict)
    """Symbols' own thresholds: by ``(exchange, SYMBOL)``, or ``(None, SYMBOL)`` on every exchange."""

    def stale_threshold(self, exchange: Exchange, symbol: str) -> float:
        own = self.stale_after_symbols
        if not own:
            return self.stale_after
        found = own.get((exchange, symbol))
        if found is None:
            found = own.get((None, symbol))
        return self.stale_after if found is None else found

    @property
    def look_every(self) -> float:
        """Seconds between looks that catch every threshold within a quarter of itself."""
        shortest = min((self.stale_after, *self.stale_after_symbols.values()))
        return min(LOOK_EVERY_MAX, max(LOOK_EVERY_MIN, shortest / 4))


@dataclass(frozen=True, slots=True, kw_only=True)
class Trading:
    """The trading consumers and the book whose counters the snapshot reads."""

    strategy: StrategyEngine
    risk: RiskEngineConsumer
    book: OrderExecutionPort


class _Freshness:
    """What the looks have seen of one symbol: its last live tick, since when, and the verdict."""

    __slots__ = ("last", "since_ns", "stale")

    def __init__(self, since_ns: int) -> None:
        self.last: MarketTick | None = None
        self.since_ns = since_ns
        self.stale = False


class ServiceStatusReader(StatusSource):
    """Copies every component's plain counters into a ``ServiceSnapshot``; nothing here is on the
    hot path, it runs once per scrape, probe, dashboard refresh or staleness look.

    ``symbols`` are the configured ones in the ticks' form: each is reported from the start, one
    with no tick yet as silent since the reader was made. A symbol's silence is measured as a
    connection's is: a look that finds another last live tick in the ``TickCounter``'s slot than
    the look before restarts it, so it is exact to the interval between looks (``watch`` looks
    every second) and the hot path keeps no clock. Crossing its threshold is logged once each
    way: ``symbol.stale`` (warning) and ``symbol.fresh``. ``clock`` is monotonic nanoseconds.
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
        nats: NatsStatusPort | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._bus = bus
        self._counter = counter
        self._feeds = tuple(feeds)
        self._guards = tuple(guards)
        self._persistence = persistence
        self._trading = trading
        self._policy = policy or HealthPolicy()
        self._clock = clock
        self._nats = nats
        self._expected = tuple(symbols)
        self._started_ns = clock()
        self._freshness: dict[tuple[Exchange, str], _Freshness] = {}

    def snapshot(self) -> ServiceSnapshot:
        feeds = tuple(feed.status() for feed in self._feeds)
        persistence = self._persistence_status()
        nats = None if self._nats is None else self._nats.status()
        return ServiceSnapshot(
            feeds=feeds,
            symbols=self.symbols(),
            subscribers=self._subscribers(),
            persistence=persistence,
            trading=self._trading_status(),
            trade_to_receipt={
                exchange: histogram.snapshot()
                for exchange, histogram in self._counter.trade_to_receipt.items()
            },
            readiness=self._readiness(feeds, persistence, nats),
            stale_after=self._policy.stale_after,
            nats=nats,
        )

    async def watch(self) -> None:
        """Look at the symbols every ``HealthPolicy.look_every`` seconds until cancelled, so a
        symbol's crossing is logged when it happens, scraped or not."""
        every = self._policy.look_every
        while True:
            self.symbols()
            await asyncio.sleep(every)

    def symbols(self) -> tuple[SymbolStatus, ...]:
        """Every symbol's counters and silence; a look (see the class)."""
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
            threshold = self._policy.stale_threshold(*key)
            age, stale = self._look(key, tick, now, threshold)
            symbols.append(
                SymbolStatus(
                    exchange=key[0],
                    symbol=key[1],
                    ticks=0 if count is None else count.count,
                    backfilled=gaps.backfilled,
                    last_price=None if tick is None else tick.price,
                    last_trade_ms=None if tick is None else tick.timestamp_ms,
                    seconds_since_last_tick=age,
                    stale_after=threshold,
                    stale=stale,
                    duplicates=gaps.duplicates,
                    gaps=gaps.gaps,
                    unrecoverable=gaps.unrecoverable,
                    unrecovered_ids=gaps.unrecovered_ids,
                    repair_seconds_max=gaps.repair_seconds_max,
                )
            )
        return tuple(symbols)

    def _look(
        self, key: tuple[Exchange, str], last: MarketTick | None, now: int, threshold: float
    ) -> tuple[float, bool]:
        """``key``'s silence in seconds and whether it is stale; logs a crossing either way."""
        seen = self._freshness.get(key)
        if seen is None:
            seen = self._freshness[key] = _Freshness(self._started_ns)
        silent_ns = now - seen.since_ns
        if last is not seen.last:
            seen.last, seen.since_ns = last, now
        age = max(0.0, (now - seen.since_ns) / 1e9)
        stale = age > threshold
        if stale != seen.stale:
            seen.stale = stale
            exchange, symbol = key
            if stale:
                log.warning(
                    "symbol.stale",
                    exchange=exchange,
                    symbol=symbol,
                    age_s=round(age, 1),
                    stale_after_s=threshold,
                )
            else:
                log.info("symbol.fresh", exchange=exchange, symbol=symbol, silent_s=round(silent_ns / 1e9, 1))
        return age, stale

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

    def _readiness(
        self, feeds: Sequence[FeedStatus], persistence: PersistenceStatus | None, nats: NatsStatus | None
    ) -> Readiness:
        problems = []
        if nats is not None and not nats.connected and nats.state_seconds > self._policy.down_grace:
            problems.append(f"NATS connection {nats.server} down for {nats.state_seconds:.0f} s")
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
