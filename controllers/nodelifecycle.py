"""Node lifecycle controller: notices dead nodes, taints them, and evicts their pods.

Health. Every `monitor_period` seconds each node is looked at. The node is alive while its
Lease (kube-node-lease/<node>) renewTime or its Ready condition's lastHeartbeatTime keeps
changing. As upstream, the controller times those changes with its own clock (when it saw the
value change), so clock skew between nodes and the control plane does not matter; a node first
seen gets a full grace period. After `node_monitor_grace_period` seconds without a change, the
node's Ready, MemoryPressure, DiskPressure and PIDPressure conditions become Unknown with
reason NodeStatusUnknown ("Kubelet stopped posting node status."), lastHeartbeatTime kept.
The controller never sets Ready back to True: the kubelet does that when it comes back.

Taints follow the conditions (upstream's TaintNodesByCondition and taint-based eviction):

    Ready Unknown  -> node.kubernetes.io/unreachable  NoSchedule + NoExecute (with timeAdded)
    Ready False    -> node.kubernetes.io/not-ready    NoSchedule + NoExecute (with timeAdded)
    MemoryPressure / DiskPressure / PIDPressure True, NetworkUnavailable True, spec.unschedulable
                   -> the matching NoSchedule taint

Pods of a node that is not Ready get their Ready condition set False (upstream's
MarkPodsNotReady), so endpoints drop them at once.

Eviction (upstream's NoExecute taint manager): a pod on a node with NoExecute taints is
deleted at once if it does not tolerate one of them, otherwise when the shortest
tolerationSeconds of the tolerations it uses runs out, counted from the taint's timeAdded; a
toleration without tolerationSeconds tolerates for ever. The apiserver gives pods 300 s
tolerations for not-ready/unreachable; `default_toleration_seconds`, when set, stands in for a
pod that has no toleration for those two taints at all (instead of evicting it at once).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kube.client import Client
from kube.client.errors import ApiError

from .base import Controller

log = logging.getLogger("kubeling.controllers.nodelifecycle")

Obj = dict[str, Any]

LEASE_NAMESPACE = "kube-node-lease"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
# condition type -> (status that taints, taint key), NoSchedule
CONDITION_TAINTS: dict[str, tuple[str, str]] = {
    "MemoryPressure": ("True", "node.kubernetes.io/memory-pressure"),
    "DiskPressure": ("True", "node.kubernetes.io/disk-pressure"),
    "PIDPressure": ("True", "node.kubernetes.io/pid-pressure"),
    "NetworkUnavailable": ("True", "node.kubernetes.io/network-unavailable"),
}
UNKNOWN_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
NODE_TAINT_KEYS = {TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE,
                   *(key for _, key in CONDITION_TAINTS.values())}


def rfc3339(t: datetime | None = None) -> str:
    return (t or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def condition(obj: Obj, typ: str) -> Obj | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == typ:
            return dict(c)
    return None


def toleration_tolerates(tol: Obj, taint: Obj) -> bool:
    """upstream Toleration.ToleratesTaint."""
    if tol.get("effect") and tol.get("effect") != taint.get("effect"):
        return False
    if (tol.get("operator") or "Equal") == "Exists":
        return not tol.get("key") or tol.get("key") == taint.get("key")
    return tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or "")


def tolerates_all(tolerations: list[Obj], taints: list[Obj]) -> bool:
    return all(any(toleration_tolerates(t, taint) for t in tolerations) for taint in taints)


def desired_node_taints(node: Obj, now: str) -> list[Obj]:
    """The node's taints with ours made to match its conditions; foreign taints stay as they are,
    ours that stay keep their timeAdded."""
    ready = (condition(node, "Ready") or {}).get("status", "Unknown")
    want: list[tuple[str, str]] = []
    if ready == "Unknown":
        want += [(TAINT_UNREACHABLE, "NoSchedule"), (TAINT_UNREACHABLE, "NoExecute")]
    elif ready == "False":
        want += [(TAINT_NOT_READY, "NoSchedule"), (TAINT_NOT_READY, "NoExecute")]
    for typ, (status, key) in CONDITION_TAINTS.items():
        if (condition(node, typ) or {}).get("status") == status:
            want.append((key, "NoSchedule"))
    if (node.get("spec") or {}).get("unschedulable"):
        want.append((TAINT_UNSCHEDULABLE, "NoSchedule"))
    current = list((node.get("spec") or {}).get("taints") or [])
    out = [t for t in current if t.get("key") not in NODE_TAINT_KEYS or (t.get("key"), t.get("effect")) in want]
    have = {(t.get("key"), t.get("effect")) for t in out}
    for key, effect in want:
        if (key, effect) not in have:
            taint: Obj = {"key": key, "effect": effect}
            if effect == "NoExecute":
                taint["timeAdded"] = now
            out.append(taint)
    return out


def eviction_delay(pod: Obj, taints: list[Obj], now: datetime, default_seconds: float | None) -> float | None:
    """Seconds from `now` until the pod must leave a node with these NoExecute taints (<= 0: at
    once), None for never. Upstream's getMinTolerationTime over the first toleration matching
    each taint, counted from the taint's timeAdded."""
    tolerations = list((pod.get("spec") or {}).get("tolerations") or [])
    delays: list[float] = []
    for taint in taints:
        match = next((t for t in tolerations if toleration_tolerates(t, taint)), None)
        if match is None:
            if default_seconds is None or taint.get("key") not in (TAINT_NOT_READY, TAINT_UNREACHABLE):
                return 0.0
            seconds = default_seconds
        elif match.get("tolerationSeconds") is None:
            continue
        else:
            seconds = max(0.0, float(match["tolerationSeconds"]))
        added = parse_time(taint.get("timeAdded")) or now
        delays.append((added - now).total_seconds() + seconds)
    return min(delays) if delays else None


@dataclass
class Probe:
    renew_time: str
    heartbeat: str
    seen_at: float  # time.monotonic() when either value last changed


class NodeLifecycleController(Controller):
    """Marks nodes whose kubelet went silent Unknown, taints them, evicts their pods."""

    name = "nodelifecycle"

    def __init__(self, client: Client, *, node_monitor_grace_period: float = 40.0, monitor_period: float = 5.0,
                 default_toleration_seconds: float | None = None, workers: int | None = None) -> None:
        self.grace = node_monitor_grace_period
        self.resync_period = monitor_period  # the periodic tick: every node is looked at this often
        self.default_toleration_seconds = default_toleration_seconds
        self._probes: dict[str, Probe] = {}
        self._lock = threading.Lock()
        super().__init__(client, workers=workers)

    def setup(self) -> None:
        self.nodes = self.watch("nodes")
        self.leases = self.watch("leases.coordination.k8s.io", namespace=LEASE_NAMESPACE,
                                 key_fn=lambda lease: lease["metadata"]["name"])
        self.pods = self.watch("pods", key_fn=lambda pod: (pod.get("spec") or {}).get("nodeName"))

    # -- health ---------------------------------------------------------------------

    def _silent_for(self, node: Obj) -> float:
        """Seconds since the node's lease or heartbeat last changed, by our clock."""
        name = node["metadata"]["name"]
        lease = self.leases.get(f"{LEASE_NAMESPACE}/{name}") or {}
        renew = str((lease.get("spec") or {}).get("renewTime") or "")
        heartbeat = str((condition(node, "Ready") or {}).get("lastHeartbeatTime") or "")
        now = time.monotonic()
        with self._lock:
            p = self._probes.get(name)
            if p is None or (p.renew_time, p.heartbeat) != (renew, heartbeat):
                p = self._probes[name] = Probe(renew, heartbeat, now)
        return now - p.seen_at

    def _mark_unknown(self, node: Obj) -> Obj:
        now = rfc3339()
        conds = [dict(c) for c in (node.get("status") or {}).get("conditions") or []]
        if not any(c.get("type") == "Ready" for c in conds):
            conds.append({"type": "Ready", "reason": "NodeStatusNeverUpdated",
                          "message": "Kubelet never posted node status.", "status": "Unknown",
                          "lastHeartbeatTime": now, "lastTransitionTime": now})
        for c in conds:
            if c.get("type") in UNKNOWN_CONDITIONS and c.get("status") != "Unknown":
                c.update(status="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.",
                         lastTransitionTime=now)
        updated = {**node, "status": {**(node.get("status") or {}), "conditions": conds}}
        out = self.client.update_status("nodes", updated)  # 409 on a stale cache: retried
        log.warning("controller=nodelifecycle node=%s silent for more than %.0fs: conditions Unknown",
                    node["metadata"]["name"], self.grace)
        return out

    # -- reconcile ------------------------------------------------------------------

    def reconcile(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None:
            with self._lock:
                self._probes.pop(key, None)
            return
        ready = condition(node, "Ready")
        if self._silent_for(node) > self.grace and (ready is None or ready.get("status") != "Unknown"):
            node = self._mark_unknown(node)
        node = self._sync_taints(node)
        pods = [p for p in self.pods.list()
                if (p.get("spec") or {}).get("nodeName") == key
                and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        if (condition(node, "Ready") or {}).get("status") != "True":
            for pod in pods:
                self._mark_pod_not_ready(pod)
        self._evict(node, pods)

    def _sync_taints(self, node: Obj) -> Obj:
        want = desired_node_taints(node, rfc3339())
        if want == list((node.get("spec") or {}).get("taints") or []):
            return node
        patch = {"metadata": {"resourceVersion": node["metadata"].get("resourceVersion")}, "spec": {"taints": want}}
        out = self.client.patch("nodes", node["metadata"]["name"], patch)
        log.info("controller=nodelifecycle node=%s taints=%s", node["metadata"]["name"],
                 ",".join(f"{t['key']}:{t['effect']}" for t in want) or "-")
        return out

    def _mark_pod_not_ready(self, pod: Obj) -> None:
        ready = condition(pod, "Ready")
        if ready is None or ready.get("status") != "True":
            return
        meta = pod["metadata"]
        conds = [dict(c) for c in (pod.get("status") or {}).get("conditions") or []]
        for c in conds:
            if c.get("type") == "Ready":
                c.update(status="False", lastTransitionTime=rfc3339())
        try:
            self.client.update_status("pods", {**pod, "status": {**pod["status"], "conditions": conds}})
            log.info("controller=nodelifecycle pod=%s/%s node=%s marked not ready", meta["namespace"], meta["name"],
                     pod["spec"].get("nodeName"))
        except ApiError as e:
            if not e.is_not_found():
                raise

    def _evict(self, node: Obj, pods: list[Obj]) -> None:
        taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"]
        if not taints:
            return
        next_at: float | None = None
        now = datetime.now(UTC)
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            delay = eviction_delay(pod, taints, now, self.default_toleration_seconds)
            if delay is None:
                continue
            if delay <= 0:
                self._delete_pod(pod, node["metadata"]["name"])
            else:
                next_at = delay if next_at is None else min(next_at, delay)
        if next_at is not None:
            self.queue.add_after(node["metadata"]["name"], next_at + 0.05)

    def _delete_pod(self, pod: Obj, node: str) -> None:
        meta = pod["metadata"]
        try:
            self.client.delete("pods", meta["name"], namespace=meta["namespace"], preconditions={"uid": meta["uid"]})
            log.warning("controller=nodelifecycle pod=%s/%s node=%s evicted: NoExecute taint", meta["namespace"],
                        meta["name"], node)
        except ApiError as e:
            if not (e.is_not_found() or e.is_conflict()):
                raise
