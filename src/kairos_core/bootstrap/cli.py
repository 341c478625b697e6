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
    NatsSettings,
    RiskSettings,
    RuntimeSettings,
    Settings,
    StrategySettings,
    _Concern,
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
    "dashboard",
    *(
        "trades",
        "expected_file",
        "drop_every",
        "drop_random",
        "withhold_every",
        "garbage_every",
        "oversize_every",
        "duplicate_every",
        "rest_429_every",
        "shutdown_every",
        "notice_every",
        "shutdown_grace",
        "lifetime",
        "silent_after",
        "silent_every",
        "connection_budget",
        "budget_window",
    ),  # the simulator's planned run and faults (_add_fault_options)
)


ROLES = (
    (
        "ingest",
        "stream the exchanges into NATS JetStream (--nats-url), no database",
        "An ingest node: feeds -> gap repair -> bus -> NATS. Several split the symbols between them "
        "(--symbols per node); on start each reads the last tick of its symbols from the stream and "
        "repairs what it missed from the exchange's REST history.",
    ),
    (
        "persist",
        "store the ticks of NATS JetStream (--nats-url) into PostgreSQL",
        "A persist node: the shared durable consumer (--nats-durable) -> PostgreSQL, each batch "
        "acknowledged after its commit. Several share the work and take over a dead one's batches.",
    ),
    (
        "watch",
        "read the ticks of NATS (--nats-url) into the price monitor, strategy and risk; no database",
        "A remote reader on any machine: the subjects of --symbols (<prefix>.<exchange>.<SYMBOL>) as "
        "feeds into the bus, the price monitor, the strategy and risk with paper fills. Live and at "
        "most once, like an exchange's stream; ingest nodes publish, persist nodes store.",
    ),
)
"""The scale-out roles: ``(command, help, description)``; docs/scaling.md tells the whole story."""


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
        "--max-frame-bytes",
        type=_positive_int,
        metavar="BYTES",
        help="largest WebSocket message a feed reads, 65536 to 1073741824; a larger one closes the "
        "connection unread (code 1009) and is counted as an oversize reject "
        "[KAIROS_MAX_FRAME_BYTES; default 1048576]",
    )
    add(
        "--backfill-max",
        type=_non_negative_int,
        metavar="N",
        help="largest gap of trade ids repaired from the venue's history; past it the gap is "
        "logged as unrecoverable [KAIROS_BACKFILL_MAX; default 1000000]",
    )
    add(
        "--backfill-max-age",
        type=_positive("seconds"),
        metavar="SECONDS",
        help="on start, a symbol whose last stored trade is older than this is not backfilled; the "
        "hole is logged as unrecoverable [KAIROS_BACKFILL_MAX_AGE; default 86400]",
    )
    add(
        "--binance-connection-lifetime",
        type=_positive("seconds"),
        metavar="SECONDS",
        help="how long Binance keeps a connection; each is replaced make-before-break at 90-97.5 %% "
        "of it, staggered [KAIROS_BINANCE_CONNECTION_LIFETIME; default 86400]",
    )
    add(
        "--binance-watchdog",
        type=_positive("seconds"),
        metavar="SECONDS",
        help="a Binance connection that delivers nothing this long is pinged: replaced at once if it "
        "does not answer, make-before-break if it does [KAIROS_BINANCE_WATCHDOG; default 60]",
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
        help="ticks waiting that make a database write [KAIROS_PERSIST_BATCH_SIZE; default 1000]",
    )
    add(
        "--persist-batch-size-max",
        type=_positive_int,
        metavar="N",
        help="ticks one write may take when more wait: a backlog drains in fewer, cheaper transactions "
        "[KAIROS_PERSIST_BATCH_SIZE_MAX; default 5000; never below --persist-batch-size]",
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
    add(
        "--nats-url",
        metavar="URL",
        help="NATS server(s), a comma list: with it the service also publishes every tick there; "
        "ingest, persist and watch need it [KAIROS_NATS_URL; default none]",
    )
    add(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port [KAIROS_METRICS_PORT; default off]",
    )
    add("--metrics-host", metavar="HOST", help="[KAIROS_METRICS_HOST; default 127.0.0.1]")
    add(
        "--metrics-sample-every",
        metavar="N",
        help="latency histograms time 1 tick in N, a power of two; 0 is off "
        "[KAIROS_METRICS_SAMPLE_EVERY; default 64]",
    )
    add(
        "--metrics-stale-after",
        metavar="SECONDS",
        help="a symbol without a tick this long is reported stale (not unready) "
        "[KAIROS_METRICS_STALE_AFTER; default 300]",
    )
    add(
        "--metrics-stale-after-symbols",
        metavar="LIST",
        help="symbols' own stale thresholds, a comma list of [exchange:]SYMBOL=SECONDS, e.g. "
        "BTCUSDT=30,ETHUSDT=600 [KAIROS_METRICS_STALE_AFTER_SYMBOLS; default none]",
    )
    add(
        "--dashboard",
        action="store_true",
        help="a live status table on the terminal; logs go to DATA_DIR/kairos.log meanwhile "
        "(plain logs when stdout is not a terminal)",
    )
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
    _add_setting_options(options, "bus, strategy and risk", (BusSettings, StrategySettings, RiskSettings))
    _add_setting_options(options, "NATS JetStream (ingest and persist)", (NatsSettings,), skip={"nats_url"})
    _add_setting_options(options, "runtime", (RuntimeSettings,))
    return options


def _add_setting_options(
    options: OneLineParser, title: str, concerns: tuple[type[_Concern], ...], skip: set[str] | None = None
) -> None:
    """One flag per setting of ``concerns``, named after it; pydantic validates the value."""
    group = options.add_argument_group(f"{title} (values are checked as settings)")
    defaults = Settings.model_fields
    for concern in concerns:
        for name in concern.flat_names():
            if skip and name in skip:
                continue
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
    for role, summary, description in ROLES:
        commands.add_parser(
            role,
            parents=[run_options],
            help=summary,
            description=description,
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
    _add_fault_options(simulate)
    return parser


def _add_fault_options(simulate: argparse.ArgumentParser) -> None:
    """The Binance simulator's planned run and the faults it sends on purpose (for tests); absent
    from the run options unless given."""
    group = simulate.add_argument_group("planned run and faults (Binance random walk only)")
    add = group.add_argument
    add(
        "--trades",
        type=_positive_int,
        metavar="N",
        help="make exactly N trades from the first client's connection on, then stop producing",
    )
    add(
        "--expected-file",
        type=Path,
        metavar="FILE",
        help="with --trades: write every planned trade (binance,SYMBOL,id lines) here before listening",
    )
    add(
        "--drop-every",
        type=_positive("seconds"),
        metavar="SECONDS",
        help=(
            "cut every client connection this long after the first to come since the last cut;"
            " trades made meanwhile go out on no socket"
        ),
    )
    add(
        "--drop-random",
        action="store_true",
        help="with --drop-every: at random intervals of that mean instead",
    )
    for name, what in (
        ("withhold", "keep every K-th trade of each symbol off the sockets (REST still has it)"),
        ("garbage", "send a broken frame after every K-th trade (kinds take turns)"),
        ("oversize", "send a 1.5 MiB frame after every K-th trade (past a client's 1 MiB limit)"),
        ("duplicate", "send every K-th trade twice"),
        ("rest-429", "answer every K-th REST request 429 with Retry-After: 1"),
    ):
        add(f"--{name}-every", type=_positive_int, metavar="K", help=what)
    connections = simulate.add_argument_group(
        "connection faults and limits (each connection on its own clock; Binance unless marked)"
    )
    add = connections.add_argument
    for flag, what in (
        ("--shutdown-every", "send serverShutdown every SECONDS of a connection's life, then close it"),
        ("--notice-every", "OKX: send notice 64008 every SECONDS of a connection's life, then close it"),
        ("--shutdown-grace", "Binance and OKX: close a connection this long after its notice (default 1)"),
        ("--lifetime", "Binance and OKX: close every connection this long after it opened, unannounced"),
        ("--silent-after", "stop sending on a connection this long after it opened; pings still answered"),
        ("--budget-window", "with --connection-budget: the sliding window (default 300)"),
    ):
        add(flag, type=_positive("seconds"), metavar="SECONDS", help=what)
    add(
        "--silent-every",
        type=_positive_int,
        metavar="N",
        help="with --silent-after: only every N-th connection goes silent (default 1: every one)",
    )
    add(
        "--connection-budget",
        type=_positive_int,
        metavar="N",
        help="answer a handshake 429 once N connections were accepted within --budget-window",
    )


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
