"""The service's settings: one frozen pydantic-settings model, read once by the entry point.

Precedence, lowest to highest: defaults < TOML config file < ``.env`` < environment < flags.
Every field's environment name is ``KAIROS_`` + its upper-cased name.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kairos_core.domain import Exchange, OrderType

DEFAULT_BINANCE_WS_URL = "wss://stream.binance.com:9443/stream"
DEFAULT_BINANCE_REST_URL = "https://api.binance.com"
DEFAULT_OKX_WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
DEFAULT_OKX_REST_URL = "https://www.okx.com"
DEFAULT_MAX_FRAME_BYTES = 1 << 20
MIN_MAX_FRAME_BYTES, MAX_MAX_FRAME_BYTES = 1 << 16, 1 << 30
_NATS_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NATS_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class StrategyName(StrEnum):
    MA_CROSSOVER = "ma_crossover"
    BREAKOUT = "breakout"
    NONE = "none"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def default_data_dir() -> Path:
    """``/var/lib/kairos`` as root, else the per-user data dir (XDG)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/kairos")
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "kairos"


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[tuple[str, ...], NoDecode]


class Settings(BaseSettings):
    """Everything the service can be told; see ``python -m kairos_core --help``."""

    model_config = SettingsConfigDict(
        env_prefix="KAIROS_",
        env_file=".env",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    symbols: CommaList = Field(default=("btcusdt", "ethusdt"), min_length=1)
    exchanges: Annotated[tuple[Exchange, ...], NoDecode] = Field(default=(Exchange.BINANCE,), min_length=1)
    binance_ws_url: str = DEFAULT_BINANCE_WS_URL
    binance_rest_url: str = DEFAULT_BINANCE_REST_URL
    okx_ws_url: str = DEFAULT_OKX_WS_URL
    okx_rest_url: str = DEFAULT_OKX_REST_URL
    max_frame_bytes: int = Field(
        default=DEFAULT_MAX_FRAME_BYTES,
        description="largest WebSocket message a feed reads; a larger one closes the connection unread",
    )
    backfill_max: int = Field(
        default=1_000_000, ge=0, description="trade ids a gap may span and still be fetched from REST"
    )
    backfill_max_age: float = Field(
        default=86_400.0, gt=0, description="seconds of downtime a restart still fetches from REST"
    )
    binance_connection_lifetime: float = Field(
        default=86_400.0,
        ge=5,
        description="seconds Binance keeps a connection; each is replaced before, make-before-break",
    )
    binance_watchdog: float = Field(
        default=60.0,
        gt=0,
        description="seconds a Binance connection may deliver nothing before it is probed and replaced",
    )
    database_url: str | None = None
    """None: an embedded PostgreSQL with its data in ``data_dir / "pg"``."""
    data_dir: Path = Field(default_factory=default_data_dir)
    migrate: bool = True
    """Upgrade the database schema to the newest revision on start."""
    persist_batch_size: int = Field(default=1_000, ge=1, le=100_000)
    persist_batch_size_max: int = Field(default=5_000, ge=1, le=100_000)
    """Ticks one write may take when more wait: a backlog drains in fewer, cheaper transactions."""
    persist_flush_interval: float = Field(default=0.1, gt=0, le=60)
    """Seconds a received tick may wait for its batch to fill before it is written anyway."""
    persist_buffer_limit: int = Field(default=1_000_000, ge=1)
    """Ticks held while the database is slow or down; past it the feeds pause (never drop)."""
    bus_capacity: int = Field(
        default=1_000,
        ge=1,
        le=10_000_000,
        description="ticks a subscriber may fall behind before it loses the oldest",
    )
    price_summary_interval: float = Field(
        default=60.0, gt=0, description="seconds between per-symbol price summaries"
    )
    strategy_name: StrategyName = Field(
        default=StrategyName.MA_CROSSOVER, description="the example strategy to run"
    )
    strategy_fast_window: int = Field(default=10, ge=1, description="ticks in the fast moving average")
    strategy_slow_window: int = Field(default=30, ge=2, description="ticks in the slow moving average")
    strategy_breakout_window: int = Field(
        default=50, ge=2, description="ticks in the breakout's rolling window"
    )
    strategy_quantity: Decimal = Field(
        default=Decimal("0.001"), gt=0, description="order size, in the base asset"
    )
    strategy_order_type: OrderType = Field(default=OrderType.MARKET, description="order type")
    strategy_limit_offset_bps: Decimal = Field(
        default=Decimal(0), ge=0, lt=10_000, description="limit orders: basis points past the signal's price"
    )
    risk_max_order_notional: Decimal = Field(
        default=Decimal(10_000), gt=0, description="largest order value, in the quote asset"
    )
    risk_max_position: Decimal = Field(
        default=Decimal(1), gt=0, description="largest net position per symbol, in the base asset"
    )
    risk_price_band_pct: Decimal = Field(
        default=Decimal(5), gt=0, description="limit price at most this % from the last trade"
    )
    risk_stale_after: float = Field(
        default=5.0, gt=0, description="reject when a symbol has had no tick for this many seconds"
    )
    risk_breaker_move_pct: Decimal = Field(
        default=Decimal(10), gt=0, description="halt a symbol after a move over this % within the window"
    )
    risk_breaker_window: float = Field(
        default=60.0, gt=0, description="circuit-breaker window, seconds of trade time"
    )
    risk_breaker_cooldown: float = Field(
        default=300.0, gt=0, description="seconds a halted symbol stays halted after its last big move"
    )
    risk_volatility_window: int = Field(
        default=100, ge=2, description="log returns in the rolling volatility"
    )
    nats_url: str | None = None
    """None: no NATS (the all-in-one service alone); ``ingest`` and ``persist`` need one."""
    nats_stream: str = Field(default="KAIROS_TICKS", description="the JetStream stream of ticks")
    nats_subject_prefix: str = Field(
        default="kairos.ticks", description="ticks go on <prefix>.<exchange>.<SYMBOL>"
    )
    nats_durable: str = Field(
        default="kairos-persist", description="the durable consumer the persist nodes share"
    )
    nats_max_age: float = Field(
        default=604_800.0, ge=0, description="seconds the stream keeps a tick (0: no limit by age)"
    )
    nats_max_bytes: int = Field(
        default=-1, ge=-1, description="bytes the stream keeps at most (-1: no limit by size)"
    )
    nats_replicas: int = Field(default=1, ge=1, le=5, description="copies of the stream in a NATS cluster")
    nats_duplicate_window: float = Field(
        default=120.0, gt=0, description="seconds within which a tick published again is dropped"
    )
    nats_ack_wait: float = Field(
        default=30.0, gt=0, description="seconds a persist node may hold a batch before another gets it"
    )
    nats_max_ack_pending: int = Field(
        default=20_000, ge=1, description="ticks out to the persist nodes and not yet acknowledged, at most"
    )
    nats_publish_window: int = Field(
        default=10_000, ge=1, description="ticks published and not yet confirmed by the stream, at most"
    )
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """None: no metrics endpoint (and no latency sampling)."""
    metrics_host: str = "127.0.0.1"
    metrics_sample_every: int = Field(
        default=64,
        ge=0,
        le=1 << 20,
        description="latency histograms time 1 tick in N (a power of two; 0: off)",
    )
    metrics_stale_after: float = Field(
        default=300.0, gt=0, description="seconds without a tick before a symbol is reported stale"
    )
    metrics_stale_after_symbols: CommaList = ()
    """Symbols' own thresholds: ``[exchange:]SYMBOL=SECONDS`` entries (``BTCUSDT=30,ETHUSDT=600``)."""
    busy_poll_us: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="microseconds the event loop polls its sockets before it sleeps: lower latency "
        "for a core kept busy while trades come (0: it sleeps at once)",
    )
    log_format: LogFormat | None = None
    """None: console on a terminal, JSON otherwise."""
    log_level: LogLevel = LogLevel.INFO
    config: Path | None = None
    """The TOML file the other values may come from (read before ``.env`` and the environment)."""

    _split_symbols = field_validator("symbols", "exchanges", mode="before")(_comma_list)

    @field_validator("exchanges", mode="after")
    @classmethod
    def _distinct(cls, exchanges: tuple[Exchange, ...]) -> tuple[Exchange, ...]:
        return tuple(dict.fromkeys(exchanges))

    @property
    def feeds(self) -> FeedSettings:
        return FeedSettings.of(self)

    @property
    def database(self) -> DatabaseSettings:
        return DatabaseSettings.of(self)

    @property
    def bus(self) -> BusSettings:
        return BusSettings.of(self)

    @property
    def strategy(self) -> StrategySettings:
        return StrategySettings.of(self)

    @property
    def risk(self) -> RiskSettings:
        return RiskSettings.of(self)

    @property
    def metrics(self) -> MetricsSettings:
        return MetricsSettings.of(self)

    @property
    def nats(self) -> NatsSettings:
        return NatsSettings.of(self)

    @property
    def logging(self) -> LoggingSettings:
        return LoggingSettings.of(self)

    @property
    def runtime(self) -> RuntimeSettings:
        return RuntimeSettings.of(self)

    @model_validator(mode="after")
    def _symbols_name_their_exchange(self) -> Settings:
        FeedSettings.of(self).symbols_by_exchange()  # raises ValueError with the fix
        return self

    @model_validator(mode="after")
    def _fast_window_below_slow(self) -> Settings:
        if self.strategy_fast_window >= self.strategy_slow_window:
            raise ValueError(
                f"strategy_fast_window ({self.strategy_fast_window}) must be below "
                f"strategy_slow_window ({self.strategy_slow_window})"
            )
        return self

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> Settings:
        if self.persist_buffer_limit < self.persist_batch_size:
            raise ValueError(
                f"persist_buffer_limit ({self.persist_buffer_limit}) must be at least "
                f"persist_batch_size ({self.persist_batch_size})"
            )
        return self

    _split_stale_after_symbols = field_validator("metrics_stale_after_symbols", mode="before")(_comma_list)

    @field_validator("metrics_stale_after_symbols", mode="after")
    @classmethod
    def _stale_after_symbols_readable(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        for entry in entries:
            stale_override(entry)  # raises ValueError with the fix
        return entries

    @field_validator("metrics_sample_every", mode="after")
    @classmethod
    def _power_of_two(cls, every: int) -> int:
        if every & (every - 1):
            raise ValueError(
                f"must be a power of two (1, 2, 4, ... 64, ...) or 0 for no sampling, got {every}"
            )
        return every

    @field_validator("max_frame_bytes", mode="after")
    @classmethod
    def _frame_limit(cls, limit: int) -> int:
        if not MIN_MAX_FRAME_BYTES <= limit <= MAX_MAX_FRAME_BYTES:
            raise ValueError(
                f"must be from {MIN_MAX_FRAME_BYTES} (64 KiB) to {MAX_MAX_FRAME_BYTES} (1 GiB) bytes, got "
                f"{limit}: below 64 KiB the venues' ordinary messages (an OKX push of many trades, a "
                f"subscription list) would close the connection again and again; the default is "
                f"{DEFAULT_MAX_FRAME_BYTES} (1 MiB)"
            )
        return limit

    @field_validator("nats_url", mode="after")
    @classmethod
    def _nats_urls(cls, urls: str | None) -> str | None:
        if urls is not None:
            for url in urls.split(","):
                _checked_url(url.strip(), ("nats", "tls", "ws", "wss"))
        return urls

    @field_validator("nats_stream", "nats_durable", mode="after")
    @classmethod
    def _nats_name(cls, name: str) -> str:
        if not _NATS_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} cannot name a NATS stream or consumer: use up to 64 letters, digits, - and _, "
                "e.g. KAIROS_TICKS"
            )
        return name

    @field_validator("nats_subject_prefix", mode="after")
    @classmethod
    def _nats_subject(cls, prefix: str) -> str:
        if not _NATS_SUBJECT.fullmatch(prefix):
            raise ValueError(
                f"{prefix!r} cannot begin a NATS subject: use dot-separated tokens of letters, digits, "
                "- and _, e.g. kairos.ticks"
            )
        return prefix

    @model_validator(mode="after")
    def _ack_pending_holds_a_batch(self) -> Settings:
        # Only a persist node reads from NATS: without a NATS server the bound has nothing to hold.
        if self.nats_url is not None and self.nats_max_ack_pending < self.persist_batch_size:
            raise ValueError(
                f"nats_max_ack_pending ({self.nats_max_ack_pending}) must be at least "
                f"persist_batch_size ({self.persist_batch_size}): a persist node takes a batch at a time"
            )
        return self

    @field_validator("binance_ws_url", "okx_ws_url", mode="after")
    @classmethod
    def _websocket_url(cls, url: str) -> str:
        return _checked_url(url, ("ws", "wss"))

    @field_validator("binance_rest_url", "okx_rest_url", mode="after")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return _checked_url(url, ("http", "https")).rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        dotenv = _OursOnly(settings_cls, dotenv_settings)
        sources = [init_settings, env_settings, dotenv]
        config_file = _config_file(init_settings, env_settings, dotenv)
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def _checked_url(url: str, schemes: tuple[str, ...]) -> str:
    """The URL if it can be connected to: a known scheme, a host, a valid port."""
    example = f"{schemes[-1]}://host:port/path"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{url!r} is not a valid URL ({e}): use {example}") from None
    if parts.scheme not in schemes:
        raise ValueError(f"{url!r} must start with {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname or port == 0:
        raise ValueError(f"{url!r} names no host (or port 0) to connect to: use {example}")
    return url


class _OursOnly(PydanticBaseSettingsSource):
    """A ``.env`` is often shared with other tools: its keys that are not ours are not our business.

    Keys with our prefix that name no setting still reach validation and are rejected.
    """

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {
            key: value for key, value in self._source().items() if key in fields or key.startswith("kairos_")
        }


def _config_file(*sources: PydanticBaseSettingsSource) -> Path | None:
    """The config file named by the highest-precedence source that names one."""
    for source in sources:
        value = source().get("config")
        if value:
            path = Path(value)
            if not path.is_file():
                raise FileNotFoundError(
                    f"config file {str(path)!r} (--config / KAIROS_CONFIG) does not exist: "
                    "name an existing TOML file"
                )
            return path
    return None


class _Concern(BaseModel):
    """The settings of one concern, read from ``Settings`` by their flat names (the aliases).

    ``Settings`` stays flat, because the flat names are the contract of every source (flags,
    ``KAIROS_*``, ``.env``, the TOML file) and it alone validates them; each part of the service
    is handed only its concern's model.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def of(cls, settings: Settings) -> Self:
        return cls.model_validate({name: getattr(settings, name) for name in cls.flat_names()})

    @classmethod
    def flat_names(cls) -> list[str]:
        return [
            field.validation_alias if isinstance(field.validation_alias, str) else name
            for name, field in cls.model_fields.items()
        ]


class FeedSettings(_Concern):
    exchanges: tuple[Exchange, ...]
    symbols: tuple[str, ...]
    """Each exchange's own form; with several exchanges every entry is ``exchange:symbol``."""
    binance_ws_url: str
    binance_rest_url: str
    okx_ws_url: str
    okx_rest_url: str
    max_frame_bytes: int
    backfill_max: int
    backfill_max_age: float
    binance_connection_lifetime: float
    binance_watchdog: float

    def symbols_by_exchange(self) -> dict[Exchange, tuple[str, ...]]:
        """The symbols of each exchange; ``ValueError`` says how to write a symbol list that cannot work."""
        several = len(self.exchanges) > 1
        example = "--symbols binance:btcusdt,okx:BTC-USDT"
        chosen: dict[Exchange, list[str]] = {exchange: [] for exchange in self.exchanges}
        for entry in self.symbols:
            prefix, colon, symbol = entry.partition(":")
            if not colon:
                if several:
                    raise ValueError(
                        f"symbol {entry!r} names no exchange: with several exchanges write every "
                        f"symbol as exchange:symbol, e.g. {example}"
                    )
                chosen[self.exchanges[0]].append(entry)
                continue
            exchange = next((e for e in self.exchanges if e.value == prefix.lower()), None)
            if exchange is None or not symbol:
                raise ValueError(
                    f"symbol {entry!r} names an exchange that is not streamed ({prefix!r}) or no symbol: "
                    f"use one of {', '.join(e.value for e in self.exchanges)}, e.g. {example}"
                )
            chosen[exchange].append(symbol)
        for exchange, symbols in chosen.items():
            if not symbols:
                raise ValueError(f"no symbols for {exchange.value}: add some, e.g. {example}")
        return {exchange: tuple(symbols) for exchange, symbols in chosen.items()}


class DatabaseSettings(_Concern):
    url: str | None = Field(validation_alias="database_url")
    data_dir: Path
    migrate: bool
    batch_size: int = Field(validation_alias="persist_batch_size")
    batch_size_max: int = Field(validation_alias="persist_batch_size_max")
    flush_interval: float = Field(validation_alias="persist_flush_interval")
    buffer_limit: int = Field(validation_alias="persist_buffer_limit")


class BusSettings(_Concern):
    capacity: int = Field(validation_alias="bus_capacity")
    price_summary_interval: float


class StrategySettings(_Concern):
    name: StrategyName = Field(validation_alias="strategy_name")
    fast_window: int = Field(validation_alias="strategy_fast_window")
    slow_window: int = Field(validation_alias="strategy_slow_window")
    breakout_window: int = Field(validation_alias="strategy_breakout_window")
    quantity: Decimal = Field(validation_alias="strategy_quantity")
    order_type: OrderType = Field(validation_alias="strategy_order_type")
    limit_offset_bps: Decimal = Field(validation_alias="strategy_limit_offset_bps")


class RiskSettings(_Concern):
    max_order_notional: Decimal = Field(validation_alias="risk_max_order_notional")
    max_position: Decimal = Field(validation_alias="risk_max_position")
    price_band_pct: Decimal = Field(validation_alias="risk_price_band_pct")
    stale_after: float = Field(validation_alias="risk_stale_after")
    breaker_move_pct: Decimal = Field(validation_alias="risk_breaker_move_pct")
    breaker_window: float = Field(validation_alias="risk_breaker_window")
    breaker_cooldown: float = Field(validation_alias="risk_breaker_cooldown")
    volatility_window: int = Field(validation_alias="risk_volatility_window")


class MetricsSettings(_Concern):
    port: int | None = Field(validation_alias="metrics_port")
    host: str = Field(validation_alias="metrics_host")
    sample_every: int = Field(validation_alias="metrics_sample_every")
    stale_after: float = Field(validation_alias="metrics_stale_after")
    stale_after_symbols: tuple[str, ...] = Field(validation_alias="metrics_stale_after_symbols")

    def stale_overrides(self) -> dict[tuple[Exchange | None, str], float]:
        """Thresholds by ``(exchange, SYMBOL)``, or ``(None, SYMBOL)`` for the symbol on every
        exchange; ``ValueError`` says how to write an entry that cannot be read. An entry may name
        a symbol this node does not stream (ingest nodes split the symbols and may share a config)."""
        overrides: dict[tuple[Exchange | None, str], float] = {}
        for entry in self.stale_after_symbols:
            exchange, symbol, threshold = stale_override(entry)
            overrides[exchange, symbol] = threshold
        return overrides


def stale_override(entry: str) -> tuple[Exchange | None, str, float]:
    """``[exchange:]SYMBOL=SECONDS`` read: ``(exchange or None, SYMBOL, seconds)``; else ``ValueError``."""
    named, equals, seconds = entry.rpartition("=")
    prefix, colon, symbol = named.rpartition(":")
    exchange = next((e for e in Exchange if e.value == prefix.lower()), None) if colon else None
    try:
        threshold = float(seconds)
    except ValueError:
        threshold = 0.0
    if not equals or not symbol or (colon and exchange is None) or not 0 < threshold < float("inf"):
        raise ValueError(
            f"entry {entry!r} is not [exchange:]SYMBOL=SECONDS with positive seconds: write e.g. "
            "BTCUSDT=30,okx:BTC-USDT=600"
        )
    return exchange, symbol.upper(), threshold


class NatsSettings(_Concern):
    url: str | None = Field(validation_alias="nats_url")
    stream: str = Field(validation_alias="nats_stream")
    subject_prefix: str = Field(validation_alias="nats_subject_prefix")
    durable: str = Field(validation_alias="nats_durable")
    max_age: float = Field(validation_alias="nats_max_age")
    max_bytes: int = Field(validation_alias="nats_max_bytes")
    replicas: int = Field(validation_alias="nats_replicas")
    duplicate_window: float = Field(validation_alias="nats_duplicate_window")
    ack_wait: float = Field(validation_alias="nats_ack_wait")
    max_ack_pending: int = Field(validation_alias="nats_max_ack_pending")
    publish_window: int = Field(validation_alias="nats_publish_window")


class LoggingSettings(_Concern):
    format: LogFormat | None = Field(validation_alias="log_format")
    level: LogLevel = Field(validation_alias="log_level")


class RuntimeSettings(_Concern):
    busy_poll_us: int


CONCERNS: dict[str, type[_Concern]] = {
    "feeds": FeedSettings,
    "database": DatabaseSettings,
    "bus": BusSettings,
    "strategy": StrategySettings,
    "risk": RiskSettings,
    "metrics": MetricsSettings,
    "nats": NatsSettings,
    "logging": LoggingSettings,
    "runtime": RuntimeSettings,
}
"""Every concern's model, in the order ``python -m kairos_core config`` prints them."""
