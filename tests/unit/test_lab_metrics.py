"""`lab status` metrics: parsing, histogram quantiles, one-line summaries; and the lab's kube-dns objects."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kube.api.validation import validate_object
from kubeling.lab import clusterdns
from kubeling.lab import metrics as M


def text(fill: object) -> str:
    r = CollectorRegistry()
    fill(r)  # type: ignore[operator]
    return generate_latest(r).decode()


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    def fill(r: CollectorRegistry) -> None:
        h = Histogram("x_seconds", "x", buckets=(0.01, 0.1, 1.0), registry=r)
        for v in [0.005] * 50 + [0.05] * 40 + [0.5] * 10:
            h.observe(v)
    s = M.parse(text(fill))
    assert M.quantile(0.5, s, "x_seconds") == pytest.approx(0.01)  # rank 50 is the top of the first bucket
    assert M.quantile(0.25, s, "x_seconds") == pytest.approx(0.005)
    assert M.quantile(0.99, s, "x_seconds") == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert M.quantile(0.5, M.parse(text(lambda r: Histogram("y", "y", registry=r))), "y") is None


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    def fill(r: CollectorRegistry) -> None:
        h = Histogram("z_seconds", "z", buckets=(0.1, 1.0), registry=r)
        for _ in range(10):
            h.observe(5.0)
    assert M.quantile(0.99, M.parse(text(fill)), "z_seconds") == 1.0


def test_apiserver_summary_skips_watches_and_counts_5xx() -> None:
    def fill(r: CollectorRegistry) -> None:
        c = Counter("apiserver_request_total", "", ["verb", "code"], registry=r)
        c.labels("get", "200").inc(7)
        c.labels("create", "503").inc(1)
        h = Histogram("apiserver_request_duration_seconds", "", ["verb"], buckets=(0.005, 0.01, 60), registry=r)
        for _ in range(10):
            h.labels("get").observe(0.002)
            h.labels("WATCH").observe(50)
        Counter("scheduler_schedule_attempts_total", "", ["result"], registry=r).labels("scheduled").inc(3)
        Gauge("scheduler_pending_pods", "", ["queue"], registry=r).labels("active").set(2)
    lines = M.summarize_apiserver(M.parse(text(fill)))
    assert lines[0].startswith("apiserver   requests 8 (5xx 1), latency p50 2.5 ms p99 5.0 ms")
    assert lines[1] == "scheduler   schedule attempts scheduled 3; pending 2"


def test_dns_agent_and_proxy_summaries() -> None:
    def dns(r: CollectorRegistry) -> None:
        Counter("coredns_dns_requests_total", "", ["type"], registry=r).labels("A").inc(5)
        resp = Counter("coredns_dns_responses_total", "", ["rcode"], registry=r)
        resp.labels("NOERROR").inc(4)
        resp.labels("NXDOMAIN").inc(1)
        Histogram("coredns_dns_request_duration_seconds", "", buckets=(0.001, 0.01), registry=r).observe(0.0005)
    assert M.summarize_dns(M.parse(text(dns))) == [
        "dns         requests 5 (NOERROR 4, NXDOMAIN 1), latency p50 0.5 ms p99 1.0 ms"]

    def agent(r: CollectorRegistry) -> None:
        Gauge("kubelet_running_pods", "", registry=r).set(3)
        Gauge("kubelet_running_containers", "", ["container_state"], registry=r).labels("running").set(4)
    assert M.summarize_agent("node1", M.parse(text(agent)))[0].startswith(
        "agent node1 running pods 3, containers 4, pod start p50 -")

    def proxy(r: CollectorRegistry) -> None:
        h = Histogram("kubeproxy_sync_proxy_rules_duration_seconds", "", buckets=(0.01, 0.1), registry=r)
        h.observe(0.02)
        h.observe(0.03)
    assert M.summarize_proxy("node2", M.parse(text(proxy)))[0].startswith("proxy node2 syncs 2, sync p50 ")


def test_kube_dns_objects_are_valid_and_point_at_the_control_plane() -> None:
    svc, ep, sl = clusterdns.service(), clusterdns.endpoints("192.168.56.10"), clusterdns.endpoint_slice("192.168.56.10")
    assert svc["spec"]["clusterIP"] == "10.96.0.10" and "selector" not in svc["spec"]
    assert {(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == {
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")}
    assert sl["metadata"]["labels"]["kubernetes.io/service-name"] == "kube-dns"
    assert sl["endpoints"][0]["addresses"] == ["192.168.56.10"] and ep["subsets"][0]["addresses"][0]["ip"] == \
        "192.168.56.10"
    for resource, obj in (("services", svc), ("endpoints", ep), ("endpointslices", sl)):
        assert not validate_object(resource, obj), (resource, validate_object(resource, obj))
