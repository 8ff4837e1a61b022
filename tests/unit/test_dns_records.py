"""dns/records.py: the Kubernetes DNS schema from API dicts, and the Resolver's wire answers."""

from __future__ import annotations

from typing import Any

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from dns.records import AAAA, CNAME, NOERROR, NXDOMAIN, SOA, SRV, TXT, A, Srv, build_zone
from dns.server import DnsServer, Resolver

D = "cluster.local"


def svc(name: str, ns: str = "default", cluster_ip: str = "10.96.0.10", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                                        {"port": 9000}], **spec}}


def eps(svc_name: str, endpoints: list[dict[str, Any]], ns: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": f"{svc_name}-abc", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc_name}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def pod(ip: str, ns: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": ns}, "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}


def values(ans: Any) -> list[Any]:
    return sorted(str(r.data) if not isinstance(r.data, Srv) else (r.data.port, r.data.target) for r in ans.answers)


def test_cluster_ip_service_a_and_srv() -> None:
    z = build_zone([svc("web")], [], [], D)
    assert values(z.lookup("web.default.svc.cluster.local.", A)) == ["10.96.0.10"]
    assert values(z.lookup("WEB.Default.svc.cluster.local", A)) == ["10.96.0.10"]  # case-insensitive
    srv = z.lookup("_http._tcp.web.default.svc.cluster.local", SRV)
    assert values(srv) == [(80, "web.default.svc.cluster.local")]
    assert [str(r.data) for r in srv.additional] == ["10.96.0.10"]  # glue
    assert z.lookup("_9000._tcp.web.default.svc.cluster.local", SRV).rcode == NXDOMAIN  # unnamed port


def test_headless_service_ready_endpoints_only() -> None:
    slices = [eps("db", [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}, "hostname": "db-0"},
                         {"addresses": ["10.244.2.6"]},  # ready unset means ready
                         {"addresses": ["10.244.3.7"], "conditions": {"ready": False}}])]
    z = build_zone([svc("db", cluster_ip="None")], slices, [], D)
    assert values(z.lookup("db.default.svc.cluster.local", A)) == ["10.244.1.5", "10.244.2.6"]
    assert values(z.lookup("db-0.db.default.svc.cluster.local", A)) == ["10.244.1.5"]
    assert values(z.lookup("10-244-2-6.db.default.svc.cluster.local", A)) == ["10.244.2.6"]
    srv = z.lookup("_http._tcp.db.default.svc.cluster.local", SRV)
    assert values(srv) == [(8080, "10-244-2-6.db.default.svc.cluster.local"),
                           (8080, "db-0.db.default.svc.cluster.local")]
    assert sorted(str(r.data) for r in srv.additional) == ["10.244.1.5", "10.244.2.6"]


def test_headless_publish_not_ready() -> None:
    slices = [eps("db", [{"addresses": ["10.244.3.7"], "conditions": {"ready": False}}])]
    z = build_zone([svc("db", cluster_ip="None", publishNotReadyAddresses=True)], slices, [], D)
    assert values(z.lookup("db.default.svc.cluster.local", A)) == ["10.244.3.7"]


def test_slices_of_other_namespace_or_service_are_not_mixed_in() -> None:
    slices = [eps("db", [{"addresses": ["10.244.1.5"]}], ns="other"), eps("cache", [{"addresses": ["10.244.9.9"]}])]
    z = build_zone([svc("db", cluster_ip="None")], slices, [], D)
    ans = z.lookup("db.default.svc.cluster.local", A)
    assert ans.rcode == NOERROR and ans.answers == []  # exists, no ready endpoints


def test_pod_records_are_verified_against_pods() -> None:
    z = build_zone([], [], [pod("10.244.1.5", "apps")], D)
    assert values(z.lookup("10-244-1-5.apps.pod.cluster.local", A)) == ["10.244.1.5"]
    assert z.lookup("10-244-1-5.default.pod.cluster.local", A).rcode == NXDOMAIN
    assert z.lookup("10-244-1-6.apps.pod.cluster.local", A).rcode == NXDOMAIN


def test_nxdomain_nodata_and_empty_non_terminals() -> None:
    z = build_zone([svc("web")], [], [], D)
    assert z.lookup("nope.default.svc.cluster.local", A).rcode == NXDOMAIN
    aaaa = z.lookup("web.default.svc.cluster.local", AAAA)
    assert (aaaa.rcode, aaaa.answers, aaaa.soa) == (NOERROR, [], True)
    assert z.lookup("default.svc.cluster.local", A).rcode == NOERROR
    assert z.lookup("svc.cluster.local", A).rcode == NOERROR
    assert z.lookup("cluster.local", SOA).soa


def test_external_name_and_version() -> None:
    z = build_zone([{"metadata": {"name": "ext", "namespace": "default"},
                     "spec": {"type": "ExternalName", "externalName": "example.com."}}], [], [], D)
    ans = z.lookup("ext.default.svc.cluster.local", A)
    assert [(r.rtype, r.data) for r in ans.answers] == [(CNAME, "example.com")]
    assert values(z.lookup("dns-version.cluster.local", TXT)) == ["1.1.0"]


def test_bad_objects_are_skipped() -> None:
    z = build_zone([{"metadata": {}}, {"metadata": {"name": "x"}, "spec": {"clusterIP": "bogus"}},
                    svc("pending", cluster_ip="")], [{"metadata": {"labels": {}}}], [{"status": {}}], D)
    assert z.lookup("pending.default.svc.cluster.local", A).rcode == NXDOMAIN


def test_other_domain() -> None:
    z = build_zone([svc("web")], [], [], "corp.internal")
    assert values(z.lookup("web.default.svc.corp.internal", A)) == ["10.96.0.10"]


# -- the Resolver (wire format, no sockets) --

def resolve(r: Resolver, name: str, qtype: str = "A", tcp: bool = False, edns: int = 0) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=edns))
    import asyncio
    srv = DnsServer(r)
    out = asyncio.run(srv.answer(q.pack(), tcp))
    assert out is not None
    return DNSRecord.parse(out)


def test_resolver_servfail_until_synced_and_outside_domain() -> None:
    assert resolve(Resolver(lambda: None), "web.default.svc.cluster.local").header.rcode == RCODE.SERVFAIL
    z = build_zone([svc("web")], [], [], D)
    assert resolve(Resolver(lambda: z), "example.com").header.rcode == RCODE.SERVFAIL


def test_resolver_answers_with_ttl_and_soa() -> None:
    z = build_zone([svc("web")], [], [], D)
    r = Resolver(lambda: z, ttl=7)
    a = resolve(r, "web.default.svc.cluster.local")
    assert a.header.aa and [(str(x.rdata), x.ttl) for x in a.rr] == [("10.96.0.10", 7)]
    nx = resolve(r, "nope.default.svc.cluster.local")
    assert nx.header.rcode == RCODE.NXDOMAIN and nx.auth[0].rtype == QTYPE.SOA
    empty = resolve(r, "web.default.svc.cluster.local", "AAAA")
    assert empty.header.rcode == RCODE.NOERROR and not empty.rr and empty.auth


def test_resolver_truncates_big_udp_answers_unless_edns_or_tcp() -> None:
    slices = [eps("big", [{"addresses": [f"10.244.{i // 250}.{i % 250 + 1}"]} for i in range(60)])]
    z = build_zone([svc("big", cluster_ip="None")], slices, [], D)
    r = Resolver(lambda: z)
    udp = resolve(r, "big.default.svc.cluster.local")
    assert udp.header.tc and not udp.rr and str(udp.q.qname) == "big.default.svc.cluster.local."
    assert len(resolve(r, "big.default.svc.cluster.local", tcp=True).rr) == 60
    assert len(resolve(r, "big.default.svc.cluster.local", edns=4096).rr) == 60
