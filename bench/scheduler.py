"""Scheduler benchmark: throughput (pods bound per second) and p99 time-to-bind (pod created ->
bind seen on a watch) for PODS pods over 100 and 1,000 nodes, kubeling's scheduler side by side
with a trivial baseline (first node that fits, same binder pool), each run on a fresh apiserver.

    .venv/bin/python bench/scheduler.py [--pods 1000] [--nodes 100,1000]

Nodes are created through the API (Ready, with capacity); no kubelet runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from apiserver_proc import ApiServer  # noqa: E402

from kube.client import Client, Informer  # noqa: E402
from scheduler.framework import PodInfo  # noqa: E402
from scheduler.scheduler import Scheduler  # noqa: E402

TARGETS = {100: 300.0, 1000: 100.0}
NS = "default"


class Runnable(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...
    def wait_for_sync(self, timeout: float | None = None) -> bool: ...


class BaselineScheduler:
    """The simplest correct-enough scheduler: the first node with room for cpu, memory and pods."""

    def __init__(self, client: Client, binders: int = 16) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.free: dict[str, list[int]] = {}  # node -> [cpu, memory, pods] left
        self.order: list[str] = []
        self.pending: list[dict[str, Any]] = []
        self.cv = threading.Condition(self.lock)
        self.pool = ThreadPoolExecutor(binders)
        self.stopped = False
        self.nodes = Informer(client, "nodes", on_add=self._node)
        self.pods = Informer(client, "pods", on_add=self._pod)
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _node(self, node: dict[str, Any]) -> None:
        a = node.get("status", {}).get("allocatable") or {}
        if not a:
            return
        probe = PodInfo.from_pod({"spec": {"containers": [{"resources": {"requests": {
            "cpu": a.get("cpu", "0"), "memory": a.get("memory", "0")}}}]}})
        with self.lock:
            name = node["metadata"]["name"]
            if name not in self.free:
                self.order.append(name)
            self.free[name] = [probe.requests.get("cpu", 0), probe.requests.get("memory", 0),
                               int(a.get("pods", "110"))]

    def _pod(self, pod: dict[str, Any]) -> None:
        if pod["spec"].get("nodeName"):
            return
        with self.cv:
            self.pending.append(pod)
            self.cv.notify()

    def start(self) -> BaselineScheduler:
        self.nodes.start()
        self.pods.start()
        self.thread.start()
        return self

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return self.nodes.wait_for_sync(timeout) and self.pods.wait_for_sync(timeout)

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.pending and not self.stopped:
                    self.cv.wait()
                if self.stopped:
                    return
                pod = self.pending.pop(0)
                pi = PodInfo.from_pod(pod)
                cpu, mem = pi.requests.get("cpu", 0), pi.requests.get("memory", 0)
                for name in self.order:
                    f = self.free[name]
                    if f[0] >= cpu and f[1] >= mem and f[2] >= 1:
                        f[0] -= cpu
                        f[1] -= mem
                        f[2] -= 1
                        self.pool.submit(self.client.bind, pod, name)
                        break

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify()
        self.pool.shutdown(wait=True)
        self.nodes.stop()
        self.pods.stop()


@dataclass
class Figures:
    nodes: int
    scheduler: str
    pods_per_s: float
    p50: float
    p99: float
    bound: int


def make_nodes(client: Client, n: int) -> None:
    def one(i: int) -> None:
        name = f"node-{i:04d}"
        cap = {"cpu": "32", "memory": "64Gi", "pods": "110"}
        node = client.create("nodes", {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                                       "spec": {}})
        node["status"] = {"capacity": cap, "allocatable": cap,
                          "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}
        client.update_status("nodes", node)

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(one, range(n)))


def run_one(kind: str, nodes: int, pods: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="kubeling-bench-sched-") as d:
        srv = ApiServer(d)
        srv.start()
        client = Client.from_kubeconfig(srv.kubeconfig)
        try:
            make_nodes(client, nodes)
            sched: Runnable = (Scheduler(client, seed=1) if kind == "kubeling" else BaselineScheduler(client))
            sched.start()
            assert sched.wait_for_sync(30)
            created: dict[str, float] = {}
            bound: dict[str, float] = {}
            done = threading.Event()

            def on_pod(pod: dict[str, Any]) -> None:
                name = pod["metadata"]["name"]
                if pod["spec"].get("nodeName") and name not in bound:
                    bound[name] = time.monotonic()
                    if len(bound) >= pods:
                        done.set()

            watcher = Informer(client, "pods", namespace=NS, on_add=on_pod, on_update=lambda _o, n: on_pod(n))
            watcher.start()
            watcher.wait_for_sync(10)

            def create(i: int) -> None:
                name = f"bench-{i:05d}"
                created[name] = time.monotonic()
                client.create("pods", {"metadata": {"name": name}, "spec": {"containers": [
                    {"name": "c", "image": "busybox",
                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}, namespace=NS)

            t0 = time.monotonic()
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(create, range(pods)))
            done.wait(120)
            elapsed = max(bound.values(), default=t0) - t0
            lat = sorted(bound[n] - created[n] for n in bound)
            sched.stop()
            watcher.stop()

            def pct(q: float) -> float:
                return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

            return Figures(nodes, kind, len(bound) / elapsed if elapsed > 0 else 0.0, pct(0.50), pct(0.99),
                           len(bound))
        finally:
            client.close()
            srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--nodes", default="100,1000")
    args = ap.parse_args()
    rows: list[Figures] = []
    for n in (int(x) for x in args.nodes.split(",")):
        for kind in ("kubeling", "baseline"):
            rows.append(run_one(kind, n, args.pods))
            r = rows[-1]
            print(f"  ... {kind} on {n} nodes: {r.pods_per_s:.0f} pods/s", file=sys.stderr)
    print(f"{'nodes':>6} {'scheduler':<10} {'bound':>6} {'pods/s':>8} {'target':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        target = TARGETS.get(r.nodes)
        t = f">={target:.0f}" if target and r.scheduler == "kubeling" else ""
        ok = "" if not t else ("  ok" if r.pods_per_s >= (target or 0) else "  MISS")
        print(f"{r.nodes:>6} {r.scheduler:<10} {r.bound:>6} {r.pods_per_s:>8.0f} {t:>8} {r.p50 * 1000:>8.0f} "
              f"{r.p99 * 1000:>8.0f}{ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
