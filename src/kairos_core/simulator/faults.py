"""What the simulators do wrong on purpose: bad frames, oversize frames, drop schedules, and what
happens to each connection on a clock of its own (shutdown notices, lifetime closes, silence).

Every fault is one a real venue or network produces now and then; the proof tests turn them on
together and check that the service still stores every trade exactly once.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import msgspec

OVERSIZE_BYTES = 3 << 19
"""1.5 MiB: past the 1 MiB ``max_frame_bytes`` a feed reads by default, so it closes with 1009."""


class Garbage(StrEnum):
    """The kinds of broken frame sent after a trade, in the order they take turns."""

    INVALID_JSON = "invalid_json"
    UNKNOWN_EVENT = "unknown_event"
    WRONG_TYPE = "wrong_type"
    INVALID_UTF8 = "invalid_utf8"
    ZERO_PRICE = "zero_price"


_KINDS = tuple(Garbage)


def garbage_frame(nth: int, trade_frame: bytes) -> tuple[bytes, bool]:
    """The ``nth`` garbage frame (kinds take turns), made from the combined ``trade_frame`` just
    sent, and whether it goes out as text (invalid UTF-8 can only be a binary frame).

    Frames that still look like a trade keep its id, so one a client failed to reject is a
    duplicate it drops, never a new trade.
    """
    kind = _KINDS[nth % len(_KINDS)]
    if kind is Garbage.INVALID_JSON:
        return trade_frame[: len(trade_frame) // 2], True
    envelope: dict[str, Any] = msgspec.json.decode(trade_frame)
    data: dict[str, Any] = envelope["data"]
    if kind is Garbage.UNKNOWN_EVENT:
        envelope["data"] = {"e": "kairosMystery", "E": data["E"]}
    elif kind is Garbage.WRONG_TYPE:
        data["p"] = float(data["p"])  # a number where Binance sends a decimal string
    elif kind is Garbage.ZERO_PRICE:
        data["p"] = "0.00000000"
    else:  # INVALID_UTF8: a lone continuation byte inside a string
        return b'{"stream":"' + envelope["stream"].encode() + b'","data":{"e":"aggTrade","s":"\x80"}}', False
    return msgspec.json.encode(envelope), True


def oversize_frame(size: int = OVERSIZE_BYTES) -> bytes:
    """A well-formed frame of ``size`` bytes carrying an unknown event: a client that reads it
    rejects it; one with a smaller frame limit closes the connection (1009) without reading it."""
    head, tail = b'{"stream":"padding","data":{"e":"padding","pad":"', b'"}}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def drop_intervals(every: float, *, at_random: bool, rng: random.Random) -> Iterator[float]:
    """Seconds between connection drops: ``every`` each time, or, ``at_random``, exponentially
    distributed with mean ``every`` (drops as a Poisson process)."""
    while True:
        yield rng.expovariate(1 / every) if at_random else every


def positive(name: str, value: float | None) -> None:
    """Raise ``ValueError`` unless ``value`` is None or positive."""
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


class ConnectionEvent(Enum):
    """What a connection's schedule does to it."""

    NOTICE = "notice"
    """The venue's shutdown notice (Binance ``serverShutdown``, OKX notice 64008)."""
    SHUTDOWN = "shutdown"
    """The close that follows a notice by the grace."""
    EXPIRE = "expire"
    """The close at the end of the connection's lifetime, unannounced."""
    SILENCE = "silence"
    """From now on nothing is sent on it; the protocol still answers pings."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionFaults:
    """What happens to every connection, counted in seconds from its opening (None: never).

    Every ``shutdown_every`` seconds a shutdown notice, and ``shutdown_grace`` seconds after the
    first one the close (notices keep coming meanwhile if the grace is the longer); at
    ``lifetime`` an unannounced close, whichever close comes first; at ``silent_after`` the
    connection goes silent and nothing else happens to it (no notice, no close: the client has
    to notice and leave); only every ``silent_every``-th connection does, so that a run can also
    see the others reach their closes.
    """

    shutdown_every: float | None = None
    shutdown_grace: float = 1.0
    lifetime: float | None = None
    silent_after: float | None = None
    silent_every: int = 1

    def __post_init__(self) -> None:
        for name in ("shutdown_every", "lifetime", "silent_after"):
            positive(name, getattr(self, name))
        if self.shutdown_grace < 0:
            raise ValueError(f"shutdown_grace must not be negative, got {self.shutdown_grace}")
        if self.silent_every < 1:
            raise ValueError(f"silent_every must be 1 or more, got {self.silent_every}")

    def schedule(self, number: int = 1) -> list[tuple[float, ConnectionEvent]]:
        """Every event in the life of the ``number``-th connection (from 1) in order, as (seconds
        after opening, event); it ends with its close, or with its silence. A notice due at the
        moment of the close goes first."""
        closes = []
        if self.lifetime is not None:
            closes.append((self.lifetime, ConnectionEvent.EXPIRE))
        if self.shutdown_every is not None:
            closes.append((self.shutdown_every + self.shutdown_grace, ConnectionEvent.SHUTDOWN))
        close = min(closes, key=_seconds) if closes else None
        end = close[0] if close else math.inf
        events = []
        if self.shutdown_every is not None:
            due = (self.shutdown_every * n for n in itertools.count(1))
            events += [(at, ConnectionEvent.NOTICE) for at in itertools.takewhile(lambda at: at <= end, due)]
        if close is not None:
            events.append(close)
        silent = number % self.silent_every == 0
        if self.silent_after is not None and self.silent_after < end and silent:
            events.append((self.silent_after, ConnectionEvent.SILENCE))
        events.sort(key=_seconds)  # stable: notices stay ahead of a close at the same moment
        for i, (_, event) in enumerate(events):
            if event is ConnectionEvent.SILENCE:
                return events[: i + 1]
        return events


def _seconds(event: tuple[float, ConnectionEvent]) -> float:
    return event[0]
