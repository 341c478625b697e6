"""``python -m kairos_core config``: every setting read back from the printed TOML, secrets masked."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from kairos_core.__main__ import main
from kairos_core.bootstrap.cli import setting_flags
from kairos_core.domain import OrderType
from kairos_core.settings import (
    CONCERNS,
    BusSettings,
    RiskSettings,
    Settings,
    StrategyName,
    StrategySettings,
)
from tests.unit.test_settings_cli import CONTRACT, settings_from

pytestmark = pytest.mark.usefixtures("bare_environment")

# The bus, strategy and risk names, as CONTRACT has the others: flag, variable, field, raw, value.
TRADING = [
    ("--bus-capacity", "KAIROS_BUS_CAPACITY", "bus_capacity", "5000", 5000),
    ("--price-summary-interval", "KAIROS_PRICE_SUMMARY_INTERVAL", "price_summary_interval", "30", 30.0),
    ("--strategy-name", "KAIROS_STRATEGY_NAME", "strategy_name", "breakout", StrategyName.BREAKOUT),
    ("--strategy-fast-window", "KAIROS_STRATEGY_FAST_WINDOW", "strategy_fast_window", "3", 3),
    ("--strategy-slow-window", "KAIROS_STRATEGY_SLOW_WINDOW", "strategy_slow_window", "7", 7),
    ("--strategy-breakout-window", "KAIROS_STRATEGY_BREAKOUT_WINDOW", "strategy_breakout_window", "20", 20),
    ("--strategy-quantity", "KAIROS_STRATEGY_QUANTITY", "strategy_quantity", "0.25", Decimal("0.25")),
    ("--strategy-order-type", "KAIROS_STRATEGY_ORDER_TYPE", "strategy_order_type", "limit", OrderType.LIMIT),
    (
        "--strategy-limit-offset-bps",
        "KAIROS_STRATEGY_LIMIT_OFFSET_BPS",
        "strategy_limit_offset_bps",
        "2.5",
        Decimal("2.5"),
    ),
    (
        "--risk-max-order-notional",
        "KAIROS_RISK_MAX_ORDER_NOTIONAL",
        "risk_max_order_notional",
        "2500.50",
        Decimal("2500.50"),
    ),
    ("--risk-max-position", "KAIROS_RISK_MAX_POSITION", "risk_max_position", "0.75", Decimal("0.75")),
    ("--risk-price-band-pct", "KAIROS_RISK_PRICE_BAND_PCT", "risk_price_band_pct", "1.5", Decimal("1.5")),
    ("--risk-stale-after", "KAIROS_RISK_STALE_AFTER", "risk_stale_after", "2.5", 2.5),
    ("--risk-breaker-move-pct", "KAIROS_RISK_BREAKER_MOVE_PCT", "risk_breaker_move_pct", "8", Decimal(8)),
    ("--risk-breaker-window", "KAIROS_RISK_BREAKER_WINDOW", "risk_breaker_window", "30", 30.0),
    ("--risk-breaker-cooldown", "KAIROS_RISK_BREAKER_COOLDOWN", "risk_breaker_cooldown", "90", 90.0),
    ("--risk-volatility-window", "KAIROS_RISK_VOLATILITY_WINDOW", "risk_volatility_window", "50", 50),
]

# The NATS names but the URL (in CONTRACT), generated from NatsSettings like the trading ones.
NATS = [
    ("--nats-stream", "KAIROS_NATS_STREAM", "nats_stream", "TICKS_B", "TICKS_B"),
    ("--nats-subject-prefix", "KAIROS_NATS_SUBJECT_PREFIX", "nats_subject_prefix", "b.ticks", "b.ticks"),
    ("--nats-durable", "KAIROS_NATS_DURABLE", "nats_durable", "persist-b", "persist-b"),
    ("--nats-max-age", "KAIROS_NATS_MAX_AGE", "nats_max_age", "3600", 3600.0),
    ("--nats-max-bytes", "KAIROS_NATS_MAX_BYTES", "nats_max_bytes", "1073741824", 1073741824),
    ("--nats-replicas", "KAIROS_NATS_REPLICAS", "nats_replicas", "3", 3),
    ("--nats-duplicate-window", "KAIROS_NATS_DUPLICATE_WINDOW", "nats_duplicate_window", "60", 60.0),
    ("--nats-ack-wait", "KAIROS_NATS_ACK_WAIT", "nats_ack_wait", "10", 10.0),
    ("--nats-max-ack-pending", "KAIROS_NATS_MAX_ACK_PENDING", "nats_max_ack_pending", "5000", 5000),
    ("--nats-publish-window", "KAIROS_NATS_PUBLISH_WINDOW", "nats_publish_window", "2000", 2000),
]
# Generated from RuntimeSettings alike.
RUNTIME = [("--busy-poll-us", "KAIROS_BUSY_POLL_US", "busy_poll_us", "2000", 2000)]

PASSWORD = "hunter2"
DATABASE_URL = f"postgresql://kairos:{PASSWORD}@db:5433/kairos"
SHOWN_DATABASE_URL = "postgresql://kairos:***@db:5433/kairos"

EVERY_NAME = CONTRACT + TRADING + NATS + RUNTIME
"""Every printed name but ``migrate`` (its flag, --no-migrate, takes no value)."""


def raw_values(database_url: str = DATABASE_URL) -> list[tuple[str, str, str]]:
    """``(flag, variable, raw text)`` for every name; by default the database URL has a password."""
    return [
        (flag, env, database_url if field == "database_url" else raw)
        for flag, env, field, raw, _ in EVERY_NAME
    ]


def every_flag(database_url: str = DATABASE_URL) -> list[str]:
    return [argument for flag, _, raw in raw_values(database_url) for argument in (flag, raw)] + [
        "--no-migrate"
    ]


def printed_config(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["config", *argv]) == 0
    return capsys.readouterr().out


def toml_form(value: Any) -> Any:
    """How TOML holds a setting's value: numbers and booleans as such, sequences as arrays, and
    everything else (Decimal included, so no digit is lost) as its text."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, tuple):
        return [toml_form(item) for item in value]
    assert isinstance(value, StrEnum | Decimal | Path | str), value
    return str(value)


def assert_every_name_reads_back(printed: str) -> None:
    values = tomllib.loads(printed)
    for _, _, field, _, expected in EVERY_NAME:
        shown = SHOWN_DATABASE_URL if field == "database_url" else toml_form(expected)
        assert values[field] == shown, field
    assert values["migrate"] is False
    assert PASSWORD not in printed


def test_the_tables_hold_every_printed_name_and_the_trading_flags_are_generated() -> None:
    printed = {name for model in CONCERNS.values() for name in model.flat_names()}
    tabled = {field for _, _, field, _, _ in EVERY_NAME}

    assert printed == tabled | {"migrate"}
    assert printed == set(Settings.model_fields) - {"config"}
    trading = [name for model in (BusSettings, StrategySettings, RiskSettings) for name in model.flat_names()]
    assert [field for _, _, field, _, _ in TRADING] == trading
    for flag, env, field, _, _ in TRADING + NATS + RUNTIME:
        assert setting_flags()[field] == flag
        assert env == f"KAIROS_{field.upper()}"


def test_every_name_set_by_flag_reads_back(capsys: pytest.CaptureFixture[str]) -> None:
    assert_every_name_reads_back(printed_config(every_flag(), capsys))


def test_every_name_set_by_environment_variable_reads_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for _, env, raw in raw_values():
        monkeypatch.setenv(env, raw)
    monkeypatch.setenv("KAIROS_MIGRATE", "false")

    assert_every_name_reads_back(printed_config([], capsys))


def test_defaults_print_with_the_unset_ones_as_comments_under_a_heading_per_concern(
    capsys: pytest.CaptureFixture[str],
) -> None:
    printed = printed_config([], capsys)

    values = tomllib.loads(printed)
    unset = {"database_url", "nats_url", "metrics_port", "log_format"}
    assert {name: getattr(Settings(), name) for name in unset} == dict.fromkeys(unset)
    for name in unset:
        assert f"# {name} is unset" in printed.splitlines()
        assert name not in values
    assert values == {
        name: toml_form(value) for name, value in Settings().model_dump(exclude={"config", *unset}).items()
    }
    headings = [line for line in printed.splitlines() if line.startswith("# ") and "unset" not in line]
    assert headings == [f"# {concern}" for concern in CONCERNS]


def test_the_printed_config_read_back_as_a_config_file_gives_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = every_flag(database_url="postgresql://kairos@db/kairos")  # no password: nothing masked
    argv += ["--data-dir", '/srv/données/🚀 "x" \\ \t\x7f']  # anything a path may hold survives TOML
    printed = printed_config(argv, capsys)
    config = tmp_path / "printed.toml"
    config.write_text(printed, encoding="utf-8")

    read_back = Settings(config=config)

    assert read_back.model_dump(exclude={"config"}) == settings_from(argv).model_dump(exclude={"config"})
    assert printed_config(["--config", str(config)], capsys) == printed


def test_a_masked_password_is_not_read_back_as_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "printed.toml"
    config.write_text(printed_config(["--database-url", DATABASE_URL], capsys), encoding="utf-8")

    assert Settings(config=config).database_url == SHOWN_DATABASE_URL


@pytest.mark.parametrize(
    ("database_url", "shown"),
    [
        ("postgresql://kairos@db/kairos?password=hunter2", "postgresql://kairos@db/kairos?password=***"),
        ("postgresql+asyncpg://:hunter2@db/kairos", "postgresql+asyncpg://:***@db/kairos"),
    ],
)
def test_a_database_password_anywhere_in_the_url_is_masked(
    database_url: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = printed_config(["--database-url", database_url], capsys)

    assert tomllib.loads(printed)["database_url"] == shown
    assert PASSWORD not in printed


@pytest.mark.parametrize(
    ("nats_url", "shown"),
    [
        ("nats://kairos:hunter2@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("nats://hunter2@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),  # a token
        ("nats://a:hunter2@n1:4222,nats://b:hunter2@n2:4222", "nats://***@n1:4222,nats://***@n2:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)
def test_nats_credentials_are_masked(nats_url: str, shown: str, capsys: pytest.CaptureFixture[str]) -> None:
    printed = printed_config(["--nats-url", nats_url], capsys)

    assert tomllib.loads(printed)["nats_url"] == shown
    assert PASSWORD not in printed
