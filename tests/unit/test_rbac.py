"""The RBAC authorizer on fixtures, the authorizer chain, the 403 wording, request attributes, the
access reviews, the default policy, and the in-memory policy kept current from the store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from apiserver.auth import ALL_AUTHENTICATED, INSECURE_USER, MASTERS, Attributes, UserInfo
from apiserver.auth.authz import (
    Authz,
    forbidden_error,
    impersonate,
    impersonation_headers,
    parse_modes,
    request_attributes,
)
from apiserver.auth.bootstrap import (
    AUTOUPDATE,
    cluster_role_bindings,
    cluster_roles,
    ensure_policy,
    reconcile,
)
from apiserver.auth.rbac import Policy, RBACAuthorizer, Rule
from apiserver.auth.reviews import review
from apiserver.errors import APIError
from apiserver.registry import Registry
from apiserver.store.sqlite import SQLiteStore
from kube.api import defaults, validation
from kube.api.resources import lookup

BOB = UserInfo("bob", ("devs", ALL_AUTHENTICATED))
ALICE = UserInfo("alice", ("ops", ALL_AUTHENTICATED))
SA = UserInfo("system:serviceaccount:team:builder", ("system:serviceaccounts", "system:serviceaccounts:team",
                                                      ALL_AUTHENTICATED))
G = "rbac.authorization.k8s.io"


def role(name: str, rules: list[dict[str, Any]], ns: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, "rules": rules}


def binding(name: str, role_kind: str, role_name: str, subjects: list[dict[str, Any]],
            ns: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, "roleRef": {"apiGroup": G, "kind": role_kind, "name": role_name}, "subjects": subjects}


def user(name: str) -> dict[str, Any]:
    return {"kind": "User", "apiGroup": G, "name": name}


def res(u: UserInfo, verb: str, resource: str, ns: str = "", name: str = "", group: str = "",
        sub: str = "") -> Attributes:
    return Attributes(u, verb, True, group, "v1", resource, sub, ns, name)


def path(u: UserInfo, verb: str, p: str) -> Attributes:
    return Attributes(u, verb, resource_request=False, path=p)


@pytest.fixture
def policy() -> Policy:
    p = Policy()
    p.put("roles", role("pod-reader", [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}], "dev"))
    p.put("roles", role("one-cm", [{"verbs": ["get", "update"], "apiGroups": [""], "resources": ["configmaps"],
                                    "resourceNames": ["app-config"]}], "dev"))
    p.put("clusterroles", role("logs", [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}]))
    p.put("clusterroles", role("deployer", [{"verbs": ["*"], "apiGroups": ["apps"], "resources": ["*"]}]))
    p.put("clusterroles", role("status-reader", [{"verbs": ["get"], "apiGroups": ["*"], "resources": ["*/status"]}]))
    p.put("clusterroles", role("health", [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}]))
    p.put("rolebindings", binding("bob-reads", "Role", "pod-reader", [user("bob")], "dev"))
    p.put("rolebindings", binding("bob-cm", "Role", "one-cm", [user("bob")], "dev"))
    p.put("rolebindings", binding("devs-logs", "ClusterRole", "logs", [{"kind": "Group", "apiGroup": G,
                                                                        "name": "devs"}], "dev"))
    p.put("rolebindings", binding("builder-deploys", "ClusterRole", "deployer",
                                  [{"kind": "ServiceAccount", "name": "builder"}], "team"))
    p.put("clusterrolebindings", binding("ops-status", "ClusterRole", "status-reader",
                                         [{"kind": "Group", "apiGroup": G, "name": "ops"}]))
    p.put("clusterrolebindings", binding("all-health", "ClusterRole", "health",
                                         [{"kind": "Group", "apiGroup": G, "name": ALL_AUTHENTICATED}]))
    return p


def allowed(p: Policy, a: Attributes) -> bool:
    return RBACAuthorizer(p).authorize(a).allowed


def test_a_role_binding_grants_exactly_its_verbs(policy: Policy) -> None:
    assert allowed(policy, res(BOB, "get", "pods", "dev", "web"))
    assert allowed(policy, res(BOB, "list", "pods", "dev"))
    for verb in ("watch", "create", "update", "patch", "delete", "deletecollection"):
        assert not allowed(policy, res(BOB, verb, "pods", "dev", "web")), verb
    assert not allowed(policy, res(BOB, "list", "pods", "prod")), "another namespace"
    assert not allowed(policy, res(BOB, "list", "pods")), "all namespaces needs a ClusterRoleBinding"
    assert not allowed(policy, res(BOB, "get", "pods", "dev", "web", group="apps")), "another group"
    assert not allowed(policy, res(BOB, "get", "secrets", "dev", "x")), "another resource"
    assert not allowed(policy, res(ALICE, "get", "pods", "dev", "web")), "another user"


def test_resource_names_limit_a_rule_to_named_objects(policy: Policy) -> None:
    assert allowed(policy, res(BOB, "get", "configmaps", "dev", "app-config"))
    assert allowed(policy, res(BOB, "update", "configmaps", "dev", "app-config"))
    assert not allowed(policy, res(BOB, "get", "configmaps", "dev", "other"))
    assert not allowed(policy, res(BOB, "list", "configmaps", "dev")), "a list has no name: resourceNames never match"


def test_subresources_need_their_own_rule(policy: Policy) -> None:
    assert allowed(policy, res(BOB, "get", "pods", "dev", "web", sub="log")), "pods/log via the group's binding"
    assert not allowed(policy, res(BOB, "get", "pods", "dev", "web", sub="exec")), "pods does not cover pods/exec"
    assert not allowed(policy, res(BOB, "get", "pods", "prod", "web", sub="log")), "RoleBinding: its namespace only"
    # "*/status" matches every resource's status, in every namespace via a ClusterRoleBinding
    assert allowed(policy, res(ALICE, "get", "deployments", "x", "d", group="apps", sub="status"))
    assert allowed(policy, res(ALICE, "get", "nodes", "", "n1", sub="status"))
    assert not allowed(policy, res(ALICE, "get", "nodes", "", "n1")), "*/status is not the object itself"


def test_cluster_role_through_a_role_binding_is_scoped_to_its_namespace(policy: Policy) -> None:
    assert allowed(policy, res(SA, "delete", "deployments", "team", "web", group="apps"))
    assert allowed(policy, res(SA, "patch", "replicasets", "team", "rs", group="apps", sub="scale"))
    assert not allowed(policy, res(SA, "delete", "deployments", "other", "web", group="apps"))
    assert not allowed(policy, res(SA, "delete", "deployments", "", "", group="apps"))


def test_service_account_subjects_match_by_namespace_and_name(policy: Policy) -> None:
    other_ns = UserInfo("system:serviceaccount:other:builder", ("system:serviceaccounts",))
    assert not allowed(policy, res(other_ns, "get", "deployments", "team", "w", group="apps"))
    policy.put("clusterrolebindings", binding("sa-anywhere", "ClusterRole", "deployer",
                                              [{"kind": "ServiceAccount", "name": "builder", "namespace": "other"}]))
    assert allowed(policy, res(other_ns, "get", "deployments", "elsewhere", "w", group="apps"))
    assert not allowed(policy, res(UserInfo("builder"), "get", "deployments", "team", "w", group="apps")), \
        "a plain user named like the service account is not it"


def test_non_resource_urls(policy: Policy) -> None:
    assert allowed(policy, path(BOB, "get", "/healthz"))
    assert allowed(policy, path(BOB, "get", "/apis/apps/v1")), "prefix* rule"
    assert not allowed(policy, path(BOB, "get", "/apis")), "/apis/* does not cover /apis itself"
    assert not allowed(policy, path(BOB, "post", "/healthz"))
    assert not allowed(policy, path(BOB, "get", "/metrics"))
    assert not allowed(policy, path(UserInfo("anon", ()), "get", "/healthz"))


def test_deleting_a_binding_or_its_role_revokes(policy: Policy) -> None:
    a = res(BOB, "list", "pods", "dev")
    assert allowed(policy, a)
    policy.delete("roles", {"metadata": {"name": "pod-reader", "namespace": "dev"}})
    d = RBACAuthorizer(policy).authorize(a)
    assert not d.allowed and 'role.rbac.authorization.k8s.io "pod-reader" not found' in d.reason
    policy.put("roles", role("pod-reader", [{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}], "dev"))
    assert allowed(policy, a)
    policy.delete("rolebindings", {"metadata": {"name": "bob-reads", "namespace": "dev"}})
    assert not allowed(policy, a)
    policy.reset("rolebindings", [])
    assert not allowed(policy, res(BOB, "get", "pods", "dev", "web", sub="log"))


def test_allow_reason_names_the_binding(policy: Policy) -> None:
    d = RBACAuthorizer(policy).authorize(res(BOB, "get", "pods", "dev", "web"))
    assert d.reason == 'RBAC: allowed by RoleBinding "bob-reads/dev" of Role "pod-reader" to User "bob"'


def test_rules_for_lists_what_applies_in_a_namespace(policy: Policy) -> None:
    got = RBACAuthorizer(policy).rules_for(BOB, "dev")
    resources = sorted(r for rule in got.resource_rules for r in rule.resources)
    assert resources == ["configmaps", "pods", "pods/log"]
    assert [u for rule in got.non_resource_rules for u in rule.non_resource_urls] == ["/healthz", "/apis/*"]
    assert RBACAuthorizer(policy).rules_for(BOB, "prod").resource_rules == []


def test_rule_round_trips() -> None:
    d = {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"]}
    assert Rule.from_dict(d).to_dict() == d


# -- the chain and the guard's pieces ----------------------------------------------------------


def test_modes_are_checked() -> None:
    assert parse_modes("Node,RBAC") == ("Node", "RBAC")
    assert parse_modes(" RBAC ") == ("RBAC",)
    for bad, why in (("", "at least one"), ("RBAC,Webhook", "unknown mode 'Webhook'"), ("RBAC,RBAC", "twice")):
        with pytest.raises(ValueError, match=why):
            parse_modes(bad)


def test_chain_masters_always_allowed_and_always_allow_only_when_asked() -> None:
    authz = Authz(None, ("Node", "RBAC"))
    nobody = res(UserInfo("eve", (ALL_AUTHENTICATED,)), "delete", "nodes", "", "n1")
    assert not authz.chain.authorize(nobody).allowed
    assert authz.chain.authorize(res(UserInfo("root", (MASTERS,)), "delete", "nodes", "", "n1")).allowed
    assert authz.chain.authorize(res(INSECURE_USER, "delete", "nodes", "", "n1")).allowed
    assert Authz(None, ("AlwaysAllow",)).chain.authorize(nobody).allowed
    assert not Authz(None, ("AlwaysDeny",)).chain.authorize(nobody).allowed


def status(a: Attributes, reason: str = "") -> dict[str, Any]:
    return forbidden_error(a, reason).status()


def test_forbidden_messages_are_upstreams() -> None:
    s = status(res(BOB, "list", "pods", "default"))
    assert s["code"] == 403 and s["reason"] == "Forbidden"
    assert s["message"] == ('pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the '
                            'namespace "default"')
    assert s["details"] == {"kind": "pods"}
    s = status(res(BOB, "get", "deployments", "dev", "web", group="apps", sub="scale"))
    assert s["message"] == ('deployments.apps "web" is forbidden: User "bob" cannot get resource "deployments/scale" '
                            'in API group "apps" in the namespace "dev"')
    assert s["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    s = status(res(BOB, "delete", "nodes", "", "n1"), "no relationship found")
    assert s["message"] == ('nodes "n1" is forbidden: User "bob" cannot delete resource "nodes" in API group "" at '
                            'the cluster scope: no relationship found')
    s = status(path(BOB, "get", "/metrics"))
    assert s["message"] == 'forbidden: User "bob" cannot get path "/metrics"'


def q(**kw: str) -> dict[str, str]:
    return dict(kw)


def test_request_attributes_follow_upstreams_request_info() -> None:
    def ra(method: str, p: str, query: dict[str, str] | None = None, ws: bool = False) -> tuple[Any, ...]:
        a = request_attributes(BOB, method, p, query or {}, ws)
        return (a.verb, a.api_group, a.resource, a.subresource, a.namespace, a.name) if a.resource_request \
            else (a.verb, a.path)

    assert ra("GET", "/api/v1/namespaces/dev/pods") == ("list", "", "pods", "", "dev", "")
    assert ra("GET", "/api/v1/namespaces/dev/pods", q(watch="true")) == ("watch", "", "pods", "", "dev", "")
    assert ra("GET", "/api/v1/pods", q(watch="1")) == ("watch", "", "pods", "", "", "")
    assert ra("GET", "/api/v1/namespaces/dev/pods/web") == ("get", "", "pods", "", "dev", "web")
    assert ra("GET", "/api/v1/namespaces/dev/pods/web/log") == ("get", "", "pods", "log", "dev", "web")
    assert ra("POST", "/api/v1/namespaces/dev/pods") == ("create", "", "pods", "", "dev", "")
    assert ra("PUT", "/api/v1/namespaces/dev/pods/web/status") == ("update", "", "pods", "status", "dev", "web")
    assert ra("PATCH", "/apis/apps/v1/namespaces/dev/deployments/d") == ("patch", "apps", "deployments", "", "dev",
                                                                           "d")
    assert ra("DELETE", "/api/v1/namespaces/dev/pods/web") == ("delete", "", "pods", "", "dev", "web")
    assert ra("DELETE", "/api/v1/namespaces/dev/pods") == ("deletecollection", "", "pods", "", "dev", "")
    assert ra("GET", "/api/v1/namespaces/dev") == ("get", "", "namespaces", "", "dev", "dev")
    assert ra("PUT", "/api/v1/namespaces/dev/finalize") == ("update", "", "namespaces", "finalize", "dev", "dev")
    assert ra("GET", "/api/v1/nodes", q(fieldSelector="metadata.name=n1")) == ("list", "", "nodes", "", "", "n1")
    assert ra("GET", "/api/v1/namespaces/dev/pods/web/exec", ws=True) == ("create", "", "pods", "exec", "dev",
                                                                           "web")
    assert ra("POST", "/api/v1/namespaces/dev/pods/web/portforward") == ("create", "", "pods", "portforward", "dev",
                                                                          "web")
    for p in ("/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/healthz", "/openapi/v3/api/v1", "/"):
        assert ra("GET", p) == ("get", p), p
    assert ra("POST", "/healthz") == ("post", "/healthz")
    a = request_attributes(BOB, "GET", "/api/v1/pods", q(fieldSelector="spec.nodeName=n1"))
    assert a.field_selector == "spec.nodeName=n1" and a.name == ""


def test_impersonation_headers_and_the_impersonated_user() -> None:
    got = impersonation_headers([("Impersonate-User", "alice"), ("impersonate-group", "ops"),
                                 ("Impersonate-Extra-Scopes", "view"), ("Accept", "x")])
    assert got == ("alice", ["ops"], "", {"scopes": ["view"]})
    authz = Authz(None, ("RBAC",))
    root = UserInfo("root", (MASTERS,))

    async def main() -> None:
        u = await impersonate(authz, root, "alice", [], "", {})
        assert (u.name, u.groups) == ("alice", (ALL_AUTHENTICATED,))
        sa = await impersonate(authz, root, "system:serviceaccount:team:builder", [], "", {})
        assert sa.groups == ("system:serviceaccounts", "system:serviceaccounts:team", ALL_AUTHENTICATED)
        with pytest.raises(APIError) as e:
            await impersonate(authz, BOB, "alice", [], "", {})
        assert e.value.code == 403
        assert e.value.message == ('users "alice" is forbidden: User "bob" cannot impersonate resource "users" in API '
                                   'group "" at the cluster scope')
        with pytest.raises(APIError) as e:
            await impersonate(authz, root, "", ["ops"], "", {})
        assert e.value.code == 400
        authz.policy.put("clusterroles", role("imp", [{"verbs": ["impersonate"], "apiGroups": [""],
                                                       "resources": ["users"], "resourceNames": ["alice"]}]))
        authz.policy.put("clusterrolebindings", binding("bob-imp", "ClusterRole", "imp", [user("bob")]))
        assert (await impersonate(authz, BOB, "alice", [], "", {})).name == "alice"
        with pytest.raises(APIError):
            await impersonate(authz, BOB, "carol", [], "", {})

    asyncio.run(main())


# -- access reviews ---------------------------------------------------------------------------------


def rt(name: str) -> Any:
    r = lookup("authorization.k8s.io", "v1", name)
    assert r is not None
    return r


def test_self_subject_access_review(policy: Policy) -> None:
    authz = Authz(None, ("RBAC",))
    authz.policy = policy
    authz.chain.authorizers[1] = RBACAuthorizer(policy)

    async def ask(verb: str, resource: str, ns: str = "dev") -> dict[str, Any]:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}}}
        return await review(authz, BOB, rt("selfsubjectaccessreviews"), None, body)

    async def main() -> None:
        yes = await ask("list", "pods")
        assert yes["status"]["allowed"] is True and "bob-reads" in yes["status"]["reason"]
        assert yes["kind"] == "SelfSubjectAccessReview" and yes["spec"]["resourceAttributes"]["verb"] == "list"
        assert (await ask("delete", "pods"))["status"] == {"allowed": False}
        with pytest.raises(APIError) as e:
            await review(authz, BOB, rt("selfsubjectaccessreviews"), None, {"spec": {}})
        assert e.value.code == 422 and e.value.message == (
            'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: Invalid value: '
            '"null": exactly one of nonResourceAttributes or resourceAttributes must be specified')
        sar = await review(authz, ALICE, rt("subjectaccessreviews"), None, {"spec": {
            "user": "bob", "groups": ["devs"], "resourceAttributes": {"verb": "get", "resource": "pods",
                                                                      "subresource": "log", "namespace": "dev"}}})
        assert sar["status"]["allowed"] is True
        rules = await review(authz, BOB, rt("selfsubjectrulesreviews"), None, {"spec": {"namespace": "dev"}})
        assert {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]} in rules["status"]["resourceRules"]
        assert rules["status"]["incomplete"] is False
        with pytest.raises(APIError) as e:
            await review(authz, BOB, rt("selfsubjectrulesreviews"), None, {"spec": {}})
        assert e.value.code == 400

    asyncio.run(main())


# -- validation and defaults of the RBAC resources ------------------------------------------------


def messages(resource: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    defaults.apply_defaults(resource, obj)
    errs = validation.validate_update(resource, obj, old) if old else validation.validate_object(resource, obj)
    return [str(e) for e in errs]


def test_rbac_validation_messages() -> None:
    assert messages("roles", role("r", [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}], "d")) == []
    assert messages("roles", role("r", [{"apiGroups": [""], "resources": ["pods"]}], "d")) == [
        "rules[0].verbs: Required value: verbs must contain at least one value"]
    assert messages("roles", role("r", [{"verbs": ["get"], "nonResourceURLs": ["/x"]}], "d")) == [
        'rules[0].nonResourceURLs: Invalid value: ["/x"]: namespaced rules cannot apply to non-resource URLs']
    assert messages("clusterroles", role("a/b", [{"verbs": ["get"]}])) == [
        "metadata.name: Invalid value: \"a/b\": may not contain '/'",
        "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
        "rules[0].resources: Required value: resource rules must supply at least one resource"]
    rb = binding("b", "Role", "r", [user("bob"), {"kind": "Robot", "name": "x"}], "d")
    assert messages("rolebindings", rb) == [
        'subjects[1].kind: Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group"']
    crb = binding("b", "Role", "r", [{"kind": "ServiceAccount", "name": "x"}])
    assert messages("clusterrolebindings", crb) == [
        'roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"',
        "subjects[0].namespace: Required value"]
    no_group = {"metadata": {"name": "b", "namespace": "d"}, "roleRef": {"kind": "Role", "name": "r"},
                "subjects": [{"kind": "User", "name": "bob"}]}
    assert messages("rolebindings", no_group) == [], "apiGroup defaults for roleRef and User subjects"
    assert no_group["roleRef"]["apiGroup"] == G and no_group["subjects"][0]["apiGroup"] == G


def test_role_ref_is_immutable() -> None:
    old = binding("b", "Role", "r", [user("bob")], "d")
    old["metadata"]["resourceVersion"] = "1"
    new = binding("b", "ClusterRole", "view", [user("bob"), user("alice")], "d")
    new["metadata"]["resourceVersion"] = "1"
    assert messages("rolebindings", new, old) == [
        'roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", '
        'Name:"view"}: cannot change roleRef']
    same_ref = binding("b", "Role", "r", [user("alice")], "d")
    same_ref["metadata"]["resourceVersion"] = "1"
    assert messages("rolebindings", same_ref, old) == [], "subjects may change"


# -- the default policy -------------------------------------------------------------------------------


def test_default_policy_shape() -> None:
    roles = {r["metadata"]["name"]: r for r in cluster_roles()}
    bindings = {b["metadata"]["name"]: b for b in cluster_role_bindings()}
    for name in ("cluster-admin", "admin", "edit", "view", "system:basic-user", "system:discovery",
                 "system:public-info-viewer", "system:node-proxier", "system:kube-scheduler",
                 "system:kube-controller-manager", "system:kubeling-dns", "system:node"):
        assert name in roles, name
        assert roles[name]["metadata"]["annotations"][AUTOUPDATE] == "true"
        assert messages("clusterroles", roles[name]) == [], name
    assert "system:node" not in bindings, "nodes are served by the node authorizer"
    assert bindings["cluster-admin"]["subjects"] == [{"kind": "Group", "apiGroup": G, "name": MASTERS}]
    for b in bindings.values():
        assert b["roleRef"]["name"] in roles and messages("clusterrolebindings", b) == []
    p = Policy()
    for r in roles.values():
        p.put("clusterroles", r)
    for b in bindings.values():
        p.put("clusterrolebindings", b)
    a = RBACAuthorizer(p)
    anyone = UserInfo("carol", (ALL_AUTHENTICATED,))
    assert a.authorize(path(anyone, "get", "/version")).allowed
    assert a.authorize(path(anyone, "get", "/apis/apps/v1")).allowed
    assert a.authorize(res(anyone, "create", "selfsubjectaccessreviews", group="authorization.k8s.io")).allowed
    assert not a.authorize(res(anyone, "list", "pods", "default")).allowed
    assert not a.authorize(path(anyone, "get", "/metrics")).allowed
    proxy = UserInfo("system:kube-proxy", (ALL_AUTHENTICATED,))
    assert a.authorize(res(proxy, "watch", "endpointslices", group="discovery.k8s.io")).allowed
    assert not a.authorize(res(proxy, "list", "secrets")).allowed
    sched = UserInfo("system:kube-scheduler", (ALL_AUTHENTICATED,))
    assert a.authorize(res(sched, "create", "pods", "dev", "p", sub="binding")).allowed
    assert a.authorize(res(sched, "update", "leases", "kube-system", "kube-scheduler",
                           group="coordination.k8s.io")).allowed
    assert not a.authorize(res(sched, "update", "leases", "kube-system", "other", group="coordination.k8s.io")).allowed
    cm = UserInfo("system:kube-controller-manager", (ALL_AUTHENTICATED,))
    assert a.authorize(res(cm, "create", "replicasets", "dev", group="apps")).allowed
    assert a.authorize(res(cm, "deletecollection", "roles", "dev", group=G)).allowed
    assert not a.authorize(res(cm, "create", "secrets", "dev")).allowed
    dns = UserInfo("system:kubeling-dns", (ALL_AUTHENTICATED,))
    assert a.authorize(res(dns, "watch", "pods")).allowed and not a.authorize(res(dns, "get", "secrets", "d", "s")).allowed
    # admin/edit/view bound in a namespace
    p.put("rolebindings", binding("bob-view", "ClusterRole", "view", [user("bob")], "dev"))
    assert a.authorize(res(BOB, "list", "deployments", "dev", group="apps")).allowed
    assert not a.authorize(res(BOB, "get", "secrets", "dev", "s")).allowed, "view has no secrets"


def test_reconcile_adds_what_is_missing_and_respects_autoupdate_false() -> None:
    default = next(r for r in cluster_roles() if r["metadata"]["name"] == "view")
    stale = {**default, "rules": default["rules"][:1] + [{"verbs": ["get"], "apiGroups": ["x"], "resources": ["y"]}]}
    fixed = reconcile(stale, default)
    assert fixed is not None
    assert all(r in fixed["rules"] for r in default["rules"]), "missing rules added"
    assert {"verbs": ["get"], "apiGroups": ["x"], "resources": ["y"]} in fixed["rules"], "an operator's rule is kept"
    assert reconcile(fixed, default) is None
    frozen = {**stale, "metadata": {**stale["metadata"], "annotations": {AUTOUPDATE: "false"}}}
    assert reconcile(frozen, default) is None


# -- the policy kept current from the store -------------------------------------------------------------


def test_the_policy_follows_the_store_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "s.db"))
        registry = Registry(store)
        await registry.start()
        assert await ensure_policy(registry) > 0
        assert await ensure_policy(registry) == 0, "a second start writes nothing"
        authz = Authz(store, ("Node", "RBAC"))
        await authz.start(timeout=5)
        try:
            a = res(BOB, "get", "configmaps", "default", "c")
            assert not (await authz.decide(a)).allowed
            rbac = lookup(G, "v1", "roles")
            rb = lookup(G, "v1", "rolebindings")
            assert rbac and rb
            await registry.create(rbac, "default", {"metadata": {"name": "cm"}, "rules": [
                {"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]}]}, {})
            await registry.create(rb, "default", {"metadata": {"name": "bob-cm"}, "roleRef": {
                "kind": "Role", "name": "cm"}, "subjects": [{"kind": "User", "name": "bob"}]}, {})
            # the very next decision sees the binding (decide waits for the cache to catch up)
            assert (await authz.decide(a)).allowed
            assert authz.mirror is not None and authz.mirror.revision == store.revision
            await registry.delete(rb, "default", "bob-cm", {}, {})
            assert await authz.mirror.wait_fresh(2)
            assert not authz.chain.authorize(a).allowed
            # the default policy was mirrored too
            assert authz.chain.authorize(path(BOB, "get", "/version")).allowed
        finally:
            await authz.stop()
            await store.close()

    asyncio.run(main())
