"""Ports to a message broker that carries ticks between machines (ingest and persist nodes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kairos_core.domain.model import MarketTick


class TickPublisher(Protocol):
    """Hands ticks to a broker for other machines, none lost.

    ``send`` returns once the ticks are on their way; while too many wait for the broker's
    confirmation it waits first, so a lossless bus consumer calling it holds the feeds back. A tick
    the broker did not confirm (an error, no answer in time, a lost connection) is sent again with
    backoff until it is; the broker drops the repeats of one it had stored.
    """

    async def send(self, ticks: Sequence[MarketTick]) -> None: ...

    async def flush(self) -> None:
        """Return once every tick sent so far is confirmed (waiting out any outage)."""
        ...


class TickBatch(Protocol):
    """Ticks taken from a broker's durable queue, handed out again unless acknowledged in time."""

    @property
    def ticks(self) -> Sequence[MarketTick]: ...

    async def ack(self) -> None:
        """They are stored: never hand them out again."""
        ...

    async def hold(self) -> None:
        """Still working on them (a retried write): restart their acknowledgement timer."""
        ...

    async def release(self) -> None:
        """Not stored and given up here: hand them out again at once (to any node)."""
        ...


class TickBatchSource(Protocol):
    """A durable queue of ticks shared by several nodes; each tick goes to one of them at a time.

    A batch that is not acknowledged within the broker's wait is handed out again, possibly to
    another node, so a node that dies between taking and acknowledging a batch loses nothing.
    """

    async def next_batch(self) -> TickBatch | None:
        """The next ticks, up to the source's batch size; None when none came within its wait."""
        ...
