"""Wiring for observability: the status reader over the built service, the staleness watch, the
metrics port, the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TextIO

import structlog

from kairos_core.adapters.inbound.observability.dashboard import RichDashboard
from kairos_core.adapters.inbound.observability.prometheus import metrics_registry
from kairos_core.adapters.inbound.observability.server import AiohttpStatusServer
from kairos_core.application.bus import BroadcastBus
from kairos_core.application.consumers import Consumer
from kairos_core.application.consumers.persistence import PersistenceConsumer
from kairos_core.application.consumers.risk_engine import RiskEngineConsumer
from kairos_core.application.consumers.strategy_engine import StrategyEngine
from kairos_core.application.continuity import ContinuityGuard
from kairos_core.application.status import HealthPolicy, ServiceStatusReader, Trading
from kairos_core.application.tick_counter import TickCounter
from kairos_core.domain import MarketFeedPort, OrderExecutionPort
from kairos_core.domain.status import FeedStatusPort, NatsStatusPort, StatusSource
from kairos_core.settings import FeedSettings, MetricsSettings

log = structlog.get_logger(__name__)

LOG_FILE = "kairos.log"
"""In the data dir: where the logs go while the dashboard has the terminal."""


def sampling(metrics: MetricsSettings) -> int:
    """Latency sampling is on with the metrics endpoint, off (0) without it."""
    return metrics.sample_every if metrics.port is not None else 0


def health_policy(metrics: MetricsSettings, feeds: FeedSettings | None = None) -> HealthPolicy:
    """The thresholds; with ``feeds``, own thresholds of symbols not streamed here are logged
    (``symbol.stale_after_unused``: a typo, or another node's symbols in a shared config)."""
    overrides = metrics.stale_overrides()
    if feeds is not None:
        streamed = {
            (exchange, symbol.upper())
            for exchange, symbols in feeds.symbols_by_exchange().items()
            for symbol in symbols
        }
        unused = [
            f"{symbol}" if exchange is None else f"{exchange}:{symbol}"
            for exchange, symbol in overrides
            if not any(s == symbol and exchange in (None, e) for e, s in streamed)
        ]
        if unused:
            log.info("symbol.stale_after_unused", symbols=unused, reason="not streamed by this node")
    return HealthPolicy(stale_after=metrics.stale_after, stale_after_symbols=overrides)


def build_status(
    feeds_settings: FeedSettings,
    metrics: MetricsSettings,
    bus: BroadcastBus,
    counter: TickCounter,
    feeds: Sequence[MarketFeedPort],
    guards: Sequence[ContinuityGuard],
    consumers: Sequence[Consumer],
    broker: OrderExecutionPort,
    nats: NatsStatusPort | None = None,
) -> ServiceStatusReader:
    """The reader over whatever the container built: feeds that report status, the persistence
    consumer and the trading consumers if they are among ``consumers`` (tests swap parts out),
    and the NATS parts of a role."""
    persistence = next((c for c in consumers if isinstance(c, PersistenceConsumer)), None)
    strategy = next((c for c in consumers if isinstance(c, StrategyEngine)), None)
    risk = next((c for c in consumers if isinstance(c, RiskEngineConsumer)), None)
    symbols = [
        (exchange, symbol.upper())  # the ticks' form on both venues
        for exchange, listed in feeds_settings.symbols_by_exchange().items()
        for symbol in listed
    ]
    return ServiceStatusReader(
        bus=bus,
        counter=counter,
        feeds=[feed for feed in feeds if isinstance(feed, FeedStatusPort)],
        guards=guards,
        symbols=symbols,
        persistence=persistence,
        trading=None
        if strategy is None or risk is None
        else Trading(strategy=strategy, risk=risk, book=broker),
        policy=health_policy(metrics, feeds_settings),
        nats=nats,
    )


def persist_status(
    metrics: MetricsSettings,
    bus: BroadcastBus,
    counter: TickCounter,
    nats: NatsStatusPort,
) -> ServiceStatusReader:
    """The persist role's reader: its NATS parts; no feeds, and no symbols it would find silent."""
    return ServiceStatusReader(bus=bus, counter=counter, policy=health_policy(metrics), nats=nats)


async def observe(
    metrics: MetricsSettings, status: ServiceStatusReader
) -> AsyncIterator[AiohttpStatusServer | None]:
    """A resource: while the container lives, the staleness watch (``symbol.stale`` and
    ``symbol.fresh`` are logged whether anyone scrapes or not) and the metrics port, if asked for."""
    watching = asyncio.create_task(status.watch(), name="staleness-watch")
    server = None
    try:
        if metrics.port is not None:
            server = AiohttpStatusServer(
                status, metrics_registry(status), host=metrics.host, port=metrics.port
            )
            await server.start()
        yield server
    finally:
        if server is not None:
            await server.stop()
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def draw_dashboard(
    enabled: bool, status: StatusSource, log_path: Path | None
) -> AsyncIterator[RichDashboard | None]:
    """A resource: the dashboard drawn while the container lives, if ``enabled``."""
    if not enabled:
        yield None
        return
    board = RichDashboard(status, log_path=log_path)
    drawing = asyncio.create_task(board.run(), name="dashboard")
    try:
        yield board
    finally:
        drawing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drawing


def dashboard_log(data_dir: Path, stdout: TextIO = sys.stdout) -> Path | None:
    """Where the logs go while the dashboard runs: None (no dashboard) when stdout is no terminal."""
    if not stdout.isatty():
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir / LOG_FILE
