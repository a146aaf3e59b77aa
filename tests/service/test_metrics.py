"""The Prometheus text format written by the service's tiny metrics registry."""

from __future__ import annotations

from service.metrics import Counter, Gauge, Histogram, Metrics


def test_counter_gauge_histogram_text_format() -> None:
    counter = Counter("x_total", "Things.")
    counter.inc(route="/a", status="200")
    counter.inc(2, route="/a", status="200")
    counter.inc(route='/q"uote', status="500")
    gauge = Gauge("depth", "Depth.")
    gauge.set_function(lambda: 3, model="flux")
    histogram = Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        histogram.observe(value, route="/a")
    lines = counter.header() + counter.samples() + gauge.samples() + histogram.samples()
    assert lines[:2] == ["# HELP x_total Things.", "# TYPE x_total counter"]
    assert 'x_total{route="/a",status="200"} 3' in lines
    assert 'x_total{route="/q\\"uote",status="500"} 1' in lines
    assert 'depth{model="flux"} 3' in lines
    assert [line for line in lines if line.startswith("latency_seconds")] == [
        'latency_seconds_bucket{route="/a",le="0.1"} 1',
        'latency_seconds_bucket{route="/a",le="1"} 2',
        'latency_seconds_bucket{route="/a",le="+Inf"} 3',
        'latency_seconds_sum{route="/a"} 5.55',
        'latency_seconds_count{route="/a"} 3',
    ]
    assert histogram.count(route="/a") == 3 and counter.value(route="/a", status="200") == 3


def test_every_service_metric_is_rendered_with_help_and_type() -> None:
    text = Metrics().render()
    for name in ("erasure_http_requests_total", "erasure_adapter_cache_hits_total", "erasure_queue_depth"):
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text
