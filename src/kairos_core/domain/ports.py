"""Ports: what the application needs from the outside world, as structural protocols."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Protocol

from kairos_core.domain.gaps import GapEvent
from kairos_core.domain.model import Exchange, MarketTick
from kairos_core.domain.trading import Fill, OrderIntent, Position


class TickSink(Protocol):
    """Where a feed hands each tick: the only thing a feed adapter knows of the bus.

    ``publish`` never blocks. ``writable`` returns at once while there is room and otherwise waits
    until a lossless consumer has caught up; a feed awaits it before reading more from its
    socket, so back-pressure reaches the exchange connection instead of dropping ticks.
    """

    def publish(self, tick: MarketTick) -> None: ...

    async def writable(self) -> None: ...


class MarketDataSink(TickSink, Protocol):
    """The bus as the gap guard sees it: ticks, and the continuity events that go between them."""

    def publish_event(self, event: GapEvent) -> None:
        """Put ``event`` on the bus after every tick published before it; never waits."""
        ...


class MarketFeedPort(Protocol):
    """A live source of ticks from one exchange."""

    @property
    def exchange(self) -> Exchange: ...

    async def start(self) -> None:
        """Stream ticks into the sink until ``stop`` is called or the feed fails for good."""
        ...

    async def stop(self) -> None:
        """Ask ``start`` to return; safe to call more than once."""
        ...


class TradeHistoryPort(Protocol):
    """A venue's record of past trades, fetched to repair a gap in a live stream.

    ``trades`` yields pages of one symbol's trades with ``from_id <= trade_id <= to_id``
    (``to_id=None``: up to the venue's newest), ascending by trade id, each tick with
    ``source = TickSource.BACKFILL``, mapped exactly as the live stream maps the same trade. It
    ends early, without error, when the venue has nothing newer yet: the caller sees the last id
    it got. Where the venue cannot serve the range (it refuses, no longer keeps the oldest ids
    asked for, stays unreachable, or asks for a wait beyond the adapter's limit) it raises
    ``HistoryUnavailable``, after the good pages before that point; it never skips ids silently.
    A call may wait for the venue's rate limits, and says so in the log.
    """

    @property
    def exchange(self) -> Exchange: ...

    @property
    def spans_fills(self) -> bool:
        """True where one live tick covers the history's ids ``first_trade_id``..``trade_id``
        (OKX aggregates fills in a push; its history lists each fill); False where a live tick's
        ``trade_id`` alone is the history's id (Binance aggregate trades)."""
        ...

    def trades(self, symbol: str, from_id: int, to_id: int | None = None) -> AsyncIterator[list[MarketTick]]:
        """Pages of ``symbol``'s trades from ``from_id`` to ``to_id`` (see the class)."""
        ...


class TickRepository(Protocol):
    """Durable storage of ticks, idempotent on ``(exchange, symbol, trade_id)``.

    Storing a tick that is already stored is not an error: it is skipped, and the rest of its
    batch is stored all the same, so a retried or re-delivered batch never duplicates a row.
    """

    async def add_many(self, ticks: Sequence[MarketTick]) -> int:
        """Store ``ticks`` in one transaction; return how many rows were new."""
        ...

    async def last_trade_id(self, exchange: Exchange, symbol: str) -> int | None:
        """The highest stored trade id of a symbol, or None if none is stored."""
        ...

    async def latest_tick(self, exchange: Exchange, symbol: str) -> MarketTick | None:
        """The stored tick with the highest trade id of a symbol, or None if none is stored."""
        ...

    async def ticks_between(
        self, exchange: Exchange, symbol: str, start: datetime, end: datetime
    ) -> list[MarketTick]:
        """A symbol's stored ticks with ``start <= trade time < end``, in trade-id order."""
        ...


class Strategy(Protocol):
    """Turns market ticks into order intents; it decides, risk and execution do the rest.

    Called with every live tick of every symbol, in bus order. Must be deterministic in the
    ticks it was given (no clock, no randomness), so a tick sequence replays to the same intents.
    """

    name: str
    """Shown in the logs of every intent the strategy makes."""

    def on_market_tick(self, tick: MarketTick) -> OrderIntent | None: ...


class PositionBook(Protocol):
    """Where risk reads the positions it limits."""

    def position(self, exchange: Exchange, symbol: str) -> Position:
        """The symbol's position; a flat one if it never traded."""
        ...


class OrderExecutionPort(PositionBook, Protocol):
    """Where approved intents are executed. Never called with an intent risk did not approve."""

    def on_market_tick(self, tick: MarketTick) -> None:
        """Every live tick, so market orders can be priced and positions marked."""
        ...

    async def submit(self, intent: OrderIntent) -> Fill | None:
        """Execute ``intent`` now in full, or not at all (None): nothing rests on a book."""
        ...

    def positions(self) -> Sequence[Position]:
        """Every symbol that ever traded, flat ones included."""
        ...
