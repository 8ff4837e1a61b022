"""`kubeling dns` against a real apiserver, on a free 127.0.0.1 port, queried over UDP and TCP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_proc import ApiServer, free_port
from dnslib import QTYPE, RCODE, DNSRecord
from polling import wait_for

from kube.client import Client

NS = "default"
D = "cluster.local"


class Dns:
    def __init__(self, port: int, metrics_port: int = 0) -> None:
        self.port = port
        self.metrics_port = metrics_port

    def query(self, name: str, qtype: str = "A", tcp: bool = False) -> DNSRecord:
        q = DNSRecord.question(name, qtype)
        return DNSRecord.parse(q.send("127.0.0.1", self.port, tcp=tcp, timeout=2))

    def ips(self, name: str) -> list[str]:
        return sorted(str(r.rdata) for r in self.query(name).rr if r.rtype == QTYPE.A)


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Client, Dns]]:
    with tempfile.TemporaryDirectory(prefix="kubeling-dns-test-") as d:
        api = ApiServer(d)
        api.start()
        port, metrics_port = free_port(), free_port()
        log = open(os.path.join(d, "dns.log"), "wb")
        proc = subprocess.Popen([sys.executable, "-m", "kubeling.cli", "--log-level", "info", "dns",
                                 "--kubeconfig", api.kubeconfig, "--listen", f"127.0.0.1:{port}",
                                 "--metrics-address", f"127.0.0.1:{metrics_port}"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = Client.from_kubeconfig(api.kubeconfig)
        dns = Dns(port, metrics_port)
        try:
            def synced() -> bool:
                assert proc.poll() is None, open(os.path.join(d, "dns.log")).read()
                try:
                    return dns.query(f"dns-version.{D}", "TXT").header.rcode == RCODE.NOERROR
                except OSError:
                    return False
            wait_for(synced, 20, "the DNS server to sync")
            yield client, dns
        finally:
            client.close()
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
            log.close()
            api.stop()


def service(name: str, cluster_ip: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": name},
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def endpoint_slice(svc: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-1", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def test_service_a_record(env: tuple[Client, Dns]) -> None:
    client, dns = env
    ip = client.create("services", service("web"), NS)["spec"]["clusterIP"]
    assert wait_for(lambda: dns.ips(f"web.{NS}.svc.{D}"), 5, "web's A record") == [ip]
    srv = dns.query(f"_http._tcp.web.{NS}.svc.{D}", "SRV")
    assert [(r.rdata.port, str(r.rdata.target)) for r in srv.rr] == [(80, f"web.{NS}.svc.{D}.")]
    aaaa = dns.query(f"web.{NS}.svc.{D}", "AAAA")
    assert aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr


def test_headless_service_and_srv(env: tuple[Client, Dns]) -> None:
    client, dns = env
    client.create("services", service("db", "None"), NS)
    client.create("endpointslices", endpoint_slice("db", [
        {"addresses": ["10.244.1.5"], "conditions": {"ready": True}, "hostname": "db-0"},
        {"addresses": ["10.244.2.6"], "conditions": {"ready": True}, "hostname": "db-1"},
        {"addresses": ["10.244.3.7"], "conditions": {"ready": False}, "hostname": "db-2"}]), NS)
    name = f"db.{NS}.svc.{D}"
    assert wait_for(lambda: dns.ips(name) == ["10.244.1.5", "10.244.2.6"], 5, "the headless A set")
    assert dns.ips(f"db-0.{name}") == ["10.244.1.5"]
    srv = dns.query(f"_http._tcp.{name}", "SRV")
    assert sorted((r.rdata.port, str(r.rdata.target)) for r in srv.rr) == [
        (8080, f"db-0.{name}."), (8080, f"db-1.{name}.")]
    assert sorted(str(r.rdata) for r in srv.ar) == ["10.244.1.5", "10.244.2.6"]


def test_pod_a_record(env: tuple[Client, Dns]) -> None:
    client, dns = env
    pod = client.create("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"},
                                 "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, NS)
    pod["status"] = {**(pod.get("status") or {}), "podIP": "10.244.7.8", "podIPs": [{"ip": "10.244.7.8"}]}
    client.update_status("pods", pod, namespace=NS)
    assert wait_for(lambda: dns.ips(f"10-244-7-8.{NS}.pod.{D}"), 5, "the pod A record") == ["10.244.7.8"]
    assert dns.query(f"10-244-7-9.{NS}.pod.{D}").header.rcode == RCODE.NXDOMAIN


def test_nxdomain_is_fast_and_carries_soa(env: tuple[Client, Dns]) -> None:
    _, dns = env
    dns.query(f"warmup.{NS}.svc.{D}")
    t0 = time.perf_counter()
    nx = dns.query(f"nope.{NS}.svc.{D}")
    elapsed = time.perf_counter() - t0
    assert nx.header.rcode == RCODE.NXDOMAIN and nx.auth and nx.auth[0].rtype == QTYPE.SOA
    assert elapsed < 0.05, f"NXDOMAIN took {elapsed * 1000:.1f} ms"
    t0 = time.perf_counter()
    assert dns.query("example.com").header.rcode == RCODE.SERVFAIL  # no --upstream: fail fast
    assert time.perf_counter() - t0 < 0.05


def test_new_service_is_served_within_a_second(env: tuple[Client, Dns]) -> None:
    client, dns = env
    t0 = time.monotonic()
    ip = client.create("services", service("fresh"), NS)["spec"]["clusterIP"]
    wait_for(lambda: dns.ips(f"fresh.{NS}.svc.{D}") == [ip], 1.0, "the new service in DNS", interval=0.01)
    assert time.monotonic() - t0 < 1.0


def test_tcp_query(env: tuple[Client, Dns]) -> None:
    client, dns = env
    ip = client.create("services", service("tcpsvc"), NS)["spec"]["clusterIP"]
    wait_for(lambda: dns.ips(f"tcpsvc.{NS}.svc.{D}"), 5, "tcpsvc's A record")
    got = dns.query(f"tcpsvc.{NS}.svc.{D}", tcp=True)
    assert [str(r.rdata) for r in got.rr] == [ip]


def test_metrics_count_requests_by_type_and_rcode(env: tuple[Client, Dns]) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    _, dns = env

    def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{dns.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def value(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
        return sum(v for (n, lb), v in got.items() if n == name and set(labels.items()) <= lb)

    before = samples()
    for _ in range(3):
        dns.query(f"nothere.{NS}.svc.{D}", "AAAA")
    dns.query(f"dns-version.{D}", "TXT", tcp=True)
    after = samples()
    zone = f"{D}."
    assert value(after, "coredns_dns_requests_total", zone=zone, type="AAAA", proto="udp") - \
        value(before, "coredns_dns_requests_total", zone=zone, type="AAAA", proto="udp") == 3
    assert value(after, "coredns_dns_requests_total", type="TXT", proto="tcp") - \
        value(before, "coredns_dns_requests_total", type="TXT", proto="tcp") == 1
    assert value(after, "coredns_dns_responses_total", rcode="NXDOMAIN") - \
        value(before, "coredns_dns_responses_total", rcode="NXDOMAIN") == 3
    assert value(after, "coredns_dns_request_duration_seconds_count", type="AAAA") - \
        value(before, "coredns_dns_request_duration_seconds_count", type="AAAA") == 3


def test_forwarding_and_udp_truncation_without_apiserver() -> None:
    """Outside names go to --upstream (UDP and TCP); a big answer over UDP comes back with TC set."""
    from dnslib import RR, A
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    from dns.records import build_zone
    from dns.server import DnsServer, Resolver

    class Fixed(BaseResolver):
        def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
            reply = request.reply()
            reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=5, rdata=A("192.0.2.1")))
            return reply

    up_port = free_port()
    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data")
    upstreams = [DNSServer(Fixed(), address="127.0.0.1", port=up_port, logger=quiet, tcp=tcp) for tcp in (False, True)]
    for u in upstreams:
        u.start_thread()
    slices = [endpoint_slice("big", [{"addresses": [f"10.244.0.{i}"]} for i in range(1, 61)])]
    zone = build_zone([{"metadata": {"name": "big", "namespace": NS}, "spec": {"clusterIP": "None"}}],
                      [{**slices[0], "metadata": {**slices[0]["metadata"], "namespace": NS}}], [])
    srv = DnsServer(Resolver(lambda: zone, upstreams=[("127.0.0.1", up_port)]), "127.0.0.1", 0).start()
    try:
        dns = Dns(srv.port)
        assert dns.ips("example.com") == ["192.0.2.1"]
        assert [str(r.rdata) for r in dns.query("example.com", tcp=True).rr] == ["192.0.2.1"]
        big = f"big.{NS}.svc.{D}"
        q = DNSRecord.question(big)
        udp = DNSRecord.parse(q.send("127.0.0.1", srv.port, timeout=2))
        assert udp.header.tc and not udp.rr
        assert len(dns.query(big, tcp=True).rr) == 60
    finally:
        srv.stop()
        for u in upstreams:
            u.stop()
