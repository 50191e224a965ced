"""Prometheus metrics; shared across worker processes when there are several.

With several workers, the supervisor (``homing.server.runner``, the daemon's
edge) makes a directory, names it in ``ServerConfig.metrics_dir`` and in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's own interface, read by
its value classes in each worker); ``/metrics`` aggregates every worker's
files from the directory it is given here.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "METRICS", "Metrics"]


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "homing_http_requests",
            "HTTP requests answered",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "homing_http_request_seconds",
            "Time to answer a request",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.checkins = Counter("homing_checkins", "Check-ins recorded", registry=self.registry)
        self.checkin_batches = Counter(
            "homing_checkin_batches",
            "Check-in batches written, on the event loop (inline) or on a thread",
            ["path"],
            registry=self.registry,
        )
        self.enrollments = Counter(
            "homing_enrollments", "Certificates issued over EST", registry=self.registry
        )
        self.enrollment_batches = Counter(
            "homing_enrollment_batches",
            "EST enrollment batches written, one transaction each (enrollments / batches: "
            "how many shared a commit)",
            registry=self.registry,
        )
        self.enrollments_waiting = Gauge(
            "homing_enrollments_waiting",
            "EST enrollments waiting for a batch's transaction (every worker's summed)",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.shed = Counter(
            "homing_requests_shed",
            "Requests answered 429: past capacity (overloaded) or past a device's or "
            "station's rate",
            ["kind"],
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "homing_connections_closed",
            "Connections the server closed: a phase's timeout, the budget, reclaimed idle, "
            "or reset with every handshake slot taken",
            ["reason"],
            registry=self.registry,
        )
        self.connections_open = Gauge(
            "homing_connections_open",
            "Client connections held (every worker's summed)",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.recoveries = Counter(
            "homing_recoveries", "Devices recovered by key proof", registry=self.registry
        )

    def render(self) -> bytes:
        directory = self.multiprocess_dir
        if directory is not None:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
