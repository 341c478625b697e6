"""The domain: market data values, ports and errors. Standard library only, no I/O."""

from kairos_core.domain.errors import (
    BusClosed,
    BusError,
    ConfigurationError,
    FeedDisconnected,
    FeedError,
    FeedRefused,
    FrameRejected,
    KairosError,
    Lagged,
    RejectReason,
)
from kairos_core.domain.model import Exchange, MarketTick, Side, TickSource
from kairos_core.domain.ports import MarketFeedPort, TickRepository, TickSink

__all__ = [
    "BusClosed",
    "BusError",
    "ConfigurationError",
    "Exchange",
    "FeedDisconnected",
    "FeedError",
    "FeedRefused",
    "FrameRejected",
    "KairosError",
    "Lagged",
    "MarketFeedPort",
    "MarketTick",
    "RejectReason",
    "Side",
    "TickRepository",
    "TickSink",
    "TickSource",
]
