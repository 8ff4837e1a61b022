"""Namespace controller: empties a namespace that is being deleted, then
finalizes it, as upstream's namespace controller (pkg/controller/namespace).

A namespace delete leaves it Terminating with spec.finalizers ["kubernetes"].
Each pass over such a namespace deletes every object of every namespaced
resource in it (Background propagation, pods with their default grace so
the node agent confirms; pods bound to no node with grace 0), then lists
again. While content remains the key comes back after a short delay; once
nothing is left, "kubernetes" is removed from spec.finalizers through the
finalize subresource and the apiserver removes the namespace. The status
conditions tell how far it got, with upstream's types and reasons.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controllers.base import Controller
from kube.api.resources import RESOURCES, ResourceType
from kube.client import Client
from kube.client.errors import ApiError

log = logging.getLogger("kubeling.controllers.namespace")

Obj = dict[str, Any]

FINALIZER = "kubernetes"
REQUEUE_AFTER = 1.0  # seconds between passes while content remains
# Passes while pods still have a grace period running can take longer than that; upstream
# estimates the wait from the pods' grace periods, we simply poll.


@dataclass
class Pass:
    """What one pass over a namespace's content found."""

    remaining: Counter[str] = field(default_factory=Counter)  # resource -> objects left
    finalizers: Counter[str] = field(default_factory=Counter)  # finalizer -> objects held by it
    failures: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.remaining and not self.failures


class NamespaceController(Controller):
    """Deletes a Terminating namespace's content, then finalizes it.

    Options: workers (default 2), resync_period (default 0; the controller requeues what it
    waits on by itself), resources (the namespaced ResourceTypes to empty; default all served)."""

    name = "namespace"

    def __init__(self, client: Client, *, workers: int | None = None, resync_period: float | None = None,
                 resources: tuple[ResourceType, ...] | None = None) -> None:
        self.resources = resources or tuple(
            r for r in RESOURCES if r.namespaced and {"list", "delete"} <= set(r.verbs))
        if resync_period is not None:
            self.resync_period = resync_period
        super().__init__(client, workers=workers)

    def setup(self) -> None:
        self.namespaces = self.watch("namespaces")

    def reconcile(self, key: str) -> None:
        ns = self.namespaces.get(key)
        if ns is None or not (ns.get("metadata") or {}).get("deletionTimestamp"):
            return
        if FINALIZER not in ((ns.get("spec") or {}).get("finalizers") or []):
            return  # finalized already; the apiserver removes it once other finalizers are gone
        result = self.delete_content(key)
        self._set_conditions(key, result)
        if not result.empty:
            log.info("namespace=%s waiting remaining=%s failures=%d", key, dict(result.remaining),
                     len(result.failures))
            self.queue.add_after(key, REQUEUE_AFTER)
            return
        self._finalize(key)
        log.info("namespace=%s finalized", key)

    # -- content --

    def delete_content(self, namespace: str) -> Pass:
        """Delete everything in the namespace; report what is still there afterwards."""
        result = Pass()
        for rt in self.resources:
            try:
                items = self.client.list_all(rt, namespace).get("items") or []
            except ApiError as e:
                result.failures.append(f"list {rt.name}: {e.message}")
                continue
            left = 0
            for obj in items:
                m = obj.get("metadata") or {}
                if m.get("deletionTimestamp"):
                    left += 1
                    for f in m.get("finalizers") or []:
                        result.finalizers[f] += 1
                    if rt.name == "pods" and not (obj.get("spec") or {}).get("nodeName"):
                        self._delete(rt, obj, namespace, result, grace=0)
                    continue
                grace = 0 if rt.name == "pods" and not (obj.get("spec") or {}).get("nodeName") else None
                if self._delete(rt, obj, namespace, result, grace=grace):
                    left += 1
            if left:
                result.remaining[rt.name if not rt.group else f"{rt.name}.{rt.group}"] = left
        return result

    def _delete(self, rt: ResourceType, obj: Obj, namespace: str, result: Pass, grace: int | None) -> bool:
        """Delete one object; True if it may still be there (marked, or the delete failed)."""
        m = obj["metadata"]
        try:
            out = self.client.delete(rt, m["name"], namespace=namespace, grace_period_seconds=grace,
                                     propagation_policy="Background", preconditions={"uid": m["uid"]})
        except ApiError as e:
            if e.is_not_found() or e.code == 409:
                return False  # gone, or replaced (the next pass sees the successor)
            result.failures.append(f"delete {rt.name}/{m['name']}: {e.message}")
            return True
        # An object still marked for deletion (a pod in its grace period, a finalizer) comes back.
        return out.get("kind") != "Status" and bool((out.get("metadata") or {}).get("deletionTimestamp"))

    # -- the namespace object --

    def _finalize(self, name: str) -> None:
        for _ in range(5):
            try:
                ns = copy.deepcopy(self.client.get("namespaces", name))
            except ApiError as e:
                if e.is_not_found():
                    return
                raise
            fins = (ns.get("spec") or {}).get("finalizers") or []
            if FINALIZER not in fins:
                return
            ns.setdefault("spec", {})["finalizers"] = [f for f in fins if f != FINALIZER]
            try:
                finalize_namespace(self.client, ns)
                return
            except ApiError as e:
                if e.is_not_found():
                    return
                if e.code != 409:
                    raise
        raise ApiError(409, "Conflict", f"finalize namespace {name}: it kept changing")

    def _set_conditions(self, name: str, result: Pass) -> None:
        ns = self.namespaces.get(name)
        if ns is None:
            return
        want = conditions_for(result)
        old = {c.get("type"): c for c in (ns.get("status") or {}).get("conditions") or []}
        if all(_same(old.get(c["type"]), c) for c in want):
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        new = copy.deepcopy(ns)
        conds = []
        for c in want:
            prev = old.get(c["type"])
            t = prev.get("lastTransitionTime") if prev and prev.get("status") == c["status"] else now
            conds.append({**c, "lastTransitionTime": t or now})
        new.setdefault("status", {})["conditions"] = conds
        try:
            self.client.update_status("namespaces", new)
        except ApiError as e:
            if not (e.is_not_found() or e.code == 409):
                raise


def _same(a: Obj | None, b: Obj) -> bool:
    return a is not None and all(a.get(k) == b[k] for k in ("status", "reason", "message"))


def conditions_for(result: Pass) -> list[Obj]:
    """Upstream's NamespaceDeletion*/Namespace*Remaining conditions for one pass (pure)."""
    def cond(typ: str, bad: bool, reason_bad: str, msg_bad: str, reason_ok: str, msg_ok: str) -> Obj:
        return {"type": typ, "status": "True" if bad else "False", "reason": reason_bad if bad else reason_ok,
                "message": msg_bad if bad else msg_ok}

    remaining = ", ".join(f"{r} has {n} resource instances" for r, n in sorted(result.remaining.items()))
    fins = ", ".join(f"{f} in {n} resource instances" for f, n in sorted(result.finalizers.items()))
    return [
        cond("NamespaceDeletionDiscoveryFailure", False, "", "", "ResourcesDiscovered",
             "All resources successfully discovered"),
        cond("NamespaceDeletionGroupVersionParsingFailure", False, "", "", "ParsedGroupVersions",
             "All legacy kube types successfully parsed"),
        cond("NamespaceDeletionContentFailure", bool(result.failures), "ContentDeletionFailed",
             "Failed to delete all resource types, " + "; ".join(result.failures[:5]), "ContentDeleted",
             "All content successfully deleted, may be waiting on finalization"),
        cond("NamespaceContentRemaining", bool(result.remaining), "SomeResourcesRemain",
             f"Some resources are remaining: {remaining}", "ContentRemoved", "All content successfully removed"),
        cond("NamespaceFinalizersRemaining", bool(result.finalizers), "SomeFinalizersRemain",
             f"Some content in the namespace has finalizers remaining: {fins}", "ContentHasNoFinalizers",
             "All content-preserving finalizers finished"),
    ]


def finalize_namespace(client: Client, namespace: Obj) -> Obj:
    """PUT /api/v1/namespaces/NAME/finalize (only spec.finalizers is taken from the body)."""
    return client.update("namespaces", namespace, subresource="finalize")
