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
    rotations: Mapping[str, int] = field(default_factory=dict)
    """Connections replaced make-before-break, by reason (``lifetime``, ``announced``, ``silent``)."""


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
    """Since the first look (a scrape, a probe, the staleness watch) that saw its last live tick,
    or since the service started before the first: measured between looks, with this host's
    monotonic clock, so the hot path keeps no clock and another host's clock does not count."""
    stale_after: float = 300.0
    """Its threshold: the default, or its own (``--metrics-stale-after-symbols``)."""
    stale: bool = False
    """``seconds_since_last_tick`` exceeds ``stale_after``."""
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
class NatsPublisherStatus:
    """An ingest node's publishing into JetStream."""

    published: int
    """Ticks published (first attempts; retries are counted apart)."""
    stored: int
    """Confirmed by the stream as new."""
    duplicates: int
    """Confirmed as already stored (dropped by the stream's duplicate window)."""
    retries: Mapping[str, int]
    """Publishes repeated, by what failed: ``refused`` (the stream answered with an error),
    ``timeout`` (no ack in time), ``unsent`` (not written: disconnected or closed)."""
    unconfirmed: int
    """Published and not yet confirmed (acks outstanding, retries due)."""
    window: int
    """The bound on ``unconfirmed``; at it the publisher, and then the feeds, wait."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsPersistStatus:
    """A persist node's side of the shared durable consumer."""

    fetched: int
    """Messages delivered to this node, redeliveries included."""
    redelivered: int
    """Of those, delivered before: a node died or a commit outlasted the ack wait."""
    acked: int
    """Acknowledged after their batch committed."""
    released: int
    """Handed back unstored (a stop during a database outage)."""
    rejected: int
    """Not a tick: terminated, never delivered again."""
    batch_seconds: HistogramSnapshot | None = None
    """Each acknowledged batch, from being handed out to its ack: the commit, retries included."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsFeedStatus:
    """A remote reader's feed of one exchange's ticks from NATS."""

    exchange: Exchange
    received: int
    rejected: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsStatus:
    """The NATS connection of a scale-out role and the parts that use it."""

    server: str
    """``host:port`` of the server connected to (or last connected to)."""
    connected: bool
    state_seconds: float
    """Since the connection was seen up or down (between looks, as a feed's silence)."""
    reconnects: int
    publisher: NatsPublisherStatus | None = None
    persist: NatsPersistStatus | None = None
    feeds: tuple[NatsFeedStatus, ...] = ()


@runtime_checkable
class NatsStatusPort(Protocol):
    """The NATS parts of a process, read for metrics and health."""

    def status(self) -> NatsStatus: ...


class Histogram(Protocol):
    """Observations into buckets, read as a snapshot (an adapter is handed one to fill)."""

    def observe_ns(self, nanoseconds: int) -> None: ...

    def snapshot(self) -> HistogramSnapshot: ...


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
    """Seconds without a live tick after which a symbol is reported stale, unless it has its own."""
    nats: NatsStatus | None = None
    """The scale-out roles' and a publishing service's NATS parts; None without NATS."""


class StatusSource(Protocol):
    """Reads the running service's counters into a snapshot; cheap enough for every scrape."""

    def snapshot(self) -> ServiceSnapshot: ...
