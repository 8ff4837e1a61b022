"""The resource types the cluster serves: one table, used by the apiserver's
routes and discovery, the OpenAPI document, the printers and the client."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    name: str  # plural, as in the URL: "pods"
    kind: str  # "Pod"
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()  # "status", "binding", "scale", "log"
    verbs: tuple[str, ...] = ALL_VERBS
    list_kind: str = field(default="", compare=False)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def list_kind_name(self) -> str:
        return self.list_kind or self.kind + "List"

    @property
    def key(self) -> str:
        """Store key prefix segment; unique across groups."""
        return self.name if not self.group else f"{self.group}/{self.name}"


def _r(group: str, version: str, name: str, kind: str, namespaced: bool, **kw: object) -> ResourceType:
    return ResourceType(group, version, name, kind, namespaced, **kw)  # type: ignore[arg-type]


RESOURCES: tuple[ResourceType, ...] = (
    _r("", "v1", "namespaces", "Namespace", False, short_names=("ns",), subresources=("status", "finalize"),
       verbs=("create", "delete", "get", "list", "patch", "update", "watch")),
    _r("", "v1", "nodes", "Node", False, short_names=("no",), subresources=("status",)),
    _r("", "v1", "pods", "Pod", True, short_names=("po",), categories=("all",),
       subresources=("status", "binding", "log", "portforward", "exec", "attach")),
    _r("", "v1", "services", "Service", True, short_names=("svc",), categories=("all",), subresources=("status",),
       verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")),
    _r("", "v1", "endpoints", "Endpoints", True, short_names=("ep",), list_kind="EndpointsList"),
    _r("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    _r("", "v1", "secrets", "Secret", True),
    _r("", "v1", "events", "Event", True, short_names=("ev",)),
    _r("", "v1", "serviceaccounts", "ServiceAccount", True, short_names=("sa",), subresources=("token",)),
    _r("apps", "v1", "deployments", "Deployment", True, short_names=("deploy",), categories=("all",),
       subresources=("status", "scale")),
    _r("apps", "v1", "replicasets", "ReplicaSet", True, short_names=("rs",), categories=("all",),
       subresources=("status", "scale")),
    _r("apps", "v1", "daemonsets", "DaemonSet", True, short_names=("ds",), categories=("all",),
       subresources=("status",)),
    _r("batch", "v1", "jobs", "Job", True, categories=("all",), subresources=("status",)),
    _r("coordination.k8s.io", "v1", "leases", "Lease", True),
    _r("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    _r("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    _r("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    _r("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _r("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    # access reviews: create-only, answered from the authorizer and never stored
    _r("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False,
       verbs=("create",)),
    _r("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "SelfSubjectRulesReview", False,
       verbs=("create",)),
    _r("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", False, verbs=("create",)),
    _r("authorization.k8s.io", "v1", "localsubjectaccessreviews", "LocalSubjectAccessReview", True,
       verbs=("create",)),
    _r("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", False, verbs=("create",)),
    _r("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=("create",)),
)
# authentication.k8s.io: create-only, answered by the authenticator (apiserver/auth/authn.py), never stored
AUTHN_RESOURCES = frozenset({"selfsubjectreviews", "tokenreviews"})
REVIEW_RESOURCES = frozenset({"selfsubjectaccessreviews", "selfsubjectrulesreviews", "subjectaccessreviews",
                              "localsubjectaccessreviews"})

BY_GVR: dict[tuple[str, str, str], ResourceType] = {(r.group, r.version, r.name): r for r in RESOURCES}
BY_KIND: dict[tuple[str, str], ResourceType] = {(r.api_version, r.kind): r for r in RESOURCES}


def group_versions() -> list[tuple[str, str]]:
    """(group, version) pairs in a stable order, core first."""
    seen: list[tuple[str, str]] = []
    for r in RESOURCES:
        if (r.group, r.version) not in seen:
            seen.append((r.group, r.version))
    return seen


def lookup(group: str, version: str, name: str) -> ResourceType | None:
    return BY_GVR.get((group, version, name))
