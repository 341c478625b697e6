"""Building blocks of the Prometheus families: histograms from a ``HistogramSnapshot``."""

from __future__ import annotations

from prometheus_client.metrics_core import HistogramMetricFamily

from kairos_core.domain.status import HistogramSnapshot


def histogram_family(name: str, documentation: str, histogram: HistogramSnapshot) -> HistogramMetricFamily:
    """An unlabelled histogram."""
    return HistogramMetricFamily(name, documentation, buckets=buckets(histogram), sum_value=histogram.total)


def buckets(histogram: HistogramSnapshot) -> list[tuple[str, float]]:
    """Prometheus's cumulative ``le`` buckets, ``+Inf`` last."""
    cumulative, running = [], 0
    for bound, count in zip((*map(repr, histogram.bounds), "+Inf"), histogram.counts, strict=True):
        running += count
        cumulative.append((bound, float(running)))
    return cumulative
