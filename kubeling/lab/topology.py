"""The lab's network: an underlay switch namespace and one namespace per node, wired with veths.

    <prefix>-sw        bridge br0, no address: the 192.168.56.0/24 "private network" of the VMs
    <prefix>-control   eth1 192.168.56.10/24   (kubeling server on :6443)
    <prefix>-node1     eth1 192.168.56.11/24   (kubeling agent + proxy, podCIDR 10.244.1.0/24)
    <prefix>-node2     eth1 192.168.56.12/24   ...

`plan()` is pure. `Host` does the work with iproute2 argument lists, always with `-n <netns>`:
veths are born in the switch namespace with their peer created directly in the node namespace
(`ip -n SW link add up-X type veth peer name eth1 netns NODE`), so no link, address or route ever
exists in the machine's own namespace, not even for a moment.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .state import LabError

NETNS_DIR = "/var/run/netns"
UNDERLAY = ipaddress.ip_network("192.168.56.0/24")
CONTROL_HOST = 10           # 192.168.56.10; workers are .11, .12, ...
SWITCH_BRIDGE = "br0"
NODE_IFNAME = "eth1"        # the node interface, as in the Vagrant VMs
API_PORT = 6443
MAX_WORKERS = 50


@dataclass(frozen=True)
class Node:
    name: str               # "control", "node1", ...
    netns: str              # "<prefix>-node1"
    ip: str                 # underlay address
    uplink: str             # the veth end in the switch namespace
    pod_cidr: str = ""      # workers only: 10.244.N.0/24

    @property
    def netns_path(self) -> str:
        return os.path.join(NETNS_DIR, self.netns)


@dataclass(frozen=True)
class Topology:
    prefix: str
    switch: str             # netns of the underlay bridge
    control: Node
    workers: tuple[Node, ...]

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (self.control, *self.workers)

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(n.netns for n in self.nodes)]

    @property
    def api_url(self) -> str:
        return f"https://{self.control.ip}:{API_PORT}"

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if name in (n.name, n.netns):
                return n
        names = ", ".join(n.name for n in self.nodes)
        raise LabError(f"no lab node {name!r}; the lab has: {names}")


def valid_prefix(prefix: str) -> bool:
    return 0 < len(prefix) <= 40 and prefix[0].isalpha() and all(c.isalnum() or c == "-" for c in prefix)


def plan(prefix: str, workers: int) -> Topology:
    if not valid_prefix(prefix):
        raise LabError(f"prefix {prefix!r}: use letters, digits and '-', starting with a letter (e.g. kl-lab)")
    if not 0 <= workers <= MAX_WORKERS:
        raise LabError(f"--nodes {workers}: choose 0..{MAX_WORKERS} workers")
    base = UNDERLAY.network_address
    control = Node("control", f"{prefix}-control", str(base + CONTROL_HOST), "up-control")
    nodes = tuple(Node(f"node{i}", f"{prefix}-node{i}", str(base + CONTROL_HOST + i), f"up-node{i}",
                       f"10.244.{i}.0/24") for i in range(1, workers + 1))
    return Topology(prefix, f"{prefix}-sw", control, nodes)


class Runner(Protocol):
    def __call__(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed (apt-get install iproute2 util-linux)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish in 30 s") from None
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


class Host:
    """The Linux side effects of the topology; every call is safe to repeat (ensure/delete)."""

    def __init__(self, runner: Runner = run) -> None:
        self.run = runner

    def netns_list(self) -> set[str]:
        out = self.run("ip", "netns", "list", check=False).stdout
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def ensure_netns(self, name: str) -> None:
        if name not in self.netns_list():
            res = self.run("ip", "netns", "add", name, check=False)
            if res.returncode != 0 and "File exists" not in res.stderr:
                raise LabError(f"cannot create netns {name}: {res.stderr.strip()}")
        self.run("ip", "-n", name, "link", "set", "lo", "up")

    def delete_netns(self, name: str) -> None:
        res = self.run("ip", "netns", "del", name, check=False)
        if res.returncode != 0 and os.path.exists(os.path.join(NETNS_DIR, name)):
            # A bind mount left without its file system entry (or the reverse): undo both by hand.
            self.run("umount", os.path.join(NETNS_DIR, name), check=False)
            try:
                os.unlink(os.path.join(NETNS_DIR, name))
            except FileNotFoundError:
                pass

    def link_exists(self, netns: str, ifname: str) -> bool:
        return self.run("ip", "-n", netns, "link", "show", "dev", ifname, check=False).returncode == 0

    def ensure_bridge(self, netns: str, name: str) -> None:
        if not self.link_exists(netns, name):
            self.run("ip", "-n", netns, "link", "add", name, "type", "bridge")
        self.run("ip", "-n", netns, "link", "set", name, "up")

    def ensure_uplink(self, switch: str, bridge: str, node: Node) -> None:
        """veth <switch>/uplink <-> <node>/eth1 with the node's underlay address."""
        if not self.link_exists(node.netns, NODE_IFNAME):
            if self.link_exists(switch, node.uplink):  # half of an older pair
                self.run("ip", "-n", switch, "link", "del", node.uplink, check=False)
            self.run("ip", "-n", switch, "link", "add", node.uplink, "type", "veth",
                     "peer", "name", NODE_IFNAME, "netns", node.netns)
        self.run("ip", "-n", switch, "link", "set", node.uplink, "master", bridge, "up")
        self.run("ip", "-n", node.netns, "addr", "replace", f"{node.ip}/{UNDERLAY.prefixlen}", "dev", NODE_IFNAME)
        self.run("ip", "-n", node.netns, "link", "set", NODE_IFNAME, "up")

    def sysctl(self, netns: str, key: str, value: str) -> None:
        """A /proc/sys/net value inside `netns` (nsenter --net: /proc/sys/net follows the netns)."""
        self.run("nsenter", f"--net={os.path.join(NETNS_DIR, netns)}", "sysctl", "-qw", f"{key}={value}")

    def netns_mounted(self, name: str) -> bool:
        target = os.path.join(os.path.realpath(NETNS_DIR), name)
        try:
            with open("/proc/self/mountinfo") as f:
                return any(line.split()[4] == target for line in f)
        except OSError:
            return False


def build(topo: Topology, host: Host, record: Callable[[str], None] | None = None) -> None:
    """Create every namespace and link of `topo` (idempotent). `record(netns)` runs before each netns is made."""
    for ns in topo.namespaces:
        if record is not None:
            record(ns)
        host.ensure_netns(ns)
    host.ensure_bridge(topo.switch, SWITCH_BRIDGE)
    for node in topo.nodes:
        host.ensure_uplink(topo.switch, SWITCH_BRIDGE, node)
    for node in topo.workers:
        host.sysctl(node.netns, "net.ipv4.ip_forward", "1")


def destroy(namespaces: list[str], host: Host) -> None:
    """Remove the lab's namespaces (their links go with them), switch last; 'not found' is success."""
    for ns in reversed(namespaces):
        host.delete_netns(ns)
    for ns in namespaces:
        if host.netns_mounted(ns):
            host.run("umount", os.path.join(NETNS_DIR, ns), check=False)
