"""The garbage collector as the service sets it up once started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from kairos_core.bootstrap.runtime import YOUNG_GENERATION_THRESHOLD, tune_garbage_collector


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector_restored")
def test_start_up_objects_are_frozen_and_young_collections_come_less_often() -> None:
    gc.unfreeze()
    _, older, oldest = gc.get_threshold()
    tune_garbage_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, older, oldest)
    assert gc.isenabled()  # tuned, never switched off: cycles are still collected
