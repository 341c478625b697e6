"""Binance REST calls a feed makes before it streams: is every configured symbol listed and trading?"""

from __future__ import annotations

import asyncio
import json

import httpx
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
        async with httpx.AsyncClient(base_url=rest_url, timeout=timeout) as client:
            statuses = await _statuses(client, wanted)
    except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError) as e:
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


async def _statuses(client: httpx.AsyncClient, wanted: list[str]) -> dict[str, str | None]:
    response = await client.get(
        "/api/v3/exchangeInfo", params={"symbols": json.dumps(wanted, separators=(",", ":"))}
    )
    if response.status_code == 400 and _error_code(response) == _INVALID_SYMBOL:
        # Binance rejects the whole list without naming the culprit; ask one symbol at a time.
        answers = await asyncio.gather(*(_status_of(client, symbol) for symbol in wanted))
        return dict(zip(wanted, answers, strict=True))
    response.raise_for_status()
    info = msgspec.json.decode(response.content, type=_ExchangeInfo)
    return {entry.symbol: entry.status for entry in info.symbols}


async def _status_of(client: httpx.AsyncClient, symbol: str) -> str | None:
    response = await client.get("/api/v3/exchangeInfo", params={"symbol": symbol})
    if response.status_code == 400 and _error_code(response) == _INVALID_SYMBOL:
        return None
    response.raise_for_status()
    info = msgspec.json.decode(response.content, type=_ExchangeInfo)
    return next((entry.status for entry in info.symbols if entry.symbol == symbol), None)


def _error_code(response: httpx.Response) -> int | None:
    try:
        return msgspec.json.decode(response.content, type=_ErrorBody).code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
