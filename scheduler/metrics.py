"""The scheduler's Prometheus metrics (names as upstream kube-scheduler's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
RESULTS = ("scheduled", "unschedulable", "error")
QUEUES = ("active", "backoff", "unschedulable")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.attempt_duration = Histogram(
            "scheduler_scheduling_attempt_duration_seconds",
            "One scheduling cycle (filter + score + assume; the bind runs after it), by result.",
            ["result"], buckets=_BUCKETS, registry=r)
        self.attempts = Counter("scheduler_schedule_attempts_total", "Scheduling cycles, by result.",
                                ["result"], registry=r)
        self.pending = Gauge("scheduler_pending_pods", "Pods waiting in the scheduling queue, by sub-queue.",
                             ["queue"], registry=r)
        self.bind_errors = Counter("scheduler_bind_errors_total", "Bind requests that failed (retried).",
                                   registry=r)
        self._attempts = {res: self.attempts.labels(res) for res in RESULTS}  # zeros from the start
        self._durations = {res: self.attempt_duration.labels(res) for res in RESULTS}

    def attempt(self, result: str, seconds: float) -> None:
        self._attempts[result].inc()
        self._durations[result].observe(seconds)

    def watch_queue(self, pending: Callable[[], dict[str, int]]) -> None:
        """Read the pending gauges from pending() at each scrape."""
        def reader(q: str) -> Callable[[], float]:
            return lambda: float(pending().get(q, 0))

        for q in QUEUES:
            self.pending.labels(q).set_function(reader(q))

    def serve(self, address: str) -> Any:
        """Serve /metrics on HOST:PORT in a daemon thread; returns the server (its .shutdown() stops it)."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                            registry=self.registry)
        return server
