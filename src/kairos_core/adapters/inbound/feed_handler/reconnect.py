"""When and how often a feed reconnects; shared by every exchange's handler."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum

from kairos_core.domain import FeedDisconnected, FeedRefused

from .connection import HandshakeRejected


class ReconnectReason(StrEnum):
    """Why a feed reconnected; a label for counters (the log line has the full text)."""

    CONNECT = "connect"
    """Could not connect (network error, nothing listening, DNS)."""
    HANDSHAKE = "handshake"
    """The server answered the WebSocket handshake with an HTTP error."""
    DROPPED = "dropped"
    """The connection closed or failed while streaming."""
    WATCHDOG = "watchdog"
    """Silent past the watchdog and no answer to its probe."""
    OVERSIZE = "oversize"
    """A message larger than ``max_frame_bytes``."""


REFUSED_STATUSES = {403: "forbidden", 451: "unavailable for legal reasons: a restricted location"}
RATE_LIMITED_STATUSES = frozenset({418, 429})
"""Too many connections (429), or banned for a while for that (418, Binance): retried for as long
as the feed runs, each time after the longest backoff, since an early retry prolongs a ban."""


@dataclass(slots=True)
class ReconnectPolicy:
    """Capped exponential backoff with jitter, reset once a connection has stayed up.

    A handshake answered 403 or 451 is final: the venue refuses this client where it stands.
    429 and 418 (rate limited) wait the longest backoff. Other 4xx answers are retried
    ``max_client_errors`` times in a row, then final too; network errors, 5xx and dropped
    connections are retried for as long as the feed runs.
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 30.0
    """Seconds a connection must stay up before the backoff starts again from ``initial_delay``."""
    max_client_errors: int = 5
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0
    _client_errors: int = 0

    def connection_ended(self, error: FeedDisconnected, uptime: float, hint: str) -> float:
        """The delay before the next attempt; raises ``FeedRefused`` when retrying is futile.

        ``hint`` tells the user what to change (e.g. which flag names another endpoint).
        """
        if uptime >= self.stable_after:
            self._attempt = 0
            self._client_errors = 0
        if isinstance(error, HandshakeRejected):
            why = REFUSED_STATUSES.get(error.status)
            if why is not None:
                raise FeedRefused(f"{error} ({why}); {hint}") from error
            if error.status in RATE_LIMITED_STATUSES:
                self._attempt = 30
            elif 400 <= error.status < 500:
                self._client_errors += 1
                if self._client_errors >= self.max_client_errors:
                    raise FeedRefused(f"{error}, {self._client_errors} times in a row; {hint}") from error
            else:
                self._client_errors = 0
        else:
            self._client_errors = 0
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** min(self._attempt, 30))
        self._attempt += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)
