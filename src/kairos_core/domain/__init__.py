"""The domain: market data values, ports and errors. Standard library only, no I/O."""

from kairos_core.domain.errors import (
    BusClosed,
    BusError,
    ConfigurationError,
    FeedDisconnected,
    FeedError,
    FeedRefused,
    FrameRejected,
    HistoryUnavailable,
    KairosError,
    Lagged,
    RejectReason,
)
from kairos_core.domain.gaps import BusItem, GapDetected, GapEvent, GapRepaired, GapUnrecoverable
from kairos_core.domain.messaging import TickBatch, TickBatchSource, TickPublisher
from kairos_core.domain.model import Exchange, MarketTick, Side, TickSource
from kairos_core.domain.ports import (
    MarketDataSink,
    MarketFeedPort,
    OrderExecutionPort,
    PositionBook,
    Strategy,
    TickRepository,
    TickSink,
    TradeHistoryPort,
)
from kairos_core.domain.trading import Fill, OrderIntent, OrderType, Position, RiskDecision, RiskRejection

__all__ = [
    "BusClosed",
    "BusError",
    "BusItem",
    "ConfigurationError",
    "Exchange",
    "FeedDisconnected",
    "FeedError",
    "FeedRefused",
    "Fill",
    "FrameRejected",
    "GapDetected",
    "GapEvent",
    "GapRepaired",
    "GapUnrecoverable",
    "HistoryUnavailable",
    "KairosError",
    "Lagged",
    "MarketDataSink",
    "MarketFeedPort",
    "MarketTick",
    "OrderExecutionPort",
    "OrderIntent",
    "OrderType",
    "Position",
    "PositionBook",
    "RejectReason",
    "RiskDecision",
    "RiskRejection",
    "Side",
    "Strategy",
    "TickBatch",
    "TickBatchSource",
    "TickPublisher",
    "TickRepository",
    "TickSink",
    "TickSource",
    "TradeHistoryPort",
]
