"""What the running service reports about itself: snapshots read by metrics, health and the dashboard.

Components count in plain ints and dicts on the hot path; a ``StatusSource`` copies them into these
immutable snapshots only when someone asks (a scrape, a health probe, a dashboard refresh).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol, runtime_checkable

from kairos_core.domain.model import Exchange
from kairos_core.domain.trading import Position


@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramSnapshot:
    """Observations per bucket: ``counts[i]`` fell at or below ``bounds[i]`` (seconds) and above
    the bound before; the last count is above every bound. Not cumulative."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    """The sum of every observation, seconds."""

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStatus:
    """One exchange connection as its feed sees it."""

    exchange: Exchange
    name: str
    """``host:port`` of the connection's endpoint."""
    up: bool
    state_seconds: float
    """Seconds since the connection opened (up) or was lost (down; at start, since the feed was made)."""
    silent_seconds: float
    """Seconds without a frame while up (0 while the bus holds the feed back), measured between
    looks so the hot path keeps no clock: silence counts from the first look that saw no new frame."""
    watchdog_seconds: float
    """Silence after which the feed probes the connection and replaces it if it does not answer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedStatus:
    exchange: Exchange
    connections: tuple[ConnectionStatus, ...]
    reconnects: Mapping[str, int]
    """Reconnects by reason (``watchdog``, ``dropped``, ``connect``, ...)."""
    rejected: Mapping[str, int]
    """Rejected frames by ``RejectReason``."""


@runtime_checkable
class FeedStatusPort(Protocol):
    """A feed that can tell how its connections are doing."""

    def status(self) -> FeedStatus: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SymbolStatus:
    """One symbol's ticks on the bus (after de-duplication) and its continuity counters."""

    exchange: Exchange
    symbol: str
    ticks: int
    """Ticks published on the bus, live and backfilled."""
    backfilled: int
    last_price: Decimal | None = None
    """Of the last live tick; None before the first."""
    last_trade_ms: int | None = None
    seconds_since_last_tick: float
    """Since the receipt of the last live tick, or since the service started before the first."""
    stale: bool = False
    duplicates: int = 0
    gaps: int = 0
    unrecoverable: int = 0
    unrecovered_ids: int = 0
    repair_seconds_max: float = 0.0

    @property
    def live(self) -> int:
        return max(0, self.ticks - self.backfilled)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberStatus:
    name: str
    lossless: bool
    received: int
    depth: int
    lag: int
    lost: int
    latency: HistogramSnapshot | None = None
    """Receipt of a tick to this subscriber reading it, sampled; None while sampling is off."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistenceStatus:
    stored: int
    duplicates: int
    batches: int
    retries: int
    buffered: int
    buffer_limit: int
    failing: bool
    """The last write failed: the database is unreachable or refusing, and the buffer grows."""
    batch_seconds: HistogramSnapshot
    dropped: int = 0
    """Always 0: persistence pauses the feeds rather than drop a tick."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TradingStatus:
    intents: int
    approved: int
    rejected: Mapping[str, int]
    """Intents risk rejected, by ``RiskRejection``."""
    fills: int
    positions: tuple[Position, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Readiness:
    """Whether the service does its job; ``problems`` say what is wrong when it does not."""

    ready: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSnapshot:
    feeds: tuple[FeedStatus, ...]
    symbols: tuple[SymbolStatus, ...]
    subscribers: tuple[SubscriberStatus, ...]
    persistence: PersistenceStatus | None
    trading: TradingStatus | None
    trade_to_receipt: Mapping[Exchange, HistogramSnapshot] = field(default_factory=dict)
    """Exchange trade time to local receipt, sampled; empty while sampling is off."""
    readiness: Readiness
    stale_after: float
    """Seconds without a live tick after which a symbol is reported stale."""


class StatusSource(Protocol):
    """Reads the running service's counters into a snapshot; cheap enough for every scrape."""

    def snapshot(self) -> ServiceSnapshot: ...
