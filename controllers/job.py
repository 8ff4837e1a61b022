"""Job controller (NonIndexed completion mode) and the TTL-after-finished
controller, after upstream's pkg/controller/job and pkg/controller/ttlafterfinished.

reconcile(job key), from the caches:
- the job's pods are those it controls (ownerReference controller: true, its uid);
- succeeded/failed count terminal pods (never going down, as pods may be removed);
- failed > backoffLimit -> FailureTarget (BackoffLimitExceeded); active longer than
  activeDeadlineSeconds -> FailureTarget (DeadlineExceeded); active pods are deleted and,
  once none is left running or terminating, Failed is added with the same reason;
- succeeded >= completions -> SuccessCriteriaMet (CompletionsReached), then Complete and
  completionTime once no pod is left running (upstream >= 1.31 adds the *Target/*Met
  condition first, the terminal one after the pods are gone);
- otherwise keep min(parallelism, completions - succeeded) pods active (0 when suspended),
  never more than parallelism counting terminating pods, with upstream's exponential
  backoff (10 s, 20 s, ... capped at 6 min) before replacing failed pods.

Pods: generateName "<job>-", the template's labels plus batch.kubernetes.io/controller-uid,
batch.kubernetes.io/job-name and the legacy controller-uid/job-name, ownerReference
controller: true with blockOwnerDeletion. Creations and deletions are remembered until the
pod cache shows them ("expectations"), so a lagging cache never makes us create twice.

The selector: the apiserver does not generate spec.selector yet, and Job validation keeps
spec.selector and spec.template immutable after create, so the controller cannot set them.
A Job without a selector is treated as selecting batch.kubernetes.io/controller-uid=<uid>,
which every pod it creates carries. Adoption of orphan pods by selector is not done.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controllers.base import Controller, controller_of, meta_key, split_key
from controllers.podcontrol import parse_time
from kube.client import Client
from kube.client.errors import ApiError

log = logging.getLogger("kubeling.controllers.job")

Obj = dict[str, Any]

UID_LABEL = "batch.kubernetes.io/controller-uid"
NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_UID_LABEL = "controller-uid"
LEGACY_NAME_LABEL = "job-name"
DEFAULT_BACKOFF = 10.0  # seconds before the first replacement of a failed pod (upstream)
MAX_BACKOFF = 360.0
EXPECTATIONS_TTL = 30.0  # forget what the cache never showed after this long (upstream: 5 min)

MSG_BACKOFF = "Job has reached the specified backoff limit"
MSG_DEADLINE = "Job was active longer than specified deadline"
MSG_COMPLETIONS = "Reached expected number of succeeded pods"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(job: Obj, typ: str) -> Obj | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == typ and c.get("status") == "True":
            return dict(c)
    return None


def finished(job: Obj) -> Obj | None:
    """The Complete or Failed condition, if the job has finished."""
    return condition(job, "Complete") or condition(job, "Failed")


def is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def finish_time(pod: Obj) -> float:
    """When a terminal pod ended: its containers' finishedAt, else its creation."""
    times = [parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
             for cs in (pod.get("status") or {}).get("containerStatuses") or []]
    got = [t for t in times if t is not None]
    return max(got) if got else parse_time((pod.get("metadata") or {}).get("creationTimestamp")) or 0.0


@dataclass
class PodCounts:
    active: list[Obj] = field(default_factory=list)  # not terminal, not being deleted
    terminating: list[Obj] = field(default_factory=list)  # not terminal, being deleted
    succeeded: list[Obj] = field(default_factory=list)
    failed: list[Obj] = field(default_factory=list)


def classify(pods: list[Obj]) -> PodCounts:
    out = PodCounts()
    for p in pods:
        phase = (p.get("status") or {}).get("phase")
        if phase == "Succeeded":
            out.succeeded.append(p)
        elif phase == "Failed":
            out.failed.append(p)
        elif (p.get("metadata") or {}).get("deletionTimestamp"):
            out.terminating.append(p)
        else:
            out.active.append(p)
    return out


def pod_backoff(failures: int, base: float) -> float:
    """Seconds to wait after the last failure before creating a replacement (exponential, capped)."""
    if failures <= 0 or base <= 0:
        return 0.0
    return min(base * 2 ** (failures - 1), MAX_BACKOFF)


def pod_for(job: Obj) -> Obj:
    """A pod from the job's template, labelled and owned as upstream does."""
    m = job["metadata"]
    tmpl = copy.deepcopy((job.get("spec") or {}).get("template") or {})
    tm = tmpl.get("metadata") or {}
    labels = dict(tm.get("labels") or {})
    labels.update({UID_LABEL: m["uid"], NAME_LABEL: m["name"], LEGACY_UID_LABEL: m["uid"],
                   LEGACY_NAME_LABEL: m["name"]})
    meta: Obj = {"generateName": f"{m['name']}-", "labels": labels,
                 "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": m["name"], "uid": m["uid"],
                                      "controller": True, "blockOwnerDeletion": True}]}
    if tm.get("annotations"):
        meta["annotations"] = dict(tm["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": tmpl.get("spec") or {}}


class Expectations:
    """Pod creations/deletions per job that the cache has not shown yet (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._adds: dict[str, dict[str, float]] = {}  # job key -> pod name -> when
        self._dels: dict[str, dict[str, float]] = {}

    def expect_add(self, job: str, pod: str) -> None:
        with self._lock:
            self._adds.setdefault(job, {})[pod] = time.monotonic()

    def expect_delete(self, job: str, pod: str) -> None:
        with self._lock:
            self._dels.setdefault(job, {})[pod] = time.monotonic()

    def observed_add(self, job: str, pod: str) -> None:
        with self._lock:
            self._adds.get(job, {}).pop(pod, None)

    def observed_delete(self, job: str, pod: str) -> None:
        with self._lock:
            self._dels.get(job, {}).pop(pod, None)

    def satisfied(self, job: str) -> bool:
        cutoff = time.monotonic() - EXPECTATIONS_TTL
        with self._lock:
            for d in (self._adds, self._dels):
                pending = {k: t for k, t in d.get(job, {}).items() if t > cutoff}
                d[job] = pending
                if pending:
                    return False
            return True

    def forget(self, job: str) -> None:
        with self._lock:
            self._adds.pop(job, None)
            self._dels.pop(job, None)


class JobController(Controller):
    """Runs Jobs to completion (NonIndexed).

    Options: workers (default 2), pod_failure_backoff (seconds before the first replacement of a
    failed pod, doubled per failure; default 10, as upstream)."""

    name = "job"

    def __init__(self, client: Client, *, workers: int | None = None,
                 pod_failure_backoff: float = DEFAULT_BACKOFF) -> None:
        self.pod_failure_backoff = pod_failure_backoff
        self.expectations = Expectations()
        super().__init__(client, workers=workers)

    def setup(self) -> None:
        self.jobs = self.watch("jobs.batch")
        self.pods = self.watch("pods", key_fn=self._job_key_of_pod)
        self.pods.add_handlers(on_delete=self._pod_deleted)

    def _job_key_of_pod(self, pod: Obj) -> str | None:
        ref = controller_of(pod)
        if not ref or ref.get("kind") != "Job" or not str(ref.get("apiVersion", "")).startswith("batch/"):
            return None
        m = pod.get("metadata") or {}
        key = f"{m.get('namespace')}/{ref.get('name')}"
        self.expectations.observed_add(key, str(m.get("name")))  # every event of a pod means it exists
        return key

    def _pod_deleted(self, pod: Obj) -> None:
        ref = controller_of(pod)
        if ref and ref.get("kind") == "Job":
            m = pod.get("metadata") or {}
            self.expectations.observed_delete(f"{m.get('namespace')}/{ref.get('name')}", str(m.get("name")))

    # -- reconcile -----------------------------------------------------------------

    def reconcile(self, key: str) -> None:
        job = self.jobs.get(key)
        if job is None:
            self.expectations.forget(key)
            return
        if finished(job) or not self.expectations.satisfied(key):
            return
        ns, _ = split_key(key)
        uid = job["metadata"]["uid"]
        pods = [p for p in self.pods.list() if p["metadata"].get("namespace") == ns
                and (controller_of(p) or {}).get("uid") == uid]
        spec, status = job.get("spec") or {}, copy.deepcopy(job.get("status") or {})
        counts = classify(pods)
        succeeded = max(int(status.get("succeeded") or 0), len(counts.succeeded))
        failed = max(int(status.get("failed") or 0), len(counts.failed))
        completions = spec.get("completions")
        parallelism = int(spec["parallelism"]) if spec.get("parallelism") is not None else 1
        backoff_limit = int(spec["backoffLimit"]) if spec.get("backoffLimit") is not None else 6
        suspended = bool(spec.get("suspend"))
        now = time.time()
        if not status.get("startTime") and not suspended:
            status["startTime"] = now_rfc3339()
        started = parse_time(status.get("startTime"))

        target = _target_condition(status)  # a FailureTarget / SuccessCriteriaMet already decided
        if target is None:
            deadline = spec.get("activeDeadlineSeconds")
            if failed > backoff_limit:
                target = ("FailureTarget", "BackoffLimitExceeded", MSG_BACKOFF)
            elif deadline and started is not None and not suspended and now - started >= int(deadline):
                target = ("FailureTarget", "DeadlineExceeded", MSG_DEADLINE)
            elif completions is not None and succeeded >= int(completions):
                target = ("SuccessCriteriaMet", "CompletionsReached", MSG_COMPLETIONS)
            elif completions is None and succeeded > 0 and not counts.active:
                target = ("SuccessCriteriaMet", "CompletionsReached", MSG_COMPLETIONS)
            if target is not None:
                _set_condition(status, *target)
                log.info("job=%s condition=%s reason=%s succeeded=%d failed=%d", key, target[0], target[1],
                         succeeded, failed)

        requeue: float | None = None
        if target is not None:
            self._delete_pods(key, counts.active)
            if not counts.active and not counts.terminating:
                terminal = "Failed" if target[0] == "FailureTarget" else "Complete"
                _set_condition(status, terminal, target[1], target[2])
                if terminal == "Complete":
                    status["completionTime"] = now_rfc3339()
                log.info("job=%s finished=%s reason=%s", key, terminal, target[1])
            active_now = 0
        else:
            want = 0 if suspended else parallelism
            if completions is not None:
                want = min(want, max(0, int(completions) - succeeded))
            elif succeeded > 0:
                want = 0
            have = len(counts.active)
            if have > want:
                self._delete_pods(key, _newest_first(counts.active)[:have - want])
                active_now = want
            else:
                room = max(0, min(want, parallelism - len(counts.terminating)) - have)
                wait = 0.0
                if room and counts.failed:
                    last = max(finish_time(p) for p in counts.failed)
                    wait = last + pod_backoff(len(counts.failed), self.pod_failure_backoff) - now
                if room and wait > 0:
                    requeue = wait
                    room = 0
                created = self._create_pods(key, job, room)
                active_now = have + created
            deadline = spec.get("activeDeadlineSeconds")
            if deadline and started is not None and not suspended:
                left = started + int(deadline) - now
                requeue = left if requeue is None else min(requeue, left)

        status.update({"active": active_now, "succeeded": succeeded, "failed": failed,
                       "ready": sum(1 for p in counts.active if is_ready(p)),
                       "terminating": len(counts.terminating)})
        if status != (job.get("status") or {}):
            new = copy.deepcopy(job)
            new["status"] = status
            try:
                self.client.update_status("jobs.batch", new)
            except ApiError as e:
                if e.is_not_found():
                    return
                raise
        if requeue is not None:
            self.queue.add_after(key, max(requeue, 0.05))

    # -- pods --

    def _create_pods(self, key: str, job: Obj, n: int) -> int:
        ns, _ = split_key(key)
        made = 0
        for _ in range(n):
            try:
                pod = self.client.create("pods", pod_for(job), namespace=ns)
            except ApiError as e:
                if made:
                    log.info("job=%s created=%d then failed: %s", key, made, e.message)
                raise
            self.expectations.expect_add(key, pod["metadata"]["name"])
            if self.pods.get(meta_key(pod)) is not None:
                self.expectations.observed_add(key, pod["metadata"]["name"])
            made += 1
        if made:
            log.info("job=%s created-pods=%d", key, made)
        return made

    def _delete_pods(self, key: str, pods: list[Obj]) -> None:
        for p in pods:
            m = p["metadata"]
            self.expectations.expect_delete(key, m["name"])
            try:
                self.client.delete("pods", m["name"], namespace=m["namespace"], preconditions={"uid": m["uid"]})
            except ApiError as e:
                self.expectations.observed_delete(key, m["name"])
                if not (e.is_not_found() or e.code == 409):
                    raise
                continue
            if self.pods.get(meta_key(p)) is None:
                self.expectations.observed_delete(key, m["name"])
        if pods:
            log.info("job=%s deleted-pods=%d", key, len(pods))


def _newest_first(pods: list[Obj]) -> list[Obj]:
    """Whom to remove first: not ready, then newest (as upstream's activePods ordering)."""
    return sorted(pods, key=lambda p: (is_ready(p), p["metadata"].get("creationTimestamp", "")), reverse=False)


def _target_condition(status: Obj) -> tuple[str, str, str] | None:
    for c in status.get("conditions") or []:
        if c.get("type") in ("FailureTarget", "SuccessCriteriaMet") and c.get("status") == "True":
            return str(c["type"]), str(c.get("reason", "")), str(c.get("message", ""))
    return None


def _set_condition(status: Obj, typ: str, reason: str, message: str) -> None:
    conds = status.setdefault("conditions", [])
    t = now_rfc3339()
    for c in conds:
        if c.get("type") == typ:
            if c.get("status") != "True":
                c.update({"status": "True", "lastTransitionTime": t})
            c.update({"reason": reason, "message": message, "lastProbeTime": t})
            return
    conds.append({"type": typ, "status": "True", "reason": reason, "message": message, "lastProbeTime": t,
                  "lastTransitionTime": t})


class TTLAfterFinishedController(Controller):
    """Deletes (Background propagation) Jobs that finished more than spec.ttlSecondsAfterFinished ago."""

    name = "ttlafterfinished"

    def setup(self) -> None:
        self.jobs = self.watch("jobs.batch")

    def reconcile(self, key: str) -> None:
        job = self.jobs.get(key)
        if job is None or (job.get("metadata") or {}).get("deletionTimestamp"):
            return
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = finished(job)
        if ttl is None or done is None:
            return
        at = parse_time((job.get("status") or {}).get("completionTime")) or parse_time(
            done.get("lastTransitionTime")) or time.time()
        left = at + int(ttl) - time.time()
        if left > 0:
            self.queue.add_after(key, left)
            return
        ns, name = split_key(key)
        try:
            self.client.delete("jobs.batch", name, namespace=ns, propagation_policy="Background",
                               preconditions={"uid": job["metadata"]["uid"]})
        except ApiError as e:
            if not (e.is_not_found() or e.code == 409):
                raise
            return
        log.info("ttlafterfinished job=%s deleted ttl=%s", key, ttl)
