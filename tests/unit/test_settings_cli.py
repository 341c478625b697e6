"""Settings and the command line: every flag and environment name, defaults, precedence, bad values."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest

from kairos_core.__main__ import main
from kairos_core.bootstrap.cli import build_parser, parse_arguments, setting_flags
from kairos_core.domain import Exchange
from kairos_core.settings import (
    DEFAULT_BINANCE_REST_URL,
    DEFAULT_BINANCE_WS_URL,
    DEFAULT_OKX_REST_URL,
    DEFAULT_OKX_WS_URL,
    LogFormat,
    LogLevel,
    Settings,
    default_data_dir,
)

# flag, environment variable, Settings field, raw text, the value the field must then hold
CONTRACT = [
    ("--symbols", "KAIROS_SYMBOLS", "symbols", "solusdt, adausdt", ("solusdt", "adausdt")),
    ("--exchange", "KAIROS_EXCHANGES", "exchanges", "okx", (Exchange.OKX,)),
    ("--binance-url", "KAIROS_BINANCE_WS_URL", "binance_ws_url", "ws://127.0.0.1:1/s", "ws://127.0.0.1:1/s"),
    (
        "--binance-rest-url",
        "KAIROS_BINANCE_REST_URL",
        "binance_rest_url",
        "http://127.0.0.1:2/",
        "http://127.0.0.1:2",
    ),
    ("--okx-url", "KAIROS_OKX_WS_URL", "okx_ws_url", "wss://okx.test/ws", "wss://okx.test/ws"),
    ("--okx-rest-url", "KAIROS_OKX_REST_URL", "okx_rest_url", "https://okx.test", "https://okx.test"),
    ("--max-frame-bytes", "KAIROS_MAX_FRAME_BYTES", "max_frame_bytes", "65536", 65536),
    ("--backfill-max", "KAIROS_BACKFILL_MAX", "backfill_max", "5000", 5000),
    ("--backfill-max-age", "KAIROS_BACKFILL_MAX_AGE", "backfill_max_age", "3600", 3600.0),
    (
        "--binance-connection-lifetime",
        "KAIROS_BINANCE_CONNECTION_LIFETIME",
        "binance_connection_lifetime",
        "600",
        600.0,
    ),
    ("--binance-watchdog", "KAIROS_BINANCE_WATCHDOG", "binance_watchdog", "15", 15.0),
    (
        "--database-url",
        "KAIROS_DATABASE_URL",
        "database_url",
        "postgresql://kairos@db/kairos",
        "postgresql://kairos@db/kairos",
    ),
    ("--data-dir", "KAIROS_DATA_DIR", "data_dir", "/srv/kairos", Path("/srv/kairos")),
    ("--persist-batch-size", "KAIROS_PERSIST_BATCH_SIZE", "persist_batch_size", "250", 250),
    ("--persist-batch-size-max", "KAIROS_PERSIST_BATCH_SIZE_MAX", "persist_batch_size_max", "2500", 2500),
    ("--persist-flush-interval", "KAIROS_PERSIST_FLUSH_INTERVAL", "persist_flush_interval", "0.5", 0.5),
    ("--persist-buffer-limit", "KAIROS_PERSIST_BUFFER_LIMIT", "persist_buffer_limit", "5000", 5000),
    ("--nats-url", "KAIROS_NATS_URL", "nats_url", "nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("--metrics-port", "KAIROS_METRICS_PORT", "metrics_port", "9100", 9100),
    ("--metrics-host", "KAIROS_METRICS_HOST", "metrics_host", "0.0.0.0", "0.0.0.0"),
    ("--metrics-sample-every", "KAIROS_METRICS_SAMPLE_EVERY", "metrics_sample_every", "16", 16),
    ("--metrics-stale-after", "KAIROS_METRICS_STALE_AFTER", "metrics_stale_after", "60", 60.0),
    (
        "--metrics-stale-after-symbols",
        "KAIROS_METRICS_STALE_AFTER_SYMBOLS",
        "metrics_stale_after_symbols",
        "BTCUSDT=30, okx:BTC-USDT=600",
        ("BTCUSDT=30", "okx:BTC-USDT=600"),
    ),
    ("--log-format", "KAIROS_LOG_FORMAT", "log_format", "console", LogFormat.CONSOLE),
    ("--log-level", "KAIROS_LOG_LEVEL", "log_level", "debug", LogLevel.DEBUG),
]
CONTRACT_IDS = [row[0] for row in CONTRACT]
EVERY_FLAG = [row[0] for row in CONTRACT] + ["--config", "--duration", "--max-ticks", "--no-migrate"]
EVERY_ENV = [row[1] for row in CONTRACT] + ["KAIROS_CONFIG", "KAIROS_MIGRATE"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real KAIROS_* variable or .env leaks in (structlog is reset by tests/conftest.py)."""
    for name in list(os.environ):
        if name.upper().startswith("KAIROS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "200")  # --help wraps at the terminal width
    monkeypatch.chdir(tmp_path)


def settings_from(argv: list[str]) -> Settings:
    """What main() builds from the command line (and the environment, .env and config file)."""
    overrides, _ = parse_arguments(argv)
    return Settings(**overrides)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults ---------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = settings_from([])

    assert settings.symbols == ("btcusdt", "ethusdt")
    assert settings.exchanges == (Exchange.BINANCE,)
    assert settings.binance_ws_url == DEFAULT_BINANCE_WS_URL == "wss://stream.binance.com:9443/stream"
    assert settings.binance_rest_url == DEFAULT_BINANCE_REST_URL == "https://api.binance.com"
    assert settings.okx_ws_url == DEFAULT_OKX_WS_URL
    assert settings.okx_rest_url == DEFAULT_OKX_REST_URL
    assert settings.database_url is None
    assert settings.data_dir == default_data_dir()
    assert settings.nats_url is None
    assert settings.metrics_port is None
    assert settings.metrics_host == "127.0.0.1"
    assert settings.log_format is None
    assert settings.log_level is LogLevel.INFO
    assert settings.config is None


def test_okx_defaults_are_the_public_endpoints() -> None:
    settings = Settings()

    assert settings.okx_ws_url == "wss://ws.okx.com:8443/ws/v5/public"
    assert settings.okx_rest_url == "https://www.okx.com"


def test_data_dir_defaults_to_var_lib_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    assert Settings().data_dir == Path("/var/lib/kairos")


def test_data_dir_defaults_to_the_xdg_data_home_of_a_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))

    assert Settings().data_dir == tmp_path / "xdg" / "kairos"


def test_data_dir_defaults_to_local_share_without_xdg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert Settings().data_dir == tmp_path / "home" / ".local" / "share" / "kairos"


# --- every name takes effect --------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "env", "field", "raw", "expected"), CONTRACT, ids=CONTRACT_IDS)
def test_flag_takes_effect(flag: str, env: str, field: str, raw: str, expected: Any) -> None:
    assert getattr(settings_from([flag, raw]), field) == expected


@pytest.mark.parametrize(("flag", "env", "field", "raw", "expected"), CONTRACT, ids=CONTRACT_IDS)
def test_environment_variable_takes_effect(
    monkeypatch: pytest.MonkeyPatch, flag: str, env: str, field: str, raw: str, expected: Any
) -> None:
    monkeypatch.setenv(env, raw)

    assert getattr(settings_from([]), field) == expected


@pytest.mark.parametrize(("flag", "env", "field", "raw", "expected"), CONTRACT, ids=CONTRACT_IDS)
def test_flag_and_environment_name_the_same_field(
    flag: str, env: str, field: str, raw: str, expected: Any
) -> None:
    assert setting_flags()[field] == flag
    assert env == f"KAIROS_{field.upper()}"


def test_every_setting_has_a_flag() -> None:
    assert set(setting_flags()) == set(Settings.model_fields)
    assert setting_flags()["config"] == "--config"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--symbols", "btcusdt,ethusdt"], {Exchange.BINANCE: ("btcusdt", "ethusdt")}),
        (["--symbols", "binance:btcusdt"], {Exchange.BINANCE: ("btcusdt",)}),
        (["--exchange", "okx", "--symbols", "BTC-USDT"], {Exchange.OKX: ("BTC-USDT",)}),
        (
            ["--exchange", "binance", "--exchange", "okx", "--symbols", "okx:BTC-USDT,binance:solusdt"],
            {Exchange.BINANCE: ("solusdt",), Exchange.OKX: ("BTC-USDT",)},
        ),
    ],
)
def test_symbols_are_split_by_exchange(argv: list[str], expected: dict[Exchange, tuple[str, ...]]) -> None:
    assert settings_from(argv).feeds.symbols_by_exchange() == expected


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--exchange", "binance", "--exchange", "okx", "--symbols", "btcusdt"], "names no exchange"),
        (
            ["--exchange", "binance", "--exchange", "okx", "--symbols", "binance:btcusdt"],
            "no symbols for okx",
        ),
        (["--symbols", "okx:BTC-USDT"], "not streamed"),
    ],
)
def test_a_symbol_list_that_cannot_work_exits_2_with_the_fix(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert fragment in line
    assert "binance:btcusdt,okx:BTC-USDT" in line


def test_exchange_flag_is_repeatable_and_keeps_order_without_duplicates() -> None:
    argv = ["--exchange", "okx", "--exchange", "binance", "--exchange", "okx"]
    argv += ["--symbols", "okx:BTC-USDT,binance:btcusdt"]

    assert settings_from(argv).exchanges == (Exchange.OKX, Exchange.BINANCE)


def test_exchanges_environment_variable_is_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_EXCHANGES", "binance, okx")
    monkeypatch.setenv("KAIROS_SYMBOLS", "binance:btcusdt,okx:ETH-USDT")

    assert settings_from([]).exchanges == (Exchange.BINANCE, Exchange.OKX)


def test_config_flag_reads_the_toml_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "kairos.toml",
        'symbols = ["solusdt", "adausdt"]\nexchanges = ["okx"]\nmetrics_port = 9100\nlog_level = "warning"\n',
    )

    settings = settings_from(["--config", str(config)])

    assert settings.config == config
    assert settings.symbols == ("solusdt", "adausdt")
    assert settings.exchanges == (Exchange.OKX,)
    assert settings.metrics_port == 9100
    assert settings.log_level is LogLevel.WARNING


def test_config_environment_variable_reads_the_toml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write(tmp_path / "kairos.toml", 'metrics_host = "10.0.0.1"\n')
    monkeypatch.setenv("KAIROS_CONFIG", str(config))

    settings = settings_from([])

    assert settings.config == config
    assert settings.metrics_host == "10.0.0.1"


def test_config_named_in_dotenv_reads_the_toml_file(tmp_path: Path) -> None:
    write(tmp_path / "kairos.toml", 'metrics_host = "10.0.0.1"\n')
    write(tmp_path / ".env", "KAIROS_CONFIG=kairos.toml\n")

    assert settings_from([]).metrics_host == "10.0.0.1"


def test_config_flag_wins_over_config_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from_flag = write(tmp_path / "flag.toml", 'metrics_host = "10.0.0.1"\n')
    from_env = write(tmp_path / "env.toml", 'metrics_host = "10.0.0.2"\n')
    monkeypatch.setenv("KAIROS_CONFIG", str(from_env))

    assert settings_from(["--config", str(from_flag)]).metrics_host == "10.0.0.1"


def test_toml_symbols_may_also_be_a_comma_string(tmp_path: Path) -> None:
    config = write(tmp_path / "kairos.toml", 'symbols = "solusdt,adausdt"\n')

    assert settings_from(["--config", str(config)]).symbols == ("solusdt", "adausdt")


def test_settings_are_frozen() -> None:
    settings = Settings()

    with pytest.raises(pydantic.ValidationError):
        settings.metrics_host = "0.0.0.0"


def test_rest_urls_lose_their_trailing_slash() -> None:
    settings = settings_from(["--binance-rest-url", "https://a.test/", "--okx-rest-url", "https://b.test//"])

    assert settings.binance_rest_url == "https://a.test"
    assert settings.okx_rest_url == "https://b.test"


# --- precedence: defaults < config file < .env < environment < flags ------------------------------

LEVELS = ("default", "config", "dotenv", "env", "flag")
HOST_AT = {
    "default": "127.0.0.1",
    "config": "10.0.0.1",
    "dotenv": "10.0.0.2",
    "env": "10.0.0.3",
    "flag": "10.0.0.4",
}


def metrics_host_with(levels: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """``metrics_host`` when it is set at each of ``levels`` (each to its own value)."""
    argv: list[str] = []
    if "config" in levels:
        config = write(tmp_path / "kairos.toml", f'metrics_host = "{HOST_AT["config"]}"\n')
        argv += ["--config", str(config)]
    if "dotenv" in levels:
        write(tmp_path / ".env", f"KAIROS_METRICS_HOST={HOST_AT['dotenv']}\n")
    if "env" in levels:
        monkeypatch.setenv("KAIROS_METRICS_HOST", HOST_AT["env"])
    if "flag" in levels:
        argv += ["--metrics-host", HOST_AT["flag"]]
    return settings_from(argv).metrics_host


@pytest.mark.parametrize("level", LEVELS)
def test_each_level_alone_takes_effect(level: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert metrics_host_with((level,), monkeypatch, tmp_path) == HOST_AT[level]


@pytest.mark.parametrize("top", LEVELS)
def test_highest_level_wins_with_every_lower_level_set(
    top: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    levels = LEVELS[: LEVELS.index(top) + 1]

    assert metrics_host_with(levels, monkeypatch, tmp_path) == HOST_AT[top]


@pytest.mark.parametrize(
    ("lower", "higher"),
    [(low, high) for i, low in enumerate(LEVELS) for high in LEVELS[i + 1 :]],
)
def test_higher_level_wins_over_any_lower_one(
    lower: str, higher: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert metrics_host_with((lower, higher), monkeypatch, tmp_path) == HOST_AT[higher]


# --- parse_arguments: settings apart from run options ---------------------------------------------


def test_run_options_are_returned_apart_from_settings() -> None:
    overrides, run = parse_arguments(["--symbols", "btcusdt", "--duration", "1.5", "--max-ticks", "7"])

    assert overrides == {"symbols": "btcusdt"}
    assert run == {"duration": 1.5, "max_ticks": 7, "command": None}


def test_no_arguments_override_nothing() -> None:
    overrides, run = parse_arguments([])

    assert overrides == {}
    assert "duration" not in run
    assert "max_ticks" not in run


def test_parse_arguments_reads_sys_argv_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["kairos", "--metrics-port", "9100", "--max-ticks", "3"])

    assert parse_arguments() == ({"metrics_port": 9100}, {"max_ticks": 3, "command": None})


def test_simulate_accepts_run_options_after_its_name() -> None:
    overrides, run = parse_arguments(["simulate", "--symbols", "x", "--port", "0"])

    assert overrides == {"symbols": "x"}
    assert run["command"] == "simulate"
    assert run["port"] == 0
    assert run["host"] == "127.0.0.1"


def test_simulate_keeps_run_options_given_before_its_name() -> None:
    overrides, run = parse_arguments(["--symbols", "a1", "--max-ticks", "2", "simulate", "--duration", "3"])

    assert overrides == {"symbols": "a1"}
    assert run["max_ticks"] == 2
    assert run["duration"] == 3.0


def test_simulate_defaults() -> None:
    _, run = parse_arguments(["simulate"])

    assert run == {
        "command": "simulate",
        "host": "127.0.0.1",
        "port": 9443,
        "rate": None,  # 10 frames/s for the random walk; as fast as the client reads with --bench
        "seed": None,
        "id_base": None,
        "replay": None,
        "bench": False,
        "count": 500_000,
        "send_log": None,
    }


# --- bad values: exit 2 and one line naming the flag and the fix ----------------------------------


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.match(r"kairos( simulate)?: error: ", lines[0]), lines[0]
    return lines[0]


def by_command_line(cases: list[tuple[list[str], list[str]]]) -> list[Any]:
    """``(argv, mentions)`` cases, each with its command line as the test id."""
    return [pytest.param(argv, mentions, id=" ".join(argv)) for argv, mentions in cases]


@pytest.mark.parametrize(
    ("argv", "mentions"),
    by_command_line(
        [
            (["--binance-url", "http://x"], ["--binance-url", "KAIROS_BINANCE_WS_URL", "ws://", "wss://"]),
            (["--okx-url", "https://x"], ["--okx-url", "KAIROS_OKX_WS_URL", "ws://", "wss://"]),
            (["--binance-rest-url", "ftp://x"], ["--binance-rest-url", "http://", "https://"]),
            (["--okx-rest-url", "ws://x"], ["--okx-rest-url", "http://", "https://"]),
            (
                ["--metrics-port", "0"],
                ["--metrics-port", "KAIROS_METRICS_PORT", "greater than or equal to 1"],
            ),
            (["--metrics-port", "65536"], ["--metrics-port", "less than or equal to 65535"]),
            (["--exchange", "kraken"], ["--exchange", "KAIROS_EXCHANGES", "'binance' or 'okx'"]),
            (["--symbols", ","], ["--symbols", "KAIROS_SYMBOLS", "at least 1"]),
            (["--exchange", "okx"], ["'btcusdt'", "BTC-USDT"]),
            (["--symbols", "btc-usdt"], ["'btc-usdt'", "btcusdt"]),
            (["--symbols", "btcusdt,x"], ["'x'", "btcusdt"]),
            (["--binance-url", "ws://"], ["--binance-url", "no host"]),
            (["--binance-url", "ws://[::1"], ["--binance-url", "not a valid URL"]),
            (["--binance-url", "ws://127.0.0.1:99999/stream"], ["--binance-url", "Port out of range"]),
            (["--binance-rest-url", "http://:80"], ["--binance-rest-url", "no host"]),
            (["simulate", "--replay", "/no/such/recording"], ["--replay", "not a readable file"]),
        ]
    ),
)
def test_bad_setting_exits_2_with_one_line(
    argv: list[str], mentions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2

    line = one_error_line(capsys)
    for text in mentions:
        assert text in line


@pytest.mark.parametrize(
    ("argv", "mentions"),
    by_command_line(
        [
            (["--max-ticks", "-1"], ["--max-ticks", "positive whole number"]),
            (["--max-ticks", "0"], ["--max-ticks", "positive whole number"]),
            (["--duration", "0"], ["--duration", "positive number of seconds"]),
            (["--metrics-port", "x"], ["--metrics-port", "invalid int"]),
            (["--log-format", "xml"], ["--log-format", "json", "console"]),
            (["--log-level", "loud"], ["--log-level", "info"]),
            (["--no-such-flag"], ["--no-such-flag", "--help"]),
            (["simulate", "--rate", "0"], ["--rate", "positive number"]),
            (["simulate", "--port", "-1"], ["--port", "0 to 65535"]),
            (["--max-ticks", "abc"], ["--max-ticks", "invalid whole number value"]),
        ]
    ),
)
def test_bad_argument_exits_2_with_one_line(
    argv: list[str], mentions: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 2
    line = one_error_line(capsys)
    for text in mentions:
        assert text in line


def test_bad_environment_value_names_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAIROS_METRICS_PORT", "abc")

    assert main([]) == 2

    line = one_error_line(capsys)
    assert "--metrics-port" in line
    assert "KAIROS_METRICS_PORT" in line
    assert "valid integer" in line


def test_unknown_key_in_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path / "kairos.toml", "bogus = 1\n")

    assert main(["--config", str(config)]) == 2

    line = one_error_line(capsys)
    assert "bogus" in line
    assert "unknown setting" in line


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2

    line = one_error_line(capsys)
    assert "missing.toml" in line
    assert "does not exist" in line


def test_missing_config_file_named_in_environment_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAIROS_CONFIG", "missing.toml")

    assert main([]) == 2
    assert "missing.toml" in one_error_line(capsys)


@pytest.mark.parametrize("config_text", ["bogus = 1\n", None], ids=["unknown-key", "missing-file"])
def test_config_file_error_names_the_config_flag(
    config_text: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kairos.toml"
    if config_text is not None:
        write(config, config_text)

    assert main(["--config", str(config)]) == 2

    line = one_error_line(capsys)
    assert "--config" in line
    assert "KAIROS_BOGUS" not in line


def test_foreign_keys_in_dotenv_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / ".env", "POSTGRES_PASSWORD=secret\nKAIROS_METRICS_HOST=10.0.0.2\n")

    assert Settings().metrics_host == "10.0.0.2"


# --- --help ---------------------------------------------------------------------------------------


def test_help_mentions_every_flag_and_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in EVERY_FLAG + EVERY_ENV:
        assert name in out, name
    assert "simulate" in out
    assert "Precedence" in out


def test_simulate_help_lists_the_run_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["simulate", "--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in [*EVERY_FLAG, "--port", "--host", "--rate", "--seed", "--replay"]:
        assert name in out, name


def test_settings_whose_feature_is_not_built_yet_are_reported() -> None:
    from structlog.testing import capture_logs

    from kairos_core.bootstrap.container import warn_about_settings_not_in_effect

    with capture_logs() as logs:
        warn_about_settings_not_in_effect(Settings(database_url="postgresql://x/y", metrics_port=9100))
    assert not [entry for entry in logs if entry.get("setting") == "metrics_port"], "metrics are built"


def test_no_migrate_and_its_environment_variable_turn_the_upgrade_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings_from([]).migrate is True
    assert settings_from(["--no-migrate"]).migrate is False
    monkeypatch.setenv("KAIROS_MIGRATE", "false")
    assert settings_from([]).migrate is False


def test_nats_ack_pending_must_hold_a_batch_only_where_nats_is_used() -> None:
    assert settings_from(["--persist-batch-size", "50000"]).persist_batch_size == 50_000
    refused = r"nats_max_ack_pending \(20000\) must be at least persist_batch_size"
    with pytest.raises(ValueError, match=refused):
        settings_from(["--persist-batch-size", "50000", "--nats-url", "nats://127.0.0.1:4222"])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--database-url", "mysql://root:hunter2@db/x"], "speaks PostgreSQL only"),
        (["--persist-batch-size", "500", "--persist-buffer-limit", "100"], "must be at least"),
    ],
)
def test_bad_persistence_settings_exit_2_with_the_fix_and_no_password(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from kairos_core.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert "hunter2" not in err
