"""The agent's Node: registration, status, heartbeat Lease and pod CIDR (upstream kubelet's
nodestatus + nodelease).

    nsm = NodeStatusManager(client, "worker-1", internal_ip="10.0.0.11", api_endpoint="127.0.0.1:10250",
                            runtime_version=docker_version)
    nsm.start()                       # a thread: register, then lease + status loop; a watch thread
    nsm.wait_registered(30)           # True once the Node exists with our labels and status
    nsm.set_runtime_ready(False, "DockerUnreachable", "cannot reach /var/run/docker.sock")
    nsm.pod_cidr()                    # spec.podCIDR once node IPAM set it, "" before
    nsm.stop()

Interface (used by agent/agent.py):

- ``NodeStatusManager(client, node_name, *, internal_ip, api_endpoint, runtime_version, labels=None,
  lease_period=10.0, status_period=60.0, max_pods=110)``. ``api_endpoint`` is the agent API's
  "HOST:PORT": its port goes to status.daemonEndpoints.kubeletEndpoint.Port and the whole of it to the
  annotation ``kubeling.io/agent-endpoint``, which the apiserver prefers over InternalIP (in the lab the
  InternalIP lives in a namespace the apiserver cannot reach). ``runtime_version()`` returns the Docker
  version ("27.5.1", or already "docker://27.5.1") and raises when Docker is unreachable. ``labels`` are
  added to the well-known ones (kubernetes.io/hostname, kubernetes.io/os, kubernetes.io/arch,
  beta.kubernetes.io/os, beta.kubernetes.io/arch).
- ``start()`` / ``stop()``: the background threads; stop() returns once they ended.
- ``set_runtime_ready(ok, reason="", message="")``: the runtime's health as the pod workers see it;
  a change posts the status at once. Before the first call the runtime counts as ready when
  ``runtime_version()`` answers.
- ``pod_cidr() -> str``: the Node's spec.podCIDR, kept fresh by a watch on the Node.
- ``wait_registered(timeout) -> bool``.

Rules (upstream's):
- Registration creates the Node; if it exists (a restart) it is adopted: our labels and annotation
  are merged in, the rest (spec, taints, other labels) is left alone. A Node deleted while we run is
  registered again.
- The status is posted when it changed and at least every ``status_period`` seconds. Every post bumps
  each condition's lastHeartbeatTime; lastTransitionTime changes only when the condition's status
  does (compared with what the server holds). Conditions owned by others (NetworkUnavailable) are
  kept. Writes are compare-and-swap on resourceVersion, retried on conflict.
- The Lease kube-node-lease/<node> (holderIdentity = node, leaseDurationSeconds 40, renewTime in
  MicroTime, owned by the Node so it goes with it) is renewed every ``lease_period`` seconds.
- Pressure conditions turn True when memory available < 100Mi, root disk free < 10%, or more than
  90% of the pid limit is used (upstream's default hard eviction thresholds).
"""

from __future__ import annotations

import copy
import logging
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psutil

from kube.client import Client, ClientError
from kube.client.errors import ApiError

log = logging.getLogger("kubeling.agent.node")

Obj = dict[str, Any]

KUBELET_VERSION = "v1.32.0-kubeling"
ENDPOINT_ANNOTATION = "kubeling.io/agent-endpoint"
LEASE_NAMESPACE = "kube-node-lease"
LEASES = "leases.coordination.k8s.io"
LEASE_DURATION_SECONDS = 40
MEMORY_THRESHOLD = 100 * 1024 * 1024  # memory.available < 100Mi
DISK_THRESHOLD = 0.10  # nodefs.available < 10%
PID_THRESHOLD = 0.90  # pids used > 90% of the limit
CONFLICT_RETRIES = 5
OUR_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
        "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}

# condition type -> ((reason, message) when False, (reason, message) when True)
PRESSURE_TEXT = {
    "MemoryPressure": (("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                       ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available")),
    "DiskPressure": (("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                     ("KubeletHasDiskPressure", "kubelet has disk pressure")),
    "PIDPressure": (("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    ("KubeletHasInsufficientPID", "kubelet has insufficient PID available")),
}


def rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def go_arch() -> str:
    m = platform.machine().lower()
    return ARCH.get(m, m)


# -- host facts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostFacts:
    """What the host looks like right now; read_host() reads it, tests make their own."""

    cpus: int
    memory_total: int  # bytes
    memory_available: int
    disk_total: int  # bytes, of the root filesystem
    disk_free: int
    pids: int
    pid_max: int


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return default


def read_host(root: str = "/") -> HostFacts:
    vm = psutil.virtual_memory()
    disk = psutil.disk_usage(root)
    limits = [int(v) for v in (_read("/proc/sys/kernel/pid_max"), _read("/proc/sys/kernel/threads-max"))
              if v.isdigit()]
    return HostFacts(cpus=psutil.cpu_count(logical=True) or 1, memory_total=int(vm.total),
                     memory_available=int(vm.available), disk_total=int(disk.total), disk_free=int(disk.free),
                     pids=len(psutil.pids()), pid_max=min(limits) if limits else 32768)


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"').strip("'")
    return "Linux"


# -- pure status pieces ----------------------------------------------------------------------


def pressures(h: HostFacts) -> dict[str, bool]:
    """Condition type -> True when the threshold is crossed."""
    return {
        "MemoryPressure": h.memory_available < MEMORY_THRESHOLD,
        "DiskPressure": h.disk_total > 0 and h.disk_free / h.disk_total < DISK_THRESHOLD,
        "PIDPressure": h.pid_max > 0 and h.pids > PID_THRESHOLD * h.pid_max,
    }


def capacity(h: HostFacts, max_pods: int) -> tuple[dict[str, str], dict[str, str]]:
    """(capacity, allocatable): allocatable keeps the hard eviction thresholds back, like upstream."""
    cap = {"cpu": str(h.cpus), "memory": f"{h.memory_total // 1024}Ki",
           "ephemeral-storage": f"{h.disk_total // 1024}Ki", "pods": str(max_pods),
           "hugepages-1Gi": "0", "hugepages-2Mi": "0"}
    alloc = dict(cap)
    alloc["memory"] = f"{max(0, h.memory_total - MEMORY_THRESHOLD) // 1024}Ki"
    alloc["ephemeral-storage"] = str(int(h.disk_total * (1 - DISK_THRESHOLD)))
    return cap, alloc


def desired_conditions(h: HostFacts, runtime_ok: bool, runtime_reason: str, runtime_message: str) -> list[Obj]:
    """Our conditions without times: type, status, reason, message."""
    out = []
    for typ, crossed in pressures(h).items():
        reason, message = PRESSURE_TEXT[typ][1 if crossed else 0]
        out.append({"type": typ, "status": "True" if crossed else "False", "reason": reason, "message": message})
    if runtime_ok:
        out.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status"})
    else:
        why = ": ".join(p for p in (runtime_reason, runtime_message) if p) or "unknown"
        out.append({"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                    "message": f"container runtime is not ready: {why}"})
    return out


def merge_conditions(existing: list[Obj], desired: list[Obj], now: str) -> list[Obj]:
    """Upstream's rules: heartbeat every post, transition only when the status changes; keep
    conditions we do not own; ours in a stable order after the others."""
    old = {c.get("type"): c for c in existing if isinstance(c, dict)}
    ours = {c["type"] for c in desired}
    out = [copy.deepcopy(c) for c in existing if isinstance(c, dict) and c.get("type") not in ours]
    for d in desired:
        prev = old.get(d["type"])
        transition = prev.get("lastTransitionTime") if prev and prev.get("status") == d["status"] else None
        out.append({**d, "lastHeartbeatTime": now, "lastTransitionTime": transition or now})
    return out


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """"HOST:PORT" or "[v6]:PORT" -> (host, port)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"the agent endpoint must be HOST:PORT, got {endpoint!r}")
    return host.strip("[]"), int(port)


# -- the manager -----------------------------------------------------------------------------


class NodeStatusManager:
    """Registers this node and keeps its status and Lease fresh (see the module docstring)."""

    def __init__(self, client: Client, node_name: str, *, internal_ip: str, api_endpoint: str,
                 runtime_version: Callable[[], str], labels: dict[str, str] | None = None,
                 lease_period: float = 10.0, status_period: float = 60.0, max_pods: int = 110) -> None:
        if not node_name:
            raise ValueError("the node needs a name")
        _, self._port = split_endpoint(api_endpoint)
        self.client = client
        self.node_name = node_name
        self.internal_ip = internal_ip
        self.api_endpoint = api_endpoint
        self.runtime_version = runtime_version
        self.lease_period = lease_period
        self.status_period = status_period
        self.max_pods = max_pods
        arch = go_arch()
        self.labels: dict[str, str] = {
            "kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": arch, **(labels or {})}
        self.read_host: Callable[[], HostFacts] = read_host  # tests replace it
        self._lock = threading.Lock()
        self._runtime: tuple[bool, str, str] | None = None
        self._pod_cidr = ""
        self._uid = ""
        self._lease: Obj | None = None
        self._last_posted: Any = None
        self._last_post_at = 0.0
        self._registered = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._gone = threading.Event()  # the watch saw our Node deleted
        self._threads: list[threading.Thread] = []
        self._watch: Any = None

    # -- interface --

    def start(self) -> NodeStatusManager:
        if self._threads:
            raise RuntimeError("the node status manager is already started")
        self._stop.clear()
        for target, name in ((self._run, "node-status"), (self._watch_node, "node-watch")):
            t = threading.Thread(target=target, name=f"{name}-{self.node_name}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        w = self._watch
        if w is not None:
            w.close()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def set_runtime_ready(self, ok: bool, reason: str = "", message: str = "") -> None:
        with self._lock:
            changed = self._runtime != (ok, reason, message)
            self._runtime = (ok, reason, message)
        if changed:
            log.info("node=%s runtime ready=%s reason=%s", self.node_name, ok, reason or "-")
            self._wake.set()

    def pod_cidr(self) -> str:
        with self._lock:
            return self._pod_cidr

    def wait_registered(self, timeout: float) -> bool:
        return self._registered.wait(timeout)

    # -- the status of the node --

    def _runtime_state(self) -> tuple[bool, str, str, str]:
        """(ok, reason, message, containerRuntimeVersion)."""
        try:
            v = str(self.runtime_version())
            version = v if "://" in v else f"docker://{v}"
            probe_ok, probe_msg = True, ""
        except Exception as e:  # noqa: BLE001 - any failure means "runtime down"
            version, probe_ok, probe_msg = "docker://unknown", False, f"{type(e).__name__}: {e}"
        with self._lock:
            rt = self._runtime
        if rt is not None:
            return rt[0], rt[1], rt[2], version
        return probe_ok, "" if probe_ok else "RuntimeUnreachable", probe_msg, version

    def desired_status(self) -> tuple[Obj, list[Obj]]:
        """(status without conditions, our conditions without times), from the host right now."""
        h = self.read_host()
        ok, reason, message, version = self._runtime_state()
        cap, alloc = capacity(h, self.max_pods)
        machine_id = _read("/etc/machine-id")
        status: Obj = {
            "capacity": cap,
            "allocatable": alloc,
            "addresses": [{"type": "InternalIP", "address": self.internal_ip},
                          {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._port}},
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": _read("/sys/class/dmi/id/product_uuid") or machine_id,
                "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(),
                "osImage": os_image(),
                "containerRuntimeVersion": version,
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": go_arch(),
            },
        }
        return status, desired_conditions(h, ok, reason, message)

    def _node_object(self, status: Obj, conds: list[Obj]) -> Obj:
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": dict(self.labels),
                             "annotations": {ENDPOINT_ANNOTATION: self.api_endpoint}},
                "spec": {},
                "status": {**status, "conditions": merge_conditions([], conds, rfc3339())}}

    def _observe(self, node: Obj) -> None:
        spec = node.get("spec") or {}
        with self._lock:
            self._pod_cidr = str(spec.get("podCIDR") or "")
            self._uid = str((node.get("metadata") or {}).get("uid") or self._uid)

    def register(self) -> Obj:
        """Create the Node, or adopt the existing one; returns it."""
        status, conds = self.desired_status()
        try:
            node = self.client.create("nodes", self._node_object(status, conds))
            log.info("node=%s registered", self.node_name)
        except ApiError as e:
            if not e.is_already_exists():
                raise
            node = self.client.patch("nodes", self.node_name, {"metadata": {
                "labels": self.labels, "annotations": {ENDPOINT_ANNOTATION: self.api_endpoint}}})
            log.info("node=%s exists: adopted", self.node_name)
        self._observe(node)
        node = self.post_status(force=True)
        self._registered.set()
        return node

    def post_status(self, force: bool = False) -> Obj:
        """Write the status if it changed, if status_period passed, or if forced. Returns the Node
        as last seen. Raises ApiError 404 when the Node is gone."""
        status, conds = self.desired_status()
        fingerprint = (status, conds)
        due = time.monotonic() - self._last_post_at >= self.status_period
        if not (force or due or fingerprint != self._last_posted):
            return {}
        for attempt in range(CONFLICT_RETRIES):
            node = self.client.get("nodes", self.node_name)
            self._observe(node)
            old = node.get("status") or {}
            node["status"] = {**old, **status,
                              "conditions": merge_conditions(old.get("conditions") or [], conds, rfc3339())}
            try:
                out = self.client.update_status("nodes", node)
            except ApiError as e:
                if e.is_conflict() and attempt < CONFLICT_RETRIES - 1:
                    continue
                raise
            self._observe(out)
            changed = fingerprint != self._last_posted
            self._last_posted, self._last_post_at = fingerprint, time.monotonic()
            (log.info if changed else log.debug)("node=%s status posted ready=%s", self.node_name,
                                                 conds[-1]["status"])
            return out
        raise AssertionError("unreachable")

    # -- the lease --

    def renew_lease(self) -> Obj:
        """Create or renew kube-node-lease/<node>; retried on conflict with a fresh read."""
        for attempt in range(CONFLICT_RETRIES):
            lease = self._lease
            if lease is None:
                try:
                    lease = self.client.get(LEASES, self.node_name, LEASE_NAMESPACE)
                except ApiError as e:
                    if not e.is_not_found():
                        raise
            now = micro_time()
            spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                    "renewTime": now}
            owner = [{"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self._uid}] \
                if self._uid else []
            try:
                if lease is None:
                    meta: Obj = {"name": self.node_name, "namespace": LEASE_NAMESPACE}
                    if owner:
                        meta["ownerReferences"] = owner
                    out = self.client.create(LEASES, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                                      "metadata": meta, "spec": spec}, LEASE_NAMESPACE)
                else:
                    lease = copy.deepcopy(lease)
                    lease["spec"] = {**(lease.get("spec") or {}), **spec}
                    if owner and not any(r.get("uid") == self._uid
                                         for r in lease["metadata"].get("ownerReferences") or []):
                        lease["metadata"]["ownerReferences"] = owner
                    out = self.client.update(LEASES, lease, namespace=LEASE_NAMESPACE)
            except ApiError as e:
                self._lease = None
                if (e.is_conflict() or e.is_already_exists() or e.is_not_found()) \
                        and attempt < CONFLICT_RETRIES - 1:
                    continue
                raise
            self._lease = out
            log.debug("node=%s lease renewed renewTime=%s", self.node_name, now)
            return out
        raise AssertionError("unreachable")

    # -- threads --

    def _run(self) -> None:
        backoff = 0.2
        next_lease = 0.0
        while not self._stop.is_set():
            try:
                if self._gone.is_set():
                    raise ApiError(404, "NotFound", f'nodes "{self.node_name}" not found')
                if not self._registered.is_set():
                    self.register()
                    self._wake.set()
                if time.monotonic() >= next_lease:
                    self.renew_lease()
                    next_lease = time.monotonic() + self.lease_period
                self.post_status()
                backoff = 0.2
            except ApiError as e:
                if e.is_not_found() and self._registered.is_set():
                    log.warning("node=%s the Node was deleted: registering again", self.node_name)
                    self._registered.clear()
                    self._gone.clear()
                    with self._lock:
                        self._uid = ""
                    self._lease = None
                    continue
                log.warning("node=%s status/lease update failed: %s", self.node_name, e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.lease_period)
                continue
            except ClientError as e:
                log.warning("node=%s cannot reach the apiserver: %s", self.node_name, e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.lease_period)
                continue
            wait = max(0.0, min(next_lease - time.monotonic(),
                                self._last_post_at + self.status_period - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()

    def _watch_node(self) -> None:
        """Keep pod_cidr() fresh: a watch on our Node, re-opened when it ends."""
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self._watch = w = self.client.watch("nodes", field_selector=f"metadata.name={self.node_name}",
                                                    timeout_seconds=300)
                if self._stop.is_set():
                    w.close()
                    return
                for typ, obj in w:
                    if typ in ("ADDED", "MODIFIED"):
                        self._observe(obj)
                    elif typ == "DELETED" and self._registered.is_set():
                        self._gone.set()
                        self._wake.set()
                    backoff = 0.2
            except ClientError as e:
                if self._stop.is_set():
                    return
                log.debug("node=%s node watch failed: %s", self.node_name, e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self._watch = None


__all__ = ["ENDPOINT_ANNOTATION", "KUBELET_VERSION", "HostFacts", "NodeStatusManager", "read_host", "split_endpoint"]
