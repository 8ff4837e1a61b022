"""The node authorizer and NodeRestriction on a fixture graph: node n1 may use what its pods use,
and write only its own Node, Lease and pods."""

from __future__ import annotations

from typing import Any

import pytest

from apiserver.auth import ALL_AUTHENTICATED, NODES, Attributes, UserInfo
from apiserver.auth.node import NodeAuthorizer, NodeGraph, node_admission, pod_references

N1 = UserInfo("system:node:n1", (NODES, ALL_AUTHENTICATED))
N2 = UserInfo("system:node:n2", (NODES, ALL_AUTHENTICATED))


def pod(name: str, node: str, ns: str = "default", **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"containers": [{"name": "c", "image": "x"}], **spec}
    if node:
        s["nodeName"] = node
    return {"metadata": {"name": name, "namespace": ns}, "spec": s}


WEB = pod("web", "n1", serviceAccountName="web-sa", imagePullSecrets=[{"name": "pull"}],
          volumes=[{"name": "cfg", "configMap": {"name": "web-config"}},
                   {"name": "tls", "secret": {"secretName": "web-tls"}},
                   {"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}},
                   {"name": "p", "projected": {"sources": [{"configMap": {"name": "proj-cm"}},
                                                           {"secret": {"name": "proj-secret"}}]}}],
          containers=[{"name": "c", "image": "x",
                       "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                               {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}],
                       "envFrom": [{"configMapRef": {"name": "from-cm"}}, {"secretRef": {"name": "from-secret"}}]}])


@pytest.fixture
def graph() -> NodeGraph:
    g = NodeGraph()
    g.reset("pods", [WEB, pod("db", "n2", volumes=[{"name": "s", "secret": {"secretName": "db-pass"}}]),
                     pod("pending", "", volumes=[{"name": "s", "secret": {"secretName": "pending-secret"}}])])
    return g


def a(user: UserInfo, verb: str, resource: str, ns: str = "", name: str = "", sub: str = "", group: str = "",
      field_selector: str = "") -> Attributes:
    return Attributes(user, verb, True, group, "v1", resource, sub, ns, name, field_selector=field_selector)


def allowed(g: NodeGraph, attrs: Attributes) -> bool:
    return NodeAuthorizer(g).authorize(attrs).allowed


def test_pod_references() -> None:
    assert pod_references(WEB) == {
        ("serviceaccounts", "default", "web-sa"), ("secrets", "default", "pull"),
        ("configmaps", "default", "web-config"), ("secrets", "default", "web-tls"),
        ("persistentvolumeclaims", "default", "web-data"), ("configmaps", "default", "proj-cm"),
        ("secrets", "default", "proj-secret"), ("secrets", "default", "env-secret"),
        ("configmaps", "default", "env-cm"), ("configmaps", "default", "from-cm"),
        ("secrets", "default", "from-secret")}


def test_secrets_and_configmaps_only_of_its_pods(graph: NodeGraph) -> None:
    for kind, name in (("secrets", "web-tls"), ("secrets", "env-secret"), ("secrets", "pull"),
                       ("configmaps", "web-config"), ("configmaps", "from-cm"), ("secrets", "proj-secret")):
        assert allowed(graph, a(N1, "get", kind, "default", name)), name
        assert not allowed(graph, a(N2, "get", kind, "default", name)), name
    assert allowed(graph, a(N2, "get", "secrets", "default", "db-pass"))
    d = NodeAuthorizer(graph).authorize(a(N1, "get", "secrets", "default", "db-pass"))
    assert not d.allowed and d.reason == "no relationship found between node 'n1' and this object"
    assert not allowed(graph, a(N1, "get", "secrets", "other", "web-tls")), "same name, other namespace"
    assert not allowed(graph, a(N1, "get", "secrets", "default", "pending-secret")), "unscheduled pods grant nothing"
    assert not allowed(graph, a(N1, "list", "secrets", "default")), "no listing of all secrets"
    assert allowed(graph, a(N1, "watch", "secrets", "default", "web-tls")), "a single-object watch"
    d = NodeAuthorizer(graph).authorize(a(N1, "update", "secrets", "default", "web-tls"))
    assert not d.allowed and d.reason == "can only read resources of this type"
    assert allowed(graph, a(N1, "get", "persistentvolumeclaims", "default", "web-data"))
    assert not allowed(graph, a(N1, "list", "persistentvolumeclaims", "default", "web-data"))


def test_pods_reads(graph: NodeGraph) -> None:
    assert allowed(graph, a(N1, "get", "pods", "default", "web"))
    assert not allowed(graph, a(N1, "get", "pods", "default", "db")), "bound to n2"
    assert not allowed(graph, a(N1, "get", "pods", "default", "pending"))
    assert allowed(graph, a(N1, "list", "pods", field_selector="spec.nodeName=n1"))
    assert allowed(graph, a(N1, "watch", "pods", field_selector="status.phase!=Failed,spec.nodeName=n1"))
    assert not allowed(graph, a(N1, "watch", "pods", field_selector="spec.nodeName=n2"))
    assert not allowed(graph, a(N1, "list", "pods", field_selector="spec.nodeName!=n1"))
    d = NodeAuthorizer(graph).authorize(a(N1, "list", "pods"))
    assert not d.allowed and d.reason == "can only list/watch pods with spec.nodeName field selector"


def test_pods_writes_are_authorized_then_restricted(graph: NodeGraph) -> None:
    status_own = a(N1, "patch", "pods", "default", "web", sub="status")
    status_other = a(N1, "patch", "pods", "default", "db", sub="status")
    assert allowed(graph, status_own) and allowed(graph, status_other), "the authorizer leaves it to admission"
    assert node_admission(graph, status_own, None) is None
    r = node_admission(graph, status_other, None)
    assert r is not None and r.code == 403
    assert r.message == 'node "n1" can only update pod status for pods with spec.nodeName set to itself'
    assert node_admission(graph, a(N1, "delete", "pods", "default", "web"), None) is None
    r = node_admission(graph, a(N1, "delete", "pods", "default", "pending"), None)
    assert r is not None and r.message == 'node "n1" can only delete pods with spec.nodeName set to itself'
    r = node_admission(graph, a(N1, "delete", "pods", "default", "ghost"), None)
    assert r is not None and (r.code, r.message) == (404, 'pods "ghost" not found')
    create = a(N1, "create", "pods", "default")
    r = node_admission(graph, create, pod("mine", "n1"))
    assert r is not None and "can only create mirror pods" in r.message
    mirror = pod("static", "n1")
    mirror["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "x"}
    assert node_admission(graph, create, mirror) is None
    mirror["spec"]["nodeName"] = "n2"
    r = node_admission(graph, create, mirror)
    assert r is not None and r.message == 'node "n1" can only create pods with spec.nodeName set to itself'
    assert not allowed(graph, a(N1, "update", "pods", "default", "web")), "no spec updates"
    assert not allowed(graph, a(N1, "delete", "pods", "default", "web", sub="status"))


def test_nodes(graph: NodeGraph) -> None:
    assert allowed(graph, a(N1, "list", "nodes")), "agents list Nodes for their pod routes"
    assert allowed(graph, a(N1, "get", "nodes", "", "n2"))
    for verb in ("update", "patch"):
        assert allowed(graph, a(N1, verb, "nodes", "", "n1"))
        assert node_admission(graph, a(N1, verb, "nodes", "", "n1"), None) is None
        r = node_admission(graph, a(N1, verb, "nodes", "", "n2", sub="status"), None)
        assert r is not None and r.message == 'node "n1" is not allowed to modify node "n2"'
    assert node_admission(graph, a(N1, "create", "nodes"), {"metadata": {"name": "n1"}}) is None
    r = node_admission(graph, a(N1, "create", "nodes"), {"metadata": {"name": "n2"}})
    assert r is not None and r.code == 403
    assert not allowed(graph, a(N1, "delete", "nodes", "", "n1"))


def test_leases_only_its_own_in_kube_node_lease(graph: NodeGraph) -> None:
    c = "coordination.k8s.io"
    assert allowed(graph, a(N1, "get", "leases", "kube-node-lease", "n1", group=c))
    assert allowed(graph, a(N1, "update", "leases", "kube-node-lease", "n1", group=c))
    d = NodeAuthorizer(graph).authorize(a(N1, "update", "leases", "kube-node-lease", "n2", group=c))
    assert not d.allowed and d.reason == "can only access node lease with the same name as the requesting node"
    assert not allowed(graph, a(N1, "get", "leases", "kube-system", "n1", group=c))
    assert not allowed(graph, a(N1, "list", "leases", "kube-node-lease", group=c))
    create = a(N1, "create", "leases", "kube-node-lease", group=c)
    assert allowed(graph, create)
    assert node_admission(graph, create, {"metadata": {"name": "n1"}}) is None
    assert node_admission(graph, create, {"metadata": {"name": "n2"}}) is not None


def test_service_account_tokens_for_its_pods(graph: NodeGraph) -> None:
    token = a(N1, "create", "serviceaccounts", "default", "web-sa", sub="token")
    assert allowed(graph, token)
    assert allowed(graph, a(N1, "get", "serviceaccounts", "default", "web-sa"))
    assert not allowed(graph, a(N2, "create", "serviceaccounts", "default", "web-sa", sub="token"))
    assert not allowed(graph, a(N1, "create", "serviceaccounts", "default", "other", sub="token"))
    bound = {"spec": {"boundObjectRef": {"kind": "Pod", "name": "web"}}}
    assert node_admission(graph, token, bound) is None
    r = node_admission(graph, token, {"spec": {}})
    assert r is not None and r.message == "node requested token not bound to a pod"
    r = node_admission(graph, token, {"spec": {"boundObjectRef": {"kind": "Pod", "name": "db"}}})
    assert r is not None and r.message == "node requested token bound to a pod scheduled on a different node"


def test_static_rules_and_no_opinion(graph: NodeGraph) -> None:
    assert allowed(graph, a(N1, "watch", "services"))
    assert allowed(graph, a(N1, "list", "endpointslices", group="discovery.k8s.io"))
    assert allowed(graph, a(N1, "create", "events", "default"))
    assert not allowed(graph, a(N1, "delete", "services", "default", "s"))
    assert not allowed(graph, a(N1, "list", "deployments", "default", group="apps"))
    assert not allowed(graph, a(UserInfo("bob", (ALL_AUTHENTICATED,)), "get", "secrets", "default", "web-tls"))
    nameless = UserInfo("system:node:", (NODES,))
    d = NodeAuthorizer(graph).authorize(a(nameless, "get", "pods", "default", "web"))
    assert not d.allowed and d.reason == 'unknown node for user "system:node:"'
    not_in_group = UserInfo("system:node:n1", (ALL_AUTHENTICATED,))
    assert not allowed(graph, a(not_in_group, "get", "pods", "default", "web")), "needs group system:nodes"


def test_graph_follows_rescheduling_and_deletion(graph: NodeGraph) -> None:
    moved = pod("web", "n2", volumes=[{"name": "t", "secret": {"secretName": "web-tls"}}])
    graph.put("pods", moved)
    assert not allowed(graph, a(N1, "get", "secrets", "default", "web-tls"))
    assert allowed(graph, a(N2, "get", "secrets", "default", "web-tls"))
    assert not allowed(graph, a(N2, "get", "configmaps", "default", "web-config")), "the old spec's refs are gone"
    twin = pod("web2", "n2", volumes=[{"name": "t", "secret": {"secretName": "web-tls"}}])
    graph.put("pods", twin)
    graph.delete("pods", moved)
    assert allowed(graph, a(N2, "get", "secrets", "default", "web-tls")), "still used by web2"
    graph.delete("pods", twin)
    assert not allowed(graph, a(N2, "get", "secrets", "default", "web-tls"))
    assert graph.pod_node("default", "web") is None
