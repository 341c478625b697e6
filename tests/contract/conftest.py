"""The contract suite's parameters: every case in ``cases.CASES``, over both WebSocket clients.

A test that takes ``case`` runs once per exchange adapter; one that takes ``case`` and
``recording`` once per recording of each; one that takes ``case`` and ``parallel`` once per
exchange that has two connections recorded at once. Every one of them runs over both clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from kairos_core.adapters.inbound.feed_handler.aiohttp_client import AiohttpConnector
from kairos_core.adapters.inbound.feed_handler.connection import WebSocketConnector
from kairos_core.adapters.inbound.feed_handler.websockets_client import WebsocketsConnector
from kairos_core.simulator.venue import SimulatedVenue
from tests.contract.cases import CASES, ExchangeCase
from tests.contract.harness import FeedRuns


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    if "recording" in names:
        metafunc.parametrize(
            ("case", "recording"),
            [
                pytest.param(case, path, id=f"{case.name}-{path.name}")
                for case in CASES
                for path in case.recordings
            ],
        )
    elif "parallel" in names:
        metafunc.parametrize(
            ("case", "parallel"),
            [
                pytest.param(case, case.parallel_recordings, id=case.name)
                for case in CASES
                if case.parallel_recordings is not None
            ],
        )
    elif "case" in names:
        metafunc.parametrize("case", [pytest.param(case, id=case.name) for case in CASES])


@pytest.fixture(params=["aiohttp", "websockets"])
def connector(request: pytest.FixtureRequest) -> WebSocketConnector:
    """Every contract test runs over both clients behind the seam, with their default limits."""
    return AiohttpConnector() if request.param == "aiohttp" else WebsocketsConnector()


@pytest.fixture
async def simulator(case: ExchangeCase) -> AsyncIterator[SimulatedVenue[Any]]:
    sim = case.simulator(case.symbols)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture(autouse=True)
async def _feed_runs() -> AsyncIterator[None]:
    """Every ``FeedRun`` records the tasks its feed makes; one a test left going is stopped."""
    with FeedRuns() as runs:
        try:
            yield
        finally:
            await runs.stop_all()
