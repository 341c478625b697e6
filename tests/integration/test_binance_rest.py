"""The exchangeInfo check against a real HTTP server on 127.0.0.1 serving a recorded Binance body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from kairos_core.adapters.inbound.feed_handler.binance_rest import check_symbols_trading
from kairos_core.domain import ConfigurationError

RECORDED = Path(__file__).resolve().parent.parent / "fixtures/binance/exchangeInfo_20211012_trimmed.json"


@pytest.fixture
async def rest_url() -> AsyncIterator[str]:
    """Answers every exchangeInfo request with the recorded 2021 body (real field set)."""

    async def exchange_info(_: web.Request) -> web.Response:
        return web.Response(body=RECORDED.read_bytes(), content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v3/exchangeInfo", exchange_info)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_trading_symbols_pass(rest_url: str) -> None:
    await check_symbols_trading(rest_url, ("btcusdt", "ethusdt", "dotusdt"))


async def test_a_symbol_in_break_fails_naming_its_status(rest_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"'bccbtc' is not trading on Binance \(status BREAK\)"):
        await check_symbols_trading(rest_url, ("btcusdt", "bccbtc"))


async def test_a_symbol_missing_from_the_answer_fails(rest_url: str) -> None:
    with pytest.raises(ConfigurationError, match="'dogeusdt' is not listed"):
        await check_symbols_trading(rest_url, ("dogeusdt",))
