"""Reads the recorded exchange messages in ``shared/data/real`` into Binance aggTrade frames.

Two framings: cryptofeed's raw-data recorder (``<ts>: <payload>``, split on the first ``": "``;
connection, REST and sent-frame lines are skipped) and hftbacktest's collector
(``<recv_ns> <payload>``, optionally gzip). hftbacktest holds ``@trade`` frames; a trade is an
aggregate of one, so it is replayed as an aggTrade with ``a = f = l = t``.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import msgspec


class _Trade(msgspec.Struct):
    E: int  # event time, ms
    s: str  # symbol
    t: int  # trade id
    p: str  # price
    q: str  # quantity
    T: int  # trade time, ms
    m: bool  # buyer is maker


class _Envelope(msgspec.Struct):
    stream: str
    data: msgspec.Raw


_envelope = msgspec.json.Decoder(_Envelope)
_trade = msgspec.json.Decoder(_Trade)
_encoder = msgspec.json.Encoder()


def recorded_agg_trades(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(symbol, combined aggTrade frame)`` for every trade in the recording, in order."""
    for payload in _payloads(path):
        try:
            envelope = _envelope.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        stream = envelope.stream
        if stream.endswith("@aggTrade"):
            yield stream.split("@", 1)[0], payload
        elif stream.endswith("@trade"):
            yield stream.split("@", 1)[0], _as_agg_trade(_trade.decode(envelope.data))


def _as_agg_trade(trade: _Trade) -> bytes:
    data = {
        "e": "aggTrade",
        "E": trade.E,
        "s": trade.s,
        "a": trade.t,
        "p": trade.p,
        "q": trade.q,
        "f": trade.t,
        "l": trade.t,
        "T": trade.T,
        "m": trade.m,
        "M": True,
    }
    return _encoder.encode({"stream": f"{trade.s.lower()}@aggTrade", "data": data})


def _payloads(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as lines:
        for line in lines:
            payload = _payload(line.rstrip(b"\r\n"))
            if payload is not None:
                yield payload


def _payload(line: bytes) -> bytes | None:
    head, separator, rest = line.partition(b" ")
    if separator and head.isdigit() and len(head) >= 16:
        return rest  # hftbacktest: <recv_ns> <payload>
    stamp, separator, rest = line.partition(b": ")
    if separator and stamp.replace(b".", b"", 1).isdigit():
        return rest  # cryptofeed: <ts>: <payload>
    return None
