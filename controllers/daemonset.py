"""DaemonSet controller: one pod of the DaemonSet on every eligible node.

Eligible (upstream NodeShouldRunDaemonPod): the node matches the template's nodeSelector and
required node affinity, and the pod (its tolerations plus the automatic DaemonSet ones)
tolerates the node's NoSchedule and NoExecute taints. A pod already running may stay while only
NoSchedule taints are untolerated; it goes when the node stops matching, gets an untolerated
NoExecute taint, or is deleted. Failed daemon pods are deleted and made again.

Placement: each pod is created with spec.nodeName set to its node *and* with the upstream
required nodeAffinity on matchFields metadata.name. Upstream (since 1.12) sets only the
affinity and lets the default scheduler bind; we bind directly because the controller has
already checked selector, affinity and taints, so a DaemonSet works with no scheduler running
(bootstrap: the CNI or proxy DaemonSet must not wait for it) and a pod lands within one watch
round-trip of a node joining. The affinity is still there for anything that reads it. What
this gives up: resource fit and preemption, which only the scheduler checks.

Rolling update (updateStrategy RollingUpdate): pods carry controller-revision-hash, a hash of
the template (the apiserver serves no ControllerRevisions). Old pods that are unavailable are
deleted first, then old available ones while fewer than maxUnavailable nodes lack an available
pod; the node then gets a pod of the new template. maxSurge is not implemented (treated as 0).
OnDelete: old pods stay until someone deletes them.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import threading
import time
from typing import Any

import orjson

from kube.api.selectors import (
    DOES_NOT_EXIST,
    EXISTS,
    GREATER_THAN,
    IN,
    LESS_THAN,
    NOT_IN,
    Requirement,
    SelectorError,
    selector_from_match_labels,
)
from kube.client import Client
from kube.client.errors import ApiError

from .base import Controller, controller_of, split_key
from .nodelifecycle import tolerates_all
from .podcontrol import is_pod_available as pod_available
from .podcontrol import is_pod_ready as pod_ready

log = logging.getLogger("kubeling.controllers.daemonset")

Obj = dict[str, Any]

HASH_LABEL = "controller-revision-hash"
EXPECTATION_TIMEOUT = 10.0  # seconds to wait for our informer to show a pod we created or deleted
_NODE_OPS = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST, "Gt": GREATER_THAN,
             "Lt": LESS_THAN}


def _tol(key: str, effect: str) -> Obj:
    return {"key": key, "operator": "Exists", "effect": effect}


def daemon_tolerations(pod_spec: Obj) -> list[Obj]:
    """The pod's tolerations plus upstream's AddOrUpdateDaemonPodTolerations ones (not already there)."""
    out = [dict(t) for t in pod_spec.get("tolerations") or []]
    auto = [_tol("node.kubernetes.io/not-ready", "NoExecute"), _tol("node.kubernetes.io/unreachable", "NoExecute"),
            _tol("node.kubernetes.io/disk-pressure", "NoSchedule"),
            _tol("node.kubernetes.io/memory-pressure", "NoSchedule"),
            _tol("node.kubernetes.io/pid-pressure", "NoSchedule"),
            _tol("node.kubernetes.io/unschedulable", "NoSchedule")]
    if pod_spec.get("hostNetwork"):
        auto.append(_tol("node.kubernetes.io/network-unavailable", "NoSchedule"))
    for t in auto:
        if not any(o.get("key") == t["key"] and o.get("effect") == t["effect"] for o in out):
            out.append(t)
    return out


def _term_matches(term: Obj, node: Obj) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    fields = {"metadata.name": (node.get("metadata") or {}).get("name", "")}
    try:
        for e in term.get("matchExpressions") or []:
            if not Requirement(e["key"], _NODE_OPS[e["operator"]], tuple(e.get("values") or ())).matches(labels):
                return False
        for f in term.get("matchFields") or []:
            if not Requirement("x", _NODE_OPS[f["operator"]], tuple(f.get("values") or ())).matches(
                    {"x": fields[f["key"]]} if f["key"] in fields else {}):
                return False
    except (KeyError, SelectorError):
        return False  # upstream: an invalid term matches nothing
    return bool(term.get("matchExpressions") or term.get("matchFields"))


def node_matches(pod_spec: Obj, node: Obj) -> bool:
    """nodeSelector and requiredDuringSchedulingIgnoredDuringExecution node affinity."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    if not selector_from_match_labels(pod_spec.get("nodeSelector")).matches(labels):
        return False
    required = ((((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution")) or {})
    terms = required.get("nodeSelectorTerms")
    if terms is None:
        return True
    return any(_term_matches(t, node) for t in terms)


def should_run(ds: Obj, node: Obj) -> tuple[bool, bool]:
    """(a pod should be created on the node, an existing pod may keep running there)."""
    spec = (ds.get("spec") or {}).get("template", {}).get("spec") or {}
    if spec.get("nodeName") and spec["nodeName"] != node["metadata"]["name"]:
        return False, False
    if not node_matches(spec, node):
        return False, False
    tolerations = daemon_tolerations(spec)
    taints = (node.get("spec") or {}).get("taints") or []
    no_execute = [t for t in taints if t.get("effect") == "NoExecute"]
    no_schedule = [t for t in taints if t.get("effect") == "NoSchedule"]
    continue_running = tolerates_all(tolerations, no_execute)
    return continue_running and tolerates_all(tolerations, no_schedule), continue_running


def template_hash(ds: Obj) -> str:
    raw = orjson.dumps((ds.get("spec") or {}).get("template") or {}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:10]


def pin_to_node(pod_spec: Obj, node_name: str) -> Obj:
    """The pod spec bound to node_name: nodeName, plus upstream's matchFields affinity term replacing
    any required node affinity (the node already matched it)."""
    spec = copy.deepcopy(pod_spec)
    spec["nodeName"] = node_name
    affinity = spec.setdefault("affinity", {})
    node_aff = affinity.setdefault("nodeAffinity", {})
    node_aff["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}]}
    spec["tolerations"] = daemon_tolerations(spec)
    return spec


def scaled(value: Any, total: int, default: int) -> int:
    """An IntOrString like maxUnavailable ("25%" rounds up, as upstream for DaemonSets)."""
    if value is None:
        return default
    if isinstance(value, str) and value.endswith("%"):
        try:
            return math.ceil(float(value[:-1]) * total / 100)
        except ValueError:
            return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class DaemonSetController(Controller):
    """Runs one pod of each DaemonSet on every eligible node, rolls updates, reports status."""

    name = "daemonset"

    def __init__(self, client: Client, *, workers: int | None = None) -> None:
        self._lock = threading.Lock()
        self._creating: dict[tuple[str, str], float] = {}  # (ds key, node) -> give up waiting at
        self._deleting: dict[str, float] = {}  # pod uid -> give up waiting at
        super().__init__(client, workers=workers)

    def setup(self) -> None:
        self.daemonsets = self.watch("daemonsets.apps")
        self.pods = self.watch("pods", key_fn=self._owner_key)
        self.nodes = self.watch("nodes", key_fn=lambda _node: self.daemonsets.keys())

    @staticmethod
    def _owner_key(pod: Obj) -> str | None:
        ref = controller_of(pod)
        if ref and ref.get("kind") == "DaemonSet":
            return f"{pod['metadata'].get('namespace')}/{ref.get('name')}"
        return None

    # -- expectations: our writes the cache has not shown yet -------------------------

    def _pending_create(self, key: str, node: str, seen: bool) -> bool:
        with self._lock:
            until = self._creating.get((key, node))
            if until is None:
                return False
            if seen or until < time.monotonic():
                del self._creating[(key, node)]
                return False
            return True

    def _pending_delete(self, pod: Obj) -> bool:
        uid = pod["metadata"].get("uid", "")
        with self._lock:
            until = self._deleting.get(uid)
            if until is None:
                return False
            if pod["metadata"].get("deletionTimestamp") or until < time.monotonic():
                del self._deleting[uid]
                return False
            return True

    # -- reconcile ------------------------------------------------------------------

    def reconcile(self, key: str) -> None:
        ds = self.daemonsets.get(key)
        if ds is None or ds["metadata"].get("deletionTimestamp"):
            return  # its pods go with the garbage collector (ownerReferences)
        ns, _ = split_key(key)
        uid = ds["metadata"].get("uid")
        current_hash = template_hash(ds)
        spec = ds.get("spec") or {}
        min_ready = int(spec.get("minReadySeconds") or 0)
        now = time.time()

        by_node: dict[str, list[Obj]] = {}
        for pod in self.pods.list():
            ref = controller_of(pod)
            if not ref or ref.get("uid") != uid or pod["metadata"].get("namespace") != ns:
                continue
            if pod["metadata"].get("deletionTimestamp") or self._pending_delete(pod):
                continue
            by_node.setdefault((pod.get("spec") or {}).get("nodeName") or "", []).append(pod)

        nodes = {n["metadata"]["name"]: n for n in self.nodes.list()}
        to_create: list[str] = []
        to_delete: list[Obj] = []
        desired: list[str] = []
        for name, node in sorted(nodes.items()):
            run, keep = should_run(ds, node)
            pods = sorted(by_node.get(name, []), key=lambda p: p["metadata"].get("creationTimestamp") or "")
            failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
            to_delete += failed
            pods = [p for p in pods if p not in failed]
            if run:
                desired.append(name)
            if keep and len(pods) > 1:
                to_delete += pods[1:]  # one per node: keep the oldest
            if not keep:
                to_delete += pods
            elif run and not pods and not self._pending_create(key, name, seen=False):
                to_create.append(name)
            elif pods:
                self._pending_create(key, name, seen=True)
        for name, pods in by_node.items():
            if name not in nodes:
                to_delete += pods  # the node went away (or the pod was never placed)

        if (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate":
            to_delete += self._rolling_update(ds, desired, by_node, current_hash, min_ready, now, to_delete)

        for name in to_create:
            self._create(ds, name, current_hash)
        for pod in {p["metadata"]["uid"]: p for p in to_delete}.values():
            self._delete(key, pod)
        self._update_status(ds, desired, by_node, current_hash, min_ready, now)
        if min_ready > 0:
            self.queue.add_after(key, min_ready)  # availability ripens with time alone

    def _rolling_update(self, ds: Obj, desired: list[str], by_node: dict[str, list[Obj]], current_hash: str,
                        min_ready: int, now: float, already: list[Obj]) -> list[Obj]:
        rolling = ((ds.get("spec") or {}).get("updateStrategy") or {}).get("rollingUpdate") or {}
        max_unavailable = max(1, scaled(rolling.get("maxUnavailable"), len(desired), 1))
        going = {p["metadata"]["uid"] for p in already}
        old_unavailable: list[Obj] = []
        old_available: list[Obj] = []
        unavailable = 0
        for name in desired:
            pods = [p for p in by_node.get(name, []) if p["metadata"]["uid"] not in going]
            if not pods or not pod_available(pods[0], min_ready, now):
                unavailable += 1
            for p in pods[:1]:
                if (p["metadata"].get("labels") or {}).get(HASH_LABEL) != current_hash:
                    (old_available if pod_available(p, min_ready, now) else old_unavailable).append(p)
        budget = max_unavailable - unavailable
        out = old_unavailable  # they count as unavailable already: replacing them costs nothing
        for p in sorted(old_available, key=lambda p: p["spec"].get("nodeName", "")):
            if budget <= 0:
                break
            out.append(p)
            budget -= 1
        return out

    def _create(self, ds: Obj, node: str, current_hash: str) -> None:
        meta = ds["metadata"]
        template = (ds.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": f"{meta['name']}-", "namespace": meta["namespace"],
                "labels": {**(tmeta.get("labels") or {}), HASH_LABEL: current_hash},
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": meta["name"],
                                     "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": pin_to_node(template.get("spec") or {}, node),
        }
        key = f"{meta['namespace']}/{meta['name']}"
        with self._lock:
            self._creating[(key, node)] = time.monotonic() + EXPECTATION_TIMEOUT
        try:
            made = self.client.create("pods", pod, namespace=meta["namespace"])
        except Exception:
            with self._lock:
                self._creating.pop((key, node), None)
            raise
        log.info("controller=daemonset daemonset=%s node=%s created pod=%s", key, node, made["metadata"]["name"])

    def _delete(self, key: str, pod: Obj) -> None:
        meta = pod["metadata"]
        with self._lock:
            self._deleting[meta["uid"]] = time.monotonic() + EXPECTATION_TIMEOUT
        try:
            self.client.delete("pods", meta["name"], namespace=meta["namespace"], preconditions={"uid": meta["uid"]})
            log.info("controller=daemonset daemonset=%s node=%s deleted pod=%s", key,
                     pod["spec"].get("nodeName") or "-", meta["name"])
        except ApiError as e:
            if not (e.is_not_found() or e.is_conflict()):
                with self._lock:
                    self._deleting.pop(meta["uid"], None)
                raise

    def _update_status(self, ds: Obj, desired: list[str], by_node: dict[str, list[Obj]], current_hash: str,
                       min_ready: int, now: float) -> None:
        scheduled = [by_node[n][0] for n in desired if by_node.get(n)]
        status = {
            "desiredNumberScheduled": len(desired),
            "currentNumberScheduled": len(scheduled),
            "numberMisscheduled": sum(1 for n in by_node if n not in desired and by_node[n]),
            "numberReady": sum(1 for p in scheduled if pod_ready(p)),
            "updatedNumberScheduled": sum(1 for p in scheduled
                                          if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == current_hash),
            "numberAvailable": sum(1 for p in scheduled if pod_available(p, min_ready, now)),
            "observedGeneration": ds["metadata"].get("generation", 0),
        }
        status["numberUnavailable"] = status["desiredNumberScheduled"] - status["numberAvailable"]
        cur = ds.get("status") or {}
        if all(cur.get(k, 0) == v for k, v in status.items()):
            return
        self.client.update_status("daemonsets.apps", {**ds, "status": {**cur, **status}})
