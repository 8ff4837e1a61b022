"""The node authorizer and NodeRestriction: what an agent (user system:node:N, group system:nodes) may do.

    graph = NodeGraph()                       # fed with pods by apiserver/auth/cache.py
    NodeAuthorizer(graph).authorize(attrs)    # Decision
    node_admission(graph, attrs, obj)         # None, or why the write is refused

Upstream splits this in two, and so do we: the authorizer (plugin/pkg/auth/authorizer/node) decides
from the request's attributes and a graph of which pods are bound to which node and what they
reference; the NodeRestriction admission plugin then checks the object of a write (a node may
create only its own Node, update the status of only its own pods, ...).

What node N may do here, precisely:

- nodes: get/list/watch any Node (our agents keep routes to every other node's podCIDR, as
  flannel's host-gw does, so they list Nodes: upstream 1.32's AuthorizeNodeWithSelectors would
  restrict reads to Node N). create/update/patch only Node N and nodes/status of N (admission).
- pods: get a pod bound to N; list/watch only with fieldSelector spec.nodeName=N (as upstream
  1.32), or one pod by name (metadata.name selector) bound to N; delete only pods bound to N;
  update/patch pods/status only of pods bound to N; create only mirror pods bound to N
  (annotation kubernetes.io/config.mirror).
- configmaps, secrets: get/list/watch one object by name, only when a pod bound to N references it
  (volumes, projected volumes, env/envFrom, imagePullSecrets). persistentvolumeclaims: get, same rule.
- serviceaccounts: get one used by a pod bound to N (spec.serviceAccountName; upstream lets nodes
  only create tokens) and create serviceaccounts/token for it, the TokenRequest bound to a pod on N.
- leases (coordination.k8s.io) in kube-node-lease named N: get/create/update/patch/delete.
- events: create/update/patch. services, endpoints, endpointslices: get/list/watch (the proxy may
  run on the agent's identity). subjectaccessreviews, tokenreviews: create.

Everything else has no opinion here (RBAC may still allow it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kube.api.selectors import SelectorError, parse_field_selector

from . import NODE_PREFIX, NODES, Attributes, Decision, UserInfo
from .rbac import Rule

NODE_LEASE_NAMESPACE = "kube-node-lease"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

Obj = dict[str, Any]
Ref = tuple[str, str, str]  # (resource, namespace, name)

# resources a node may use through the static rules (upstream's bootstrappolicy NodeRules, trimmed)
STATIC_RULES: tuple[Rule, ...] = (
    Rule(frozenset({"create"}), frozenset({"authentication.k8s.io"}), ("tokenreviews",)),
    Rule(frozenset({"create"}), frozenset({"authorization.k8s.io"}),
         ("subjectaccessreviews", "localsubjectaccessreviews")),
    Rule(frozenset({"get", "list", "watch"}), frozenset({""}), ("services", "endpoints")),
    Rule(frozenset({"get", "list", "watch"}), frozenset({"discovery.k8s.io"}), ("endpointslices",)),
    Rule(frozenset({"create", "update", "patch"}), frozenset({"", "events.k8s.io"}), ("events",)),
)


def _name(obj: Any, *path: str) -> str:
    cur = obj
    for p in path:
        cur = cur.get(p) if isinstance(cur, dict) else None
    return cur if isinstance(cur, str) else ""


def _dicts(v: Any) -> list[Obj]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def pod_references(pod: Obj) -> set[Ref]:
    """The configmaps, secrets, PVCs and service account a pod uses (what its node may read)."""
    spec = _dict(pod.get("spec"))
    ns = _name(pod, "metadata", "namespace") or "default"
    refs: set[tuple[str, str]] = set()
    sa = _name(spec, "serviceAccountName") or _name(spec, "serviceAccount")
    if sa:
        refs.add(("serviceaccounts", sa))
    for s in _dicts(spec.get("imagePullSecrets")):
        refs.add(("secrets", _name(s, "name")))
    for v in _dicts(spec.get("volumes")):
        refs.add(("configmaps", _name(v, "configMap", "name")))
        refs.add(("secrets", _name(v, "secret", "secretName")))
        refs.add(("persistentvolumeclaims", _name(v, "persistentVolumeClaim", "claimName")))
        for src in _dicts(_dict(v.get("projected")).get("sources")):
            refs.add(("configmaps", _name(src, "configMap", "name")))
            refs.add(("secrets", _name(src, "secret", "name")))
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for c in _dicts(spec.get(key)):
            for e in _dicts(c.get("envFrom")):
                refs.add(("configmaps", _name(e, "configMapRef", "name")))
                refs.add(("secrets", _name(e, "secretRef", "name")))
            for e in _dicts(c.get("env")):
                refs.add(("configmaps", _name(e, "valueFrom", "configMapKeyRef", "name")))
                refs.add(("secrets", _name(e, "valueFrom", "secretKeyRef", "name")))
    return {(kind, ns, name) for kind, name in refs if name}


def _dict(v: Any) -> Obj:
    return v if isinstance(v, dict) else {}


@dataclass(frozen=True)
class _PodInfo:
    node: str
    refs: frozenset[Ref]


class NodeGraph:
    """Pods bound to nodes and what they reference, as upstream's node authorizer graph (flattened:
    node <- pod <- configmap/secret/pvc/serviceaccount). A Sink for apiserver/auth/cache.py."""

    def __init__(self) -> None:
        self._pods: dict[tuple[str, str], _PodInfo] = {}
        self._users: dict[Ref, dict[str, int]] = {}  # object -> node -> how many of its pods use it

    def reset(self, resource: str, objs: Iterable[Obj]) -> None:
        self._pods.clear()
        self._users.clear()
        for obj in objs:
            self.put(resource, obj)

    def put(self, resource: str, obj: Obj) -> None:
        key = (_name(obj, "metadata", "namespace"), _name(obj, "metadata", "name"))
        self._forget(key)
        node = _name(obj, "spec", "nodeName")
        # an unscheduled pod is known (node "") but gives no node access to what it references
        info = _PodInfo(node, frozenset(pod_references(obj)) if node else frozenset())
        self._pods[key] = info
        for ref in info.refs:
            users = self._users.setdefault(ref, {})
            users[node] = users.get(node, 0) + 1

    def delete(self, resource: str, obj: Obj) -> None:
        self._forget((_name(obj, "metadata", "namespace"), _name(obj, "metadata", "name")))

    def _forget(self, key: tuple[str, str]) -> None:
        info = self._pods.pop(key, None)
        if info is None:
            return
        for ref in info.refs:
            users = self._users.get(ref)
            if users is None:
                continue
            users[info.node] -= 1
            if users[info.node] <= 0:
                del users[info.node]
            if not users:
                del self._users[ref]

    def pod_node(self, namespace: str, name: str) -> str | None:
        """The node a pod is bound to, "" when it is not scheduled, None when there is no such pod."""
        info = self._pods.get((namespace, name))
        return info.node if info else None

    def related(self, node: str, resource: str, namespace: str, name: str) -> bool:
        """Is the object used by a pod bound to node?"""
        if resource == "pods":
            return bool(node) and self.pod_node(namespace, name) == node
        return node in self._users.get((resource, namespace, name), {})


def is_node_user(user: UserInfo) -> bool:
    return user.name.startswith(NODE_PREFIX) and NODES in user.groups


def _no(reason: str = "") -> Decision:
    return Decision(False, reason)


def _field_selects(raw: str, fld: str, value: str) -> bool:
    if not raw:
        return False
    try:
        sel = parse_field_selector(raw)
    except SelectorError:
        return False
    return any(f == fld and op == "=" and v == value for f, op, v in sel.requirements)


class NodeAuthorizer:
    name = "Node"

    def __init__(self, graph: NodeGraph) -> None:
        self.graph = graph

    def authorize(self, a: Attributes) -> Decision:
        if not is_node_user(a.user):
            return _no()
        node = a.user.node_name
        if not node:
            return _no(f'unknown node for user "{a.user.name}"')
        if a.resource_request:
            group, res = a.api_group, a.resource
            if group == "" and res in ("secrets", "configmaps"):
                return self._read_namespaced(node, a)
            if group == "" and res == "persistentvolumeclaims":
                return self._get(node, a)
            if group == "" and res == "serviceaccounts":
                return self._service_account(node, a)
            if group == "coordination.k8s.io" and res == "leases":
                return self._lease(node, a)
            if group == "" and res == "nodes":
                return self._node(node, a)
            if group == "" and res == "pods":
                return self._pod(node, a)
        if any(rule.allows(a) for rule in STATIC_RULES):
            return Decision(True, "Node: allowed by the node rules")
        return _no()

    def _related(self, node: str, a: Attributes) -> Decision:
        if not a.name:
            return _no("No Object name found")
        if self.graph.related(node, a.resource, a.namespace, a.name):
            return Decision(True, f"Node: {a.resource} {a.namespace}/{a.name} is used on node {node}")
        return _no(f"no relationship found between node '{node}' and this object")

    def _read_namespaced(self, node: str, a: Attributes) -> Decision:
        if a.verb not in ("get", "list", "watch"):
            return _no("can only read resources of this type")
        if a.subresource:
            return _no("cannot read subresource")
        if not a.namespace:
            return _no("can only read namespaced object of this type")
        return self._related(node, a)

    def _get(self, node: str, a: Attributes) -> Decision:
        if a.verb != "get":
            return _no("can only get individual resources of this type")
        if a.subresource:
            return _no("cannot get subresource")
        return self._related(node, a)

    def _service_account(self, node: str, a: Attributes) -> Decision:
        if a.verb == "get" and not a.subresource:
            return self._related(node, a)
        if a.verb != "create" or not a.name:
            return _no("can only create tokens for individual service accounts")
        if a.subresource != "token":
            return _no("can only create token subresource of serviceaccount")
        return self._related(node, a)

    def _lease(self, node: str, a: Attributes) -> Decision:
        if a.verb not in ("get", "create", "update", "patch", "delete"):
            return _no("can only get, create, update, patch, or delete a node lease")
        if a.namespace != NODE_LEASE_NAMESPACE:
            return _no(f'can only access leases in the "{NODE_LEASE_NAMESPACE}" system namespace')
        if a.verb != "create" and a.name != node:  # a create's name is checked by node_admission
            return _no("can only access node lease with the same name as the requesting node")
        return Decision(True, "Node: the node's own lease")

    def _node(self, node: str, a: Attributes) -> Decision:
        if a.subresource == "":
            if a.verb in ("get", "list", "watch"):
                return Decision(True, "Node: nodes may read Node objects")
            if a.verb in ("create", "update", "patch"):
                return Decision(True, "Node: own Node (checked by NodeRestriction)")
        elif a.subresource == "status" and a.verb in ("update", "patch"):
            return Decision(True, "Node: own Node status (checked by NodeRestriction)")
        return _no()

    def _pod(self, node: str, a: Attributes) -> Decision:
        if a.subresource == "":
            if a.verb == "get":
                return self._get(node, a)
            if a.verb in ("list", "watch"):
                if _field_selects(a.field_selector, "spec.nodeName", node):
                    return Decision(True, f"Node: pods with spec.nodeName={node}")
                if a.name:
                    return self._related(node, a)
                return _no("can only list/watch pods with spec.nodeName field selector")
            if a.verb in ("create", "delete"):
                return Decision(True, "Node: pods bound to the node (checked by NodeRestriction)")
        elif a.subresource == "status" and a.verb in ("update", "patch"):
            return Decision(True, "Node: status of pods bound to the node (checked by NodeRestriction)")
        elif a.subresource == "eviction" and a.verb == "create":
            return Decision(True, "Node: evictions of pods bound to the node (checked by NodeRestriction)")
        return _no()


# -- NodeRestriction ---------------------------------------------------------------------------


def needs_object(a: Attributes) -> bool:
    """Does node_admission need the request's body (a create whose name is in the body)?"""
    return (is_node_user(a.user) and a.resource_request and a.verb == "create" and not a.subresource
            and (a.api_group, a.resource) in (("", "nodes"), ("", "pods"), ("coordination.k8s.io", "leases"))) or (
        is_node_user(a.user) and a.verb == "create" and (a.resource, a.subresource) == ("serviceaccounts", "token"))


@dataclass(frozen=True)
class Refusal:
    code: int  # 403, or 404 for a pod that does not exist (as upstream's NodeRestriction answers)
    message: str


def node_admission(graph: NodeGraph, a: Attributes, obj: Obj | None) -> Refusal | None:
    """Why a node's write is refused (upstream NodeRestriction's words), or None. obj is the request
    body for the creates `needs_object` names, else None."""
    if not is_node_user(a.user) or not a.resource_request:
        return None
    node = a.user.node_name or ""
    group, res, sub, verb = a.api_group, a.resource, a.subresource, a.verb

    def bound_pod(name: str, what: str) -> Refusal | None:
        bound = graph.pod_node(a.namespace, name)
        if bound is None:
            return Refusal(404, f'pods "{name}" not found')
        if bound != node:
            return Refusal(403, what)
        return None

    if group == "" and res == "nodes" and verb in ("create", "update", "patch"):
        target = a.name or _name(obj, "metadata", "name")
        if target != node:
            return Refusal(403, f'node "{node}" is not allowed to modify node "{target}"')
    elif group == "" and res == "pods":
        if verb == "create" and not sub:
            if MIRROR_ANNOTATION not in _dict(_dict(_dict(obj).get("metadata")).get("annotations")):
                return Refusal(403, f'pod does not have "{MIRROR_ANNOTATION}" annotation, node "{node}" can only '
                                    f'create mirror pods')
            if _name(obj, "spec", "nodeName") != node:
                return Refusal(403, f'node "{node}" can only create pods with spec.nodeName set to itself')
        elif verb == "delete" and not sub:
            return bound_pod(a.name, f'node "{node}" can only delete pods with spec.nodeName set to itself')
        elif sub == "status" and verb in ("update", "patch"):
            return bound_pod(a.name, f'node "{node}" can only update pod status for pods with spec.nodeName set '
                                     f'to itself')
    elif group == "coordination.k8s.io" and res == "leases" and verb == "create":
        if _name(obj, "metadata", "name") != node:
            return Refusal(403, "can only access node lease with the same name as the requesting node")
    elif group == "" and res == "serviceaccounts" and sub == "token" and verb == "create":
        ref = _dict(_dict(_dict(obj).get("spec")).get("boundObjectRef"))
        if ref.get("kind") != "Pod":
            return Refusal(403, "node requested token not bound to a pod")
        return bound_pod(_name(ref, "name"), "node requested token bound to a pod scheduled on a different node")
    return None
