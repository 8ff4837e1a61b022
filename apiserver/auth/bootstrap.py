"""The default RBAC policy, written into the store when the apiserver starts.

    await ensure_policy(registry)

Every default ClusterRole and ClusterRoleBinding carries the label kubernetes.io/bootstrapping=
rbac-defaults and the annotation rbac.authorization.kubernetes.io/autoupdate=true. At start a
missing one is created; an existing one still annotated autoupdate=true is reconciled as upstream's
bootstrap reconciler does: missing rules and subjects are added, what an operator added is kept.
Setting the annotation to "false" leaves the object alone.

The roles (upstream's names; the rules cover the resources this server has):

- cluster-admin: everything (bound to group system:masters).
- admin / edit / view: namespaced user roles, meant to be bound with RoleBindings (upstream
  aggregates them; here they are flat). admin = edit + roles/rolebindings; view has no secrets.
- system:basic-user: SelfSubjectAccessReview / SelfSubjectRulesReview / SelfSubjectReview, and
  system:discovery (/api, /apis, /openapi, /version, health): both for system:authenticated.
- system:public-info-viewer: /healthz /livez /readyz /version for system:authenticated and
  system:unauthenticated (as upstream; anonymous requests exist only with --anonymous-auth).
- system:monitoring: /metrics and the health endpoints for group system:monitoring.
- system:node-proxier (user system:kube-proxy): what `kubeling proxy` reads.
- system:kube-scheduler (user system:kube-scheduler): what scheduler/ does.
- system:kube-controller-manager (user system:kube-controller-manager): what controllers/ does.
  The garbage collector and the namespace controller act on every resource type (as upstream's
  generic-garbage-collector and namespace-controller service accounts may), hence the "*" rule.
- system:kubeling-dns (user system:kubeling-dns): what `kubeling dns` reads.
- system:node: upstream's role for kubelets, not bound: agents are authorized by the node
  authorizer (apiserver/auth/node.py), which also covers everything this role would add.

`kubeling server` runs its scheduler and controllers with the admin kubeconfig (system:masters);
the roles above are for `kubeling scheduler` / `controller-manager` / `proxy` / `dns` running with
their own certificates (`kubeling pki init` makes them).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from kube.api.resources import lookup

from ..errors import APIError
from ..registry import Registry

log = logging.getLogger("kubeling.apiserver.bootstrap")

AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"
BOOTSTRAP_LABEL = {"kubernetes.io/bootstrapping": "rbac-defaults"}
RBAC_GROUP = "rbac.authorization.k8s.io"

READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]
READ_WRITE = READ + WRITE

Obj = dict[str, Any]


def rule(verbs: list[str], groups: list[str] | None = None, resources: list[str] | None = None, *,
         urls: list[str] | None = None, names: list[str] | None = None) -> Obj:
    r: Obj = {"verbs": list(verbs)}
    if urls is not None:
        r["nonResourceURLs"] = list(urls)
        return r
    r["apiGroups"] = list(groups or [""])
    r["resources"] = list(resources or [])
    if names:
        r["resourceNames"] = list(names)
    return r


def _view_rules() -> list[Obj]:
    return [
        rule(READ, [""], ["pods", "pods/log", "pods/status", "services", "services/status", "endpoints",
                          "configmaps", "serviceaccounts", "events", "namespaces", "namespaces/status",
                          "persistentvolumeclaims", "replicationcontrollers", "bindings"]),
        rule(READ, ["apps"], ["deployments", "deployments/scale", "deployments/status", "replicasets",
                              "replicasets/scale", "replicasets/status", "daemonsets", "daemonsets/status",
                              "statefulsets"]),
        rule(READ, ["batch"], ["jobs", "jobs/status", "cronjobs"]),
        rule(READ, ["discovery.k8s.io"], ["endpointslices"]),
        rule(READ, ["coordination.k8s.io"], ["leases"]),
    ]


def _edit_rules() -> list[Obj]:
    return _view_rules() + [
        rule(READ_WRITE, [""], ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "services",
                                "services/proxy", "endpoints", "configmaps", "secrets", "serviceaccounts",
                                "persistentvolumeclaims", "events"]),
        rule(["create"], [""], ["pods/eviction", "serviceaccounts/token"]),
        rule(["impersonate"], [""], ["serviceaccounts"]),
        rule(READ_WRITE, ["apps"], ["deployments", "deployments/scale", "replicasets", "replicasets/scale",
                                    "daemonsets", "statefulsets"]),
        rule(READ_WRITE, ["batch"], ["jobs", "cronjobs"]),
        rule(READ_WRITE, ["discovery.k8s.io"], ["endpointslices"]),
        rule(READ_WRITE, ["coordination.k8s.io"], ["leases"]),
    ]


def _admin_rules() -> list[Obj]:
    return _edit_rules() + [
        rule(READ_WRITE, [RBAC_GROUP], ["roles", "rolebindings"]),
        rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]),
    ]


def _events_rule() -> Obj:
    return rule(["create", "patch", "update"], ["", "events.k8s.io"], ["events"])


HEALTH_URLS = ["/healthz", "/livez", "/readyz", "/version", "/version/"]


def cluster_roles() -> list[Obj]:
    roles: dict[str, list[Obj]] = {
        "cluster-admin": [rule(["*"], ["*"], ["*"]), rule(["*"], urls=["*"])],
        "admin": _admin_rules(),
        "edit": _edit_rules(),
        "view": _view_rules(),
        "system:basic-user": [
            rule(["create"], ["authorization.k8s.io"], ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
            rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"]),
        ],
        "system:discovery": [rule(["get"], urls=["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                                                 "/openapi", "/openapi/*", "/readyz", "/version", "/version/"])],
        "system:public-info-viewer": [rule(["get"], urls=HEALTH_URLS)],
        "system:monitoring": [rule(["get"], urls=["/metrics", "/metrics/slis", "/livez", "/readyz", "/healthz",
                                                  "/livez/*", "/readyz/*", "/healthz/*"])],
        "system:node-proxier": [  # proxy/: Services, EndpointSlices, its own Node
            rule(["list", "watch"], [""], ["services", "endpoints"]),
            rule(["list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
            rule(READ, [""], ["nodes"]),
            _events_rule(),
        ],
        "system:kube-scheduler": [  # scheduler/: informers, binding, PodScheduled, events, leader election
            rule(READ, [""], ["pods", "nodes", "namespaces"]),
            rule(["create"], [""], ["pods/binding", "bindings"]),
            rule(["patch", "update"], [""], ["pods/status"]),
            rule(["delete"], [""], ["pods"]),
            rule(READ, ["apps"], ["replicasets", "daemonsets", "statefulsets"]),
            _events_rule(),
            rule(["create"], ["coordination.k8s.io"], ["leases"]),
            rule(["get", "update"], ["coordination.k8s.io"], ["leases"], names=["kube-scheduler"]),
            rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"]),
        ],
        "system:kube-controller-manager": [
            # the garbage collector and namespace deletion act on every resource type
            rule(["get", "list", "watch", "update", "patch", "delete", "deletecollection"], ["*"], ["*"]),
            # replicaset/job/daemonset pods, deployment replicasets, endpoints(lices), each namespace's
            # default ServiceAccount, events, the Lease
            rule(["create"], [""], ["pods", "endpoints", "events", "serviceaccounts"]),
            rule(["create"], ["apps"], ["replicasets"]),
            rule(["create"], ["discovery.k8s.io"], ["endpointslices"]),
            rule(["create"], ["events.k8s.io"], ["events"]),
            rule(["create"], ["coordination.k8s.io"], ["leases"]),
            rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"]),
        ],
        "system:kubeling-dns": [  # dns/: Services, EndpointSlices, pod A records
            rule(["list", "watch"], [""], ["services", "pods", "endpoints", "namespaces"]),
            rule(["list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
        ],
        "system:node": [  # upstream's; not bound (the node authorizer serves agents)
            rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
            rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews", "localsubjectaccessreviews"]),
            rule(READ, [""], ["services"]),
            rule(["create", "get", "list", "watch"], [""], ["nodes"]),
            rule(["update", "patch"], [""], ["nodes/status", "nodes"]),
            _events_rule(),
            rule(READ, [""], ["pods"]),
            rule(["create", "delete"], [""], ["pods"]),
            rule(["update", "patch"], [""], ["pods/status"]),
            rule(["create"], [""], ["pods/eviction", "serviceaccounts/token"]),
            rule(READ, [""], ["secrets", "configmaps"]),
            rule(["get"], [""], ["persistentvolumeclaims", "persistentvolumes", "endpoints"]),
            rule(["get", "create", "update", "patch", "delete"], ["coordination.k8s.io"], ["leases"]),
        ],
    }
    return [{"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole", "metadata": _meta(name), "rules": rules}
            for name, rules in roles.items()]


def _subjects(kind: str, *names: str) -> list[Obj]:
    return [{"kind": kind, "apiGroup": RBAC_GROUP, "name": n} for n in names]


def cluster_role_bindings() -> list[Obj]:
    bindings: dict[str, list[Obj]] = {
        "cluster-admin": _subjects("Group", "system:masters"),
        "system:basic-user": _subjects("Group", "system:authenticated"),
        "system:discovery": _subjects("Group", "system:authenticated"),
        "system:public-info-viewer": _subjects("Group", "system:authenticated", "system:unauthenticated"),
        "system:monitoring": _subjects("Group", "system:monitoring"),
        "system:node-proxier": _subjects("User", "system:kube-proxy"),
        "system:kube-scheduler": _subjects("User", "system:kube-scheduler"),
        "system:kube-controller-manager": _subjects("User", "system:kube-controller-manager"),
        "system:kubeling-dns": _subjects("User", "system:kubeling-dns"),
    }
    return [{"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": _meta(name),
             "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name}, "subjects": subjects}
            for name, subjects in bindings.items()]


def _meta(name: str) -> Obj:
    return {"name": name, "labels": dict(BOOTSTRAP_LABEL), "annotations": {AUTOUPDATE: "true"}}


def reconcile(existing: Obj, default: Obj) -> Obj | None:
    """The object with the defaults' missing rules/subjects (and label/annotation) added, or None when
    nothing is missing or the operator turned autoupdate off."""
    meta = existing.get("metadata") or {}
    if (meta.get("annotations") or {}).get(AUTOUPDATE) != "true":
        return None
    out = copy.deepcopy(existing)
    changed = False
    key = "rules" if default["kind"] == "ClusterRole" else "subjects"
    have = list(out.get(key) or [])
    for item in default[key]:
        if item not in have:
            have.append(item)
            changed = True
    out[key] = have
    labels = out.setdefault("metadata", {}).setdefault("labels", {})
    for k, v in BOOTSTRAP_LABEL.items():
        if labels.get(k) != v:
            labels[k] = v
            changed = True
    return out if changed else None


async def ensure_policy(registry: Registry) -> int:
    """Create or reconcile the defaults; returns how many objects were written."""
    written = 0
    for resource, objs in (("clusterroles", cluster_roles()), ("clusterrolebindings", cluster_role_bindings())):
        rt = lookup(RBAC_GROUP, "v1", resource)
        assert rt is not None
        for obj in objs:
            name = obj["metadata"]["name"]
            for _attempt in range(3):
                try:
                    current = await registry.get(rt, None, name)
                except APIError as e:
                    if e.code != 404:
                        raise
                    try:
                        await registry.create(rt, None, copy.deepcopy(obj), {})
                        written += 1
                    except APIError as ce:
                        if ce.code == 409:  # another apiserver of the same store made it first
                            continue
                        raise
                    break
                new = reconcile(current, obj)
                if new is None:
                    break
                try:
                    await registry.update(rt, None, name, new, {})
                    written += 1
                    log.info("reconciled default %s %s", obj["kind"], name)
                except APIError as ue:
                    if ue.code == 409:
                        continue
                    raise
                break
    if written:
        log.info("default RBAC policy written objects=%d", written)
    return written
