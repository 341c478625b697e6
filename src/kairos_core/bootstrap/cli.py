"""The command line: flags mirror the settings (see ``Settings``) and win over every other source."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from kairos_core.settings import (
    DEFAULT_BINANCE_REST_URL,
    DEFAULT_BINANCE_WS_URL,
    DEFAULT_OKX_REST_URL,
    DEFAULT_OKX_WS_URL,
    BusSettings,
    LogFormat,
    LogLevel,
    RiskSettings,
    Settings,
    StrategySettings,
)

# Run options that are not settings: they shape one run, not the service's configuration.
RUN_ONLY = (
    "duration",
    "max_ticks",
    "command",
    "port",
    "host",
    "rate",
    "seed",
    "id_base",
    "replay",
    "bench",
    "count",
    "send_log",
)


class OneLineParser(argparse.ArgumentParser):
    """A bad argument is one line on stderr and exit 2, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


_positive_int.__name__ = "whole number"  # argparse names the type in "invalid whole number value"


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text}")
    return value


_non_negative_int.__name__ = "whole number"


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {text}")
    return value


_port.__name__ = "port"


def _positive(unit: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive number of {unit}, got {text}")
        return value

    parse.__name__ = "number"  # argparse names the type in "invalid number value: 'x'"
    return parse


def _run_options() -> OneLineParser:
    options = OneLineParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = options.add_argument_group("run options (also after a subcommand)")
    add = group.add_argument
    add("--symbols", metavar="LIST", help="comma list of symbols [KAIROS_SYMBOLS; default btcusdt,ethusdt]")
    add(
        "--exchange",
        dest="exchanges",
        action="append",
        metavar="NAME",
        help="exchange to stream, repeatable: binance, okx [KAIROS_EXCHANGES, a comma list; default binance]",
    )
    add(
        "--binance-url",
        dest="binance_ws_url",
        metavar="URL",
        help=f"[KAIROS_BINANCE_WS_URL; {DEFAULT_BINANCE_WS_URL}]",
    )
    add("--binance-rest-url", metavar="URL", help=f"[KAIROS_BINANCE_REST_URL; {DEFAULT_BINANCE_REST_URL}]")
    add("--okx-url", dest="okx_ws_url", metavar="URL", help=f"[KAIROS_OKX_WS_URL; {DEFAULT_OKX_WS_URL}]")
    add("--okx-rest-url", metavar="URL", help=f"[KAIROS_OKX_REST_URL; {DEFAULT_OKX_REST_URL}]")
    add(
        "--backfill-max",
        type=_non_negative_int,
        metavar="N",
        help="largest gap of trade ids repaired from the venue's history; past it the gap is "
        "logged as unrecoverable [KAIROS_BACKFILL_MAX; default 1000000]",
    )
    add(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL [KAIROS_DATABASE_URL; default: embedded PostgreSQL]",
    )
    add(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="[KAIROS_DATA_DIR; per-user data dir, /var/lib/kairos as root]",
    )
    add(
        "--no-migrate",
        dest="migrate",
        action="store_false",
        help="do not upgrade the database schema on start [KAIROS_MIGRATE=false]",
    )
    add(
        "--persist-batch-size",
        type=_positive_int,
        metavar="N",
        help="ticks per database write [KAIROS_PERSIST_BATCH_SIZE; default 1000]",
    )
    add(
        "--persist-flush-interval",
        type=_positive("seconds"),
        metavar="SECONDS",
        help="longest wait before a part batch is written [KAIROS_PERSIST_FLUSH_INTERVAL; default 0.1]",
    )
    add(
        "--persist-buffer-limit",
        type=_positive_int,
        metavar="N",
        help="ticks held while the database is down before the feeds pause "
        "[KAIROS_PERSIST_BUFFER_LIMIT; default 1000000]",
    )
    add("--nats-url", metavar="URL", help="[KAIROS_NATS_URL; default none]")
    add("--metrics-port", type=int, metavar="PORT", help="[KAIROS_METRICS_PORT; default off]")
    add("--metrics-host", metavar="HOST", help="[KAIROS_METRICS_HOST; default 127.0.0.1]")
    add(
        "--log-format",
        choices=[f.value for f in LogFormat],
        help="[KAIROS_LOG_FORMAT; console on a terminal, else json]",
    )
    add("--log-level", choices=[level.value for level in LogLevel], help="[KAIROS_LOG_LEVEL; default info]")
    add("--config", type=Path, metavar="FILE", help="TOML file of settings [KAIROS_CONFIG; default none]")
    add(
        "--duration",
        type=_positive("seconds"),
        metavar="SECONDS",
        help="stop cleanly after this many seconds",
    )
    add("--max-ticks", type=_positive_int, metavar="N", help="stop cleanly after exactly N ticks received")
    _add_trading_options(options)
    return options


def _add_trading_options(options: OneLineParser) -> None:
    """One flag per bus, strategy and risk setting, named after it; pydantic validates the value."""
    group = options.add_argument_group("bus, strategy and risk (values are checked as settings)")
    defaults = Settings.model_fields
    for concern in (BusSettings, StrategySettings, RiskSettings):
        for name in concern.flat_names():
            field = defaults[name]
            shown = field.default.value if isinstance(field.default, StrEnum) else field.default
            choices = (
                f" ({', '.join(kind.value for kind in type(field.default))})"
                if isinstance(field.default, StrEnum)
                else ""
            )
            group.add_argument(
                f"--{name.replace('_', '-')}",
                metavar="VALUE",
                help=f"{field.description}{choices} [KAIROS_{name.upper()}; default {shown}]".replace(
                    "%", "%%"
                ),
            )


def build_parser() -> argparse.ArgumentParser:
    run_options = _run_options()
    parser = OneLineParser(
        prog="kairos",
        description="Real-time crypto market data: exchange trades -> broadcast bus -> consumers.",
        epilog="Precedence, lowest to highest: defaults < --config file < .env < environment < flags.",
        parents=[run_options],
        argument_default=argparse.SUPPRESS,
    )
    commands = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        parser_class=OneLineParser,
        title="commands (optional; without one, the service runs)",
    )
    commands.add_parser(
        "migrate",
        parents=[run_options],
        help="upgrade the database schema to the newest revision, then exit",
        description=(
            "Upgrades --database-url (or the embedded database in --data-dir) to the newest schema "
            "revision; safe to run while other processes do the same."
        ),
        argument_default=argparse.SUPPRESS,
    )
    commands.add_parser(
        "config",
        parents=[run_options],
        help="print the effective settings (a valid --config file, secrets masked), then exit",
        description="Every setting after all sources apply, grouped by concern; unset ones as comments.",
        argument_default=argparse.SUPPRESS,
    )
    simulate = commands.add_parser(
        "simulate",
        parents=[run_options],
        help="serve a local simulated exchange on 127.0.0.1 (for demos and tests)",
        description=(
            "A local exchange (--exchange binance, the default, or okx): Binance's combined and raw "
            "streams, live subscriptions, exchangeInfo and aggTrades, or OKX's v5 public trades; a "
            "seeded random walk, or (Binance) --replay of a recording, or --bench for benchmarks. Of "
            "the run options it reads --exchange, --symbols, --log-format, --log-level, --duration."
        ),
        argument_default=argparse.SUPPRESS,
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    simulate.add_argument(
        "--port", type=_port, default=9443, help="port to listen on (default 9443; 0 picks one)"
    )
    simulate.add_argument(
        "--rate",
        type=_positive("frames per second"),
        default=None,
        help="frames per second (default 10; with --bench: as fast as the client reads)",
    )
    simulate.add_argument("--seed", type=int, default=None, help="random-walk seed (default: random)")
    simulate.add_argument(
        "--id-base", type=int, default=None, help="first aggregate id (default: wall clock, µs)"
    )
    simulate.add_argument(
        "--replay", type=Path, default=None, help="replay a recording instead of a random walk"
    )
    simulate.add_argument(
        "--bench",
        action="store_true",
        default=False,
        help="benchmark mode: pre-encoded frames, one run per client",
    )
    simulate.add_argument(
        "--count",
        type=_positive_int,
        default=500_000,
        help="with --bench: frames per client (default 500000)",
    )
    simulate.add_argument(
        "--send-log",
        type=Path,
        default=None,
        help="with --bench --rate: write symbol,trade_id,send_ns per frame",
    )
    return parser


def setting_flags() -> dict[str, str]:
    """The flag that sets each setting, for error messages: ``{"binance_ws_url": "--binance-url"}``."""
    return {
        action.dest: action.option_strings[0]
        for action in _run_options()._actions
        if action.option_strings and action.dest not in RUN_ONLY
    }


def parse_arguments(argv: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(setting overrides, run options)`` from the command line; exits 2 on a bad argument."""
    given = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    run = {key: given.pop(key) for key in RUN_ONLY if key in given}
    return given, run
