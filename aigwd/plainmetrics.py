"""Counters and histograms of the request path, summed in plain numbers and read when Prometheus scrapes.

prometheus-client's own take a lock on every increment (a histogram's observe takes one for its sum and one
per bucket it passes), which made the metrics of a finished request about 40,000 instructions, several
per cent of the daemon's CPU per request. These are written and read on the event loop only, and render
the same series as prometheus-client's Counter and Histogram: `_total`, `_bucket`, `_count`, `_sum` and
`_created`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class PlainCounter:
    """A counter by label values: `add(series(values), amount)`; values may not go down."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self._series: dict[tuple[str, ...], list[float]] = {}  # label values -> [total, created]

    def series(self, values: tuple[str, ...]) -> list[float]:
        """The numbers of one label set, made at its first use (the callers keep their label sets bounded)."""
        found = self._series.get(values)
        if found is None:
            found = self._series[values] = [0.0, time.time()]
        return found

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, (total, created) in list(self._series.items()):
            family.add_metric(list(values), total, created=created)
        return family


class PlainHistogram:
    """A histogram by label values: `observe(series(values), value)`."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.bounds = list(buckets)  # ascending, the last one +Inf
        self._le = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]  # as rendered
        self._series: dict[tuple[str, ...], list[float]] = {}  # -> [count per bucket..., sum, created]

    def series(self, values: tuple[str, ...]) -> list[float]:
        found = self._series.get(values)
        if found is None:
            found = self._series[values] = [0.0] * len(self.bounds) + [0.0, time.time()]
        return found

    def observe(self, series: list[float], value: float) -> None:
        series[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        series[-2] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, numbers in list(self._series.items()):
            cumulative, buckets = 0.0, []
            for le, count in zip(self._le, numbers[:-2], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(values), buckets, numbers[-2])
            labels = dict(zip(self.labels, values, strict=True))
            family.samples.append(Sample(f"{self.name}_created", labels, numbers[-1]))
        return family


class PlainCollector(Collector):
    """Renders a set of plain counters and histograms, in the order given."""

    def __init__(self, *metrics: PlainCounter | PlainHistogram) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.family()
