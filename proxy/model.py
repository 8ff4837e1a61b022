"""What the proxy programs, as plain immutable values.

Services and EndpointSlices (API dicts) are turned into one `ServicePort` per
(service, port) with its endpoints already resolved to IP:port, so that the
renderer is a pure function of a list of these plus the node's facts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, order=True)
class Endpoint:
    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    name: str  # the Service's name
    port_name: str  # "" for an unnamed port
    protocol: str  # TCP, UDP or SCTP
    cluster_ip: str  # "" for none (headless / ExternalName services are left out)
    port: int
    node_port: int = 0
    session_affinity: bool = False  # ClientIP
    affinity_timeout: int = 10800
    external_local: bool = False  # externalTrafficPolicy: Local (NodePorts)
    internal_local: bool = False  # internalTrafficPolicy: Local (ClusterIP)
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> str:
        """Stable identity, as kube-proxy names it: ns/name:port (port part may be empty)."""
        return f"{self.namespace}/{self.name}:{self.port_name}"

    def usable_endpoints(self) -> tuple[Endpoint, ...]:
        """Endpoints new connections may go to: ready ones; when none is ready,
        serving-but-terminating ones (as upstream's terminating-endpoints fallback)."""
        ready = tuple(e for e in self.endpoints if e.ready and not e.terminating)
        if ready:
            return ready
        return tuple(e for e in self.endpoints if e.serving and e.terminating)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    addresses: tuple[str, ...] = ()  # the node's IPs: NodePorts answer on these
    pod_cidr: str = ""  # cluster/pod CIDR: traffic from outside it to a ClusterIP is masqueraded
    localhost_nodeports: bool = True  # NodePorts on 127.0.0.1 too (needs route_localnet)
    extra: Mapping[str, str] = field(default_factory=dict)


def _selectable(svc: Mapping[str, Any]) -> bool:
    spec = svc.get("spec") or {}
    ip = spec.get("clusterIP") or ""
    return spec.get("type") != "ExternalName" and ip not in ("", "None")


def endpoints_by_service(slices: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, list[Endpoint]]]:
    """(namespace, service) -> port name -> endpoints, merged over all the service's slices."""
    out: dict[tuple[str, str], dict[str, list[Endpoint]]] = {}
    for sl in slices:
        meta = sl.get("metadata") or {}
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not svc or sl.get("addressType", "IPv4") != "IPv4":
            continue
        ports = out.setdefault((meta.get("namespace", ""), svc), {})
        for p in sl.get("ports") or []:
            if not isinstance(p, Mapping) or not p.get("port"):
                continue
            eps = ports.setdefault(p.get("name") or "", [])
            for ep in sl.get("endpoints") or []:
                cond = ep.get("conditions") or {}
                ready = cond.get("ready") is not False  # nil means ready
                serving = cond.get("serving", ready) is not False
                terminating = bool(cond.get("terminating", False))
                for ip in ep.get("addresses") or []:
                    eps.append(Endpoint(ip, int(p["port"]), ready, serving, terminating, ep.get("nodeName") or ""))
    return out


def service_ports(services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]) -> list[ServicePort]:
    """One ServicePort per port of every service that has a ClusterIP, sorted by key."""
    eps = endpoints_by_service(slices)
    out: list[ServicePort] = []
    for svc in services:
        if not _selectable(svc):
            continue
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        affinity = spec.get("sessionAffinity") == "ClientIP"
        timeout = int(((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
                      or 10800)
        for p in spec.get("ports") or []:
            port_name = p.get("name") or ""
            endpoints = tuple(sorted(set(eps.get((ns, name), {}).get(port_name, []))))
            out.append(ServicePort(
                namespace=ns, name=name, port_name=port_name, protocol=p.get("protocol") or "TCP",
                cluster_ip=spec["clusterIP"], port=int(p["port"]), node_port=int(p.get("nodePort") or 0),
                session_affinity=affinity, affinity_timeout=timeout,
                external_local=spec.get("externalTrafficPolicy") == "Local",
                internal_local=spec.get("internalTrafficPolicy") == "Local",
                endpoints=endpoints))
    out.sort(key=lambda sp: sp.key)
    return out
