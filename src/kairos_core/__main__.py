"""``python -m kairos_core`` / ``kairos``: parse, configure, run; map failures to exit codes.

Exit codes: 0 clean stop, 2 bad configuration (what to fix is printed), 3 the exchange refuses us,
4 the database is unreachable at start-up, 5 NATS is unreachable at start-up, 128 + the signal's
number when SIGINT/SIGTERM abandoned a start-up that did not finish (``bootstrap/stop_signals.py``).
"""

from __future__ import annotations

if __name__ == "__main__":  # the program, not a test importing main: SIGTERM is held from here on
    from kairos_core.bootstrap import early_stop

    early_stop.hold()

import asyncio
import inspect
import sys
from collections.abc import Awaitable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError

from kairos_core.bootstrap import early_stop
from kairos_core.bootstrap.cli import parse_arguments, setting_flags
from kairos_core.bootstrap.config_report import render_config
from kairos_core.bootstrap.container import Container, warn_about_settings_not_in_effect
from kairos_core.bootstrap.database import DatabaseUnavailable, migrate_only
from kairos_core.bootstrap.event_loop import new_event_loop
from kairos_core.bootstrap.logging import configure_logging
from kairos_core.bootstrap.observability import dashboard_log
from kairos_core.bootstrap.roles import NatsUnavailable, assign_role
from kairos_core.bootstrap.runtime import tune_garbage_collector
from kairos_core.bootstrap.stop_signals import StartupAbandoned, StopSignals
from kairos_core.domain import ConfigurationError, FeedRefused
from kairos_core.settings import Settings
from kairos_core.simulator.fine_timers import new_fine_timer_loop
from kairos_core.simulator.serve import simulate

_T = TypeVar("_T")

EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_DATABASE = 4
EXIT_NATS = 5
_NOT_THE_SERVICE = ("simulate", "migrate", "config")
"""Commands that do not run the service: a SIGTERM held before they start ends them at once."""

log = structlog.get_logger("kairos_core")


def main(argv: list[str] | None = None) -> int:
    overrides, run = parse_arguments(argv)
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        flags = setting_flags()
        return _fail(EXIT_CONFIG, "; ".join(_describe(error, flags) for error in e.errors()))
    except (FileNotFoundError, ValueError) as e:
        return _fail(EXIT_CONFIG, str(e))
    dashboard = bool(run.get("dashboard")) and run.get("command") is None
    log_file = dashboard_log(settings.data_dir) if dashboard else None
    log_stream = None if log_file is None else log_file.open("a", encoding="utf-8", buffering=1)
    configure_logging(settings.log_format, settings.log_level, stream=log_stream)
    if dashboard and log_file is None:
        log.warning("dashboard.off", reason="stdout is not a terminal: plain logs instead")
    command = run.get("command")
    if command in _NOT_THE_SERVICE:
        held = early_stop.release()
        if held is not None:
            return 128 + held
    try:
        if command == "simulate":
            with asyncio.Runner(loop_factory=new_fine_timer_loop) as runner:
                runner.run(simulate(settings, run))
        elif command == "migrate":
            asyncio.run(migrate_only(settings.database))
        elif command == "config":
            print(render_config(settings), end="")
        else:
            loop_factory = partial(new_event_loop, settings.runtime.busy_poll_us)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(_serve(settings, run, dashboard_log=log_file))
    except ConfigurationError as e:
        return _fail(EXIT_CONFIG, str(e))
    except FeedRefused as e:
        return _fail(EXIT_REFUSED, str(e))
    except DatabaseUnavailable as e:
        return _fail(EXIT_DATABASE, str(e))
    except NatsUnavailable as e:
        return _fail(EXIT_NATS, str(e))
    except StartupAbandoned as e:
        return 128 + e.signum
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(settings: Settings, run: dict[str, Any], *, dashboard_log: Path | None = None) -> None:
    """Run the service; with ``dashboard_log`` (where the logs go meanwhile), draw the dashboard."""
    warn_about_settings_not_in_effect(settings)
    container = Container(
        settings=settings,
        max_ticks=run.get("max_ticks"),
        duration=run.get("duration"),
        show_dashboard=dashboard_log is not None,
        dashboard_log=dashboard_log,
    )
    assign_role(container, run.get("command"))  # ingest, persist, or publishing too with --nats-url
    stop_signals = StopSignals()
    stop_signals.install(asyncio.get_running_loop())
    try:
        service = await _resolved(container.service())
        await _resolved(container.metrics())
        await _resolved(container.dashboard())
        stop_signals.route_to(service.request_stop)
        tune_garbage_collector()
        await service.run()
    except asyncio.CancelledError:
        if stop_signals.abandoned is None:
            raise
        startup = asyncio.current_task()
        assert startup is not None
        startup.uncancel()
        raise StartupAbandoned(stop_signals.abandoned) from None
    finally:
        await _resolved(container.shutdown_resources())


async def _resolved(value: _T | Awaitable[_T]) -> _T:
    """The container hands out awaitables for anything built on an async resource."""
    if inspect.isawaitable(value):
        return await value
    return value


def _describe(error: Any, flags: dict[str, str]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:  # a rule across settings: its message names them
        return message
    field = str(error["loc"][0])
    if error["type"] == "extra_forbidden":
        return (
            f"unknown setting {field!r} (from --config, .env or KAIROS_*): "
            "remove it or fix its spelling (see --help)"
        )
    names = " / ".join(filter(None, (flags.get(field), f"KAIROS_{field.upper()}")))
    return f"{field} ({names}): {message}"


def _fail(code: int, message: str) -> int:
    print(f"kairos: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
