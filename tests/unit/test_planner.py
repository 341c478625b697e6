"""The connection planner: shards, the connection budget, the send pace, rotation times."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kairos_core.adapters.inbound.feed_handler.planner import (
    BINANCE_LIMITS,
    OKX_LIMITS,
    ROTATE_FROM,
    ROTATE_UNTIL,
    ConnectionPlanner,
    SlidingWindow,
)


@given(streams=st.integers(min_value=1, max_value=5_000), limit=st.integers(min_value=1, max_value=1_024))
def test_shards_keep_every_stream_once_under_the_limit_evenly(streams: int, limit: int) -> None:
    names = tuple(f"s{index}" for index in range(streams))
    shards = ConnectionPlanner(replace(BINANCE_LIMITS, streams_per_connection=limit)).shards(names)

    assert tuple(name for shard in shards for name in shard) == names
    assert len(shards) == -(-streams // limit), "the fewest connections"
    sizes = {len(shard) for shard in shards}
    assert max(sizes) <= limit
    assert max(sizes) - min(sizes) <= 1, "evenly: 1025 streams are 513 and 512, not 1024 and 1"


def test_binance_streams_past_1024_take_a_second_connection() -> None:
    planner = ConnectionPlanner(BINANCE_LIMITS)
    assert [len(shard) for shard in planner.shards(tuple(map(str, range(1024))))] == [1024]
    assert [len(shard) for shard in planner.shards(tuple(map(str, range(1025))))] == [513, 512]


def test_rotations_fall_inside_the_lifetime_and_are_staggered_by_shard() -> None:
    planner = ConnectionPlanner(BINANCE_LIMITS, rng=random.Random(1))
    lifetime = 86_400.0
    earliest, latest = ROTATE_FROM * lifetime, ROTATE_UNTIL * lifetime
    times = [[planner.rotate_after(shard, 4) for _ in range(200)] for shard in range(4)]
    for per_shard in times:
        assert all(t is not None and earliest <= t <= latest for t in per_shard)
    means = [sum(t for t in per_shard if t is not None) / len(per_shard) for per_shard in times]
    assert means == sorted(means, reverse=True), "a later shard rotates earlier on average"
    assert means[0] - means[-1] > 0.01 * lifetime, "far enough apart not to bunch up"


def test_a_venue_without_a_lifetime_never_rotates_on_a_timer() -> None:
    assert ConnectionPlanner(OKX_LIMITS).rotate_after(0, 1) is None


def test_pongs_keep_their_share_of_the_send_pace() -> None:
    pace = ConnectionPlanner(BINANCE_LIMITS).send_pace()
    for _ in range(4):
        assert pace.wait_seconds() == 0
        pace._times.append(time.monotonic())
    assert pace.wait_seconds() > 0.9, "our own sends stop at 4 a second: the 5th is the pongs'"


async def test_a_sliding_window_admits_its_limit_then_waits_out_the_window() -> None:
    window = SlidingWindow(3, 0.3)
    waits: list[float] = []
    started = time.monotonic()
    await asyncio.gather(*(window.admit(waits.append) for _ in range(5)))
    took = time.monotonic() - started

    assert 0.3 <= took < 0.6, "the 4th and 5th waited for the 1st and 2nd to leave the window"
    assert waits, "the 4th was told it waits"
    assert waits[0] > 0.25


def test_a_window_must_admit_something() -> None:
    with pytest.raises(ValueError, match="at least one"):
        SlidingWindow(0, 1.0)
