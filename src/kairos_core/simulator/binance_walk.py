"""The Binance simulator's trades: a seeded random walk of aggTrade frames, and the files that
say which trades a planned run makes (for the proof tests' comparison)."""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path

import msgspec

from kairos_core.adapters.inbound.feed_handler.binance_wire import encode_agg_trade
from kairos_core.domain import Exchange, MarketTick, Side

_PRICE_STEP = Decimal("0.01")
_QUANTITY_STEP = Decimal("0.00000001")
_STARTING_PRICES = {"btcusdt": 60_000, "ethusdt": 3_000, "bnbusdt": 500, "solusdt": 150}


class _Envelope(msgspec.Struct):
    data: msgspec.Raw


_envelope = msgspec.json.Decoder(_Envelope)


def data_of(combined_frame: bytes) -> bytes:
    """A combined frame's raw-stream form: its ``data`` object, the bytes as they are."""
    return bytes(_envelope.decode(combined_frame).data)


class RandomWalk:
    """Per-symbol prices moving a few ticks at a time; deterministic for a given seed."""

    def __init__(self, symbols: Iterable[str], seed: int | None, id_base: int) -> None:
        self._rng = random.Random(seed)
        self._symbols = list(symbols)
        self._cents = {s: _STARTING_PRICES.get(s, 100) * 100 for s in self._symbols}
        self._next_id = dict.fromkeys(self._symbols, id_base)

    def _steps(self) -> Iterator[tuple[str, int, int, int, int, bool]]:
        """Every random draw of a trade, in order: symbol, id, price in cents, trades in the
        aggregate, quantity in units of 1e-8, taker sold."""
        rng = self._rng
        while True:
            symbol = rng.choice(self._symbols)
            cents = max(1, self._cents[symbol] + rng.randint(-5, 5))
            self._cents[symbol] = cents
            trade_id = self._next_id[symbol]
            self._next_id[symbol] = trade_id + 1
            trades_in_aggregate = rng.choice((1, 1, 1, 2, 3))
            yield symbol, trade_id, cents, trades_in_aggregate, rng.randint(1, 50_000_000), rng.random() < 0.5

    def trades_per_symbol(self, count: int) -> dict[str, int]:
        """How many of the next ``count`` trades each symbol gets (what ``frames`` would make)."""
        made = dict.fromkeys(self._symbols, 0)
        for symbol, *_ in itertools.islice(self._steps(), count):
            made[symbol] += 1
        return made

    def frames(self) -> Iterator[tuple[str, bytes]]:
        for symbol, trade_id, cents, trades_in_aggregate, units, sold in self._steps():
            now_ms = time.time_ns() // 1_000_000
            tick = MarketTick(
                symbol=symbol.upper(),
                exchange=Exchange.BINANCE,
                price=(Decimal(cents) * _PRICE_STEP).quantize(_QUANTITY_STEP),
                volume=(Decimal(units) * _QUANTITY_STEP).quantize(_QUANTITY_STEP),
                side=Side.SELL if sold else Side.BUY,
                trade_id=trade_id,
                first_trade_id=trade_id * 4,
                last_trade_id=trade_id * 4 + trades_in_aggregate - 1,
                timestamp_ms=now_ms,
                event_time_ms=now_ms + 1,
                received_at_ns=0,
            )
            yield symbol, encode_agg_trade(tick)


def write_expected(path: Path, plan: dict[str, range]) -> None:
    """Write every planned trade as ``binance,<SYMBOL>,<id>`` lines, atomically (temp file, rename)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="ascii") as out:
        for symbol, ids in plan.items():
            prefix = f"{Exchange.BINANCE.value},{symbol.upper()},"
            out.writelines(f"{prefix}{trade_id}\n" for trade_id in ids)
    temporary.replace(path)
