"""The plain counters and histograms render what prometheus-client's Counter and Histogram render for the
same observations (series, buckets, counts, sums and _created samples), so scrapers see no difference."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from aigwd.metrics import BUCKETS
from aigwd.plainmetrics import PlainCollector, PlainCounter, PlainHistogram

OBSERVED = [0.0, 0.0002, 0.005, 0.3, 7.0, 120.0, 400.0]


def _masked(text: bytes) -> str:
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text.decode())


def test_counter_and_histogram_render_as_prometheus_client_does() -> None:
    theirs = CollectorRegistry()
    counter = Counter("aigw_x", "Things", ["backend", "outcome"], registry=theirs)
    histogram = Histogram("aigw_x_seconds", "Times", ["backend"], buckets=BUCKETS, registry=theirs)
    ours = CollectorRegistry()
    plain_counter = PlainCounter("aigw_x", "Things", ["backend", "outcome"])
    plain_histogram = PlainHistogram("aigw_x_seconds", "Times", ["backend"], BUCKETS)
    ours.register(PlainCollector(plain_counter, plain_histogram))
    for i, value in enumerate(OBSERVED):
        backend = "a" if i % 2 else "b"
        counter.labels(backend, "completed").inc(i)
        plain_counter.series((backend, "completed"))[0] += i
        histogram.labels(backend).observe(value)
        plain_histogram.observe(plain_histogram.series((backend,)), value)
    assert _masked(generate_latest(ours)) == _masked(generate_latest(theirs))
    assert "aigw_x_seconds_bucket{backend=\"b\",le=\"0.005\"} 2.0" in generate_latest(ours).decode()


def test_a_series_is_rendered_from_its_first_use() -> None:
    registry = CollectorRegistry()
    counter = PlainCounter("aigw_y", "Things", ["model"])
    registry.register(PlainCollector(counter))
    assert "aigw_y_total{" not in generate_latest(registry).decode()
    counter.series(("m",))
    assert 'aigw_y_total{model="m"} 0.0' in generate_latest(registry).decode()
