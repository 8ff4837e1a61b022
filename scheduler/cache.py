"""The scheduler's cache: one NodeInfo per node with the pods bound (or assumed) to it,
kept by the node and pod informers' handlers, read by the scheduling loop.

An assumed pod is one the scheduler has picked a node for and is binding: it counts on that
node at once, so the next pod sees the capacity it uses, until the informer reports the pod
bound (it is then simply "bound") or the bind fails (`forget`).
"""

from __future__ import annotations

import threading
from typing import Any

from .framework import NodeInfo, PodInfo


class Cache:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.nodes: dict[str, NodeInfo] = {}
        self._pod_node: dict[str, str] = {}  # pod key -> node name (bound or assumed)
        self._assumed: set[str] = set()
        self._list: list[NodeInfo] | None = None

    # -- nodes --

    def _info(self, name: str) -> NodeInfo:
        n = self.nodes.get(name)
        if n is None:
            n = self.nodes[name] = NodeInfo(name)
        return n

    def set_node(self, node: dict[str, Any]) -> None:
        name = str((node.get("metadata") or {}).get("name") or "")
        with self.lock:
            n = self._info(name)
            was = n.present
            n.set_node(node)
            if not was:
                self._list = None

    def remove_node(self, name: str) -> None:
        with self.lock:
            n = self.nodes.get(name)
            if n is None:
                return
            if n.pods:
                n.present = False  # keep its pods counted until they go too
            else:
                del self.nodes[name]
            self._list = None

    def node_list(self) -> list[NodeInfo]:
        """The present nodes, in a stable order (by name). Call with the lock held."""
        if self._list is None:
            self._list = sorted((n for n in self.nodes.values() if n.present), key=lambda n: n.name)
        return self._list

    # -- pods --

    def add_pod(self, pi: PodInfo) -> None:
        """A pod bound to pi.node_name (a terminal pod frees its resources, as upstream)."""
        with self.lock:
            self._remove(pi.key)
            if pi.terminal or not pi.node_name:
                return
            self._info(pi.node_name).add_pod(pi)
            self._pod_node[pi.key] = pi.node_name

    def remove_pod(self, key: str) -> None:
        with self.lock:
            self._remove(key)

    def _remove(self, key: str) -> None:
        self._assumed.discard(key)
        node = self._pod_node.pop(key, None)
        if node is None:
            return
        n = self.nodes.get(node)
        if n is not None:
            n.remove_pod(key)
            if not n.present and not n.pods:
                del self.nodes[node]
                self._list = None

    def assume(self, pi: PodInfo, node: str) -> None:
        with self.lock:
            self._remove(pi.key)
            pi.node_name = node
            self._info(node).add_pod(pi)
            self._pod_node[pi.key] = node
            self._assumed.add(pi.key)

    def forget(self, key: str) -> None:
        """The bind failed: the assumed pod no longer counts."""
        with self.lock:
            if key in self._assumed:
                self._remove(key)

    def is_assumed(self, key: str) -> bool:
        with self.lock:
            return key in self._assumed

    def node_of(self, key: str) -> str | None:
        with self.lock:
            return self._pod_node.get(key)
