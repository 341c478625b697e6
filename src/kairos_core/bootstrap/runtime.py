"""The interpreter set up for the hot path: CPython's garbage collector.

The feed allocates a few short-lived objects per trade (the frame, the tick, event-loop handles),
hardly any in reference cycles. At the default young-generation threshold (700 allocations) a
collection runs every ~100 trades and promotes whatever is in flight at that moment (ticks waiting
for the database: hundreds of thousands of them during a backlog) into the older generations,
whose collections then walk them again and again. Measured on the pipeline benchmark (simulator ->
feed -> bus -> persistence -> PostgreSQL, docs/performance.md) the collector took about 2 of the
client's 8.3-8.8 CPU µs per tick; with the settings below 6.9-7.0. Cycles are still collected,
only less often: the young generation may hold 10,000 objects, a few megabytes at most.
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 10_000
"""Allocations (less deallocations) between young collections; CPython's default is 700."""


def tune_garbage_collector() -> None:
    """Call once start-up is done: what it built (modules, the container, the settings) lives as
    long as the process, so it moves to the permanent generation, never walked again."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, older, oldest)
