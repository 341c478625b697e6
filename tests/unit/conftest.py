"""Unit-test fixtures shared by more than one module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KAIROS_* variable of the machine and no ``.env`` of the working directory leak in."""
    for name in list(os.environ):
        if name.upper().startswith("KAIROS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
