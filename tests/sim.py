"""Simulated nodes for control-plane tests: Node objects that stay Ready by
renewing their Lease, and a stand-in kubelet that moves pods bound to them
to Running/Ready (or Succeeded/Failed), all through the API.

    with SimCluster(client) as sim:
        sim.add_node("n1", cpu="4", memory="8Gi")
        sim.fail_pods_named("job-bad-")        # pods whose name starts so exit 1
        ...
        sim.stop_lease("n1")                   # the node "dies": its Lease is no longer renewed
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kube.client import Client, Informer
from kube.client.errors import ApiError


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SimCluster:
    def __init__(self, client: Client, *, lease_period: float = 1.0, run_delay: float = 0.0) -> None:
        self.client = client
        self.lease_period = lease_period
        self.run_delay = run_delay  # seconds between binding and Running (0: at once)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.renewing: set[str] = set()
        self.outcome: list[tuple[Callable[[dict[str, Any]], bool], str]] = []  # (match, "Succeeded"/"Failed")
        self.not_ready: Callable[[dict[str, Any]], bool] = lambda pod: False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ip = 1
        self.pods = Informer(client, "pods", on_add=self._on_pod, on_update=lambda _o, n: self._on_pod(n))
        self._lease_thread = threading.Thread(target=self._renew_leases, daemon=True, name="sim-leases")

    def __enter__(self) -> SimCluster:
        self.pods.start()
        self.pods.wait_for_sync(10)
        self._lease_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.pods.stop()
        self._lease_thread.join(5)

    # -- nodes -----------------------------------------------------------------

    def add_node(self, name: str, *, cpu: str = "4", memory: str = "8Gi", pods: str = "110",
                 labels: dict[str, str] | None = None, taints: list[dict[str, Any]] | None = None,
                 unschedulable: bool = False) -> dict[str, Any]:
        capacity = {"cpu": cpu, "memory": memory, "pods": pods}
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  **(labels or {})}},
            "spec": {"taints": taints or [], **({"unschedulable": True} if unschedulable else {})},
        }
        created = self.client.create("nodes", node)
        status = {"capacity": capacity, "allocatable": capacity,
                  "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                  "message": "simulated", "lastHeartbeatTime": now(),
                                  "lastTransitionTime": now()}],
                  "addresses": [{"type": "InternalIP", "address": f"192.0.2.{len(self.nodes) + 1}"},
                                {"type": "Hostname", "address": name}],
                  "nodeInfo": {"kubeletVersion": "v1.32.0-sim", "containerRuntimeVersion": "sim://1",
                               "osImage": "sim", "kernelVersion": "sim", "operatingSystem": "linux",
                               "architecture": "amd64"}}
        created["status"] = status
        created = self.client.update_status("nodes", created)
        self.nodes[name] = created
        self._renew(name)
        with self._lock:
            self.renewing.add(name)
        return created

    def stop_lease(self, name: str) -> None:
        with self._lock:
            self.renewing.discard(name)

    def _renew(self, name: str) -> None:
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}}
        try:
            cur = self.client.get("leases.coordination.k8s.io", name, namespace="kube-node-lease")
            cur["spec"]["renewTime"] = micro_now()
            self.client.update("leases.coordination.k8s.io", cur)
        except ApiError as e:
            if e.is_not_found():
                self.client.create("leases.coordination.k8s.io", lease, namespace="kube-node-lease")
            elif not e.is_conflict():
                raise

    def _renew_leases(self) -> None:
        while not self._stop.wait(self.lease_period):
            with self._lock:
                names = list(self.renewing)
            for n in names:
                try:
                    self._renew(n)
                except Exception:  # noqa: BLE001 - a test helper: keep renewing the others
                    pass

    # -- pods ------------------------------------------------------------------

    def finish_pods(self, match: Callable[[dict[str, Any]], bool], phase: str) -> None:
        """Pods matching `match` end in `phase` ("Succeeded" or "Failed") instead of running on."""
        self.outcome.append((match, phase))

    def _on_pod(self, pod: dict[str, Any]) -> None:
        node = (pod.get("spec") or {}).get("nodeName")
        if node not in self.nodes:
            return
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            threading.Thread(target=self._confirm_delete, args=(meta["namespace"], meta["name"]),
                             daemon=True).start()
            return
        if status.get("phase") not in (None, "Pending"):
            return
        threading.Thread(target=self._start_pod, args=(dict(pod),), daemon=True).start()

    def _confirm_delete(self, ns: str, name: str) -> None:
        try:
            self.client.delete("pods", name, namespace=ns, grace_period_seconds=0)
        except ApiError:
            pass

    def _start_pod(self, pod: dict[str, Any]) -> None:
        if self.run_delay:
            time.sleep(self.run_delay)
        with self._lock:
            self._ip += 1
            ip = f"10.244.{self._ip // 250}.{self._ip % 250 + 2}"
        phase = "Running"
        for match, end in self.outcome:
            if match(pod):
                phase = end
        ready = phase == "Running" and not self.not_ready(pod)
        containers = (pod.get("spec") or {}).get("containers") or []
        t = now()
        if phase == "Running":
            state: dict[str, Any] = {"running": {"startedAt": t}}
        else:
            code = 0 if phase == "Succeeded" else 1
            state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                    "startedAt": t, "finishedAt": t}}
        status = {
            "phase": phase, "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.1", "startTime": t,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                {"type": "Initialized", "status": "True", "lastTransitionTime": t},
                {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": t},
                {"type": "Ready", "status": str(ready), "lastTransitionTime": t},
            ],
            "containerStatuses": [{"name": c.get("name"), "image": c.get("image"), "imageID": "sim",
                                   "containerID": f"sim://{pod['metadata']['uid'][:12]}-{c.get('name')}",
                                   "ready": ready, "started": phase == "Running", "restartCount": 0,
                                   "state": state} for c in containers],
        }
        for _ in range(5):
            try:
                cur = self.client.get("pods", pod["metadata"]["name"], namespace=pod["metadata"]["namespace"])
                if (cur.get("status") or {}).get("phase") not in (None, "Pending"):
                    return
                cur["status"] = status
                self.client.update_status("pods", cur)
                return
            except ApiError as e:
                if e.is_not_found():
                    return
                if not e.is_conflict():
                    raise
