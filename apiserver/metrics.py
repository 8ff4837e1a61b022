"""The apiserver's Prometheus metrics (names as upstream kube-apiserver's), served on GET /metrics.

Per request, timed() does two perf_counter() calls, one dict lookup per metric for a cached
child, and one observe(): no label strings are built once a (verb, resource, code) was seen.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2, 3, 5, 10, 30, 60)

VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
MUTATING = frozenset(("POST", "PUT", "PATCH", "DELETE"))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("apiserver_request_total", "API requests by verb, resource, subresource and HTTP code.",
                                ["verb", "resource", "subresource", "code"], registry=r)
        self.duration = Histogram("apiserver_request_duration_seconds",
                                  "Time to answer an API request (watches: until the stream starts).",
                                  ["verb", "resource", "subresource"], buckets=_BUCKETS, registry=r)
        self.inflight = Gauge("apiserver_current_inflight_requests", "API requests being handled now.",
                              ["request_kind"], registry=r)
        self.watch_events = Counter("apiserver_watch_events_total", "Events sent to watchers, by resource.",
                                    ["resource"], registry=r)
        self.inflight_ro = self.inflight.labels("readOnly")
        self.inflight_rw = self.inflight.labels("mutating")
        self._counters: dict[tuple[str, str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str, str], Any] = {}

    def observe(self, verb: str, resource: str, sub: str, code: int, seconds: float | None) -> None:
        """One answered request; seconds None: count it only (watches stream for minutes)."""
        c = self._counters.get((verb, resource, sub, code))
        if c is None:
            c = self._counters[(verb, resource, sub, code)] = self.requests.labels(verb, resource, sub, str(code))
        c.inc()
        if seconds is None:
            return
        h = self._histograms.get((verb, resource, sub))
        if h is None:
            h = self._histograms[(verb, resource, sub)] = self.duration.labels(verb, resource, sub)
        h.observe(seconds)

    def watch_counter(self, resource: str) -> Any:
        return self.watch_events.labels(resource)


def exposition(registries: list[CollectorRegistry]) -> bytes:
    """The text format of several registries, one after the other (their names must not clash)."""
    return b"".join(generate_latest(r) for r in registries)
