"""Authorization on a secure `kubeling apiserver`: RBAC with users from client certificates, the node
authorizer for agent certificates, upstream's 403 wording, and the real kubectl's `auth can-i` and
`create role/rolebinding/clusterrole/clusterrolebinding`."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apiserver_proc import ApiServer

from kube import pki

G = "rbac.authorization.k8s.io"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


@pytest.fixture(scope="module")
def srv() -> Iterator[ApiServer]:
    with tempfile.TemporaryDirectory(prefix="kubeling-authz-") as d:
        s = ApiServer(d, secure=True)
        s.start()
        try:
            yield s
        finally:
            s.stop()


class Identity:
    """A client certificate (CN user, O groups) from the cluster CA, with an httpx client and a kubeconfig."""

    def __init__(self, srv: ApiServer, user: str, groups: tuple[str, ...] = ()) -> None:
        d = pki.PKIDir(srv.pki_dir)
        stem = "test-users/" + user.replace(":", "_")
        self.crt, self.key = d.ensure_cert(pki.CertSpec(stem, user, groups, client=True))
        self.kubeconfig = d.ensure_kubeconfig(stem + ".kubeconfig", srv.url, self.crt, self.key, user)
        ctx = ssl.create_default_context(cafile=os.path.join(srv.pki_dir, "ca.crt"))
        ctx.load_cert_chain(self.crt, self.key)
        self.http = httpx.Client(base_url=srv.url, verify=ctx, timeout=10)


@pytest.fixture(scope="module")
def bob(srv: ApiServer) -> Iterator[Identity]:
    ident = Identity(srv, "bob", ("devs",))
    yield ident
    ident.http.close()


@pytest.fixture
def ns(srv: ApiServer) -> str:
    name = f"authz-{uuid.uuid4().hex[:8]}"
    with srv.http() as c:
        assert c.post("/api/v1/namespaces", json={"metadata": {"name": name}}).status_code == 201
    return name


def admin_post(srv: ApiServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with srv.http() as c:
        r = c.post(path, json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def grant(srv: ApiServer, ns: str, user: str, verbs: list[str], resources: list[str], name: str = "grant") -> None:
    admin_post(srv, f"/apis/{G}/v1/namespaces/{ns}/roles", {"metadata": {"name": name}, "rules": [
        {"verbs": verbs, "apiGroups": [""], "resources": resources}]})
    admin_post(srv, f"/apis/{G}/v1/namespaces/{ns}/rolebindings", {
        "metadata": {"name": name}, "roleRef": {"apiGroup": G, "kind": "Role", "name": name},
        "subjects": [{"kind": "User", "apiGroup": G, "name": user}]})


def assert_forbidden(r: httpx.Response, message: str) -> dict[str, Any]:
    assert r.status_code == 403, r.text
    st = r.json()
    assert st["kind"] == "Status" and st["reason"] == "Forbidden" and st["code"] == 403
    assert st["message"] == message
    return dict(st)


# -- RBAC ---------------------------------------------------------------------------------------


def test_no_binding_is_a_403_naming_the_missing_permission(srv: ApiServer, bob: Identity, ns: str) -> None:
    st = assert_forbidden(bob.http.get(f"/api/v1/namespaces/{ns}/pods"),
                          f'pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the '
                          f'namespace "{ns}"')
    assert st["details"] == {"kind": "pods"}
    st = assert_forbidden(bob.http.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web"),
                          f'deployments.apps "web" is forbidden: User "bob" cannot get resource "deployments" in API '
                          f'group "apps" in the namespace "{ns}"')
    assert st["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    assert_forbidden(bob.http.get("/api/v1/nodes"),
                     'nodes is forbidden: User "bob" cannot list resource "nodes" in API group "" at the cluster scope')
    assert_forbidden(bob.http.get("/metrics"), 'forbidden: User "bob" cannot get path "/metrics"')
    # what every authenticated user may do (the default policy)
    assert bob.http.get("/healthz").status_code == 200
    assert bob.http.get("/version").status_code == 200
    assert bob.http.get("/apis").status_code == 200


def test_a_role_binding_grants_exactly_what_it_says(srv: ApiServer, bob: Identity, ns: str) -> None:
    with srv.http() as c:
        assert c.post(f"/api/v1/namespaces/{ns}/configmaps", json={"metadata": {"name": "cm"}}).status_code == 201
    grant(srv, ns, "bob", ["get", "list"], ["configmaps"])
    # effective for the very next request
    assert bob.http.get(f"/api/v1/namespaces/{ns}/configmaps/cm").status_code == 200
    listed = bob.http.get(f"/api/v1/namespaces/{ns}/configmaps")
    assert listed.status_code == 200 and [i["metadata"]["name"] for i in listed.json()["items"]] == ["cm"]
    assert_forbidden(bob.http.get(f"/api/v1/namespaces/{ns}/configmaps", params={"watch": "1"}),
                     f'configmaps is forbidden: User "bob" cannot watch resource "configmaps" in API group "" in the '
                     f'namespace "{ns}"')
    assert_forbidden(bob.http.delete(f"/api/v1/namespaces/{ns}/configmaps/cm"),
                     f'configmaps "cm" is forbidden: User "bob" cannot delete resource "configmaps" in API group "" '
                     f'in the namespace "{ns}"')
    assert bob.http.put(f"/api/v1/namespaces/{ns}/configmaps/cm", json={"metadata": {"name": "cm"}}).status_code \
        == 403
    assert bob.http.post(f"/api/v1/namespaces/{ns}/configmaps", json={"metadata": {"name": "x"}}).status_code == 403
    assert bob.http.get(f"/api/v1/namespaces/{ns}/secrets").status_code == 403
    assert bob.http.get("/api/v1/namespaces/default/configmaps").status_code == 403, "another namespace"
    assert bob.http.get("/api/v1/configmaps").status_code == 403, "all namespaces"
    # the deleted binding stops granting at once
    with srv.http() as c:
        assert c.delete(f"/apis/{G}/v1/namespaces/{ns}/rolebindings/grant").status_code == 200
    assert bob.http.get(f"/api/v1/namespaces/{ns}/configmaps/cm").status_code == 403


def test_group_binding_and_resource_names(srv: ApiServer, bob: Identity, ns: str) -> None:
    with srv.http() as c:
        for name in ("a", "b"):
            assert c.post(f"/api/v1/namespaces/{ns}/configmaps", json={"metadata": {"name": name}}).status_code == 201
    admin_post(srv, f"/apis/{G}/v1/clusterroles", {"metadata": {"name": f"only-a-{ns}"}, "rules": [
        {"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}]})
    admin_post(srv, f"/apis/{G}/v1/namespaces/{ns}/rolebindings", {
        "metadata": {"name": "devs"}, "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": f"only-a-{ns}"},
        "subjects": [{"kind": "Group", "apiGroup": G, "name": "devs"}]})
    assert bob.http.get(f"/api/v1/namespaces/{ns}/configmaps/a").status_code == 200
    assert bob.http.get(f"/api/v1/namespaces/{ns}/configmaps/b").status_code == 403
    assert bob.http.get("/api/v1/namespaces/default/configmaps/a").status_code == 403, "ClusterRole scoped by RB"


def test_role_ref_is_immutable(srv: ApiServer, ns: str) -> None:
    grant(srv, ns, "carol", ["get"], ["pods"])
    with srv.http() as c:
        rb = c.get(f"/apis/{G}/v1/namespaces/{ns}/rolebindings/grant").json()
        rb["roleRef"] = {"apiGroup": G, "kind": "ClusterRole", "name": "admin"}
        r = c.put(f"/apis/{G}/v1/namespaces/{ns}/rolebindings/grant", json=rb)
    assert r.status_code == 422, r.text
    assert r.json()["message"] == (
        'RoleBinding.rbac.authorization.k8s.io "grant" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:'
        '"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"admin"}: cannot change roleRef')


def test_impersonation_needs_the_impersonate_verb(srv: ApiServer, bob: Identity, ns: str) -> None:
    r = bob.http.get(f"/api/v1/namespaces/{ns}/pods", headers={"Impersonate-User": "system:admin",
                                                                "Impersonate-Group": "system:masters"})
    assert_forbidden(r, 'users "system:admin" is forbidden: User "bob" cannot impersonate resource "users" in API '
                        'group "" at the cluster scope')
    grant(srv, ns, "alice", ["list"], ["pods"], name="alice")
    with srv.http() as c:  # the admin may impersonate: the request runs as alice
        assert c.get(f"/api/v1/namespaces/{ns}/pods", headers={"Impersonate-User": "alice"}).status_code == 200
        r = c.get(f"/api/v1/namespaces/{ns}/secrets", headers={"Impersonate-User": "alice"})
        assert r.status_code == 403 and 'User "alice" cannot list resource "secrets"' in r.json()["message"]


def test_websocket_exec_needs_create_on_pods_exec(srv: ApiServer, bob: Identity, ns: str) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ctx = ssl.create_default_context(cafile=os.path.join(srv.pki_dir, "ca.crt"))
    ctx.load_cert_chain(bob.crt, bob.key)
    url = srv.url.replace("https://", "wss://") + f"/api/v1/namespaces/{ns}/pods/web/exec?command=sh&stdout=1"
    with pytest.raises(InvalidStatus) as e:
        connect(url, ssl=ctx, subprotocols=["v5.channel.k8s.io"], open_timeout=10)  # type: ignore[list-item]
    assert e.value.response.status_code == 403
    assert b'cannot create resource \\"pods/exec\\"' in e.value.response.body


# -- the node authorizer ------------------------------------------------------------------------------


def test_an_agent_cert_reaches_only_its_own_node_and_pods(srv: ApiServer, ns: str) -> None:
    n1 = Identity(srv, "system:node:n1", ("system:nodes",))
    with srv.http() as c:
        for node in ("n1", "n2"):
            r = c.post("/api/v1/nodes", json={"metadata": {"name": node}})
            assert r.status_code in (201, 409), r.text
        for name in ("own-cfg", "other-cfg"):
            assert c.post(f"/api/v1/namespaces/{ns}/configmaps", json={"metadata": {"name": name}}).status_code == 201
        for name, node, cfg in (("mine", "n1", "own-cfg"), ("theirs", "n2", "other-cfg")):
            r = c.post(f"/api/v1/namespaces/{ns}/pods", json={"metadata": {"name": name}, "spec": {
                "nodeName": node, "containers": [{"name": "c", "image": "kubeling/test:1"}],
                "volumes": [{"name": "v", "configMap": {"name": cfg}}]}})
            assert r.status_code == 201, r.text
    h = n1.http
    assert h.get(f"/api/v1/namespaces/{ns}/pods/mine").status_code == 200
    assert_forbidden(h.get(f"/api/v1/namespaces/{ns}/pods/theirs"),
                     f'pods "theirs" is forbidden: User "system:node:n1" cannot get resource "pods" in API group "" in '
                     f"the namespace \"{ns}\": no relationship found between node 'n1' and this object")
    assert h.get(f"/api/v1/namespaces/{ns}/configmaps/own-cfg").status_code == 200
    assert h.get(f"/api/v1/namespaces/{ns}/configmaps/other-cfg").status_code == 403
    mine = h.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName=n1"})
    assert mine.status_code == 200 and [p["metadata"]["name"] for p in mine.json()["items"]] == ["mine"]
    assert h.get("/api/v1/pods").status_code == 403
    assert h.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName=n2"}).status_code == 403
    # writes: its own Node and pod status only (NodeRestriction)
    merge = {"Content-Type": "application/merge-patch+json"}
    assert h.patch("/api/v1/nodes/n1/status", headers=merge, content=b'{"status":{"phase":"Running"}}') \
        .status_code == 200
    assert h.patch("/api/v1/nodes/n1", headers=merge, content=b'{"metadata":{"labels":{"a":"b"}}}').status_code == 200
    assert_forbidden(h.patch("/api/v1/nodes/n2", headers=merge, content=b'{"metadata":{"labels":{"a":"b"}}}'),
                     'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"')
    assert h.patch("/api/v1/nodes/n2/status", headers=merge, content=b'{"status":{}}').status_code == 403
    assert h.post("/api/v1/nodes", json={"metadata": {"name": "n3"}}).status_code == 403
    status = b'{"status":{"phase":"Running"}}'
    assert h.patch(f"/api/v1/namespaces/{ns}/pods/mine/status", headers=merge, content=status).status_code == 200
    assert_forbidden(h.patch(f"/api/v1/namespaces/{ns}/pods/theirs/status", headers=merge, content=status),
                     'pods "theirs" is forbidden: node "n1" can only update pod status for pods with spec.nodeName '
                     'set to itself')
    assert h.delete(f"/api/v1/namespaces/{ns}/pods/theirs").status_code == 403
    # its own Lease in kube-node-lease only
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": "n1"}}
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    r = h.post(leases, json={**lease, "metadata": {"name": "n1"}})
    assert r.status_code in (201, 409), r.text
    assert h.post(leases, json={**lease, "metadata": {"name": "n2"}}).status_code == 403
    assert h.get(f"{leases}/n1").status_code == 200
    assert h.get(f"{leases}/n2").status_code == 403
    # events and services as upstream's node rules; nothing else
    assert h.post(f"/api/v1/namespaces/{ns}/events", json={"metadata": {"name": "e"}, "involvedObject": {
        "kind": "Pod", "name": "mine", "namespace": ns}}).status_code == 201
    assert h.get("/api/v1/services").status_code == 200
    assert h.get("/api/v1/namespaces/default/secrets").status_code == 403
    n1.http.close()


# -- kubectl ------------------------------------------------------------------------------------------------


def kubectl(ident_kubeconfig: str, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--kubeconfig", ident_kubeconfig, "--cache-dir", str(cache), *args],
                          capture_output=True, text=True, timeout=60)


@needs_kubectl
def test_kubectl_create_rbac_objects_and_auth_can_i(srv: ApiServer, bob: Identity, ns: str, tmp_path: Path) -> None:
    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return kubectl(srv.kubeconfig, tmp_path / "admin-cache", *args)

    def as_bob(*args: str) -> subprocess.CompletedProcess[str]:
        return kubectl(bob.kubeconfig, tmp_path / "bob-cache", *args)

    # kubectl's typed create commands send protobuf
    r = admin("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", ns)
    assert r.returncode == 0 and "role.rbac.authorization.k8s.io/pod-reader created" in r.stdout, r.stderr
    r = admin("create", "rolebinding", "bob-reads", "--role=pod-reader", "--user=bob", "-n", ns)
    assert r.returncode == 0 and "rolebinding.rbac.authorization.k8s.io/bob-reads created" in r.stdout, r.stderr
    r = admin("create", "clusterrole", f"ns-reader-{ns}", "--verb=get,list,watch", "--resource=namespaces")
    assert r.returncode == 0, r.stderr
    r = admin("create", "clusterrolebinding", f"devs-ns-{ns}", f"--clusterrole=ns-reader-{ns}", "--group=devs")
    assert r.returncode == 0, r.stderr
    r = admin("get", "rolebinding", "bob-reads", "-n", ns, "-o", "wide")
    assert r.returncode == 0 and r.stdout.split("\n")[0].split() == ["NAME", "ROLE", "AGE", "USERS", "GROUPS",
                                                                     "SERVICEACCOUNTS"]
    assert r.stdout.split("\n")[1].split()[:2] == ["bob-reads", "Role/pod-reader"]
    r = admin("get", "role", "pod-reader", "-n", ns, "-o", "jsonpath={.rules[0].verbs}")
    assert r.stdout == '["get","list"]'

    def can_i(*args: str, who: Any = as_bob) -> tuple[int, str]:
        r = who("auth", "can-i", *args)
        return r.returncode, r.stdout.strip()

    assert can_i("list", "pods", "-n", ns) == (0, "yes")
    assert can_i("get", "pods", "-n", ns) == (0, "yes")
    assert can_i("delete", "pods", "-n", ns) == (1, "no")
    assert can_i("list", "pods", "-n", "default") == (1, "no")
    assert can_i("list", "namespaces") == (0, "yes"), "via the group devs"
    assert can_i("create", "deployments.apps", "-n", ns) == (1, "no")
    assert can_i("get", "/healthz") == (0, "yes")
    assert can_i("get", "/metrics") == (1, "no")
    # --as: the admin impersonates
    assert can_i("list", "pods", "-n", ns, "--as", "bob", who=admin) == (0, "yes")
    assert can_i("list", "pods", "-n", ns, "--as", "mallory", who=admin) == (1, "no")
    assert can_i("delete", "nodes", who=admin) == (0, "yes")
    r = as_bob("auth", "can-i", "--list", "-n", ns)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert ["pods", "[]", "[]", "[get", "list]"] in rows
    assert any(row[:1] == ["selfsubjectaccessreviews.authorization.k8s.io"] for row in rows)
    r = as_bob("get", "pods", "-n", "default")
    assert r.returncode == 1
    assert ('Error from server (Forbidden): pods is forbidden: User "bob" cannot list resource "pods" in API group "" '
            'in the namespace "default"') in r.stderr
