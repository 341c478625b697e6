"""The one error tree of kairos-core; every error we raise on purpose is a ``KairosError``.

KairosError
├── FrameRejected         a frame from a venue that cannot become a domain value
├── ConfigurationError    a setting or symbol that cannot work; the message says what to fix
├── FeedError             a feed cannot go on
│   ├── FeedDisconnected  the connection ended; the feed reconnects
│   ├── FeedRefused       the venue refuses us (restricted location, bad request); no retry helps
│   └── HistoryUnavailable  the venue cannot serve the past trades asked for; the gap stays open
└── BusError
    ├── Lagged            a subscriber fell more than the bus capacity behind and lost ticks
    └── BusClosed         the bus is closed; nothing more will arrive
"""

from __future__ import annotations

from enum import StrEnum


class KairosError(Exception):
    """Base of every error kairos-core raises deliberately."""


class RejectReason(StrEnum):
    """Why a frame was rejected; a label for counters and logs."""

    JSON = "json"
    """Not JSON: malformed or cut short, not UTF-8, or nested deeper than the decoder goes."""
    SCHEMA = "schema"
    """JSON, but not the shape of any known message (missing fields, not an object)."""
    TYPE = "type"
    """A known field carries the wrong JSON type."""
    VALUE = "value"
    """A field has the right type but an impossible value (a zero, negative, NaN or absurdly large
    price, a time out of range, a string longer than any the venue sends)."""
    UNKNOWN_EVENT = "unknown_event"
    """A well-formed event of a kind this adapter does not consume (depth, kline, ...); its name is
    in the log, never a counter's key."""
    UNKNOWN_SYMBOL = "unknown_symbol"
    """A trade of a symbol the feed did not subscribe to: a confused or hostile venue must not grow
    per-symbol state downstream."""
    OVERSIZE = "oversize"
    """Larger than ``max_frame_bytes``: the client closed the connection (code 1009) without reading
    it, and the feed reconnected."""


EXCERPT_LIMIT = 200


class FrameRejected(KairosError):
    """A frame could not become a tick or a control value; the feed counts it and goes on."""

    def __init__(self, reason: RejectReason, excerpt: str | bytes, detail: str = "") -> None:
        if isinstance(excerpt, bytes):
            excerpt = excerpt[: EXCERPT_LIMIT * 4].decode("utf-8", errors="replace")
        self.reason = reason
        self.excerpt = excerpt[:EXCERPT_LIMIT]
        self.detail = detail[:EXCERPT_LIMIT]  # it may quote the frame (an unknown event's name)
        super().__init__(f"frame rejected ({reason}): {self.detail or 'see excerpt'}: {self.excerpt!r}")


class ConfigurationError(KairosError):
    """A setting or symbol that cannot work; the message names it and the fix."""


class FeedError(KairosError):
    """A feed cannot go on as it is."""


class FeedDisconnected(FeedError):
    """The connection ended or failed; the feed will reconnect."""


class FeedRefused(FeedError):
    """The venue refuses the connection in a way retrying will not fix."""


class HistoryUnavailable(FeedError):
    """The venue cannot serve the past trades asked for; the live stream is not affected.

    It refused the request, no longer keeps those ids, stayed unreachable through the retries,
    or asked us to wait longer than we may. The message names the range and the venue's reason.
    """


class BusError(KairosError):
    """Raised to a bus subscriber."""


class Lagged(BusError):
    """The subscriber fell behind by more than the bus capacity; ``missed`` ticks are gone."""

    def __init__(self, missed: int) -> None:
        self.missed = missed
        super().__init__(f"subscriber lagged: {missed} ticks missed")


class BusClosed(BusError):
    """The bus is closed; nothing more will be published."""
