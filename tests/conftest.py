"""Shared test setup: hypothesis profiles and the paths to the recorded exchange data."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.database", "tests.nats_server"]


@pytest.fixture(autouse=True)
def fresh_structlog() -> Iterator[None]:
    """main() configures structlog (and the root logger) and caches loggers on first use: every
    test starts and ends from the defaults, so no test's logging decides where another's logs go."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level
