"""The proxy's Prometheus metrics (names as upstream kube-proxy's where one exists)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("kubeling.proxy.metrics")

_SYNC_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds", "Time one sync (build, render, restore) took.",
            buckets=_SYNC_BUCKETS, registry=r)
        self.last_sync = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "Unix time of the last sync that applied its rules.", registry=r)
        self.programming_latency = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "From a Service/EndpointSlice change (its trigger time, else when the proxy observed it) to its "
            "rules being applied.", buckets=_LATENCY_BUCKETS, registry=r)
        self.sync_errors = Counter(
            "kubeproxy_sync_proxy_rules_errors_total", "Syncs (or sync steps) that failed, by stage.",
            ["stage"], registry=r)
        self.services = Gauge("kubeproxy_sync_proxy_rules_service_ports", "Service ports in the last ruleset.",
                              registry=r)
        self.endpoints = Gauge("kubeproxy_sync_proxy_rules_endpoints", "Usable endpoints in the last ruleset.",
                               registry=r)
        for stage in ("render", "apply", "conntrack", "route", "node"):
            self.sync_errors.labels(stage)  # export zeros from the start

    def serve(self, address: str) -> Any:
        """Serve /metrics on HOST:PORT in a daemon thread; returns the server (its .shutdown() stops it)."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                            registry=self.registry)
        return server
