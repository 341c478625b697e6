"""Continuity events: what the bus tells its consumers about holes in a symbol's trade ids.

They travel on the bus in order with the ticks, so a consumer knows exactly which ticks came
while a symbol's data had a hole. Each carries ``open_gaps``, the symbol's count of gaps still
being repaired once the event has happened, so a consumer that lost events (a lagging subscriber)
is set right by the next one instead of counting detections against repairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from kairos_core.domain.model import Exchange, MarketTick


@dataclass(frozen=True, slots=True, kw_only=True)
class GapDetected:
    """Trade ids ``from_id``..``to_id`` of a symbol were not received; a repair has begun.

    ``to_id`` is None when the hole was found by asking the venue for everything newer than the
    last id seen (after a reconnect or a restart): its end is known only once it is repaired.
    """

    exchange: Exchange
    symbol: str
    from_id: int
    to_id: int | None
    open_gaps: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GapRepaired:
    """The gap from ``from_id`` to ``to_id`` is closed: every missing trade was published."""

    exchange: Exchange
    symbol: str
    from_id: int
    to_id: int
    backfilled: int
    """Ticks published from the venue's history (the rest of the gap arrived live meanwhile)."""
    seconds: float
    """From detection to repair."""
    open_gaps: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GapUnrecoverable:
    """Trades ``from_id``..``to_id`` will never be published; ``missing`` of them, for ``reason``."""

    exchange: Exchange
    symbol: str
    from_id: int
    to_id: int
    missing: int
    reason: str
    open_gaps: int


GapEvent = GapDetected | GapRepaired | GapUnrecoverable
BusItem = MarketTick | GapEvent
"""What a bus subscriber receives: ticks, and the continuity events between them."""
