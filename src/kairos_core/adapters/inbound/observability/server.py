"""The metrics port: ``/metrics`` (Prometheus text), ``/healthz`` (alive), ``/readyz`` (JSON; 503: not ready).

aiohttp on the service's own event loop, so a scrape reads the counters between two batches of
ticks, never while a component is changing them (no thread, no lock).
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from kairos_core.domain import ConfigurationError
from kairos_core.domain.status import ServiceSnapshot, StatusSource, SymbolStatus

log = structlog.get_logger(__name__)


class AiohttpStatusServer:
    """Serves the status of ``status`` on ``host:port`` from ``start`` until ``stop``."""

    def __init__(self, status: StatusSource, registry: CollectorRegistry, *, host: str, port: int) -> None:
        self._status = status
        self._registry = registry
        self._host = host
        self._port = port
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    @property
    def port(self) -> int:
        """The bound port (the one chosen by the system when asked for 0)."""
        return self._port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise ConfigurationError(
                f"cannot serve metrics on {self._host}:{self._port}: {e.strerror or e}: "
                "choose another --metrics-port (or --metrics-host)"
            ) from e
        self._port = int(self._runner.addresses[0][1])
        log.info("metrics.serving", url=f"http://{self._host}:{self._port}/metrics", readyz="/readyz")

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        # The 0.0.4 text format every Prometheus reads; our names need none of 1.0.0's escaping.
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, _: web.Request) -> web.Response:
        snapshot = self._status.snapshot()
        return web.json_response(readiness_body(snapshot), status=200 if snapshot.readiness.ready else 503)


def readiness_body(snapshot: ServiceSnapshot) -> dict[str, Any]:
    """What ``/readyz`` says: the verdict, what is wrong, and the state it was judged on."""
    persistence, nats = snapshot.persistence, snapshot.nats
    return {
        "ready": snapshot.readiness.ready,
        "problems": list(snapshot.readiness.problems),
        "connections": [
            {
                "exchange": connection.exchange.value,
                "connection": connection.name,
                "up": connection.up,
                "state_seconds": round(connection.state_seconds, 1),
                "silent_seconds": round(connection.silent_seconds, 1),
                "watchdog_seconds": connection.watchdog_seconds,
            }
            for feed in snapshot.feeds
            for connection in feed.connections
        ],
        "persistence": None
        if persistence is None
        else {
            "failing": persistence.failing,
            "buffered": persistence.buffered,
            "buffer_limit": persistence.buffer_limit,
        },
        "stale_after_seconds": snapshot.stale_after,
        "stale_symbols": [_silence(symbol) for symbol in snapshot.symbols if symbol.stale],
        "symbols": [
            {**_silence(symbol), "stale_after_seconds": symbol.stale_after, "stale": symbol.stale}
            for symbol in snapshot.symbols
        ],
        "nats": None
        if nats is None
        else {
            "server": nats.server,
            "connected": nats.connected,
            "state_seconds": round(nats.state_seconds, 1),
        },
    }


def _silence(symbol: SymbolStatus) -> dict[str, Any]:
    return {
        "exchange": symbol.exchange.value,
        "symbol": symbol.symbol,
        "seconds_since_last_tick": round(symbol.seconds_since_last_tick, 1),
    }
