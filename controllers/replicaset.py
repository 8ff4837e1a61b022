"""The ReplicaSet controller (upstream pkg/controller/replicaset): keep spec.replicas active pods
matching the selector, adopting matching orphans and releasing pods whose labels stopped matching,
and report what it sees through the status subresource.

One reconcile of namespace/name:
1. claim: active pods in the namespace that match the selector or carry our controllerRef;
2. if the expectations from the last round are met (the cache has caught up with our own creates
   and deletes), create or delete the difference — deletions chosen by the ActivePods ranking;
3. status: replicas, fullyLabeledReplicas, readyReplicas, availableReplicas (minReadySeconds),
   observedGeneration and the ReplicaFailure condition, written only when something changed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from controllers.base import Controller, meta_key, split_key
from controllers.podcontrol import (
    Expectations,
    PodControl,
    claim,
    controller_ref,
    deletion_order,
    format_time,
    is_pod_active,
    is_pod_available,
    is_pod_ready,
    owner_controller_ref,
    parse_time,
    pod_key,
    pod_ready_condition,
    ranks_by_node,
)
from kube.api.selectors import (
    LabelSelector,
    SelectorError,
    label_selector_from_dict,
    selector_from_match_labels,
)
from kube.client.errors import ApiError

log = logging.getLogger("kubeling.controllers.replicaset")

Obj = dict[str, Any]

BURST_REPLICAS = 500  # at most this many creates or deletes per reconcile (upstream BurstReplicas)
RS_API_VERSION, RS_KIND = "apps/v1", "ReplicaSet"


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def rs_selector(rs: Obj) -> LabelSelector | None:
    """The selector, or None if it is missing or invalid (such a ReplicaSet matches nothing)."""
    sel = (rs.get("spec") or {}).get("selector")
    if not sel:
        return None
    try:
        return label_selector_from_dict(sel)
    except SelectorError:
        return None


def calculate_status(rs: Obj, pods: list[Obj], manage_error: ApiError | None, diff: int,
                     now: float | None = None) -> Obj:
    """The status a ReplicaSet should report for its claimed active pods (upstream calculateStatus)."""
    spec = rs.get("spec") or {}
    min_ready = int(spec.get("minReadySeconds") or 0)
    template_labels = selector_from_match_labels(((spec.get("template") or {}).get("metadata") or {}).get("labels"))
    old = rs.get("status") or {}
    status: Obj = {
        "replicas": len(pods),
        "fullyLabeledReplicas": sum(1 for p in pods if template_labels.matches(_meta(p).get("labels") or {})),
        "readyReplicas": sum(1 for p in pods if is_pod_ready(p)),
        "availableReplicas": sum(1 for p in pods if is_pod_available(p, min_ready, now)),
        "observedGeneration": int(_meta(rs).get("generation") or 0),
    }
    conditions = [dict(c) for c in old.get("conditions") or [] if c.get("type") != "ReplicaFailure"]
    failure = next((c for c in old.get("conditions") or [] if c.get("type") == "ReplicaFailure"), None)
    if manage_error is not None:
        if failure is None:
            reason = "FailedCreate" if diff < 0 else "FailedDelete"
            failure = {"type": "ReplicaFailure", "status": "True", "reason": reason,
                       "message": manage_error.message, "lastTransitionTime": format_time(now)}
        conditions.append(failure)
    if conditions:
        status["conditions"] = conditions
    return status


def _status_equal(a: Obj, b: Obj) -> bool:
    keys = ("replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas", "observedGeneration",
            "conditions")
    return all((a.get(k) or 0) == (b.get(k) or 0) for k in keys)


def next_available_in(pods: list[Obj], min_ready_seconds: int, now: float | None = None) -> float | None:
    """Seconds until the next ready pod becomes available, if any is waiting out minReadySeconds."""
    if min_ready_seconds <= 0:
        return None
    now = time.time() if now is None else now
    waits = []
    for p in pods:
        if is_pod_ready(p) and not is_pod_available(p, min_ready_seconds, now):
            since = parse_time((pod_ready_condition(p) or {}).get("lastTransitionTime")) or now
            waits.append(max(since + min_ready_seconds - now, 0.0) + 0.05)
    return min(waits) if waits else None


class ReplicaSetController(Controller):
    name = "replicaset"
    workers = 5

    def setup(self) -> None:
        self.expectations = Expectations()
        self.pod_control = PodControl(self.client, self.expectations)
        self.replicasets = self.watch("replicasets.apps")
        self.pods = self.watch("pods", key_fn=lambda _pod: None, primary=False)
        self.pods.add_handlers(on_add=self._pod_added, on_update=self._pod_updated, on_delete=self._pod_deleted)

    # -- pod events: keep the expectations in step and enqueue the owners -----------

    def _owner_key(self, pod: Obj) -> str | None:
        """The key of the ReplicaSet in our cache that controls this pod, if any."""
        ref = owner_controller_ref(pod)
        if ref is None or ref.get("kind") != RS_KIND:
            return None
        key = f"{_meta(pod).get('namespace')}/{ref.get('name')}"
        rs = self.replicasets.get(key)
        if rs is None or _meta(rs).get("uid") != ref.get("uid"):
            return None
        return key

    def _matching_sets(self, pod: Obj) -> list[str]:
        """Keys of ReplicaSets in the pod's namespace whose selector matches it (for orphans)."""
        ns, labels = _meta(pod).get("namespace"), _meta(pod).get("labels") or {}
        keys = []
        for rs in self.replicasets.list():
            if _meta(rs).get("namespace") != ns:
                continue
            sel = rs_selector(rs)
            if sel is not None and not sel.empty and sel.matches(labels):
                keys.append(meta_key(rs))
        return keys

    def _pod_added(self, pod: Obj) -> None:
        if _meta(pod).get("deletionTimestamp"):
            self._pod_deleted(pod)  # restarted with a pod already on its way out
            return
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.creation_observed(key)
            self.queue.add(key)
        elif owner_controller_ref(pod) is None:
            for k in self._matching_sets(pod):
                self.queue.add(k)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if _meta(new).get("deletionTimestamp") and not _meta(old).get("deletionTimestamp"):
            self._pod_deleted(new)  # graceful deletion: count it as observed now, like upstream
        for pod in (old, new):
            key = self._owner_key(pod)
            if key is not None:
                self.queue.add(key)
            elif owner_controller_ref(pod) is None:
                for k in self._matching_sets(pod):
                    self.queue.add(k)

    def _pod_deleted(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key is not None:
            self.expectations.deletion_observed(key, pod_key(pod))
            self.queue.add(key)

    # -- reconcile ------------------------------------------------------------------

    def reconcile(self, key: str) -> None:
        rs = self.replicasets.get(key)
        if rs is None:
            self.expectations.forget(key)
            return
        ns, _name = split_key(key)
        needs_sync = self.expectations.satisfied(key)
        selector = rs_selector(rs)
        if selector is None:
            log.info("replicaset=%s has an invalid or empty selector: ignoring it", key)
            return

        candidates = [p for p in self.pods.list() if _meta(p).get("namespace") == ns and is_pod_active(p)]
        pods = claim(rs, controller_ref(rs, RS_API_VERSION, RS_KIND), selector, candidates,
                     lambda pod, body: self._patch_pod(pod, body), lambda: self._can_adopt(rs))

        diff = len(pods) - int((rs.get("spec") or {}).get("replicas", 1))
        error: ApiError | None = None
        if needs_sync and not _meta(rs).get("deletionTimestamp"):
            error = self.manage_replicas(key, rs, pods, candidates, diff)

        status = calculate_status(rs, pods, error, diff)
        if not _status_equal(rs.get("status") or {}, status):
            self._update_status(rs, status)
        wait = next_available_in(pods, int((rs.get("spec") or {}).get("minReadySeconds") or 0))
        if wait is not None:
            self.queue.add_after(key, wait)
        if error is not None:
            raise error

    def manage_replicas(self, key: str, rs: Obj, pods: list[Obj], candidates: list[Obj],
                        diff: int) -> ApiError | None:
        m = _meta(rs)
        if diff < 0:
            count = min(-diff, BURST_REPLICAS)
            template = (rs.get("spec") or {}).get("template") or {}
            created, error = self.pod_control.create_pods(
                key, m["namespace"], template, controller_ref(rs, RS_API_VERSION, RS_KIND), count, f"{m['name']}-")
            log.info("replicaset=%s created=%d wanted=%d", key, created, count)
            return error
        if diff > 0:
            count = min(diff, BURST_REPLICAS)
            ranked = deletion_order(pods, ranks_by_node(pods, self._related_pods(rs, candidates)))
            victims = ranked[:count]
            error_d = self.pod_control.delete_pods(key, victims)
            log.info("replicaset=%s deleted=%s", key, ",".join(_meta(p).get("name", "") for p in victims))
            return error_d
        return None

    def _related_pods(self, rs: Obj, candidates: list[Obj]) -> list[Obj]:
        """Pods of every ReplicaSet with the same controller as rs (e.g. all of a Deployment's
        ReplicaSets), so deletions spread over nodes where that owner is doubled up."""
        owner = owner_controller_ref(rs)
        if owner is None:
            uids = {_meta(rs).get("uid")}
        else:
            uids = {_meta(r).get("uid") for r in self.replicasets.list()
                    if _meta(r).get("namespace") == _meta(rs).get("namespace")
                    and (owner_controller_ref(r) or {}).get("uid") == owner.get("uid")}
        return [p for p in candidates if (owner_controller_ref(p) or {}).get("uid") in uids]

    def _patch_pod(self, pod: Obj, body: Obj) -> None:
        m = _meta(pod)
        self.client.patch("pods", m["name"], body, m["namespace"], patch_type="strategic")

    def _can_adopt(self, rs: Obj) -> bool:
        """Re-read the ReplicaSet: adopt only if it still exists, is the same object and is not being
        deleted (upstream RecheckDeletionTimestamp)."""
        m = _meta(rs)
        try:
            fresh = self.client.get("replicasets.apps", m["name"], m["namespace"])
        except ApiError as e:
            if e.is_not_found():
                return False
            raise
        return _meta(fresh).get("uid") == m.get("uid") and not _meta(fresh).get("deletionTimestamp")

    def _update_status(self, rs: Obj, status: Obj) -> None:
        body = {**rs, "status": status}
        try:
            self.client.update_status("replicasets.apps", body)
        except ApiError as e:
            if not e.is_conflict():
                raise
            m = _meta(rs)
            fresh = self.client.get("replicasets.apps", m["name"], m["namespace"])
            if _meta(fresh).get("uid") != m.get("uid"):
                return
            status["observedGeneration"] = int(_meta(rs).get("generation") or 0)
            self.client.update_status("replicasets.apps", {**fresh, "status": status})
        log.debug("replicaset=%s/%s status replicas=%s ready=%s available=%s", _meta(rs).get("namespace"),
                  _meta(rs).get("name"), status["replicas"], status["readyReplicas"], status["availableReplicas"])
