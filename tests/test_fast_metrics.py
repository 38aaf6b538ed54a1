"""modelport.fast_metrics: the same exposition as prometheus_client's Counter and Histogram."""

from __future__ import annotations

import re
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from modelport.fast_metrics import FastCounter, FastHistogram


def _exposition(counter_cls, histogram_cls) -> tuple[str, str]:
    reg = CollectorRegistry()
    c = counter_cls("demo_requests_total", "Requests.", ["model", "status"], registry=reg)
    c.labels("m", "OK").inc()
    c.labels("m", "OK").inc(2)
    c.labels("m", "INTERNAL")  # a child that was never incremented still shows, at 0
    h = histogram_cls("demo_seconds", "Durations.", ["model"], buckets=(0.1, 1, 2.5), registry=reg)
    for v in (0.05, 0.1, 0.5, 1, 3, 100):  # on a bound counts in that bucket (le)
        h.labels("m").observe(v)

    def timeless(text: str) -> str:  # _created holds each child's creation time
        return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text)

    return timeless(generate_latest(reg).decode()), timeless(openmetrics(reg).decode())


def test_exposition_matches_prometheus_client():
    ours = _exposition(FastCounter, FastHistogram)
    assert ours == _exposition(Counter, Histogram)
    text = ours[0]
    assert 'demo_requests_total{model="m",status="OK"} 3.0' in text
    assert 'demo_requests_total{model="m",status="INTERNAL"} 0.0' in text
    assert 'demo_seconds_bucket{le="0.1",model="m"} 2.0' in text
    assert 'demo_seconds_bucket{le="1.0",model="m"} 4.0' in text
    assert 'demo_seconds_bucket{le="+Inf",model="m"} 6.0' in text
    assert 'demo_seconds_sum{model="m"} 104.65' in text


def test_registry_reads_samples_and_concurrent_writers_are_exact():
    reg = CollectorRegistry()
    c = FastCounter("hits_total", "Hits.", ["k"], registry=reg)
    h = FastHistogram("lat_seconds", "Latency.", ["k"], buckets=(1.0,), registry=reg)
    child, hist = c.labels("a"), h.labels("a")

    def work():
        for _ in range(20_000):
            child.inc()
            hist.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.get_sample_value("hits_total", {"k": "a"}) == 80_000
    assert reg.get_sample_value("lat_seconds_count", {"k": "a"}) == 80_000
    assert reg.get_sample_value("lat_seconds_bucket", {"k": "a", "le": "1.0"}) == 80_000
    assert reg.get_sample_value("lat_seconds_sum", {"k": "a"}) == 40_000


def test_refusals():
    reg = CollectorRegistry()
    c = FastCounter("x_total", "X.", ["a"], registry=reg)
    with pytest.raises(ValueError, match="non-negative"):
        c.labels("1").inc(-1)
    with pytest.raises(ValueError, match="expected 1 label values, got 2"):
        c.labels("1", "2")
    with pytest.raises(ValueError, match="increasing order"):
        FastHistogram("y_seconds", "Y.", [], buckets=(2, 1), registry=reg)
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # the registry refuses a second family
        FastCounter("x_total", "X again.", ["a"], registry=reg)
