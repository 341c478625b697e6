"""Other Python libraries measured beside kairos in ``bench/e2e.py``, each in a venv of its own.

A library's venv holds only that library at a pinned version (so its dependencies cannot change
ours, nor ours its figures) and is made under ``.venv-bench/`` on first use, remade when its pin
changes. Its client is ``bench/clients/<module>.py`` (the contract is in ``clients/common.py``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venv-bench"


class LibraryUnavailable(Exception):
    """A library whose venv cannot be made here; the reason is the message."""


@dataclass(frozen=True, slots=True)
class Library:
    label: str
    module: str  # bench/clients/<module>.py
    requirement: str
    interpreter: str | None = None
    """The Python to make the venv with, if the library needs another than ours."""

    def python(self) -> Path:
        """The venv's interpreter, made (or remade for a new pin) if it is not there yet."""
        home = VENVS / self.module
        stamp = home / ".requirement"
        if not (stamp.exists() and stamp.read_text() == self.requirement):
            base = sys.executable if self.interpreter is None else _find(self.interpreter)
            print(f"  (installing {self.requirement} into {home.relative_to(ROOT)})", file=sys.stderr)
            _run([base, "-m", "venv", "--clear", str(home)])
            _run([str(home / "bin/python"), "-m", "pip", "install", "--quiet", self.requirement])
            stamp.write_text(self.requirement)
        return home / "bin/python"

    def command(self) -> list[str]:
        return [str(self.python()), "-m", f"clients.{self.module}"]


def _find(interpreter: str) -> str:
    """``interpreter`` (``python3.13``) on PATH, or in pyenv's versions, that really runs."""
    version = interpreter.removeprefix("python")
    candidates = [
        shutil.which(interpreter),
        *map(str, Path.home().glob(f".pyenv/versions/{version}*/bin/python3")),
    ]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", ""], capture_output=True, check=False).returncode == 0:
            return candidate
    raise LibraryUnavailable(f"needs {interpreter}: none runs here (PATH, ~/.pyenv/versions)")


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise LibraryUnavailable((errors or done.stderr.splitlines() or ["no output"])[-1])


LIBRARIES = (
    Library("unicorn-binance-websocket-api", "unicorn", "unicorn-binance-websocket-api==2.16.1"),
    Library("cryptofeed (Python 3.13)", "cryptofeed_binance", "cryptofeed==3.0.1", "python3.13"),
    Library("binance-sdk-spot (official SDK)", "binance_sdk", "binance-sdk-spot==13.3.0"),
    Library("python-binance", "python_binance", "python-binance==1.0.37"),
    Library("ccxt (pro)", "ccxt_pro", "ccxt==4.5.90"),
)
