"""``--dashboard``: the service's status on the terminal, redrawn in place (rich).

It is drawn from the event loop (``Live`` without its refresh thread), so it reads the counters
between two batches of ticks like a scrape does.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kairos_core.domain import Exchange
from kairos_core.domain.status import HistogramSnapshot, NatsStatus, ServiceSnapshot, StatusSource

RATE_WINDOW = 5.0
"""Seconds of history the ticks-per-second figures average over."""


class RichDashboard:
    """Redraws ``status`` every ``refresh`` seconds until cancelled; remembers what a rate needs."""

    def __init__(
        self,
        status: StatusSource,
        *,
        console: Console | None = None,
        refresh: float = 0.5,
        log_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._status = status
        self._console = console or Console()
        self._refresh = refresh
        self._log_path = log_path
        self._clock = clock
        self._started = clock()
        self._first_price: dict[tuple[Exchange, str], Decimal] = {}
        self._history: deque[tuple[float, dict[tuple[Exchange, str], int]]] = deque()

    async def run(self) -> None:
        with Live(
            console=self._console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
        ) as live:
            while True:
                live.update(self.render(self._status.snapshot()), refresh=True)
                await asyncio.sleep(self._refresh)

    def render(self, snapshot: ServiceSnapshot) -> RenderableType:
        rates = self._rates(snapshot)
        return Group(
            self._header(snapshot, sum(rates.values())),
            self._symbols(snapshot, rates),
            self._connections(snapshot),
            self._bus(snapshot),
            self._storage_and_trading(snapshot),
        )

    def _rates(self, snapshot: ServiceSnapshot) -> dict[tuple[Exchange, str], float]:
        now = self._clock()
        counts = {(s.exchange, s.symbol): s.ticks for s in snapshot.symbols}
        self._history.append((now, counts))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW:
            self._history.popleft()
        then, before = self._history[0]
        elapsed = now - then
        if elapsed <= 0:
            return dict.fromkeys(counts, 0.0)
        return {key: (count - before.get(key, 0)) / elapsed for key, count in counts.items()}

    def _header(self, snapshot: ServiceSnapshot, rate: float) -> Text:
        ticks = sum(symbol.ticks for symbol in snapshot.symbols)
        header = Text.assemble(
            ("kairos-core", "bold"),
            f"  up {self._clock() - self._started:.0f} s  ticks {ticks} ({rate:.1f}/s)  ",
            ("READY", "bold green") if snapshot.readiness.ready else ("NOT READY", "bold red"),
        )
        for problem in snapshot.readiness.problems:
            header.append(f"\n  ✗ {problem}", style="red")
        if self._log_path is not None:
            header.append(f"\nlogs: {self._log_path}   (Ctrl-C stops the service)", style="dim")
        return header

    def _symbols(self, snapshot: ServiceSnapshot, rates: dict[tuple[Exchange, str], float]) -> Table:
        table = Table(title="Symbols", title_justify="left", expand=False)
        for column in (
            "exchange",
            "symbol",
            "last price",
            "change",
            "ticks/s",
            "ticks",
            "last trade",
            "silent",
            "gaps",
        ):
            table.add_column(column, justify="left" if column in ("exchange", "symbol") else "right")
        now_ms = time.time() * 1000
        for symbol in snapshot.symbols:
            key = (symbol.exchange, symbol.symbol)
            price = symbol.last_price
            change = Text("")
            if price is not None:
                first = self._first_price.setdefault(key, price)
                percent = float((price - first) / first * 100) if first else 0.0
                change = Text(f"{percent:+.2f} %", style="green" if percent >= 0 else "red")
            age = (
                "—"
                if symbol.last_trade_ms is None
                else f"{max(0.0, now_ms - symbol.last_trade_ms) / 1000:.1f} s ago"
            )
            table.add_row(
                symbol.exchange.value,
                Text(symbol.symbol, style="bold red" if symbol.stale else "bold"),
                "—" if price is None else str(price),
                change,
                f"{rates.get(key, 0.0):.1f}",
                str(symbol.ticks),
                age,
                _silence(symbol.seconds_since_last_tick, symbol.stale_after, stale=symbol.stale),
                f"{symbol.gaps}" + (f" ({symbol.unrecoverable} lost)" if symbol.unrecoverable else ""),
            )
        return table

    def _connections(self, snapshot: ServiceSnapshot) -> Table:
        table = Table(title="Connections", title_justify="left")
        for column in ("exchange", "endpoint", "state", "reconnects", "rejected frames"):
            table.add_column(column)
        for feed in snapshot.feeds:
            for connection in feed.connections:
                state = (
                    Text(f"up {connection.state_seconds:.0f} s", style="green")
                    if connection.up
                    else Text(f"down {connection.state_seconds:.0f} s", style="red")
                )
                table.add_row(
                    feed.exchange.value,
                    connection.name,
                    state,
                    _counts(feed.reconnects),
                    _counts(feed.rejected),
                )
        return table

    def _bus(self, snapshot: ServiceSnapshot) -> Table:
        table = Table(title="Bus", title_justify="left")
        for column in ("subscriber", "received", "lag", "lost", "latency p50 / p99"):
            table.add_column(column, justify="left" if column == "subscriber" else "right")
        for subscriber in snapshot.subscribers:
            latency = subscriber.latency
            table.add_row(
                subscriber.name + (" (lossless)" if subscriber.lossless else ""),
                str(subscriber.received),
                str(subscriber.lag),
                Text(str(subscriber.lost), style="red" if subscriber.lost else ""),
                "—" if latency is None else f"{_quantile(latency, 0.5)} / {_quantile(latency, 0.99)}",
            )
        return table

    def _storage_and_trading(self, snapshot: ServiceSnapshot) -> RenderableType:
        lines = _nats(snapshot.nats)
        persistence = snapshot.persistence
        if persistence is not None:
            lines.append("\nDatabase  " if lines else "Database  ", style="bold")
            lines.append(
                f"stored {persistence.stored}  buffered {persistence.buffered} of "
                f"{persistence.buffer_limit}  retries {persistence.retries}  "
            )
            lines.append(*(("writes failing", "bold red") if persistence.failing else ("ok", "green")))
        trading = snapshot.trading
        if trading is None:
            return lines
        lines.append("\nStrategy  " if lines else "Strategy  ", style="bold")
        lines.append(
            f"intents {trading.intents}  approved {trading.approved}  "
            f"rejected {sum(trading.rejected.values())}  fills {trading.fills}"
        )
        positions = Table(title="Positions", title_justify="left")
        for column in ("exchange", "symbol", "quantity", "average price", "realised P&L", "unrealised P&L"):
            positions.add_column(column, justify="left" if column in ("exchange", "symbol") else "right")
        for held in trading.positions:
            positions.add_row(
                held.exchange.value,
                held.symbol,
                str(held.quantity),
                str(held.average_price),
                _money(held.realised_pnl),
                _money(held.unrealised_pnl),
            )
        return Group(lines, positions)


def _silence(seconds: float, threshold: float, *, stale: bool) -> Text:
    if stale:
        return Text(f"{seconds:.0f} s > {threshold:g} s", style="bold red")
    return Text(f"{seconds:.0f} s")


def _nats(nats: NatsStatus | None) -> Text:
    """One line per NATS part the process runs: the connection, publishing, persisting, feeds."""
    lines = Text()
    if nats is None:
        return lines
    lines.append("NATS      ", style="bold")
    lines.append(f"{nats.server} ")
    lines.append(
        *(
            (f"up {nats.state_seconds:.0f} s", "green")
            if nats.connected
            else (f"down {nats.state_seconds:.0f} s", "bold red")
        )
    )
    lines.append(f"  reconnects {nats.reconnects}")
    publisher, persist = nats.publisher, nats.persist
    if publisher is not None:
        lines.append(
            f"\n  publish published {publisher.published}  stored {publisher.stored}  "
            f"duplicates {publisher.duplicates}  unconfirmed {publisher.unconfirmed} of {publisher.window}  "
            f"retries {_counts(publisher.retries)}"
        )
    if persist is not None:
        lines.append(
            f"\n  persist fetched {persist.fetched}  acked {persist.acked}  "
            f"redelivered {persist.redelivered}  released {persist.released}  rejected {persist.rejected}"
        )
    for feed in nats.feeds:
        lines.append(f"\n  feed {feed.exchange.value}  received {feed.received}  rejected {feed.rejected}")
    return lines


def _counts(counts: Mapping[str, int]) -> str:
    if not counts:
        return "0"
    total = sum(counts.values())
    return f"{total} (" + ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items())) + ")"


def _money(amount: Decimal) -> Text:
    return Text(f"{amount:+.2f}", style="green" if amount >= 0 else "red")


def _quantile(histogram: HistogramSnapshot, q: float) -> str:
    """The upper bound of the bucket holding the ``q`` quantile: what a histogram can say."""
    total = histogram.count
    if not total:
        return "—"
    running = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        running += count
        if running >= q * total:
            return f"≤ {bound * 1000:g} ms"
    return f"> {histogram.bounds[-1] * 1000:g} ms"
