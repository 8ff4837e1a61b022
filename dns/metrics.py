"""The DNS server's Prometheus metrics, named as CoreDNS's (the kube-dns Service's port 9153 "metrics").

    coredns_dns_requests_total{server,zone,proto,family,type}
    coredns_dns_responses_total{server,zone,rcode}
    coredns_dns_request_duration_seconds{server,zone,type}   (histogram)
    coredns_forward_requests_total{to}

zone is the cluster domain with a trailing dot for names in it, "." for the rest (forwarded).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

# CoreDNS's buckets: 0.25 ms doubling to ~8 s
_BUCKETS = tuple(0.00025 * 2 ** i for i in range(16))
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          255: "ANY"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class Metrics:
    def __init__(self, server: str, registry: CollectorRegistry | None = None) -> None:
        self.server = server  # "dns://HOST:PORT"
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("coredns_dns_requests_total", "Counter of DNS requests made per zone, protocol "
                                "and family.", ["server", "zone", "proto", "family", "type"], registry=r)
        self.responses = Counter("coredns_dns_responses_total", "Counter of response status codes.",
                                 ["server", "zone", "rcode"], registry=r)
        self.duration = Histogram("coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) "
                                  "each request took per zone.", ["server", "zone", "type"], buckets=_BUCKETS,
                                  registry=r)
        self.forwards = Counter("coredns_forward_requests_total", "Counter of requests made per upstream.",
                                ["to"], registry=r)
        self._children: dict[tuple[str, ...], Any] = {}  # label lookups are the costly part: cache them

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, zone: str, proto: str, qtype: int, rcode: int, seconds: float) -> None:
        t = QTYPES.get(qtype, "other")
        self._child(self.requests, self.server, zone, proto, "1", t).inc()
        self._child(self.responses, self.server, zone, RCODES.get(rcode, str(rcode))).inc()
        self._child(self.duration, self.server, zone, t).observe(seconds)

    def forwarded(self, to: str) -> None:
        self._child(self.forwards, to).inc()

    def serve(self, host: str, port: int) -> Any:
        """/metrics on host:port in a daemon thread; returns the server (.shutdown() stops it)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
