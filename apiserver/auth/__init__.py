"""Who is asking, and may they: the types shared by authentication, authorization, admission and audit.

    user = await authenticator.authenticate(request)      # authn.py: UserInfo, or raises 401
    attrs = Attributes(user, verb="list", resource="pods", namespace="default", ...)
    decision = authorizer.authorize(attrs)                  # authz.py: Decision(allowed, reason)

The request's user is kept in the ASGI scope under USER_KEY so later stages (authorization,
admission, audit, rate limiting) read the same identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

USER_KEY = "kubeling.user"  # scope[USER_KEY] -> UserInfo

# well-known names (upstream's)
ALL_AUTHENTICATED = "system:authenticated"
ALL_UNAUTHENTICATED = "system:unauthenticated"
MASTERS = "system:masters"
NODES = "system:nodes"
NODE_PREFIX = "system:node:"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
SERVICE_ACCOUNTS = "system:serviceaccounts"
ANONYMOUS_USER = "system:anonymous"


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False, compare=False)

    @property
    def node_name(self) -> str | None:
        """The node an agent's identity belongs to (system:node:NAME in group system:nodes), else None."""
        if self.name.startswith(NODE_PREFIX) and NODES in self.groups:
            return self.name[len(NODE_PREFIX):] or None
        return None

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) for system:serviceaccount:NS:NAME, else None."""
        if not self.name.startswith(SERVICE_ACCOUNT_PREFIX):
            return None
        ns, sep, name = self.name[len(SERVICE_ACCOUNT_PREFIX):].partition(":")
        return (ns, name) if sep and ns and name else None


ANONYMOUS = UserInfo(ANONYMOUS_USER, (ALL_UNAUTHENTICATED,))
# the identity of requests when security is off (--insecure-serving): everything is allowed
INSECURE_USER = UserInfo("system:insecure", (MASTERS, ALL_AUTHENTICATED))


@dataclass(frozen=True)
class Attributes:
    """What a request wants to do, in authorization terms (upstream's authorizer.Attributes)."""

    user: UserInfo
    verb: str  # get list watch create update patch delete deletecollection (resource) or get/post/... (path)
    resource_request: bool = True
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""  # the URL path, for non-resource requests (/healthz, /version, /api, ...)
    field_selector: str = ""  # list/watch: the raw fieldSelector (the node authorizer reads spec.nodeName=N)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""  # why (for 403 messages and audit): e.g. 'RBAC: allowed by ClusterRoleBinding "x"'
