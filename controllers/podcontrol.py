"""Shared helpers for controllers that own pods (ReplicaSet, later Job/DaemonSet/StatefulSet):

- pod readiness and availability as upstream computes them (is_pod_active / is_pod_ready / is_pod_available);
- the upstream ActivePods ranking that chooses which pods to delete first (deletion_order);
- Expectations: how many creations and which deletions a controller still waits to see in its cache,
  so that it never over-creates or over-deletes while the cache lags behind its own writes;
- ControllerRef helpers (controller_ref, claim) to adopt matching orphans and release objects
  whose labels stopped matching, with the strategic-merge patches upstream sends;
- PodControl: create pods from a template (with slow-start batches) and delete pods.

Everything here talks to the apiserver only through kube.client and knows no particular controller.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kube.api.selectors import LabelSelector
from kube.client import Client
from kube.client.errors import ApiError

log = logging.getLogger("kubeling.controllers.podcontrol")

Obj = dict[str, Any]

EXPECTATIONS_TIMEOUT = 300.0  # seconds after which unmet expectations are forgotten (upstream: 5 minutes)
SLOW_START_INITIAL_BATCH = 1  # upstream controller.SlowStartInitialBatchSize


# -- time --------------------------------------------------------------------------


def parse_time(s: str | None) -> float | None:
    """An RFC 3339 timestamp ("2024-01-02T03:04:05Z", optionally with fractions) as epoch seconds."""
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def format_time(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- pod state ---------------------------------------------------------------------


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def is_pod_active(pod: Obj) -> bool:
    """Not finished and not being deleted (upstream controller.IsPodActive)."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not _meta(pod).get("deletionTimestamp")


def pod_ready_condition(pod: Obj) -> Obj | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return dict(cond)
    return None


def is_pod_ready(pod: Obj) -> bool:
    cond = pod_ready_condition(pod)
    return cond is not None and cond.get("status") == "True"


def is_pod_available(pod: Obj, min_ready_seconds: int, now: float | None = None) -> bool:
    """Ready for at least min_ready_seconds (upstream podutil.IsPodAvailable)."""
    cond = pod_ready_condition(pod)
    if cond is None or cond.get("status") != "True":
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time(cond.get("lastTransitionTime"))
    if since is None:
        return False
    return since + min_ready_seconds <= (time.time() if now is None else now)


def _restarts(pod: Obj) -> int:
    return sum(int(cs.get("restartCount") or 0) for cs in (pod.get("status") or {}).get("containerStatuses") or [])


_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def deletion_order(pods: Sequence[Obj], ranks: Sequence[int] | None = None) -> list[Obj]:
    """Pods sorted so the ones to delete first come first (upstream ActivePodsWithRanks):
    unscheduled < scheduled; Pending < Unknown < Running; not ready < ready; lower
    controller.kubernetes.io/pod-deletion-cost first; higher rank (more pods of the same owner on
    the node) first; ready for less time first; more restarts first; newer first."""
    rank_of = list(ranks) if ranks is not None else [0] * len(pods)

    def key(i: int) -> tuple[Any, ...]:
        pod = pods[i]
        m, spec, status = _meta(pod), pod.get("spec") or {}, pod.get("status") or {}
        ready = is_pod_ready(pod)
        try:
            cost = int((m.get("annotations") or {}).get("controller.kubernetes.io/pod-deletion-cost", "0"))
        except ValueError:
            cost = 0
        ready_since = parse_time((pod_ready_condition(pod) or {}).get("lastTransitionTime")) if ready else None
        created = parse_time(m.get("creationTimestamp"))
        return (
            1 if spec.get("nodeName") else 0,
            _PHASE_RANK.get(str(status.get("phase") or "Pending"), 0),
            1 if ready else 0,
            cost,
            -rank_of[i],
            -(ready_since or 0.0) if ready else 0.0,
            -_restarts(pod),
            -(created if created is not None else float("inf")),
        )

    return [pods[i] for i in sorted(range(len(pods)), key=key)]


def ranks_by_node(pods: Sequence[Obj], related: Iterable[Obj]) -> list[int]:
    """For each pod, how many active `related` pods share its node (upstream getPodsRankedByRelatedPodsOnSameNode)."""
    on_node: dict[str, int] = {}
    for p in related:
        node = (p.get("spec") or {}).get("nodeName")
        if node and is_pod_active(p):
            on_node[node] = on_node.get(node, 0) + 1
    return [on_node.get((p.get("spec") or {}).get("nodeName") or "", 0) for p in pods]


# -- expectations ------------------------------------------------------------------


@dataclass
class _Expectation:
    adds: int = 0
    deletes: set[str] = field(default_factory=set)
    since: float = field(default_factory=time.monotonic)


class Expectations:
    """What a controller has asked the apiserver to do for a key but not yet seen in its cache
    (upstream ControllerExpectations + UIDTrackingControllerExpectations). Until satisfied(key),
    the controller must not create or delete pods for that key; a record older than `timeout` is
    considered satisfied so a lost event cannot wedge a controller forever."""

    def __init__(self, timeout: float = EXPECTATIONS_TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._records: dict[str, _Expectation] = {}

    def satisfied(self, key: str) -> bool:
        with self._lock:
            rec = self._records.get(key)
            if rec is None:
                return True
            if rec.adds <= 0 and not rec.deletes:
                return True
            return time.monotonic() - rec.since > self.timeout

    def expect_creations(self, key: str, count: int) -> None:
        with self._lock:
            self._records[key] = _Expectation(adds=count)

    def expect_deletions(self, key: str, pod_keys: Iterable[str]) -> None:
        with self._lock:
            self._records[key] = _Expectation(deletes=set(pod_keys))

    def creation_observed(self, key: str, count: int = 1) -> None:
        """A pod was seen in the cache, or a create failed so it never will be."""
        with self._lock:
            rec = self._records.get(key)
            if rec is not None:
                rec.adds -= count

    def deletion_observed(self, key: str, pod_key: str) -> None:
        with self._lock:
            rec = self._records.get(key)
            if rec is not None:
                rec.deletes.discard(pod_key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)

    def pending(self, key: str) -> tuple[int, int]:
        """(creations, deletions) still expected; for logs and tests."""
        with self._lock:
            rec = self._records.get(key)
            return (0, 0) if rec is None else (max(rec.adds, 0), len(rec.deletes))


# -- controller references ---------------------------------------------------------


def controller_ref(owner: Obj, api_version: str, kind: str) -> Obj:
    m = _meta(owner)
    return {"apiVersion": api_version, "kind": kind, "name": m["name"], "uid": m["uid"],
            "controller": True, "blockOwnerDeletion": True}


def owner_controller_ref(obj: Obj) -> Obj | None:
    for ref in _meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def adopt_patch(obj: Obj, ref: Obj) -> Obj:
    """Strategic-merge patch that adds `ref` as the controller (ownerReferences merge on uid); the uid
    in metadata makes the server refuse it if the object was replaced meanwhile."""
    return {"metadata": {"ownerReferences": [ref], "uid": _meta(obj)["uid"]}}


def release_patch(obj: Obj, owner_uid: str) -> Obj:
    return {"metadata": {"ownerReferences": [{"$patch": "delete", "uid": owner_uid}], "uid": _meta(obj)["uid"]}}


def claim(owner: Obj, ref: Obj, selector: LabelSelector, objects: Iterable[Obj],
          patch: Callable[[Obj, Obj], None], can_adopt: Callable[[], bool]) -> list[Obj]:
    """The objects `owner` controls after adopting matching orphans and releasing owned objects
    that no longer match (upstream BaseControllerRefManager.ClaimObject). `patch(obj, body)` sends a
    strategic-merge patch; `can_adopt()` is asked (once, lazily) before the first adoption and
    should re-read the owner from the apiserver to check it still exists and is not being deleted.
    Objects gone meanwhile (404) are skipped."""
    owner_uid = _meta(owner)["uid"]
    deleting = bool(_meta(owner).get("deletionTimestamp"))
    adopt_ok: bool | None = None
    claimed: list[Obj] = []
    for obj in objects:
        cref = owner_controller_ref(obj)
        matches = selector.matches(_meta(obj).get("labels") or {})
        try:
            if cref is not None:
                if cref.get("uid") != owner_uid:
                    continue  # someone else's
                if matches:
                    claimed.append(obj)
                elif not deleting:
                    patch(obj, release_patch(obj, owner_uid))
                    log.info("released kind=%s object=%s owner=%s", obj.get("kind", ""), _meta(obj).get("name"),
                             _meta(owner).get("name"))
                continue
            if not matches or deleting or _meta(obj).get("deletionTimestamp"):
                continue
            if adopt_ok is None:
                adopt_ok = can_adopt()
            if not adopt_ok:
                continue
            patch(obj, adopt_patch(obj, ref))
            log.info("adopted kind=%s object=%s owner=%s", obj.get("kind", ""), _meta(obj).get("name"),
                     _meta(owner).get("name"))
            claimed.append(obj)
        except ApiError as e:
            if not (e.is_not_found() or (e.code == 422 and cref is None)):
                raise
    return claimed


# -- pod creation and deletion -----------------------------------------------------


def pod_from_template(template: Obj, ref: Obj, generate_name: str) -> Obj:
    """A Pod from a PodTemplateSpec, controlled by `ref` (upstream GetPodFromTemplate)."""
    tmeta = template.get("metadata") or {}
    meta: Obj = {"generateName": generate_name, "ownerReferences": [ref]}
    if tmeta.get("labels"):
        meta["labels"] = dict(tmeta["labels"])
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    if tmeta.get("finalizers"):
        meta["finalizers"] = list(tmeta["finalizers"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template.get("spec") or {})}


class PodControl:
    """Creates and deletes pods for an owner and keeps its Expectations honest: every create or
    delete that fails is counted as observed, because its event will never arrive."""

    def __init__(self, client: Client, expectations: Expectations) -> None:
        self.client = client
        self.expectations = expectations

    def create_pods(self, key: str, namespace: str, template: Obj, ref: Obj, count: int,
                    generate_name: str) -> tuple[int, ApiError | None]:
        """Create `count` pods in slow-start batches of 1, 2, 4, ... (a quota or admission failure
        stops after one try instead of hundreds). Returns (created, first error)."""
        self.expectations.expect_creations(key, count)
        created, batch, left = 0, SLOW_START_INITIAL_BATCH, count
        error: ApiError | None = None
        while left > 0 and error is None:
            size = min(batch, left)
            for _ in range(size):
                try:
                    self.client.create("pods", pod_from_template(template, ref, generate_name), namespace=namespace)
                    created += 1
                except ApiError as e:
                    error = error or e
                    self.expectations.creation_observed(key)
            left -= size
            batch *= 2
        if left > 0:
            # batches never attempted will never be observed either
            self.expectations.creation_observed(key, left)
        return created, error

    def delete_pods(self, key: str, pods: Sequence[Obj]) -> ApiError | None:
        """Delete pods (not found counts as done). Returns the first error other than 404."""
        self.expectations.expect_deletions(key, [pod_key(p) for p in pods])
        error: ApiError | None = None
        for pod in pods:
            m = _meta(pod)
            try:
                self.client.delete("pods", m["name"], namespace=m.get("namespace"))
            except ApiError as e:
                self.expectations.deletion_observed(key, pod_key(pod))
                if not e.is_not_found():
                    error = error or e
        return error


def pod_key(pod: Obj) -> str:
    m = _meta(pod)
    return f"{m.get('namespace', '')}/{m.get('name', '')}"
