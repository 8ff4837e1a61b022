"""The RBAC authorizer: Roles, ClusterRoles and their bindings, evaluated in memory.

    policy = Policy()                          # fed by apiserver/auth/cache.py from the store's watch
    policy.put("clusterroles", {...})
    RBACAuthorizer(policy).authorize(attrs)    # Decision(True, 'RBAC: allowed by ClusterRoleBinding "x" ...')

Semantics follow upstream's plugin/pkg/auth/authorizer/rbac:

- ClusterRoleBindings apply everywhere; RoleBindings only in their namespace, and may reference a
  ClusterRole, whose rules then apply in that namespace only.
- A subject is a User (the user name), a Group (one of the user's groups) or a ServiceAccount
  (user system:serviceaccount:NS:NAME; a RoleBinding's ServiceAccount without a namespace means
  the binding's own namespace).
- A rule allows a resource request when verb, apiGroup, resource ("pods", "pods/log", "*" or
  "*/log") and, if the rule lists resourceNames, the object name all match; a non-resource request
  (/healthz, /version, /api, /apis/*) when verb and a nonResourceURL ("*", exact, or a "prefix*")
  match. Rules only ever allow: there is no deny.
- A binding whose role does not exist grants nothing and is reported in the reason, as upstream does.

Per request, the bindings that name the user, one of its groups or its service account are found
in an index (no scan of every binding), and their roles' rules are precompiled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import Attributes, Decision, UserInfo

ALL = "*"
CLUSTER_ROLE_BINDING = "ClusterRoleBinding"
ROLE_BINDING = "RoleBinding"

Obj = dict[str, Any]


def _strings(v: Any) -> tuple[str, ...]:
    return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()


@dataclass(frozen=True)
class Rule:
    verbs: frozenset[str]
    api_groups: frozenset[str] = frozenset()
    resources: tuple[str, ...] = ()
    resource_names: frozenset[str] = frozenset()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Any) -> Rule:
        d = d if isinstance(d, dict) else {}
        return cls(frozenset(_strings(d.get("verbs"))), frozenset(_strings(d.get("apiGroups"))),
                   _strings(d.get("resources")), frozenset(_strings(d.get("resourceNames"))),
                   _strings(d.get("nonResourceURLs")))

    def to_dict(self) -> Obj:
        out: Obj = {"verbs": sorted(self.verbs)}
        if self.api_groups:
            out["apiGroups"] = sorted(self.api_groups)
        if self.resources:
            out["resources"] = list(self.resources)
        if self.resource_names:
            out["resourceNames"] = sorted(self.resource_names)
        if self.non_resource_urls:
            out["nonResourceURLs"] = list(self.non_resource_urls)
        return out

    def allows(self, a: Attributes) -> bool:
        if ALL not in self.verbs and a.verb not in self.verbs:
            return False
        if not a.resource_request:
            return any(_url_matches(u, a.path) for u in self.non_resource_urls)
        if ALL not in self.api_groups and a.api_group not in self.api_groups:
            return False
        if not self._resource_matches(a.resource, a.subresource):
            return False
        return not self.resource_names or a.name in self.resource_names

    def _resource_matches(self, resource: str, subresource: str) -> bool:
        combined = f"{resource}/{subresource}" if subresource else resource
        for r in self.resources:
            if r == ALL or r == combined:
                return True
            if subresource and r == f"*/{subresource}":
                return True
        return False


def _url_matches(rule_url: str, path: str) -> bool:
    if rule_url == ALL or rule_url == path:
        return True
    return rule_url.endswith("*") and path.startswith(rule_url.rstrip("*"))


@dataclass(frozen=True)
class Subject:
    kind: str  # User | Group | ServiceAccount
    name: str
    namespace: str = ""

    def describe(self) -> str:
        if self.kind == "ServiceAccount" and self.namespace:
            return f'{self.kind} "{self.namespace}/{self.name}"'
        return f'{self.kind} "{self.name}"'


@dataclass(frozen=True)
class Binding:
    kind: str  # RoleBinding | ClusterRoleBinding
    namespace: str  # "" for ClusterRoleBindings
    name: str
    role_kind: str  # Role | ClusterRole
    role_name: str
    subjects: tuple[Subject, ...]

    @classmethod
    def from_object(cls, kind: str, obj: Obj) -> Binding:
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "") if kind == ROLE_BINDING else ""
        raw_ref = obj.get("roleRef")
        ref: Obj = raw_ref if isinstance(raw_ref, dict) else {}
        subjects = []
        for s in obj.get("subjects") or []:
            if isinstance(s, dict) and isinstance(s.get("kind"), str) and isinstance(s.get("name"), str):
                sns = str(s.get("namespace") or "")
                if s["kind"] == "ServiceAccount" and not sns:
                    sns = ns  # a RoleBinding's unqualified service account lives in the binding's namespace
                subjects.append(Subject(s["kind"], s["name"], sns))
        return cls(kind, ns, str(meta.get("name") or ""), str(ref.get("kind") or ""), str(ref.get("name") or ""),
                   tuple(subjects))

    def describe(self, subject: Subject) -> str:
        name = f"{self.name}/{self.namespace}" if self.namespace else self.name
        return f'{self.kind} "{name}" of {self.role_kind} "{self.role_name}" to {subject.describe()}'


def _subject_key(s: Subject) -> tuple[str, str, str]:
    return (s.kind, s.name, s.namespace if s.kind == "ServiceAccount" else "")


def subject_keys(user: UserInfo) -> list[tuple[str, str, str]]:
    """The index keys under which bindings naming this user are found."""
    keys = [("User", user.name, "")]
    keys.extend(("Group", g, "") for g in user.groups)
    sa = user.service_account
    if sa is not None:
        keys.append(("ServiceAccount", sa[1], sa[0]))
    return keys


@dataclass
class RulesResult:
    """What a subject may do in a namespace (SelfSubjectRulesReview)."""

    resource_rules: list[Rule] = field(default_factory=list)
    non_resource_rules: list[Rule] = field(default_factory=list)
    incomplete: bool = False
    errors: list[str] = field(default_factory=list)


BindingKey = tuple[str, str, str]  # (kind, namespace, name)


class Policy:
    """The four RBAC resources in memory, with a subject -> bindings index. Not thread-safe: it is
    read and written on the apiserver's event loop only."""

    RESOURCES = ("roles", "clusterroles", "rolebindings", "clusterrolebindings")

    def __init__(self) -> None:
        self.roles: dict[tuple[str, str], tuple[Rule, ...]] = {}  # (namespace, name) -> rules
        self.cluster_roles: dict[str, tuple[Rule, ...]] = {}
        self.bindings: dict[BindingKey, Binding] = {}
        # (subject key, the binding's namespace or "" for ClusterRoleBindings) -> bindings
        self._by_subject: dict[tuple[tuple[str, str, str], str], set[BindingKey]] = {}

    # -- feeding (the cache calls these) ------------------------------------------------

    def reset(self, resource: str, objs: Iterable[Obj]) -> None:
        if resource == "roles":
            self.roles.clear()
        elif resource == "clusterroles":
            self.cluster_roles.clear()
        else:
            kind = ROLE_BINDING if resource == "rolebindings" else CLUSTER_ROLE_BINDING
            for key in [k for k in self.bindings if k[0] == kind]:
                self._drop_binding(key)
        for obj in objs:
            self.put(resource, obj)

    def put(self, resource: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        name, ns = str(meta.get("name") or ""), str(meta.get("namespace") or "")
        if resource in ("roles", "clusterroles"):
            rules = tuple(Rule.from_dict(r) for r in obj.get("rules") or [])
            if resource == "roles":
                self.roles[(ns, name)] = rules
            else:
                self.cluster_roles[name] = rules
            return
        binding = Binding.from_object(ROLE_BINDING if resource == "rolebindings" else CLUSTER_ROLE_BINDING, obj)
        key = (binding.kind, binding.namespace, binding.name)
        self._drop_binding(key)
        self.bindings[key] = binding
        for s in binding.subjects:
            self._by_subject.setdefault((_subject_key(s), binding.namespace), set()).add(key)

    def delete(self, resource: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        name, ns = str(meta.get("name") or ""), str(meta.get("namespace") or "")
        if resource == "roles":
            self.roles.pop((ns, name), None)
        elif resource == "clusterroles":
            self.cluster_roles.pop(name, None)
        elif resource == "rolebindings":
            self._drop_binding((ROLE_BINDING, ns, name))
        else:
            self._drop_binding((CLUSTER_ROLE_BINDING, "", name))

    def _drop_binding(self, key: BindingKey) -> None:
        old = self.bindings.pop(key, None)
        if old is None:
            return
        for s in old.subjects:
            skey = (_subject_key(s), old.namespace)
            keys = self._by_subject.get(skey)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_subject[skey]

    # -- reading -------------------------------------------------------------------------

    def bindings_for(self, user: UserInfo, namespace: str) -> list[tuple[Binding, Subject]]:
        """ClusterRoleBindings first, then the namespace's RoleBindings, each with the subject that
        matched; ordered by name, so reasons are stable."""
        found: dict[BindingKey, Subject] = {}
        scopes = ("", namespace) if namespace else ("",)
        for skey in subject_keys(user):
            for scope in scopes:
                for key in self._by_subject.get((skey, scope), ()):
                    found.setdefault(key, Subject(*skey))
        order = sorted(found, key=lambda k: (k[0] != CLUSTER_ROLE_BINDING, k[1], k[2]))
        return [(self.bindings[k], found[k]) for k in order]

    def rules_of(self, binding: Binding) -> tuple[tuple[Rule, ...], str]:
        """The binding's rules, or () and an error when its role does not exist."""
        if binding.role_kind == "ClusterRole":
            rules = self.cluster_roles.get(binding.role_name)
            missing = f'clusterrole.rbac.authorization.k8s.io "{binding.role_name}" not found'
        elif binding.role_kind == "Role" and binding.kind == ROLE_BINDING:
            rules = self.roles.get((binding.namespace, binding.role_name))
            missing = f'role.rbac.authorization.k8s.io "{binding.role_name}" not found'
        else:
            return (), f"unknown roleRef kind {binding.role_kind!r}"
        return (rules, "") if rules is not None else ((), missing)


class RBACAuthorizer:
    name = "RBAC"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def authorize(self, a: Attributes) -> Decision:
        errors: list[str] = []
        for binding, subject in self.policy.bindings_for(a.user, a.namespace):
            rules, err = self.policy.rules_of(binding)
            if err:
                errors.append(err)
            for rule in rules:
                if rule.allows(a):
                    return Decision(True, f"RBAC: allowed by {binding.describe(subject)}")
        return Decision(False, "RBAC: " + ", ".join(errors) if errors else "")

    def rules_for(self, user: UserInfo, namespace: str) -> RulesResult:
        out = RulesResult()
        for binding, _subject in self.policy.bindings_for(user, namespace):
            rules, err = self.policy.rules_of(binding)
            if err:
                out.errors.append(err)
            for rule in rules:
                if rule.non_resource_urls:
                    if binding.kind == CLUSTER_ROLE_BINDING:  # non-resource URLs are cluster-wide only
                        out.non_resource_rules.append(rule)
                else:
                    out.resource_rules.append(rule)
        return out
