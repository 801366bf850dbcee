"""REST request metrics kept as plain numbers and turned into Prometheus families at scrape time.

Litestar's Prometheus middleware built a request object, three label dicts and four labelled
prometheus_client lookups per request: about a third of a targeted send's CPU
(docs/benchmarks.md, REST delivery). Here a request costs two clock reads and one dict update;
the series keep the names and labels that middleware used (``gateway_http_requests_total``,
``gateway_http_request_duration_seconds``, ``gateway_http_requests_error_total``,
``gateway_http_requests_in_progress``, labelled ``method``, ``path`` (the route template),
``status_code``, ``app_name``).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

#: prometheus_client's default request-duration buckets (seconds), as before.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
APP_NAME = "gateway"
PREFIX = "gateway_http"


class _Series:
    __slots__ = ("count", "total", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        #: Per-bucket counts, the last for durations over every bound (+Inf).
        self.buckets = [0] * (len(BUCKETS) + 1)


class HttpMetrics(Collector):
    """Counts and durations by (method, path template, status)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._in_progress: dict[tuple[str, str], int] = {}

    def started(self, method: str, path: str) -> None:
        key = (method, path)
        self._in_progress[key] = self._in_progress.get(key, 0) + 1

    def finished(self, method: str, path: str, status: int, seconds: float) -> None:
        self._in_progress[(method, path)] -= 1
        series = self._series.get((method, path, status))
        if series is None:
            series = self._series[(method, path, status)] = _Series()
        series.count += 1
        series.total += seconds
        series.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1

    def collect(self) -> Iterator[Any]:
        labels = ["method", "path", "status_code", "app_name"]
        count = CounterMetricFamily(f"{PREFIX}_requests", "Total requests.", labels=labels)
        errors = CounterMetricFamily(
            f"{PREFIX}_requests_error", "Total errors (status 500 and above).", labels=labels
        )
        duration = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds", "Request duration, in seconds.", labels=labels
        )
        for (method, path, status), series in sorted(self._series.items()):
            values = [method, path, str(status), APP_NAME]
            count.add_metric(values, series.count)
            if status >= 500:
                errors.add_metric(values, series.count)
            cumulative, running = [], 0
            for bound, n in zip((*BUCKETS, float("inf")), series.buckets, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
            duration.add_metric(values, cumulative, series.total)
        progress = GaugeMetricFamily(
            f"{PREFIX}_requests_in_progress",
            "Requests being served.",
            labels=["method", "path", "app_name"],
        )
        for (method, path), n in sorted(self._in_progress.items()):
            progress.add_metric([method, path, APP_NAME], n)
        yield from (count, errors, duration, progress)


class HttpMetricsMiddleware:
    """The ASGI middleware feeding ``HttpMetrics`` for every HTTP request Litestar routes."""

    def __init__(self, app: Any, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope.get("path_template", scope["path"])
        status = 500  # an exception before the response started
        start = time.perf_counter()

        async def observed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.started(method, path)
        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.finished(method, path, status, time.perf_counter() - start)
