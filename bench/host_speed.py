"""The machine's speed at the moment, printed at the head of each later part of ``make bench``.

The VM these figures come from runs markedly slower in some hours of its host: on 2026-11-26 the
same code's parse went from 1.39 to 2.16 µs a frame and the database's CPU per batch from 7.6 to
17.9 ms, with nothing else running on the VM. A tight integer loop does not show it (0.49-0.52 s
either way); work that allocates and parses does. So the reference is third-party work of the same
kind as ours, which no change of ours can move: orjson decoding the recorded frames. The first part
(bench/run.py) prints the same figure as "orjson.loads".
"""

from __future__ import annotations

import time

import orjson

from run import FIXTURE, load_frames

QUICK_HOUR_NS = 690  # orjson.loads per frame in the run of docs/performance.md, 2026-11-26 05:06 UTC
_PASSES = 50  # ~0.1 s in all


def host_speed() -> str:
    """One line: orjson.loads per recorded frame, best of a few passes, against a quick hour's."""
    frames = load_frames(FIXTURE)
    best = min(_pass_ns(frames) for _ in range(_PASSES)) / len(frames)
    return (
        f"host speed: orjson.loads {best / 1000:.2f} µs a recorded frame, best of {_PASSES} passes "
        f"({QUICK_HOUR_NS / 1000:.2f} in a quick hour; higher: everything below is slower alike)"
    )


def _pass_ns(frames: list[bytes]) -> int:
    loads = orjson.loads
    started = time.perf_counter_ns()
    for frame in frames:
        loads(frame)
    return time.perf_counter_ns() - started
