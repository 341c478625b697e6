"""What the Binance simulator does wrong on purpose: bad frames, oversize frames, drop schedules.

Every fault is one a real venue or network produces now and then; the proof tests turn them on
together and check that the service still stores every trade exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from enum import StrEnum
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
