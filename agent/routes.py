"""Cross-node pod routes, host-gw style: a route to every other node's podCIDR via its InternalIP.

    routes = NodeRoutes(client, "node1", IPRouteHost("kl-lab-node1"))
    routes.start()          # a Node informer; reconciles on every Node change and every `resync` s
    routes.stop()           # the routes stay (pods keep talking while the agent restarts)

Each node's pods live on a bridge in the node's own subnet (kubeling-cni); the nodes share one L2
network (the lab's underlay switch, the Vagrant private network). So `ip route replace
10.244.2.0/24 via 192.168.56.12 proto 212` on every other node is all the overlay there is, as
flannel's host-gw backend does. The desired routes come from the Node objects only
(spec.podCIDR + status.addresses[InternalIP]), so they work the same in the lab and on VMs.

Our routes carry rtnetlink protocol ROUTE_PROTO, so a reconcile lists and deletes only ours; a
route to the same destination that is not ours is left alone (and reported). `IPRouteHost` runs
iproute2 in the node namespace through a short-lived `nsenter --net` child (house rule 6: the
agent never calls setns()), or in the current namespace when no namespace is given. `FakeRoutes`
is the in-memory twin for unit tests.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

log = logging.getLogger("kubeling.agent.routes")

ROUTE_PROTO = "212"  # marks the agent's pod routes (the proxy's service route uses 211)
NETNS_DIR = "/var/run/netns"
TIMEOUT = 10.0


class RouteError(Exception):
    """A route could not be read or changed; the message says which and why."""


class RouteHost(Protocol):
    def routes(self) -> dict[str, str]:
        """Our routes in the main table: destination CIDR -> gateway."""
        ...

    def ensure_route(self, dst: str, via: str) -> None:
        """Route dst via the gateway `via` (replace ours if it points elsewhere); refuse a foreign route."""
        ...

    def delete_route(self, dst: str) -> None:
        """Delete our route to dst; 'not found' is success."""
        ...


def _argv(netns: str | None, argv: list[str]) -> list[str]:
    if not netns:
        return argv
    path = netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)
    return ["nsenter", f"--net={path}", "--", *argv]


class IPRouteHost:
    """iproute2 in `netns` (a name under /var/run/netns or a path), or here when None."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _ip(self, *args: str, json_out: bool = False) -> Any:
        argv = _argv(self.netns, ["ip", *(["-j"] if json_out else []), *args])
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RouteError(f"ip {' '.join(args)}: {e}") from None
        if p.returncode != 0:
            raise RouteError(f"ip {' '.join(args)} failed: {p.stderr.strip()[:300]}")
        return json.loads(p.stdout or "[]") if json_out else p.stdout

    def routes(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for r in self._ip("-4", "route", "show", "table", "main", "proto", ROUTE_PROTO, json_out=True):
            if r.get("dst") and r.get("gateway"):
                out[_cidr(str(r["dst"]))] = str(r["gateway"])
        return out

    def ensure_route(self, dst: str, via: str) -> None:
        for r in self._ip("-4", "route", "show", "exact", dst, "table", "main", json_out=True):
            proto = str(r.get("protocol", ""))
            if proto != ROUTE_PROTO:
                raise RouteError(f"a route to {dst} (proto {proto or 'boot'}) exists that is not ours: left alone")
            if r.get("gateway") == via:
                return
        self._ip("-4", "route", "replace", dst, "via", via, "proto", ROUTE_PROTO)

    def delete_route(self, dst: str) -> None:
        if dst in self.routes():
            self._ip("-4", "route", "del", dst, "proto", ROUTE_PROTO)


class FakeRoutes:
    """In memory: ours and, to test refusals, routes that are not ours."""

    def __init__(self, foreign: Iterable[str] = ()) -> None:
        self.ours: dict[str, str] = {}
        self.foreign = set(foreign)

    def routes(self) -> dict[str, str]:
        return dict(self.ours)

    def ensure_route(self, dst: str, via: str) -> None:
        if dst in self.foreign:
            raise RouteError(f"a route to {dst} exists that is not ours: left alone")
        self.ours[dst] = via

    def delete_route(self, dst: str) -> None:
        self.ours.pop(dst, None)


def _cidr(value: str) -> str:
    """'10.244.1.0/24' as given; a bare host route ('10.1.2.3') as /32."""
    return str(ipaddress.ip_network(value, strict=False))


def internal_ip(node: Mapping[str, Any]) -> str:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP" and a.get("address"):
            return str(a["address"])
    return ""


def desired_routes(nodes: Iterable[Mapping[str, Any]], self_name: str) -> dict[str, str]:
    """podCIDR -> InternalIP of every other node that has both (IPv4; malformed values skipped)."""
    own = [ipaddress.ip_network(n["spec"]["podCIDR"], strict=False) for n in nodes
           if n.get("metadata", {}).get("name") == self_name and (n.get("spec") or {}).get("podCIDR")]
    out: dict[str, str] = {}
    for n in nodes:
        name = (n.get("metadata") or {}).get("name")
        cidr, ip = str((n.get("spec") or {}).get("podCIDR") or ""), internal_ip(n)
        if name == self_name or not cidr or not ip:
            continue
        try:
            net, addr = ipaddress.ip_network(cidr, strict=False), ipaddress.ip_address(ip)
        except ValueError:
            log.warning("node %s: podCIDR %r or InternalIP %r is not valid; no route", name, cidr, ip)
            continue
        if net.version != 4 or addr.version != 4 or addr.is_loopback:
            continue
        if any(net.overlaps(o) for o in own):
            log.warning("node %s: podCIDR %s overlaps this node's own; no route", name, net)
            continue
        out[str(net)] = str(addr)
    return out


def reconcile(host: RouteHost, nodes: Iterable[Mapping[str, Any]], self_name: str) -> list[str]:
    """Make our routes equal the desired ones; returns what changed ("add ...", "del ...")."""
    want = desired_routes(list(nodes), self_name)
    have = host.routes()
    done: list[str] = []
    for dst, via in sorted(want.items()):
        if have.get(dst) != via:
            try:
                host.ensure_route(dst, via)
                done.append(f"add {dst} via {via}")
            except RouteError as e:
                log.warning("pod route %s via %s: %s", dst, via, e)
    for dst in sorted(set(have) - set(want)):
        try:
            host.delete_route(dst)
            done.append(f"del {dst}")
        except RouteError as e:
            log.warning("pod route %s: %s", dst, e)
    return done


class NodeRoutes:
    """A Node informer drives reconcile(); nothing is touched before the informer has synced."""

    def __init__(self, client: Any, node_name: str, host: RouteHost, resync: float = 30.0) -> None:
        from kube.client.informer import Informer

        self.node_name, self.host, self.resync = node_name, host, resync
        self._kick = threading.Event()
        self._stop = threading.Event()
        self.informer = Informer(client, "nodes", on_add=lambda *_: self._kick.set(),
                                 on_update=lambda *_: self._kick.set(), on_delete=lambda *_: self._kick.set())
        self._thread: threading.Thread | None = None
        self.syncs = 0

    def start(self) -> None:
        self.informer.start()
        self._thread = threading.Thread(target=self._loop, name="node-routes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        self.informer.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sync(self) -> list[str]:
        done = reconcile(self.host, self.informer.list(), self.node_name)
        self.syncs += 1
        for what in done:
            log.info("pod route: %s", what)
        return done

    def _loop(self) -> None:
        while not self._stop.is_set() and not self.informer.wait_for_sync(timeout=1.0):
            pass
        while not self._stop.is_set():
            self._kick.clear()
            try:
                self.sync()
            except RouteError as e:
                log.warning("pod routes: %s; retrying in %.0f s", e, min(self.resync, 5.0))
                self._kick.wait(min(self.resync, 5.0))
                continue
            except Exception:  # a daemon thread must not die of one bad reconcile
                log.exception("pod routes: reconcile failed")
            self._kick.wait(self.resync)
