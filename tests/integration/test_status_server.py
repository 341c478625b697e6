"""The metrics port over a real socket: content types, status codes, and a port already taken."""

from __future__ import annotations

import aiohttp
import pytest

from kairos_core.adapters.inbound.observability.prometheus import metrics_registry
from kairos_core.adapters.inbound.observability.server import AiohttpStatusServer
from kairos_core.domain import ConfigurationError
from tests.unit.test_observability_output import FixedStatus


async def test_the_three_endpoints_answer_over_http() -> None:
    status = FixedStatus()
    server = AiohttpStatusServer(status, metrics_registry(status), host="127.0.0.1", port=0)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as metrics:
                assert metrics.status == 200
                assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert "kairos_ticks_total{" in await metrics.text()
            async with http.get(f"{base}/healthz") as alive:
                assert (alive.status, await alive.json()) == (200, {"alive": True})
            async with http.get(f"{base}/readyz") as ready:
                assert ready.status == 503  # the fixed snapshot has a connection down
                assert (await ready.json())["problems"] == ["binance connection 127.0.0.1:9443 down for 8 s"]
    finally:
        await server.stop()


async def test_a_port_in_use_is_a_configuration_error_naming_the_flag() -> None:
    status = FixedStatus()
    first = AiohttpStatusServer(status, metrics_registry(status), host="127.0.0.1", port=0)
    await first.start()
    try:
        second = AiohttpStatusServer(status, metrics_registry(status), host="127.0.0.1", port=first.port)
        with pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{first.port}.*--metrics-port"):
            await second.start()
    finally:
        await first.stop()
