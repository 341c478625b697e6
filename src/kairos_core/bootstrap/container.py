"""The one composition root: settings in, the service out, with feeds, bus, consumers and database.

Nothing else constructs an adapter or reads settings. Swapping a part is one ``override``:
``container.repository.override(providers.Object(InMemoryTickRepository()))`` runs the pipeline
without a database, ``container.feeds.override(...)`` with a scripted feed. The database server
and its engine are resources: started when the service is first built (``await
container.service()``), released by ``await container.shutdown_resources()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import structlog
from dependency_injector import containers, providers

from kairos_core.adapters.inbound.feed_handler.aiohttp_client import AiohttpConnector
from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.inbound.feed_handler.binance_history import BinanceTradeHistory
from kairos_core.adapters.inbound.feed_handler.feed_base import WebSocketFeed
from kairos_core.adapters.inbound.feed_handler.okx import OkxFeedHandler, okx_symbols
from kairos_core.adapters.inbound.feed_handler.okx_history import OkxTradeHistory
from kairos_core.adapters.inbound.feed_handler.planner import BINANCE_LIMITS, ConnectionPlanner
from kairos_core.adapters.outbound.paper_broker import PaperBroker
from kairos_core.adapters.outbound.postgres import PostgresTickRepository
from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers.persistence import PersistenceConsumer, PersistencePolicy
from kairos_core.application.consumers.price_monitor import PriceMonitor
from kairos_core.application.consumers.risk_engine import RiskEngineConsumer
from kairos_core.application.consumers.strategy_engine import StrategyEngine
from kairos_core.application.continuity import DEFAULT_MAX_BACKFILL, DEFAULT_MAX_BACKFILL_AGE, ContinuityGuard
from kairos_core.application.risk import RiskEngine, RiskLimits
from kairos_core.application.service import MarketDataService
from kairos_core.application.strategies import (
    Breakout,
    BreakoutParams,
    MovingAverageCrossover,
    MovingAverageCrossoverParams,
)
from kairos_core.application.tick_counter import TickCounter
from kairos_core.bootstrap.database import database_engine, database_url
from kairos_core.bootstrap.observability import build_status, draw_dashboard, observe, sampling
from kairos_core.domain import Exchange, MarketDataSink, MarketFeedPort, Strategy, TickSink
from kairos_core.settings import FeedSettings, RiskSettings, Settings, StrategyName, StrategySettings

log = structlog.get_logger(__name__)


_NOT_BUILT_YET: dict[str, str] = {}
"""Settings the contract already names whose feature has not landed: accepted, and said so."""


def warn_about_settings_not_in_effect(settings: Settings) -> None:
    for name, feature in _NOT_BUILT_YET.items():
        if getattr(settings, name) is not None:
            log.warning("setting.not_in_effect", setting=name, reason=f"{feature} is not built yet")


def build_feeds(
    feeds: FeedSettings, sink: TickSink, guards: Sequence[ContinuityGuard] = ()
) -> list[MarketFeedPort]:
    """One feed per exchange, each into its exchange's gap guard if it has one, else into ``sink``;
    a guard hears of every connect of its feed."""
    guarded = {guard.exchange: guard for guard in guards}
    built: list[MarketFeedPort] = []
    for exchange in feeds.exchanges:
        guard = guarded.get(exchange)
        feed = _feed(exchange, feeds, sink if guard is None else guard)
        if guard is not None:
            feed.on_connected = guard.connected
        built.append(feed)
    return built


def build_guards(
    feeds: FeedSettings,
    sink: MarketDataSink,
    binance_history: BinanceTradeHistory,
    okx_history: OkxTradeHistory,
    max_backfill: int = DEFAULT_MAX_BACKFILL,
    max_backfill_age: float = DEFAULT_MAX_BACKFILL_AGE,
) -> list[ContinuityGuard]:
    """A gap guard in front of ``sink`` for every configured exchange; the service resumes them
    from storage, and closing one closes its history's HTTP session."""
    histories: dict[Exchange, BinanceTradeHistory | OkxTradeHistory] = {
        Exchange.BINANCE: binance_history,
        Exchange.OKX: okx_history,
    }
    chosen = feeds.symbols_by_exchange()
    tick_symbols = {  # each venue's symbols as its ticks carry them
        Exchange.BINANCE: lambda: [symbol.upper() for symbol in chosen[Exchange.BINANCE]],
        Exchange.OKX: lambda: list(okx_symbols(chosen[Exchange.OKX])),
    }
    guards = []
    for exchange in feeds.exchanges:
        history = histories[exchange]
        guards.append(
            ContinuityGuard(
                sink,
                history,
                max_backfill=max_backfill,
                max_backfill_age=max_backfill_age,
                symbols=tick_symbols[exchange](),
                on_close=history.aclose,
            )
        )
    return guards


def _feed(exchange: Exchange, feeds: FeedSettings, sink: TickSink) -> WebSocketFeed:
    symbols = feeds.symbols_by_exchange()[exchange]
    connector = AiohttpConnector(max_frame_bytes=feeds.max_frame_bytes)
    if exchange is Exchange.BINANCE:
        limits = replace(BINANCE_LIMITS, lifetime=feeds.binance_connection_lifetime)
        return BinanceFeedHandler(
            sink,
            symbols,
            url=feeds.binance_ws_url,
            rest_url=feeds.binance_rest_url,
            connector=connector,
            planner=ConnectionPlanner(limits),
            watchdog=feeds.binance_watchdog,
        )
    return OkxFeedHandler(sink, symbols, url=feeds.okx_ws_url, connector=connector)


def build_strategies(strategy: StrategySettings) -> list[Strategy]:
    if strategy.name is StrategyName.MA_CROSSOVER:
        crossover = MovingAverageCrossoverParams(
            fast_window=strategy.fast_window,
            slow_window=strategy.slow_window,
            quantity=strategy.quantity,
            order_type=strategy.order_type,
            limit_offset_bps=strategy.limit_offset_bps,
        )
        return [MovingAverageCrossover(crossover)]
    if strategy.name is StrategyName.BREAKOUT:
        breakout = BreakoutParams(
            window=strategy.breakout_window,
            quantity=strategy.quantity,
            order_type=strategy.order_type,
            limit_offset_bps=strategy.limit_offset_bps,
        )
        return [Breakout(breakout)]
    return []


def risk_limits(risk: RiskSettings) -> RiskLimits:
    return RiskLimits(
        max_order_notional=risk.max_order_notional,
        max_position=risk.max_position,
        price_band_pct=risk.price_band_pct,
        stale_after_s=risk.stale_after,
        breaker_move_pct=risk.breaker_move_pct,
        breaker_window_s=risk.breaker_window,
        breaker_cooldown_s=risk.breaker_cooldown,
        volatility_window=risk.volatility_window,
    )


class Container(containers.DeclarativeContainer):
    """``Container(settings=Settings(...), max_ticks=N, duration=S)``; run options default to none."""

    settings = providers.Dependency(instance_of=Settings)
    max_ticks: providers.Object[int | None] = providers.Object(None)
    duration: providers.Object[float | None] = providers.Object(None)

    show_dashboard: providers.Object[bool] = providers.Object(False)
    dashboard_log: providers.Object[Path | None] = providers.Object(None)

    sample_every = providers.Callable(sampling, settings.provided.metrics)
    bus = providers.Singleton(
        BroadcastBus, capacity=settings.provided.bus_capacity, sample_every=sample_every
    )
    counter = providers.Singleton(TickCounter, bus, limit=max_ticks, sample_every=sample_every)

    database_url = providers.Resource(database_url, settings.provided.database)
    engine = providers.Resource(database_engine, database_url, migrate=settings.provided.migrate)
    repository = providers.Singleton(PostgresTickRepository, engine)

    binance_history = providers.Singleton(
        BinanceTradeHistory, rest_url=settings.provided.feeds.binance_rest_url
    )
    okx_history = providers.Singleton(OkxTradeHistory, rest_url=settings.provided.feeds.okx_rest_url)
    guards = providers.Singleton(
        build_guards,
        settings.provided.feeds,
        counter,
        binance_history,
        okx_history,
        max_backfill=settings.provided.feeds.backfill_max,
        max_backfill_age=settings.provided.feeds.backfill_max_age,
    )
    feeds = providers.Singleton(build_feeds, settings.provided.feeds, counter, guards)

    price_monitor = providers.Singleton(
        PriceMonitor, summary_interval=settings.provided.price_summary_interval
    )
    broker = providers.Singleton(PaperBroker)
    limits = providers.Singleton(risk_limits, settings.provided.risk)
    risk = providers.Singleton(RiskEngine, broker, limits)
    risk_engine = providers.Singleton(RiskEngineConsumer, risk, broker)
    strategies = providers.Singleton(build_strategies, settings.provided.strategy)
    strategy_engine = providers.Singleton(StrategyEngine, strategies, risk_engine)
    persistence_policy = providers.Singleton(
        PersistencePolicy,
        batch_size=settings.provided.persist_batch_size,
        batch_size_max=settings.provided.persist_batch_size_max,
        flush_interval=settings.provided.persist_flush_interval,
        buffer_limit=settings.provided.persist_buffer_limit,
    )
    persistence = providers.Singleton(PersistenceConsumer, repository, persistence_policy)
    # The strategy engine before risk: on a burst, risk then rarely reads ahead of the strategy.
    consumers = providers.List(price_monitor, strategy_engine, risk_engine, persistence)

    # Observability reads the parts above; the metrics port and the dashboard live as resources.
    status = providers.Singleton(
        build_status,
        settings.provided.feeds,
        settings.provided.metrics,
        bus,
        counter,
        feeds,
        guards,
        consumers,
        broker,
    )
    metrics = providers.Resource(observe, settings.provided.metrics, status)  # and the staleness watch
    dashboard = providers.Resource(draw_dashboard, show_dashboard, status, dashboard_log)

    service = providers.Singleton(
        MarketDataService,
        bus,
        counter,
        feeds,
        consumers,
        duration=duration,
        guards=guards,
        repository=repository,
    )
