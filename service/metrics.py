"""A tiny Prometheus text-format registry: labelled counters, gauges and histograms (no extra dependency).

Example:
    >>> metrics = Metrics()
    >>> metrics.requests.inc(method="GET", route="/healthz", status="200")
    >>> text = metrics.render()
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SWAP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

LabelKey = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(key: LabelKey, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = key + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            return [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A gauge whose values are read from callbacks at render time (queue depth, cache bytes)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._sources: dict[LabelKey, Callable[[], float]] = {}

    def set_function(self, read: Callable[[], float], **labels: str) -> None:
        with self._lock:
            self._sources[tuple(sorted(labels.items()))] = read

    def samples(self) -> list[str]:
        with self._lock:
            sources = sorted(self._sources.items())
        return [f"{self.name}{_labels(k)} {_number(read())}" for k, read in sources]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[LabelKey, list[float]] = {}  # bucket counts..., +Inf count, sum

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += 1
            series[-1] += value

    def count(self, **labels: str) -> int:
        series = self._series.get(tuple(sorted(labels.items())))
        return 0 if series is None else int(series[-2])

    def samples(self) -> list[str]:
        lines = []
        with self._lock:
            for key, series in sorted(self._series.items()):
                for bound, count in zip((*self.buckets, math.inf), series[:-1], strict=True):
                    lines.append(f"{self.name}_bucket{_labels(key, (('le', _number(bound)),))} {_number(count)}")
                lines.append(f"{self.name}_sum{_labels(key)} {_number(series[-1])}")
                lines.append(f"{self.name}_count{_labels(key)} {_number(series[-2])}")
        return lines


class Metrics:
    """The service's metrics, one instance per app."""

    def __init__(self) -> None:
        self.requests = Counter("erasure_http_requests_total", "HTTP requests by method, route and status.")
        self.latency = Histogram("erasure_http_request_duration_seconds", "HTTP request latency by route.")
        self.generations = Counter("erasure_generations_total", "Generation requests executed, by model.")
        self.generation_seconds = Histogram(
            "erasure_generation_seconds", "Time spent generating one request, by model."
        )
        self.swaps = Counter("erasure_adapter_swaps_total", "Changes of the active erasure set, by model.")
        self.swap_seconds = Histogram(
            "erasure_adapter_swap_seconds", "Time to make an erasure set active, by model.", SWAP_BUCKETS
        )
        self.cache_hits = Counter("erasure_adapter_cache_hits_total", "Erasures found resident in the adapter cache.")
        self.cache_misses = Counter("erasure_adapter_cache_misses_total", "Erasures loaded from the store.")
        self.cache_evictions = Counter("erasure_adapter_cache_evictions_total", "Erasures evicted from the cache.")
        self.cache_bytes = Gauge("erasure_adapter_cache_bytes", "Bytes of erasures resident in the adapter cache.")
        self.queue_depth = Gauge("erasure_queue_depth", "Generation requests waiting, by model.")
        self.erasures = Counter("erasure_erasures_created_total", "Erasures created, by method and outcome.")
        self.rejected = Counter("erasure_overloaded_total", "Generation requests refused because the queue was full.")
        self.dropped = Counter(
            "erasure_generations_dropped_total", "Queued generation requests dropped because their client went away."
        )
        self.quota_refused = Counter(
            "erasure_quota_exceeded_total", "Requests refused with 429 quota_exceeded, by the limit they hit."
        )

    def all(self) -> list[_Metric]:
        return [m for m in vars(self).values() if isinstance(m, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines += metric.header() + metric.samples()
        return "\n".join(lines) + "\n"
