"""The service's settings: one frozen pydantic-settings model, read once by the entry point.

Precedence, lowest to highest: defaults < TOML config file < ``.env`` < environment < flags.
Every field's environment name is ``KAIROS_`` + its upper-cased name.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kairos_core.domain import Exchange

DEFAULT_BINANCE_WS_URL = "wss://stream.binance.com:9443/stream"
DEFAULT_BINANCE_REST_URL = "https://api.binance.com"
DEFAULT_OKX_WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
DEFAULT_OKX_REST_URL = "https://www.okx.com"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


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
    database_url: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    nats_url: str | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
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
