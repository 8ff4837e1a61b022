"""Endpoints controller: the v1 Endpoints object of every Service with a selector.

For each such Service the Endpoints object of the same name lists, per distinct set of
resolved ports, the matching pods' IPs: ready pods under `addresses`, the others under
`notReadyAddresses` (as upstream's endpoints controller). A pod counts when it has a podIP,
is not terminal (Succeeded/Failed) and is not terminating (unless the Service publishes
not-ready addresses). A `targetPort` given as a name is looked up per pod among its
containers' ports, so pods of one Service may serve on different numbers; a pod lacking the
named port is left out of that port.

Services without a selector are left alone: their Endpoints belong to the user. When a
Service goes away, the Endpoints object we made for it goes too.

The helpers at the top (selection, readiness, port resolution) are shared with the
EndpointSlice controller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kube.api.selectors import selector_from_match_labels
from kube.client import Client, Informer
from kube.client.errors import ApiError

from .base import Controller, meta_key, split_key
from .podcontrol import is_pod_ready as pod_ready

log = logging.getLogger("kubeling.controllers.endpoints")

Obj = dict[str, Any]

TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
HEADLESS_LABEL = "service.kubernetes.io/headless"


# -- shared helpers ------------------------------------------------------------------


def has_selector(svc: Obj) -> bool:
    spec = svc.get("spec") or {}
    return bool(spec.get("selector")) and spec.get("type") != "ExternalName"


def selects(svc: Obj, pod: Obj) -> bool:
    """True when the Service's selector picks the pod (same namespace, labels match)."""
    if (svc.get("metadata") or {}).get("namespace") != (pod.get("metadata") or {}).get("namespace"):
        return False
    if not has_selector(svc):
        return False
    sel = selector_from_match_labels((svc.get("spec") or {}).get("selector"))
    return sel.matches((pod.get("metadata") or {}).get("labels") or {})


def pod_terminating(pod: Obj) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def pod_ip(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("podIP") or "")


def pod_counts(pod: Obj, include_terminating: bool) -> bool:
    """upstream ShouldPodBeInEndpoints: has an IP, not terminal, terminating only if asked for."""
    if not pod_ip(pod):
        return False
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    return include_terminating or not pod_terminating(pod)


def resolve_target_port(svc_port: Obj, pod: Obj) -> int | None:
    """The pod's port number for one Service port: targetPort as a number is itself (defaulting to
    `port`), as a name it is the containerPort of that name in the pod (None if it has none)."""
    target = svc_port.get("targetPort")
    if target is None or target == "" or target == 0:
        return int(svc_port["port"])
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    proto = svc_port.get("protocol") or "TCP"
    for c in (pod.get("spec") or {}).get("containers") or []:
        for cp in c.get("ports") or []:
            if cp.get("name") == target and (cp.get("protocol") or "TCP") == proto:
                return int(cp["containerPort"])
    return None


@dataclass(frozen=True, order=True)
class ResolvedPort:
    name: str
    port: int
    protocol: str
    app_protocol: str = ""

    def as_dict(self) -> Obj:
        out: Obj = {"name": self.name, "port": self.port, "protocol": self.protocol}
        if self.app_protocol:
            out["appProtocol"] = self.app_protocol
        return out


def pod_ports(svc: Obj, pod: Obj) -> tuple[ResolvedPort, ...]:
    """The Service's ports resolved for this pod, sorted; ports the pod doesn't have are left out."""
    out: list[ResolvedPort] = []
    for p in (svc.get("spec") or {}).get("ports") or []:
        num = resolve_target_port(p, pod)
        if num is None:
            continue
        out.append(ResolvedPort(p.get("name") or "", num, p.get("protocol") or "TCP", p.get("appProtocol") or ""))
    return tuple(sorted(out))


def target_ref(pod: Obj) -> Obj:
    m = pod.get("metadata") or {}
    return {"kind": "Pod", "namespace": m.get("namespace", ""), "name": m.get("name", ""), "uid": m.get("uid", "")}


def selected_pods(svc: Obj, pods: Informer, include_terminating: bool) -> list[Obj]:
    """Pods of the Service's namespace its selector picks and that count as endpoints, by name."""
    out = [p for p in pods.list() if selects(svc, p) and pod_counts(p, include_terminating)]
    out.sort(key=lambda p: p["metadata"]["name"])
    return out


def trigger_time(svc: Obj, pods: list[Obj]) -> str:
    """When the endpoints last had a reason to change: the newest of the Service's creation and the
    pods' Ready transitions and creations. Computed from the cache alone (level-triggered), so a
    restart gives the same value; upstream tracks the same instants from watch events."""
    times = [str((svc.get("metadata") or {}).get("creationTimestamp") or "")]
    for p in pods:
        times.append(str((p.get("metadata") or {}).get("creationTimestamp") or ""))
        for c in (p.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("lastTransitionTime"):
                times.append(str(c["lastTransitionTime"]))
    return max(t for t in times if t) if any(times) else ""


def services_selecting(services: Informer, pod: Obj) -> list[str]:
    """Keys of the Services whose selector picks the pod (a key function for pod informers)."""
    return [meta_key(s) for s in services.list() if selects(s, pod)]


def managed_labels(svc: Obj) -> dict[str, str]:
    """The Service's own labels plus the headless marker, as upstream copies them."""
    labels = dict((svc.get("metadata") or {}).get("labels") or {})
    if (svc.get("spec") or {}).get("clusterIP") == "None":
        labels[HEADLESS_LABEL] = ""
    else:
        labels.pop(HEADLESS_LABEL, None)
    return labels


# -- the controller ---------------------------------------------------------------


class EndpointsController(Controller):
    """Keeps v1 Endpoints in step with Services' selected pods."""

    name = "endpoints"

    def __init__(self, client: Client, *, workers: int | None = None) -> None:
        super().__init__(client, workers=workers)

    def setup(self) -> None:
        self.services = self.watch("services")
        self.pods = self.watch("pods", key_fn=lambda pod: services_selecting(self.services, pod))
        self.endpoints = self.watch("endpoints", primary=False)

    def reconcile(self, key: str) -> None:
        ns, name = split_key(key)
        svc = self.services.get(key)
        current = self.endpoints.get(key)
        if svc is None:
            if current is not None and self._ours(current):
                self._delete(ns or "", name)
            return
        if not has_selector(svc):
            return  # user-managed endpoints
        desired = self.desired(svc)
        if current is None:
            try:
                self.client.create("endpoints", desired, namespace=ns)
                log.info("controller=endpoints service=%s created subsets=%d", key, len(desired["subsets"]))
            except ApiError as e:
                if not e.is_already_exists():
                    raise
                self.queue.add_after(key, 0.1)  # our cache is behind: look again
            return
        if self._same(current, desired):
            return
        updated = dict(current)
        updated["metadata"] = dict(current["metadata"])
        updated["metadata"]["labels"] = desired["metadata"]["labels"]
        updated["metadata"]["annotations"] = {**(current["metadata"].get("annotations") or {}),
                                              **desired["metadata"]["annotations"]}
        updated["subsets"] = desired["subsets"]
        self.client.update("endpoints", updated, namespace=ns)  # 409 on a stale cache: retried
        log.info("controller=endpoints service=%s updated subsets=%d", key, len(desired["subsets"]))

    def desired(self, svc: Obj) -> Obj:
        meta = svc["metadata"]
        spec = svc.get("spec") or {}
        publish = bool(spec.get("publishNotReadyAddresses"))
        pods = selected_pods(svc, self.pods, include_terminating=publish)
        by_ports: dict[tuple[ResolvedPort, ...], tuple[list[Obj], list[Obj]]] = {}
        for pod in pods:
            ports = pod_ports(svc, pod)
            if spec.get("ports") and not ports:
                continue
            addr: Obj = {"ip": pod_ip(pod), "targetRef": target_ref(pod)}
            pspec = pod.get("spec") or {}
            if pspec.get("nodeName"):
                addr["nodeName"] = pspec["nodeName"]
            if pspec.get("hostname") and pspec.get("subdomain") == meta["name"]:
                addr["hostname"] = pspec["hostname"]
            ready, not_ready = by_ports.setdefault(ports, ([], []))
            (ready if publish or pod_ready(pod) else not_ready).append(addr)
        subsets: list[Obj] = []
        for ports, (ready, not_ready) in sorted(by_ports.items()):
            subset: Obj = {}
            if ready:
                subset["addresses"] = sorted(ready, key=lambda a: a["ip"])
            if not_ready:
                subset["notReadyAddresses"] = sorted(not_ready, key=lambda a: a["ip"])
            if ports:
                subset["ports"] = [p.as_dict() for p in ports]
            subsets.append(subset)
        return {
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": managed_labels(svc),
                         "annotations": {TRIGGER_TIME_ANNOTATION: trigger_time(svc, pods)}},
            "subsets": subsets,
        }

    @staticmethod
    def _same(current: Obj, desired: Obj) -> bool:
        """Equal subsets and labels: the trigger time alone is no reason to write."""
        cur_meta = current.get("metadata") or {}
        return ((current.get("subsets") or []) == desired["subsets"]
                and (cur_meta.get("labels") or {}) == desired["metadata"]["labels"])

    @staticmethod
    def _ours(ep: Obj) -> bool:
        # an Endpoints object carrying our trigger annotation was written by this controller
        return TRIGGER_TIME_ANNOTATION in ((ep.get("metadata") or {}).get("annotations") or {})

    def _delete(self, ns: str, name: str) -> None:
        try:
            self.client.delete("endpoints", name, namespace=ns)
            log.info("controller=endpoints service=%s/%s gone: endpoints deleted", ns, name)
        except ApiError as e:
            if not e.is_not_found():
                raise
