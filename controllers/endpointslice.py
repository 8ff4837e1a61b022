"""EndpointSlice controller: discovery.k8s.io/v1 EndpointSlices for every Service with a selector.

Each endpoint is one selected pod (it has a podIP, is not terminal); its conditions are as
upstream's:

    ready       = pod Ready and not terminating   (always true with publishNotReadyAddresses)
    serving     = pod Ready
    terminating = the pod has a deletionTimestamp

Pods are grouped by their resolved ports (a named targetPort may resolve differently per pod),
and each group is packed into slices of at most `max_endpoints_per_slice` endpoints. Packing
keeps an endpoint in the slice it already sits in and fills free room before making a new
slice, so one pod's change rewrites one slice. A Service with no endpoints keeps one empty
placeholder slice, as upstream does.

Slices carry kubernetes.io/service-name, endpointslice.kubernetes.io/managed-by, the
Service's labels, a controller ownerReference to the Service, and the
endpoints.kubernetes.io/last-change-trigger-time annotation. Only IPv4 is produced.
Slices of a deleted Service are deleted here right away (the ownerReference lets the garbage
collector do it too). Services without a selector are left alone.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kube.client import Client
from kube.client.errors import ApiError

from .base import Controller, split_key
from .endpoints import (
    TRIGGER_TIME_ANNOTATION,
    ResolvedPort,
    has_selector,
    managed_labels,
    pod_ip,
    pod_ports,
    pod_ready,
    pod_terminating,
    selected_pods,
    services_selecting,
    target_ref,
    trigger_time,
)

log = logging.getLogger("kubeling.controllers.endpointslice")

Obj = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
PortKey = tuple[ResolvedPort, ...]
EXPECTATION_TIMEOUT = 5.0  # seconds to wait for our informer to show a slice we created


def endpoint_for(svc: Obj, pod: Obj) -> Obj:
    publish = bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))
    ready, terminating = pod_ready(pod), pod_terminating(pod)
    ep: Obj = {
        "addresses": [pod_ip(pod)],
        "conditions": {"ready": publish or (ready and not terminating), "serving": publish or ready,
                       "terminating": terminating},
        "targetRef": target_ref(pod),
    }
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        ep["nodeName"] = spec["nodeName"]
    if spec.get("hostname") and spec.get("subdomain") == svc["metadata"]["name"]:
        ep["hostname"] = spec["hostname"]
    return ep


def slice_port_key(sl: Obj) -> PortKey:
    return tuple(sorted(ResolvedPort(p.get("name") or "", int(p.get("port") or 0), p.get("protocol") or "TCP",
                                     p.get("appProtocol") or "") for p in sl.get("ports") or []))


def _ep_id(ep: Obj) -> str:
    return str((ep.get("addresses") or [""])[0])


@dataclass
class SlicePlan:
    """What one slice should hold; `existing` is None for a slice still to be created."""

    ports: PortKey
    endpoints: list[Obj] = field(default_factory=list)
    existing: Obj | None = None


def plan_slices(desired: dict[PortKey, dict[str, Obj]], existing: list[Obj], max_per_slice: int) -> tuple[
        list[SlicePlan], list[Obj]]:
    """Pack desired endpoints (port set -> address -> endpoint) into slices, reusing existing ones.
    Returns (plans for slices to keep or create, slices to delete). Pure."""
    plans: list[SlicePlan] = []
    delete: list[Obj] = []
    by_ports: dict[PortKey, list[Obj]] = {}
    for sl in sorted(existing, key=lambda s: s["metadata"]["name"]):
        by_ports.setdefault(slice_port_key(sl), []).append(sl)
    for ports, slices in by_ports.items():
        if ports not in desired:
            delete.extend(slices)
    for ports, eps in sorted(desired.items()):
        remaining = dict(eps)
        group: list[SlicePlan] = []
        for sl in by_ports.get(ports, []):
            keep = [remaining.pop(_ep_id(e)) for e in sl.get("endpoints") or [] if _ep_id(e) in remaining]
            group.append(SlicePlan(ports, keep[:max_per_slice], sl))
        leftovers = [remaining[k] for k in sorted(remaining)]
        for plan in group:
            room = max_per_slice - len(plan.endpoints)
            if room > 0 and leftovers:
                plan.endpoints.extend(leftovers[:room])
                leftovers = leftovers[room:]
        while leftovers:
            group.append(SlicePlan(ports, leftovers[:max_per_slice]))
            leftovers = leftovers[max_per_slice:]
        for plan in group:
            if plan.endpoints or (not eps and plan is group[0]):
                plans.append(plan)
            elif plan.existing is not None:
                delete.append(plan.existing)
        if not group and not eps:
            plans.append(SlicePlan(ports))  # placeholder
    return plans, delete


class EndpointSliceController(Controller):
    """Keeps EndpointSlices in step with Services' selected pods."""

    name = "endpointslice"

    def __init__(self, client: Client, *, max_endpoints_per_slice: int = 100, workers: int | None = None) -> None:
        self.max_endpoints_per_slice = max_endpoints_per_slice
        # slices created but not yet seen by our informer, per service key: until they show up a
        # reconcile would create them again (client-go's "expectations", by name)
        self._expected: dict[str, dict[str, float]] = {}  # service key -> slice name -> give up at
        self._lock = threading.Lock()
        super().__init__(client, workers=workers)

    def setup(self) -> None:
        self.services = self.watch("services")
        self.pods = self.watch("pods", key_fn=lambda pod: services_selecting(self.services, pod))
        self.slices = self.watch("endpointslices.discovery.k8s.io", key_fn=self._slice_owner,
                                 label_selector=f"{MANAGED_BY_LABEL}={CONTROLLER_NAME}")

    @staticmethod
    def _slice_owner(sl: Obj) -> str | None:
        meta = sl.get("metadata") or {}
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        return f"{meta.get('namespace')}/{svc}" if svc else None

    def _slices_of(self, ns: str, name: str) -> list[Obj]:
        return [s for s in self.slices.list()
                if s["metadata"].get("namespace") == ns
                and (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == name]

    def reconcile(self, key: str) -> None:
        ns, name = split_key(key)
        ns = ns or ""
        svc = self.services.get(key)
        existing = self._slices_of(ns, name)
        if not self._caught_up(key, existing):
            self.queue.add_after(key, 0.05)
            return
        if svc is None:
            for sl in existing:
                self._delete(sl)
            return
        if not has_selector(svc):
            return
        pods = selected_pods(svc, self.pods, include_terminating=True)
        desired: dict[PortKey, dict[str, Obj]] = {}
        has_ports = bool((svc.get("spec") or {}).get("ports"))
        for pod in pods:
            ports = pod_ports(svc, pod)
            if has_ports and not ports:
                continue
            ep = endpoint_for(svc, pod)
            desired.setdefault(ports, {})[_ep_id(ep)] = ep
        if not desired:
            desired[()] = {}
        # slices of another owner (a re-created Service with a new uid) are replaced, not reused
        uid = svc["metadata"].get("uid")
        mine = [s for s in existing if any(r.get("uid") == uid for r in s["metadata"].get("ownerReferences") or [])]
        stale = [s for s in existing if s not in mine]
        plans, delete = plan_slices(desired, mine, self.max_endpoints_per_slice)
        when = trigger_time(svc, pods)
        for plan in plans:
            self._apply(svc, plan, when)
        for sl in delete + stale:
            self._delete(sl)

    def _caught_up(self, key: str, existing: list[Obj]) -> bool:
        with self._lock:
            seen = {s["metadata"]["name"] for s in existing}
            now = time.monotonic()
            waiting = {n: t for n, t in self._expected.get(key, {}).items() if n not in seen and t > now}
            if waiting:
                self._expected[key] = waiting
                return False
            self._expected.pop(key, None)
            return True

    def _slice_object(self, svc: Obj, plan: SlicePlan, when: str) -> Obj:
        meta = svc["metadata"]
        labels = managed_labels(svc)
        labels[SERVICE_NAME_LABEL] = meta["name"]
        labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
        return {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "generateName": f"{meta['name']}-", "namespace": meta["namespace"], "labels": labels,
                "annotations": {TRIGGER_TIME_ANNOTATION: when},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": meta["name"],
                                     "uid": meta.get("uid", ""), "controller": True, "blockOwnerDeletion": True}],
            },
            "addressType": "IPv4",
            "endpoints": sorted(plan.endpoints, key=_ep_id),
            "ports": [p.as_dict() for p in plan.ports],
        }

    def _apply(self, svc: Obj, plan: SlicePlan, when: str) -> None:
        want = self._slice_object(svc, plan, when)
        key = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
        cur = plan.existing
        if cur is None:
            made = self.client.create("endpointslices.discovery.k8s.io", want, namespace=svc["metadata"]["namespace"])
            with self._lock:
                self._expected.setdefault(key, {})[made["metadata"]["name"]] = time.monotonic() + EXPECTATION_TIMEOUT
            log.info("controller=endpointslice service=%s created slice=%s endpoints=%d", key,
                     made["metadata"]["name"], len(plan.endpoints))
            return
        same = ((cur.get("endpoints") or []) == want["endpoints"] and (cur.get("ports") or []) == want["ports"]
                and (cur["metadata"].get("labels") or {}) == want["metadata"]["labels"])
        if same:
            return
        updated = dict(cur)
        updated["metadata"] = {**cur["metadata"], "labels": want["metadata"]["labels"],
                               "annotations": {**(cur["metadata"].get("annotations") or {}),
                                               **want["metadata"]["annotations"]}}
        updated["endpoints"] = want["endpoints"]
        updated["ports"] = want["ports"]
        self.client.update("endpointslices.discovery.k8s.io", updated)  # a stale cache gets 409: retried
        log.info("controller=endpointslice service=%s updated slice=%s endpoints=%d", key,
                 cur["metadata"]["name"], len(plan.endpoints))

    def _delete(self, sl: Obj) -> None:
        meta = sl["metadata"]
        try:
            self.client.delete("endpointslices.discovery.k8s.io", meta["name"], namespace=meta["namespace"],
                               preconditions={"uid": meta.get("uid", "")} if meta.get("uid") else None)
            log.info("controller=endpointslice slice=%s/%s deleted", meta["namespace"], meta["name"])
        except ApiError as e:
            if not (e.is_not_found() or e.is_conflict()):
                raise
