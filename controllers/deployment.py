"""The Deployment controller (upstream pkg/controller/deployment): roll a Deployment's pods from
ReplicaSet to ReplicaSet.

Each distinct pod template gets its own ReplicaSet "<deploy>-<pod-template-hash>", whose selector,
template and pods carry the label pod-template-hash. The ReplicaSet whose template equals the
Deployment's (ignoring that label) is the "new" one; the others are "old". Revisions are numbered
in the annotation deployment.kubernetes.io/revision on the ReplicaSets and on the Deployment, so
`kubectl rollout history/undo` (client-side) can find the template of a revision.

One reconcile of namespace/name, as upstream syncDeployment:
1. claim ReplicaSets (adopt matching orphans, release ones that stopped matching);
2. paused, or only spec.replicas changed ("scaling event"): scale proportionally, update status;
3. otherwise roll: RollingUpdate (surge the new RS up to replicas+maxSurge, scale old ones down
   while at least replicas-maxUnavailable stay available) or Recreate (old to 0, wait for their pods
   to go, then the new one up);
4. once complete, delete old ReplicaSets with 0 replicas beyond revisionHistoryLimit;
5. status counts and the Progressing / Available conditions (ProgressDeadlineExceeded when a
   rollout makes no progress for progressDeadlineSeconds).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from typing import Any

from controllers.base import Controller, meta_key
from controllers.podcontrol import (
    claim,
    controller_ref,
    format_time,
    owner_controller_ref,
    parse_time,
)
from kube.api.selectors import LabelSelector, SelectorError, label_selector_from_dict
from kube.client.errors import ApiError

log = logging.getLogger("kubeling.controllers.deployment")

Obj = dict[str, Any]

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
SKIP_COPY = {"kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY, DESIRED_REPLICAS,
             MAX_REPLICAS, "deprecated.deployment.rollback.to"}
REV_HISTORY_MAX_CHARS = 2000
MAX_INT32 = 2**31 - 1
DEPLOY_API_VERSION, DEPLOY_KIND = "apps/v1", "Deployment"

# condition reasons, as upstream deploymentutil
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"
FAILED_RS_CREATE = "ReplicaSetCreateError"
MIN_AVAILABLE = "MinimumReplicasAvailable"
MIN_UNAVAILABLE = "MinimumReplicasUnavailable"

SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery rand.SafeEncodeString: no vowels, no 0/1/3


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def _status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def replicas_of(obj: Obj) -> int:
    r = _spec(obj).get("replicas")
    return 1 if r is None else int(r)


# -- pod-template-hash -------------------------------------------------------------


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(s: str) -> str:
    return "".join(SAFE_ALPHABET[ord(ch) % len(SAFE_ALPHABET)] for ch in s)


def compute_hash(template: Obj, collision_count: int | None = None) -> str:
    """pod-template-hash as upstream controller.ComputeHash: fnv32a over the template (here its
    canonical JSON, where upstream hashes the Go struct's dump, so values differ from real
    clusters), then the collision count as 4 little-endian bytes, the decimal sum safe-encoded."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count is not None:
        data += (collision_count & 0xFFFFFFFF).to_bytes(4, "little")
    return safe_encode(str(fnv32a(data)))


def _prune(v: Any) -> Any:
    """Drop None and empty maps/lists, so templates compare equal however the server rendered them."""
    if isinstance(v, dict):
        out = {k: _prune(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x not in (None, {}, [])}
    if isinstance(v, list):
        return [_prune(x) for x in v]
    return v


def equal_ignore_hash(a: Obj, b: Obj) -> bool:
    """Templates equal once the pod-template-hash label is removed (upstream EqualIgnoreHash)."""
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    for t in (a, b):
        ((t.get("metadata") or {}).get("labels") or {}).pop(HASH_LABEL, None)
    return bool(_prune(a) == _prune(b))


# -- maxSurge / maxUnavailable -----------------------------------------------------


def scaled_value(value: int | str | None, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: "25%" of total, rounded up or down; ints as they are."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text.endswith("%"):
        return int(text)
    pct = int(text[:-1])
    exact = pct * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def is_rolling(d: Obj) -> bool:
    return ((_spec(d).get("strategy") or {}).get("type") or "RollingUpdate") == "RollingUpdate"


def fenceposts(d: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) for a RollingUpdate Deployment; both 0 would deadlock, so
    maxUnavailable becomes 1 then (upstream ResolveFenceposts)."""
    ru = (_spec(d).get("strategy") or {}).get("rollingUpdate") or {}
    desired = replicas_of(d)
    surge = scaled_value(ru.get("maxSurge", "25%"), desired, round_up=True)
    unavailable = scaled_value(ru.get("maxUnavailable", "25%"), desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_surge(d: Obj) -> int:
    return fenceposts(d)[0] if is_rolling(d) else 0


def max_unavailable(d: Obj) -> int:
    if not is_rolling(d) or replicas_of(d) == 0:
        return 0
    return min(fenceposts(d)[1], replicas_of(d))


# -- ReplicaSet helpers ------------------------------------------------------------


def revision_of(rs: Obj) -> int:
    try:
        return int((_meta(rs).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _created(rs: Obj) -> tuple[float, str]:
    return (parse_time(_meta(rs).get("creationTimestamp")) or 0.0, _meta(rs).get("name", ""))


def spec_replicas(rss: list[Obj]) -> int:
    return sum(replicas_of(rs) for rs in rss)


def status_count(rss: list[Obj], field: str) -> int:
    return sum(int(_status(rs).get(field) or 0) for rs in rss)


def active(rss: list[Obj]) -> list[Obj]:
    return [rs for rs in rss if replicas_of(rs) > 0]


def new_rs_replicas(d: Obj, all_rss: list[Obj], new_rs: Obj) -> int:
    """How many replicas the new ReplicaSet may have now (upstream NewRSNewReplicas)."""
    if not is_rolling(d):
        return replicas_of(d)
    current = spec_replicas(all_rss)
    max_total = replicas_of(d) + max_surge(d)
    if current >= max_total:
        return replicas_of(new_rs)
    up = min(max_total - current, replicas_of(d) - replicas_of(new_rs))
    return replicas_of(new_rs) + up


def replicas_annotations_need_update(rs: Obj, desired: int, max_replicas: int) -> bool:
    ann = _meta(rs).get("annotations") or {}
    return ann.get(DESIRED_REPLICAS) != str(desired) or ann.get(MAX_REPLICAS) != str(max_replicas)


def set_replicas_annotations(rs: Obj, desired: int, max_replicas: int) -> bool:
    if not replicas_annotations_need_update(rs, desired, max_replicas):
        return False
    ann = rs.setdefault("metadata", {}).setdefault("annotations", {})
    ann[DESIRED_REPLICAS], ann[MAX_REPLICAS] = str(desired), str(max_replicas)
    return True


def set_new_rs_annotations(d: Obj, rs: Obj, new_revision: int, exists: bool) -> bool:
    """Copy the Deployment's annotations and raise the revision (upstream SetNewReplicaSetAnnotations);
    a ReplicaSet brought back by a rollback remembers its earlier revisions in revision-history."""
    ann = rs.setdefault("metadata", {}).setdefault("annotations", {})
    changed = False
    for k, v in (_meta(d).get("annotations") or {}).items():
        if k in SKIP_COPY or ann.get(k) == v:
            continue
        ann[k] = v
        changed = True
    old_text = ann.get(REVISION)
    try:
        old = int(old_text) if old_text else 0
    except ValueError:
        return changed
    if old < new_revision:
        ann[REVISION] = str(new_revision)
        changed = True
        if old_text:
            history = ann.get(REVISION_HISTORY, "")
            revs = [r for r in history.split(",") if r] + [old_text]
            while revs and len(",".join(revs)) > REV_HISTORY_MAX_CHARS:
                revs.pop(0)
            ann[REVISION_HISTORY] = ",".join(revs)
    if not exists and set_replicas_annotations(rs, replicas_of(d), replicas_of(d) + max_surge(d)):
        changed = True
    return changed


# -- conditions and status ---------------------------------------------------------


def get_condition(status: Obj, typ: str) -> Obj | None:
    for c in status.get("conditions") or []:
        if c.get("type") == typ:
            return dict(c)
    return None


def new_condition(typ: str, status: str, reason: str, message: str, now: float | None = None) -> Obj:
    t = format_time(now)
    return {"type": typ, "status": status, "lastUpdateTime": t, "lastTransitionTime": t, "reason": reason,
            "message": message}


def remove_condition(status: Obj, typ: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != typ]


def set_condition(status: Obj, cond: Obj) -> None:
    """Upstream SetDeploymentCondition: same status and reason changes nothing; same status keeps
    lastTransitionTime."""
    cur = get_condition(status, cond["type"])
    if cur is not None and cur.get("status") == cond["status"] and cur.get("reason") == cond["reason"]:
        return
    if cur is not None and cur.get("status") == cond["status"]:
        cond = {**cond, "lastTransitionTime": cur.get("lastTransitionTime")}
    remove_condition(status, cond["type"])
    status["conditions"].append(cond)


def has_progress_deadline(d: Obj) -> bool:
    pds = _spec(d).get("progressDeadlineSeconds")
    return pds is not None and int(pds) != MAX_INT32


def calculate_status(d: Obj, all_rss: list[Obj], new_rs: Obj | None) -> Obj:
    available = status_count(all_rss, "availableReplicas")
    status: Obj = {
        "observedGeneration": int(_meta(d).get("generation") or 0),
        "replicas": status_count(all_rss, "replicas"),
        "updatedReplicas": status_count([new_rs] if new_rs else [], "replicas"),
        "readyReplicas": status_count(all_rss, "readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": max(spec_replicas(all_rss) - available, 0),
        "conditions": [dict(c) for c in _status(d).get("conditions") or []],
    }
    if _status(d).get("collisionCount") is not None:
        status["collisionCount"] = _status(d)["collisionCount"]
    if available >= replicas_of(d) - max_unavailable(d):
        set_condition(status, new_condition("Available", "True", MIN_AVAILABLE, "Deployment has minimum availability."))
    else:
        set_condition(status, new_condition("Available", "False", MIN_UNAVAILABLE,
                                            "Deployment does not have minimum availability."))
    return status


def deployment_complete(d: Obj, status: Obj) -> bool:
    want = replicas_of(d)
    return (int(status.get("updatedReplicas") or 0) == want and int(status.get("replicas") or 0) == want
            and int(status.get("availableReplicas") or 0) == want
            and int(status.get("observedGeneration") or 0) >= int(_meta(d).get("generation") or 0))


def deployment_progressing(d: Obj, new: Obj) -> bool:
    old = _status(d)

    def n(s: Obj, k: str) -> int:
        return int(s.get(k) or 0)

    old_old = n(old, "replicas") - n(old, "updatedReplicas")
    new_old = n(new, "replicas") - n(new, "updatedReplicas")
    return (n(new, "updatedReplicas") > n(old, "updatedReplicas") or n(new, "readyReplicas") > n(old, "readyReplicas")
            or new_old < old_old or n(new, "availableReplicas") > n(old, "availableReplicas"))


def deployment_timed_out(d: Obj, status: Obj, now: float | None = None) -> bool:
    if not has_progress_deadline(d):
        return False
    cond = get_condition(status, "Progressing")
    if cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
        return False
    if cond.get("reason") == TIMED_OUT:
        return True
    since = parse_time(cond.get("lastUpdateTime")) or 0.0
    return since + int(_spec(d)["progressDeadlineSeconds"]) < (time.time() if now is None else now)


def _comparable(status: Obj) -> Obj:
    return _prune({k: v for k, v in status.items()})  # type: ignore[no-any-return]


# -- the controller ----------------------------------------------------------------


class DeploymentController(Controller):
    name = "deployment"
    workers = 5

    def setup(self) -> None:
        self.deployments = self.watch("deployments.apps")
        self.replicasets = self.watch("replicasets.apps", key_fn=self._rs_keys)
        self.pods = self.watch("pods", key_fn=self._pod_key)

    # -- event routing --------------------------------------------------------------

    def _owner(self, obj: Obj, kind: str, cache: Any) -> Obj | None:
        ref = owner_controller_ref(obj)
        if ref is None or ref.get("kind") != kind:
            return None
        owner = cache.get(f"{_meta(obj).get('namespace')}/{ref.get('name')}")
        if owner is None or _meta(owner).get("uid") != ref.get("uid"):
            return None
        return owner  # type: ignore[no-any-return]

    def _rs_keys(self, rs: Obj) -> list[str]:
        ref = owner_controller_ref(rs)
        if ref is not None:
            d = self._owner(rs, DEPLOY_KIND, self.deployments)
            return [meta_key(d)] if d is not None else []
        labels = _meta(rs).get("labels") or {}
        keys = []
        for d in self.deployments.list():
            sel = selector_of(d)
            if _meta(d).get("namespace") == _meta(rs).get("namespace") and sel and not sel.empty \
                    and sel.matches(labels):
                keys.append(meta_key(d))
        return keys

    def _pod_key(self, pod: Obj) -> str | None:
        """Pods matter only to Recreate Deployments, which wait for the old pods to be gone."""
        rs = self._owner(pod, "ReplicaSet", self.replicasets)
        d = self._owner(rs, DEPLOY_KIND, self.deployments) if rs is not None else None
        if d is None or is_rolling(d):
            return None
        return meta_key(d)

    # -- reconcile ------------------------------------------------------------------

    def reconcile(self, key: str) -> None:
        cached = self.deployments.get(key)
        if cached is None:
            return
        d = copy.deepcopy(cached)
        if not _spec(d).get("selector") or (selector_of(d) or LabelSelector()).empty:
            # an empty selector would match every pod: do nothing but record that we saw it
            if int(_status(d).get("observedGeneration") or 0) < int(_meta(d).get("generation") or 0):
                d["status"] = {**_status(d), "observedGeneration": _meta(d).get("generation")}
                self.client.update_status("deployments.apps", d)
            return
        rss = self._claim_replicasets(d)
        if _meta(d).get("deletionTimestamp"):
            new_rs, old_rss = self._new_and_old(d, rss, create=False)
            self._sync_status(d, old_rss + ([new_rs] if new_rs else []), new_rs)
            return
        d = self._check_paused_condition(d)
        if _spec(d).get("paused") or self._is_scaling_event(d, rss):
            self._sync(d, rss)
        elif is_rolling(d):
            self._rollout_rolling(d, rss)
        else:
            self._rollout_recreate(d, rss, key)

    def _claim_replicasets(self, d: Obj) -> list[Obj]:
        ns = _meta(d).get("namespace")
        sel = selector_of(d)
        assert sel is not None
        candidates = [copy.deepcopy(rs) for rs in self.replicasets.list() if _meta(rs).get("namespace") == ns]

        def patch(rs: Obj, body: Obj) -> None:
            self.client.patch("replicasets.apps", _meta(rs)["name"], body, ns, patch_type="strategic")

        def can_adopt() -> bool:
            try:
                fresh = self.client.get("deployments.apps", _meta(d)["name"], ns)
            except ApiError as e:
                if e.is_not_found():
                    return False
                raise
            return _meta(fresh).get("uid") == _meta(d).get("uid") and not _meta(fresh).get("deletionTimestamp")

        return claim(d, controller_ref(d, DEPLOY_API_VERSION, DEPLOY_KIND), sel, candidates, patch, can_adopt)

    # -- new and old ReplicaSets, revisions -------------------------------------------

    def _new_and_old(self, d: Obj, rss: list[Obj], *, create: bool) -> tuple[Obj | None, list[Obj]]:
        """(new RS, old RSes), raising the new one's revision past the old ones and recording it on the
        Deployment (upstream getAllReplicaSetsAndSyncRevision). d is updated in place."""
        template = _spec(d).get("template") or {}
        existing = next((rs for rs in sorted(rss, key=_created)
                         if equal_ignore_hash(_spec(rs).get("template") or {}, template)), None)
        old = [rs for rs in rss if existing is None or _meta(rs).get("uid") != _meta(existing).get("uid")]
        new_revision = max((revision_of(rs) for rs in old), default=0) + 1
        if existing is not None:
            return self._sync_existing_new(d, existing, new_revision), old
        if not create:
            return None, old
        return self._create_new(d, old, new_revision), old

    def _sync_existing_new(self, d: Obj, rs: Obj, new_revision: int) -> Obj:
        rs = copy.deepcopy(rs)
        changed = set_new_rs_annotations(d, rs, new_revision, exists=True)
        min_ready = int(_spec(d).get("minReadySeconds") or 0)
        if int(_spec(rs).get("minReadySeconds") or 0) != min_ready:
            rs["spec"]["minReadySeconds"] = min_ready
            changed = True
        if changed:
            rs = self.client.update("replicasets.apps", rs)
        cond = get_condition(_status(d), "Progressing")
        status_change = has_progress_deadline(d) and cond is None
        if status_change:
            d.setdefault("status", {}).setdefault("conditions", [])
            set_condition(d["status"], new_condition("Progressing", "True", FOUND_NEW_RS,
                                                     f'Found new replica set "{_meta(rs)["name"]}"'))
        self._record_revision(d, str(revision_of(rs)), status_change)
        return rs

    def _create_new(self, d: Obj, old: list[Obj], new_revision: int) -> Obj:
        m, spec = _meta(d), _spec(d)
        collisions = _status(d).get("collisionCount")
        template = copy.deepcopy(spec.get("template") or {})
        h = compute_hash(spec.get("template") or {}, collisions)
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
        selector = copy.deepcopy(spec["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = h
        rs: Obj = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"{m['name']}-{h}", "namespace": m["namespace"],
                         "labels": dict(template["metadata"]["labels"]),
                         "ownerReferences": [controller_ref(d, DEPLOY_API_VERSION, DEPLOY_KIND)]},
            "spec": {"replicas": 0, "minReadySeconds": int(spec.get("minReadySeconds") or 0),
                     "selector": selector, "template": template},
        }
        rs["spec"]["replicas"] = new_rs_replicas(d, [*old, rs], rs)
        set_new_rs_annotations(d, rs, new_revision, exists=False)
        already = False
        try:
            created = self.client.create("replicasets.apps", rs, namespace=m["namespace"])
            log.info("deployment=%s/%s created replicaset=%s replicas=%d revision=%d", m["namespace"], m["name"],
                     _meta(rs)["name"], rs["spec"]["replicas"], new_revision)
        except ApiError as e:
            if not e.is_already_exists():
                if has_progress_deadline(d):
                    d.setdefault("status", {}).setdefault("conditions", [])
                    set_condition(d["status"], new_condition("Progressing", "False", FAILED_RS_CREATE,
                                                             f'Failed to create new replica set "{_meta(rs)["name"]}": '
                                                             f"{e.message}"))
                    self._update_status(d)
                raise
            created = self.client.get("replicasets.apps", _meta(rs)["name"], m["namespace"])
            ours = (owner_controller_ref(created) or {}).get("uid") == m["uid"]
            if not (ours and equal_ignore_hash(_spec(created).get("template") or {}, spec.get("template") or {})):
                # a hash collision with a ReplicaSet of another template: try the next hash
                d.setdefault("status", {})["collisionCount"] = int(collisions or 0) + 1
                log.info("deployment=%s/%s hash collision on %s, collisionCount=%d", m["namespace"], m["name"],
                         _meta(rs)["name"], d["status"]["collisionCount"])
                self._update_status(d)
                raise ApiError(409, "AlreadyExists", f"replicaset {_meta(rs)['name']} exists with another "
                                                     "template; retrying with a new collisionCount") from e
            already = True
        status_change = False
        if not already and has_progress_deadline(d):
            d.setdefault("status", {}).setdefault("conditions", [])
            set_condition(d["status"], new_condition("Progressing", "True", NEW_RS_CREATED,
                                                     f'Created new replica set "{_meta(created)["name"]}"'))
            status_change = True
        self._record_revision(d, str(revision_of(created) or new_revision), status_change)
        return created

    def _record_revision(self, d: Obj, revision: str, status_change: bool) -> None:
        """Put the new RS's revision on the Deployment (metadata patch) and write pending status."""
        m = _meta(d)
        if (m.get("annotations") or {}).get(REVISION) != revision:
            patched = self.client.patch("deployments.apps", m["name"],
                                        {"metadata": {"annotations": {REVISION: revision}}}, m["namespace"])
            d["metadata"]["annotations"] = _meta(patched).get("annotations") or {}
            d["metadata"]["resourceVersion"] = _meta(patched)["resourceVersion"]
        if status_change:
            self._update_status(d)

    def _update_status(self, d: Obj) -> None:
        """Write d's status; keep d's own generation (what we observed) but take the new resourceVersion."""
        updated = self.client.update_status("deployments.apps", d)
        d["metadata"]["resourceVersion"] = _meta(updated)["resourceVersion"]

    # -- scaling ----------------------------------------------------------------------

    def _scale_rs(self, d: Obj, rs: Obj, replicas: int) -> Obj:
        """Set an RS's replicas (and the desired/max-replicas annotations) with a compare-and-swap on
        its cached resourceVersion, so a stale cache can never scale twice."""
        desired, max_total = replicas_of(d), replicas_of(d) + max_surge(d)
        if replicas_of(rs) == replicas and not replicas_annotations_need_update(rs, desired, max_total):
            return rs
        body = copy.deepcopy(rs)
        body["spec"]["replicas"] = replicas
        set_replicas_annotations(body, desired, max_total)
        updated = self.client.update("replicasets.apps", body)
        if replicas_of(rs) != replicas:
            log.info("deployment=%s/%s scaled replicaset=%s %d->%d", _meta(d).get("namespace"), _meta(d).get("name"),
                     _meta(rs).get("name"), replicas_of(rs), replicas)
        return updated

    def _is_scaling_event(self, d: Obj, rss: list[Obj]) -> bool:
        new_rs, old = self._new_and_old(d, rss, create=False)
        for rs in active(old + ([new_rs] if new_rs else [])):
            desired = (_meta(rs).get("annotations") or {}).get(DESIRED_REPLICAS)
            if desired is not None and desired != str(replicas_of(d)):
                return True
        return False

    def _scale(self, d: Obj, new_rs: Obj | None, old: list[Obj]) -> None:
        """Upstream scale(): one active RS takes the new size; a saturated new RS means old ones go to 0;
        otherwise (RollingUpdate mid-rollout) spread the difference proportionally."""
        candidates = sorted(old, key=_created, reverse=True)
        all_active = active(([new_rs] if new_rs else []) + candidates)
        target: Obj | None = None
        if len(all_active) == 1:
            target = all_active[0]
        elif not all_active:
            target = new_rs if new_rs is not None else (candidates[0] if candidates else None)
        if target is not None:
            if replicas_of(target) != replicas_of(d):
                self._scale_rs(d, target, replicas_of(d))
            return
        if new_rs is not None and self._saturated(d, new_rs):
            for rs in active(old):
                self._scale_rs(d, rs, 0)
            return
        if not is_rolling(d):
            return
        allowed = replicas_of(d) + max_surge(d) if replicas_of(d) > 0 else 0
        to_add = allowed - spec_replicas(all_active)
        if to_add > 0:
            ordered = sorted(all_active, key=lambda rs: (-replicas_of(rs), -_created(rs)[0]))  # newer first
        else:
            ordered = sorted(all_active, key=lambda rs: (-replicas_of(rs), _created(rs)[0]))  # older first
        sizes: dict[str, int] = {}
        added = 0
        for rs in ordered:
            prop = self._proportion(d, rs, to_add, added)
            sizes[_meta(rs)["name"]] = replicas_of(rs) + prop
            added += prop
        if ordered and to_add != 0:
            first = _meta(ordered[0])["name"]
            sizes[first] = max(sizes[first] + to_add - added, 0)
        for rs in ordered:
            self._scale_rs(d, rs, sizes[_meta(rs)["name"]])

    @staticmethod
    def _saturated(d: Obj, rs: Obj) -> bool:
        desired = (_meta(rs).get("annotations") or {}).get(DESIRED_REPLICAS)
        return (replicas_of(rs) == replicas_of(d) and desired == str(replicas_of(d))
                and int(_status(rs).get("availableReplicas") or 0) == replicas_of(d))

    @staticmethod
    def _proportion(d: Obj, rs: Obj, to_add: int, added: int) -> int:
        if replicas_of(rs) == 0 or to_add == 0 or to_add == added:
            return 0
        if replicas_of(d) == 0:
            fraction = -replicas_of(rs)
        else:
            total = replicas_of(d) + max_surge(d)
            try:
                annotated = int((_meta(rs).get("annotations") or {}).get(MAX_REPLICAS, ""))
            except ValueError:
                annotated = int(_status(d).get("replicas") or 0)
            fraction = (round(replicas_of(rs) * total / annotated) - replicas_of(rs)) if annotated else 0
        allowed = to_add - added
        return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)

    def _sync(self, d: Obj, rss: list[Obj]) -> None:
        """Paused, or only the replica count changed: resize without rolling (upstream sync)."""
        new_rs, old = self._new_and_old(d, rss, create=False)
        self._scale(d, new_rs, old)
        if _spec(d).get("paused"):
            self._cleanup(d, old)
        self._sync_status(d, old + ([new_rs] if new_rs else []), new_rs)

    # -- rolling update ---------------------------------------------------------------

    def _rollout_rolling(self, d: Obj, rss: list[Obj]) -> None:
        new_rs, old = self._new_and_old(d, rss, create=True)
        assert new_rs is not None
        all_rss = [*old, new_rs]
        if self._reconcile_new(d, all_rss, new_rs):
            self._sync_rollout_status(d, all_rss, new_rs)
            return
        if self._reconcile_old(d, all_rss, active(old), new_rs):
            self._sync_rollout_status(d, all_rss, new_rs)
            return
        if deployment_complete(d, _status(d)):
            self._cleanup(d, old)
        self._sync_rollout_status(d, all_rss, new_rs)

    def _reconcile_new(self, d: Obj, all_rss: list[Obj], new_rs: Obj) -> bool:
        want = replicas_of(d)
        if replicas_of(new_rs) == want:
            return False
        target = want if replicas_of(new_rs) > want else new_rs_replicas(d, all_rss, new_rs)
        if target == replicas_of(new_rs):
            return False
        self._scale_rs(d, new_rs, target)
        return True

    def _reconcile_old(self, d: Obj, all_rss: list[Obj], old: list[Obj], new_rs: Obj) -> bool:
        if spec_replicas(old) == 0:
            return False
        min_available = replicas_of(d) - max_unavailable(d)
        new_unavailable = replicas_of(new_rs) - int(_status(new_rs).get("availableReplicas") or 0)
        max_scale_down = spec_replicas(all_rss) - min_available - new_unavailable
        if max_scale_down <= 0:
            return False
        # first the old RSes' unhealthy replicas: they don't count as available anyway
        cleaned = 0
        remaining: list[Obj] = []
        for rs in sorted(old, key=_created):
            unhealthy = replicas_of(rs) - int(_status(rs).get("availableReplicas") or 0)
            if cleaned < max_scale_down and replicas_of(rs) > 0 and unhealthy > 0:
                n = min(max_scale_down - cleaned, unhealthy)
                rs = self._scale_rs(d, rs, replicas_of(rs) - n)
                cleaned += n
            remaining.append(rs)
        # then healthy ones, as long as enough stay available
        available = status_count([*remaining, new_rs], "availableReplicas")
        if available <= min_available:
            return cleaned > 0
        total, scaled = available - min_available, 0
        for rs in remaining:
            if scaled >= total:
                break
            if replicas_of(rs) == 0:
                continue
            n = min(replicas_of(rs), total - scaled)
            self._scale_rs(d, rs, replicas_of(rs) - n)
            scaled += n
        return cleaned + scaled > 0

    # -- recreate ---------------------------------------------------------------------

    def _rollout_recreate(self, d: Obj, rss: list[Obj], key: str) -> None:
        new_rs, old = self._new_and_old(d, rss, create=False)
        all_rss = old + ([new_rs] if new_rs else [])
        scaled = False
        for rs in active(old):
            self._scale_rs(d, rs, 0)
            scaled = True
        if scaled or self._old_pods_running(new_rs, old):
            self._sync_rollout_status(d, all_rss, new_rs)
            return
        if new_rs is None:
            new_rs, old = self._new_and_old(d, rss, create=True)
            assert new_rs is not None
            all_rss = [*old, new_rs]
        if replicas_of(new_rs) != replicas_of(d):
            self._scale_rs(d, new_rs, replicas_of(d))
        if deployment_complete(d, _status(d)):
            self._cleanup(d, old)
        self._sync_rollout_status(d, all_rss, new_rs)

    def _old_pods_running(self, new_rs: Obj | None, old: list[Obj]) -> bool:
        if status_count(old, "replicas") > 0:
            return True
        old_uids = {_meta(rs).get("uid") for rs in old}
        new_uid = _meta(new_rs).get("uid") if new_rs else None
        for pod in self.pods.list():
            uid = (owner_controller_ref(pod) or {}).get("uid")
            if uid in old_uids and uid != new_uid:
                if _status(pod).get("phase") not in ("Succeeded", "Failed"):
                    return True  # still running, pending, unknown or terminating
        return False

    # -- history cleanup --------------------------------------------------------------

    def _cleanup(self, d: Obj, old: list[Obj]) -> None:
        """Delete the oldest revisions beyond revisionHistoryLimit, only ones that are fully scaled down."""
        limit = _spec(d).get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in old if not _meta(rs).get("deletionTimestamp")]
        extra = len(alive) - int(limit)
        if extra <= 0:
            return
        for rs in sorted(alive, key=lambda r: (revision_of(r), _created(r)))[:extra]:
            if (int(_status(rs).get("replicas") or 0) != 0 or replicas_of(rs) != 0
                    or int(_meta(rs).get("generation") or 0) > int(_status(rs).get("observedGeneration") or 0)):
                continue
            try:
                self.client.delete("replicasets.apps", _meta(rs)["name"], _meta(rs)["namespace"])
                log.info("deployment=%s/%s deleted old replicaset=%s revision=%d", _meta(d).get("namespace"),
                         _meta(d).get("name"), _meta(rs)["name"], revision_of(rs))
            except ApiError as e:
                if not e.is_not_found():
                    raise

    # -- status -----------------------------------------------------------------------

    def _check_paused_condition(self, d: Obj) -> Obj:
        if not has_progress_deadline(d):
            return d
        cond = get_condition(_status(d), "Progressing")
        if cond is not None and cond.get("reason") == TIMED_OUT:
            return d
        paused_cond = cond is not None and cond.get("reason") == PAUSED
        st = d.setdefault("status", {})
        st.setdefault("conditions", [])
        if _spec(d).get("paused") and not paused_cond:
            set_condition(st, new_condition("Progressing", "Unknown", PAUSED, "Deployment is paused"))
        elif not _spec(d).get("paused") and paused_cond:
            set_condition(st, new_condition("Progressing", "Unknown", RESUMED, "Deployment is resumed"))
        else:
            return d
        self._update_status(d)
        return d

    def _sync_status(self, d: Obj, all_rss: list[Obj], new_rs: Obj | None) -> None:
        status = calculate_status(d, all_rss, new_rs)
        if _comparable(status) != _comparable(_status(d)):
            d["status"] = status
            self._update_status(d)

    def _sync_rollout_status(self, d: Obj, all_rss: list[Obj], new_rs: Obj | None) -> None:
        status = calculate_status(d, all_rss, new_rs)
        if not has_progress_deadline(d):
            remove_condition(status, "Progressing")
        cur = get_condition(_status(d), "Progressing")
        complete = (status["replicas"] == status["updatedReplicas"] and cur is not None
                    and cur.get("reason") == NEW_RS_AVAILABLE)
        name = f'ReplicaSet "{_meta(new_rs)["name"]}"' if new_rs else f'Deployment "{_meta(d)["name"]}"'
        if has_progress_deadline(d) and not complete:
            if deployment_complete(d, status):
                set_condition(status, new_condition("Progressing", "True", NEW_RS_AVAILABLE,
                                                    f"{name} has successfully progressed."))
            elif deployment_progressing(d, status):
                cond = new_condition("Progressing", "True", RS_UPDATED, f"{name} is progressing.")
                if cur is not None:
                    if cur.get("status") == "True":
                        cond["lastTransitionTime"] = cur.get("lastTransitionTime")
                    remove_condition(status, "Progressing")
                set_condition(status, cond)
            elif deployment_timed_out(d, status):
                set_condition(status, new_condition("Progressing", "False", TIMED_OUT,
                                                    f"{name} has timed out progressing."))
        if _comparable(status) == _comparable(_status(d)):
            self._requeue_stuck(d, status)
            return
        d["status"] = status
        self._update_status(d)

    def _requeue_stuck(self, d: Obj, status: Obj) -> None:
        """Come back when the progress deadline passes, since no event may arrive before then."""
        cond = get_condition(status, "Progressing")
        if not has_progress_deadline(d) or cond is None:
            return
        if deployment_complete(d, status) or cond.get("reason") == TIMED_OUT:
            return
        since = parse_time(cond.get("lastUpdateTime")) or time.time()
        after = since + int(_spec(d)["progressDeadlineSeconds"]) - time.time()
        self.queue.add_after(meta_key(d), max(after, 0.0) + 1.0)


def selector_of(d: Obj) -> LabelSelector | None:
    try:
        return label_selector_from_dict(_spec(d).get("selector"))
    except SelectorError:
        return None

