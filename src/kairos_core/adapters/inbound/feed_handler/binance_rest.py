"""Binance REST calls a feed makes before it streams: is every configured symbol listed and trading?"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import msgspec
import structlog

from kairos_core.domain import ConfigurationError

log = structlog.get_logger(__name__)

_INVALID_SYMBOL = -1121  # Binance's error code for a symbol it does not list


class _Symbol(msgspec.Struct):
    symbol: str
    status: str  # TRADING, BREAK, HALT, ...


class _ExchangeInfo(msgspec.Struct):
    symbols: list[_Symbol]


class _ErrorBody(msgspec.Struct):
    code: int
    msg: str = ""


async def check_symbols_trading(rest_url: str, symbols: tuple[str, ...], timeout: float = 3.0) -> None:
    """Fail fast on a symbol Binance does not list or does not trade now.

    An exchange that cannot be asked (no answer within ``timeout``, network error, 5xx) does not
    stop the feed: that is logged and the stream decides.
    """
    wanted = [symbol.upper() for symbol in symbols]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as client:
            statuses = await _statuses(client, f"{rest_url}/api/v3/exchangeInfo", wanted)
    except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError, msgspec.ValidationError) as e:
        log.warning("symbols.unchecked", url=rest_url, error=str(e) or type(e).__name__)
        return
    for symbol in wanted:
        status = statuses.get(symbol)
        if status is None:
            raise ConfigurationError(
                f"symbol {symbol.lower()!r} is not listed on Binance ({rest_url}): check the spelling, "
                "e.g. btcusdt"
            )
        if status != "TRADING":
            raise ConfigurationError(
                f"symbol {symbol.lower()!r} is not trading on Binance (status {status}): "
                "remove it from --symbols"
            )


async def _statuses(client: aiohttp.ClientSession, url: str, wanted: list[str]) -> dict[str, str | None]:
    status, body = await _get(client, url, {"symbols": json.dumps(wanted, separators=(",", ":"))})
    if status == 400 and _error_code(body) == _INVALID_SYMBOL:
        # Binance rejects the whole list without naming the culprit; ask one symbol at a time.
        answers = await asyncio.gather(*(_status_of(client, url, symbol) for symbol in wanted))
        return dict(zip(wanted, answers, strict=True))
    info = msgspec.json.decode(body, type=_ExchangeInfo)
    return {entry.symbol: entry.status for entry in info.symbols}


async def _status_of(client: aiohttp.ClientSession, url: str, symbol: str) -> str | None:
    status, body = await _get(client, url, {"symbol": symbol})
    if status == 400 and _error_code(body) == _INVALID_SYMBOL:
        return None
    info = msgspec.json.decode(body, type=_ExchangeInfo)
    return next((entry.status for entry in info.symbols if entry.symbol == symbol), None)


async def _get(client: aiohttp.ClientSession, url: str, params: dict[str, str]) -> tuple[int, bytes]:
    """Status and body of ``exchangeInfo``; raises for any status but 200 and 400."""
    async with client.get(url, params=params) as response:
        body = await response.read()
        if response.status not in (200, 400):
            response.raise_for_status()
        return response.status, body


def _error_code(body: bytes) -> int | None:
    try:
        return msgspec.json.decode(body, type=_ErrorBody).code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
