"""The controller-manager's work queue metrics (names as upstream client-go's workqueue)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.adds = Counter("workqueue_adds_total", "Keys added to a controller's queue (re-adds included).",
                            ["name"], registry=r)
        self.depth = Gauge("workqueue_depth", "Keys waiting in a controller's queue.", ["name"], registry=r)
        self.work_duration = Histogram("workqueue_work_duration_seconds", "Time one reconcile of a key took.",
                                       ["name"], buckets=_BUCKETS, registry=r)
        self.retries = Counter("workqueue_retries_total", "Keys re-queued with back-off after a failure.",
                               ["name"], registry=r)

    def serve(self, address: str) -> Any:
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                            registry=self.registry)
        return server
