"""Node IPAM controller: gives every node a pod CIDR (spec.podCIDR and spec.podCIDRs).

Upstream's RangeAllocator: the cluster CIDR is cut into blocks of `node_cidr_mask_size`
bits, and each node without a podCIDR gets the lowest free block. Before allocating anything
the used set is rebuilt from every existing node's podCIDRs (so a restart never hands out a
block twice), a node that already has a podCIDR keeps it (and it is marked used, even when set
by someone else), and a deleted node's block is released for the next node. IPv4 only.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

from kube.client import Client
from kube.client.errors import ApiError

from .base import Controller

log = logging.getLogger("kubeling.controllers.nodeipam")

Obj = dict[str, Any]


class CidrSet:
    """The blocks of one cluster CIDR, and which are taken. Pure; not thread-safe on its own."""

    def __init__(self, cluster_cidr: str, mask_size: int) -> None:
        self.network = ipaddress.IPv4Network(cluster_cidr, strict=True)
        if not self.network.prefixlen <= mask_size <= 32:
            raise ValueError(f"node_cidr_mask_size {mask_size} must be between the cluster CIDR's prefix "
                             f"length ({self.network.prefixlen}) and 32")
        self.mask_size = mask_size
        self.size = 1 << (mask_size - self.network.prefixlen)
        self.used: set[int] = set()

    def _index(self, cidr: str) -> int | None:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return None
        if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen != self.mask_size \
                or not net.subnet_of(self.network):
            return None
        return (int(net.network_address) - int(self.network.network_address)) >> (32 - self.mask_size)

    def _cidr(self, index: int) -> str:
        base = int(self.network.network_address) + (index << (32 - self.mask_size))
        return f"{ipaddress.IPv4Address(base)}/{self.mask_size}"

    def occupy(self, cidr: str) -> bool:
        """Mark a block used; False if it is not one of ours (another range, another size)."""
        i = self._index(cidr)
        if i is None:
            return False
        self.used.add(i)
        return True

    def release(self, cidr: str) -> None:
        i = self._index(cidr)
        if i is not None:
            self.used.discard(i)

    def allocate(self) -> str:
        for i in range(self.size):
            if i not in self.used:
                self.used.add(i)
                return self._cidr(i)
        raise RuntimeError(f"cluster CIDR {self.network} is full: all {self.size} /{self.mask_size} blocks are used")


def node_cidrs(node: Obj) -> list[str]:
    spec = node.get("spec") or {}
    return [str(c) for c in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])]


class NodeIpamController(Controller):
    """Allocates spec.podCIDR/podCIDRs to nodes from one cluster CIDR."""

    name = "nodeipam"
    workers = 1  # allocation is serial anyway; one worker keeps the log in order

    def __init__(self, client: Client, *, cluster_cidr: str = "10.244.0.0/16", node_cidr_mask_size: int = 24,
                 workers: int | None = None) -> None:
        self.cidrs = CidrSet(cluster_cidr, node_cidr_mask_size)
        self._assigned: dict[str, list[str]] = {}  # node name -> the blocks we account to it
        self._lock = threading.Lock()
        self._initialised = False
        super().__init__(client, workers=workers)

    def setup(self) -> None:
        self.nodes = self.watch("nodes")

    def _initialise(self) -> None:
        """Occupy every block existing nodes hold, before the first allocation (informers have synced)."""
        for node in self.nodes.list():
            self._account(node["metadata"]["name"], node_cidrs(node))
        self._initialised = True
        log.info("controller=nodeipam cluster_cidr=%s mask=%d used=%d", self.cidrs.network, self.cidrs.mask_size,
                 len(self.cidrs.used))

    def _account(self, name: str, cidrs: list[str]) -> None:
        for c in self._assigned.get(name, []):
            if c not in cidrs:
                self.cidrs.release(c)
        for c in cidrs:
            if not self.cidrs.occupy(c):
                log.warning("controller=nodeipam node=%s podCIDR=%s is outside %s/%d blocks: left as is", name, c,
                            self.cidrs.network, self.cidrs.mask_size)
        self._assigned[name] = cidrs

    def reconcile(self, key: str) -> None:
        with self._lock:
            if not self._initialised:
                self._initialise()
            node = self.nodes.get(key)
            if node is None:
                for c in self._assigned.pop(key, []):
                    self.cidrs.release(c)
                    log.info("controller=nodeipam node=%s deleted: released %s", key, c)
                return
            have = node_cidrs(node)
            if have:
                self._account(key, have)
                return
            # our own allocation may simply not have reached the cache yet: reuse it
            pending = self._assigned.get(key)
            cidr = pending[0] if pending else self.cidrs.allocate()
            self._assigned[key] = [cidr]
        try:
            self.client.patch("nodes", key, {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
        except ApiError as e:
            if e.is_not_found():
                return  # the delete event releases it
            raise
        log.info("controller=nodeipam node=%s podCIDR=%s", key, cidr)
