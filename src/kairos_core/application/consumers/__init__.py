"""Consumers of the bus: each reads its own subscription and never blocks the others."""

from __future__ import annotations

from typing import Protocol

from kairos_core.application.bus import Subscription


class Consumer(Protocol):
    """A named reader of the bus; ``lossless`` ones hold the feeds back rather than lose a tick."""

    name: str
    lossless: bool

    async def run(self, subscription: Subscription) -> None:
        """Consume until the subscription ends (the bus closed and everything was read)."""
        ...
