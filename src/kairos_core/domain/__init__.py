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
from kairos_core.domain.model import Exchange, MarketTick, Side, TickSource
from kairos_core.domain.ports import (
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
    "ConfigurationError",
    "Exchange",
    "FeedDisconnected",
    "FeedError",
    "FeedRefused",
    "Fill",
    "FrameRejected",
    "HistoryUnavailable",
    "KairosError",
    "Lagged",
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
    "TickRepository",
    "TickSink",
    "TickSource",
    "TradeHistoryPort",
]
