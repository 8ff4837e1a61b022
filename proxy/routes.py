"""The node facts the proxy reads from its namespace, and the one route it may add.

For a ClusterIP reached from the node itself the nat OUTPUT hook only runs after a
first route lookup succeeded (notes/linux.md): a node without a default route (a lab
namespace) gets `SERVICE_CIDR dev <bridge>` so that lookup succeeds and DNAT
rewrites the destination. The route carries protocol ROUTE_PROTO so that cleanup
finds only ours, and ICMP redirects are turned off in that namespace (see
ensure_service_route). Everything runs through iproute2 in the target namespace.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from . import nsexec

log = logging.getLogger("kubeling.proxy.routes")

ROUTE_PROTO = "211"  # rtnetlink protocol number marking the proxy's routes ("kubeling")
PREFERRED_DEVICES = ("kl0",)  # the node bridge of kubeling-cni


class HostError(Exception):
    pass


@dataclass(frozen=True)
class Addr:
    ifname: str
    ip: str


class Host(Protocol):
    def addresses(self) -> list[Addr]:
        """IPv4 addresses of the namespace's interfaces, loopback excluded."""
        ...

    def ensure_service_route(self, cidr: str) -> str:
        """Make a ClusterIP routable from the node; returns what was done ("" if nothing was needed)."""
        ...

    def remove_service_routes(self) -> int:
        """Delete the routes we added; returns how many."""
        ...

    def enable_route_localnet(self) -> None:
        """Let DNAT of 127.0.0.1:NODEPORT leave the host (net.ipv4.conf.all.route_localnet=1), as
        kube-proxy does for localhost NodePorts; the renderer's firewall chain drops off-node
        packets to 127/8 that this would otherwise let in."""
        ...


class IPRouteHost:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _ip(self, *args: str) -> Any:
        p = nsexec.run(self.netns, ["ip", "-j", *args], timeout=10)
        if p.returncode != 0:
            raise HostError(f"ip {' '.join(args)} failed: {p.stderr.strip()[:300]}")
        return json.loads(p.stdout or "[]")

    def _do(self, *args: str) -> None:
        p = nsexec.run(self.netns, ["ip", *args], timeout=10)
        if p.returncode != 0 and "File exists" not in p.stderr:
            raise HostError(f"ip {' '.join(args)} failed: {p.stderr.strip()[:300]}")

    def addresses(self) -> list[Addr]:
        out: list[Addr] = []
        for link in self._ip("-4", "addr", "show"):
            if link.get("ifname") == "lo" or "LOOPBACK" in (link.get("flags") or []):
                continue
            for a in link.get("addr_info") or []:
                if a.get("family") == "inet" and a.get("local"):
                    out.append(Addr(str(link["ifname"]), str(a["local"])))
        return out

    def ensure_service_route(self, cidr: str) -> str:
        net = ipaddress.ip_network(cidr)
        for r in self._ip("-4", "route", "show", "table", "main"):
            dst = r.get("dst", "")
            if dst == "default":
                return ""
            try:
                if dst and ipaddress.ip_network(dst, strict=False).supernet_of(net):  # type: ignore[arg-type]
                    return ""
            except (ValueError, TypeError):
                continue
        dev = self._route_device()
        if not dev:
            raise HostError(f"no default route and no interface to route the service range {cidr} through "
                            f"(ClusterIPs will not be reachable from the node itself)")
        self._do("route", "replace", str(net), "dev", dev, "proto", ROUTE_PROTO)
        # Traffic to a ClusterIP that no DNAT rewrote (a service without endpoints) now leaves by the
        # interface it came in on: the kernel would answer with ICMP redirects, which also use up the
        # per-host ICMP rate limit so that the REJECT's "port unreachable" is never sent (a timeout
        # instead of a fast refusal). Redirects are pointless for these routes: turn them off.
        for conf in ("all", dev):
            p = nsexec.run(self.netns, ["sysctl", "-q", "-w", f"net.ipv4.conf.{conf}.send_redirects=0"], timeout=10)
            if p.returncode != 0:
                log.warning("could not turn off ICMP redirects on %s: %s", conf, p.stderr.strip()[:200])
        return f"added route {net} dev {dev} (ICMP redirects off)"

    def enable_route_localnet(self) -> None:
        p = nsexec.run(self.netns, ["sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1"], timeout=10)
        if p.returncode != 0:
            raise HostError(f"sysctl net.ipv4.conf.all.route_localnet=1 failed: {p.stderr.strip()[:200]}")

    def _route_device(self) -> str:
        links = [lk for lk in self._ip("link", "show") if lk.get("ifname") != "lo"
                 and "LOOPBACK" not in (lk.get("flags") or [])]
        names = [str(lk["ifname"]) for lk in links]
        for pref in PREFERRED_DEVICES:
            if pref in names:
                return pref
        with_addr = {a.ifname for a in self.addresses()}
        for lk in links:
            if lk["ifname"] in with_addr and "UP" in (lk.get("flags") or []):
                return str(lk["ifname"])
        return names[0] if names else ""

    def remove_service_routes(self) -> int:
        n = 0
        for r in self._ip("-4", "route", "show", "table", "main", "proto", ROUTE_PROTO):
            dst = r.get("dst")
            if dst:
                self._do("route", "del", dst, "proto", ROUTE_PROTO)
                n += 1
        return n


class FakeHost:
    def __init__(self, addresses: list[Addr] | None = None, default_route: bool = False) -> None:
        self.addrs = list(addresses or [])
        self.default_route = default_route
        self.routes: list[str] = []
        self.route_localnet = False

    def addresses(self) -> list[Addr]:
        return list(self.addrs)

    def ensure_service_route(self, cidr: str) -> str:
        if self.default_route or cidr in self.routes:
            return ""
        self.routes.append(cidr)
        return f"added route {cidr}"

    def remove_service_routes(self) -> int:
        n, self.routes = len(self.routes), []
        return n

    def enable_route_localnet(self) -> None:
        self.route_localnet = True
