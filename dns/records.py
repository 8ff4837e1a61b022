"""The Kubernetes DNS schema, pure: Services, EndpointSlices and Pods (API dicts) -> a Zone.

Follows the upstream specification (kubernetes/dns docs/specification.md, schema 1.1.0):

- `<svc>.<ns>.svc.<zone>` A -> the ClusterIP; for a headless Service (clusterIP None) the ready
  endpoint IPs instead (not-ready ones too when publishNotReadyAddresses is set).
- `<hostname>.<svc>.<ns>.svc.<zone>` A -> one endpoint of a headless Service; the hostname is the
  endpoint's `hostname`, else its IP with dashes (10-244-1-5), as CoreDNS does.
- `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV for each named port: target the Service name, or one
  SRV per endpoint (target its hostname name) for headless Services.
- ExternalName Services: a CNAME to spec.externalName.
- `<a-b-c-d>.<ns>.pod.<zone>` A -> a.b.c.d when a Pod of that namespace has that IP ("pods verified").
- `dns-version.<zone>` TXT -> "1.1.0".

Names in the zone that exist only as a prefix of others (`<ns>.svc.<zone>`) are empty
non-terminals: NOERROR with no answer. Everything else in the zone is NXDOMAIN. No I/O here:
the server turns an Answer into wire format.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

SCHEMA_VERSION = "1.1.0"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Record types by name; the numbers are the wire codes (RFC 1035, 2782, 3596).
A, NS, CNAME, SOA, TXT, AAAA, SRV, ANY = 1, 2, 5, 6, 16, 28, 33, 255
NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3


@dataclass(frozen=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class Record:
    name: str  # lower case, no trailing dot
    rtype: int
    data: str | Srv  # an IP (A), a name (CNAME), text (TXT), or an Srv


@dataclass
class Answer:
    rcode: int
    answers: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)
    authoritative: bool = True
    soa: bool = False  # put the zone's SOA in the authority section (NXDOMAIN, NODATA)


def normalize(name: str) -> str:
    return name.lower().rstrip(".")


def dashed(ip: str) -> str:
    return ip.replace(".", "-").replace(":", "-")


def _ready(ep: Obj, publish_not_ready: bool) -> bool:
    if publish_not_ready:
        return True
    ready = (ep.get("conditions") or {}).get("ready")
    return ready is None or bool(ready)  # unset means ready (discovery/v1)


def _ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


class Zone:
    """The records of one cluster domain, built once from a snapshot and then only read."""

    def __init__(self, domain: str = "cluster.local") -> None:
        self.domain = normalize(domain)
        self.records: dict[str, list[Record]] = {}
        self.names: set[str] = {self.domain}  # every name that exists, with its prefixes (non-terminals)
        self.pod_ips: dict[str, set[str]] = {}  # namespace -> pod IPs

    def add(self, name: str, rtype: int, data: str | Srv) -> None:
        name = normalize(name)
        rrs = self.records.setdefault(name, [])
        rec = Record(name, rtype, data)
        if rec not in rrs:
            rrs.append(rec)
        self.add_name(name)

    def add_name(self, name: str) -> None:
        name = normalize(name)
        while name.endswith("." + self.domain) and name not in self.names:
            self.names.add(name)
            name = name.split(".", 1)[1]

    def in_zone(self, name: str) -> bool:
        name = normalize(name)
        return name == self.domain or name.endswith("." + self.domain)

    # -- lookup --

    def lookup(self, qname: str, qtype: int) -> Answer:
        name = normalize(qname)
        if name == self.domain and qtype in (SOA, ANY):
            return Answer(NOERROR, soa=True)  # the server adds the SOA to the answer for apex SOA queries
        rrs = self.records.get(name) or self._pod(name)
        if rrs:
            cnames = [r for r in rrs if r.rtype == CNAME]
            if cnames and qtype != CNAME:
                return Answer(NOERROR, answers=cnames)
            got = [r for r in rrs if qtype == ANY or r.rtype == qtype]
            if not got:
                return Answer(NOERROR, soa=True)  # the name exists, not this type (e.g. AAAA): NODATA
            return Answer(NOERROR, answers=got, additional=self._glue(got))
        if name in self.names:
            return Answer(NOERROR, soa=True)  # an empty non-terminal, e.g. <ns>.svc.<zone>
        return Answer(NXDOMAIN, soa=True)

    def _pod(self, name: str) -> list[Record]:
        """`a-b-c-d.<ns>.pod.<zone>`: answered when a pod of <ns> has that IP."""
        parts = name.split(".")
        suffix = ".pod." + self.domain
        if not name.endswith(suffix) or len(parts) != len(self.domain.split(".")) + 3:
            return []
        ip, ns = parts[0].replace("-", "."), parts[1]
        if _ipv4(ip) and ip in self.pod_ips.get(ns, ()):
            return [Record(name, A, ip)]
        return []

    def _glue(self, answers: list[Record]) -> list[Record]:
        out: list[Record] = []
        for r in answers:
            if isinstance(r.data, Srv):
                out.extend(x for x in self.records.get(r.data.target, []) if x.rtype == A and x not in out)
        return out


def build_zone(services: Iterable[Obj], slices: Iterable[Obj], pods: Iterable[Obj],
               domain: str = "cluster.local") -> Zone:
    """The whole zone from the informers' caches. Bad or partial objects are skipped, never fatal."""
    zone = Zone(domain)
    d = zone.domain
    zone.add(f"dns-version.{d}", TXT, SCHEMA_VERSION)
    zone.names.update({f"svc.{d}", f"pod.{d}"})
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for sl in slices:
        meta = sl.get("metadata") or {}
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc and sl.get("addressType", "IPv4") == "IPv4":
            by_service.setdefault((meta.get("namespace") or "default", svc), []).append(sl)
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        name, ns = meta.get("name"), meta.get("namespace") or "default"
        if not name:
            continue
        fqdn = f"{name}.{ns}.svc.{d}"
        if spec.get("type") == "ExternalName":
            if spec.get("externalName"):
                zone.add(fqdn, CNAME, normalize(spec["externalName"]))
            continue
        cluster_ip = spec.get("clusterIP") or ""
        ports = [p for p in spec.get("ports") or [] if p.get("name")]
        if cluster_ip and cluster_ip != "None":
            if _ipv4(cluster_ip):
                zone.add(fqdn, A, cluster_ip)
            for p in ports:
                srv_name = f"_{p['name']}._{(p.get('protocol') or 'TCP').lower()}.{fqdn}"
                zone.add(srv_name, SRV, Srv(0, 100, int(p.get("port") or 0), normalize(fqdn)))
            continue
        if cluster_ip != "None":
            continue  # not allocated yet: no records
        publish = bool(spec.get("publishNotReadyAddresses"))
        zone.add_name(fqdn)  # the name exists even with no ready endpoints: NODATA, not NXDOMAIN
        for sl in by_service.get((ns, name), []):
            sl_ports = sl.get("ports") or []
            for ep in sl.get("endpoints") or []:
                if not _ready(ep, publish):
                    continue
                for ip in ep.get("addresses") or []:
                    if not _ipv4(ip):
                        continue
                    host = f"{ep.get('hostname') or dashed(ip)}.{fqdn}"
                    zone.add(fqdn, A, ip)
                    zone.add(host, A, ip)
                    for p in sl_ports:
                        if p.get("name") and p.get("port"):
                            srv_name = f"_{p['name']}._{(p.get('protocol') or 'TCP').lower()}.{fqdn}"
                            zone.add(srv_name, SRV, Srv(0, 100, int(p["port"]), normalize(host)))
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ns = meta.get("namespace") or "default"
        ips = [x.get("ip") for x in status.get("podIPs") or [] if x.get("ip")] or (
            [status["podIP"]] if status.get("podIP") else [])
        for ip in ips:
            if _ipv4(ip):
                zone.pod_ips.setdefault(ns, set()).add(ip)
                zone.names.add(f"{ns}.pod.{d}")
    return zone
