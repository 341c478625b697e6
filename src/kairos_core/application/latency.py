"""Plain bucket arrays for latency histograms, filled off the hot path's fast branch (1 tick in N)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from kairos_core.domain.status import HistogramSnapshot

TRADE_TO_RECEIPT_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds; exchange trade time is in milliseconds, and the venue's clock is not ours."""
RECEIPT_TO_CONSUMER_BOUNDS = (
    *(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005),
    *(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
BATCH_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

DEFAULT_SAMPLE_EVERY = 64


def sample_mask(every: int) -> int:
    """The mask a running count is tested with: ``count & mask == 0`` once every ``every`` counts.

    ``every`` 0 turns sampling off: the mask is -1 and a positive count ANDed with it is never 0.
    """
    if every < 0 or every & (every - 1):
        raise ValueError(f"sampling interval must be a power of two (or 0 for off), got {every}")
    return every - 1 if every else -1


class LatencyHistogram:
    """Counts per bucket of ``bounds`` (seconds, ascending), observed in integer nanoseconds."""

    __slots__ = ("_bounds_ns", "bounds", "counts", "total_ns")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._bounds_ns = [round(bound * 1e9) for bound in self.bounds]
        self.counts = [0] * (len(self.bounds) + 1)
        self.total_ns = 0

    def observe_ns(self, nanoseconds: int) -> None:
        """One observation; a negative one (another host's clock ahead of ours) counts as 0."""
        if nanoseconds < 0:
            nanoseconds = 0
        self.counts[bisect_left(self._bounds_ns, nanoseconds)] += 1
        self.total_ns += nanoseconds

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(bounds=self.bounds, counts=tuple(self.counts), total=self.total_ns / 1e9)
