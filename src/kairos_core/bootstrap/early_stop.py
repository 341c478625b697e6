"""SIGTERM from the first line of ``python -m kairos_core``, before the imports and the loop.

Importing the service takes 1-3 s here, and until the loop's handlers exist
(``stop_signals.py``) a SIGTERM had its default action: the process died as "killed by SIGTERM"
(exit -15), which a supervisor or a test harness that stops a just-restarted process reads as a
crash. ``hold`` records the signal instead; ``StopSignals.install`` takes it over as a stop
requested during start-up, and a command that is not the service (``simulate``, ``migrate``,
``config``) gets the default action back through ``release``, exiting at once if one came.

Only for the program: a test that imports ``kairos_core.__main__`` must not change how its own
process answers SIGTERM, so ``__main__`` calls ``hold`` only when run as ``__main__``. Standard
library only, so that it runs before anything heavy is imported.
"""

from __future__ import annotations

import signal
from types import FrameType

_held: list[signal.Signals] = []
_holding = False


def hold() -> None:
    """Record SIGTERM rather than die of it, until ``take`` or ``release``."""
    global _holding
    _holding = True
    signal.signal(signal.SIGTERM, _record)


def take() -> signal.Signals | None:
    """The SIGTERM held so far, if one came; call once the loop's own handler is installed."""
    return _held[0] if _held else None


def release() -> signal.Signals | None:
    """SIGTERM's default action back (if ``hold`` took it); the one held meanwhile, if any."""
    global _holding
    if _holding:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _holding = False
    return take()


def _record(signum: int, _: FrameType | None) -> None:
    if not _held:
        _held.append(signal.Signals(signum))
