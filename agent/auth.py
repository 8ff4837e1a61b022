"""Who may use the agent API: TLS with client certificates, and the kubelet's authorization rules.

    ctx = server_ssl_context(cert_file, key_file, client_ca_file)   # AgentServer(ssl_context=ctx, ...)
    auth = AgentAuth(node_name, review=SubjectAccessReviewer(client))
    decision = auth.check(peer_cert, "GET", "/containerLogs/ns/pod/c")   # Decision(code, message)

Authentication (upstream kubelet with --anonymous-auth=false --client-ca-file): the client presents a
certificate that chains to --client-ca-file (checked in the TLS handshake: a certificate from another
CA fails the handshake); its CN is the user, its O entries the groups. No certificate, or one without
a CN, is 401 "Unauthorized". Bearer tokens are not accepted (upstream's --authentication-token-webhook
is not offered): the apiserver, the only regular client, always has its certificate.

Authorization (upstream --authorization-mode=Webhook, with one local shortcut):

- a user named kube-apiserver-kubelet-client (the identity `kubeling pki init` gives the apiserver for
  its calls to agents) or in the group system:masters is allowed everything, decided here without a
  round trip: these are exactly the identities that upstream's default policy allows on every node
  (cluster-admin for system:masters; kubeadm binds system:kubelet-api-admin to the apiserver's client
  certificate), and logs/exec must keep working while the apiserver is busy or its policy is being
  changed;
- anyone else is asked about with a SubjectAccessReview, as upstream does: user and groups from the
  certificate, verb from the HTTP method (GET/HEAD get, POST create, PUT update, PATCH patch, DELETE
  delete), resource "nodes", name this node, subresource from the path (/stats stats, /metrics
  metrics, /logs log, /spec spec, /checkpoint checkpoint, everything else -- /pods, /containerLogs,
  /exec, /attach, /portForward, /healthz -- proxy). So another node's certificate (the node authorizer
  grants no nodes/proxy) or a user without an RBAC grant on nodes/proxy is 403
  "Forbidden (user=U, verb=V, resource=nodes, subresource=S)", upstream's words; a user granted
  nodes/proxy (e.g. cluster-admin's bindings) is allowed. Answers are cached as upstream's webhook
  cache does (allowed 5 min, denied 30 s); an apiserver that cannot answer is a 500
  "Authorization error (...)".
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kube import tls

log = logging.getLogger("kubeling.agent.auth")

APISERVER_CLIENT = "kube-apiserver-kubelet-client"
MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
ALLOWED_TTL = 300.0
DENIED_TTL = 30.0
VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
SUBRESOURCES = (("/stats", "stats"), ("/metrics", "metrics"), ("/logs", "log"), ("/spec", "spec"),
                ("/checkpoint", "checkpoint"))


class AuthConfigError(Exception):
    """A TLS file that cannot be used; printed as one line at start."""


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Attributes:
    user: User
    verb: str
    subresource: str
    node: str


@dataclass(frozen=True)
class Decision:
    code: int  # 200 go on, 401, 403, 500
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.code == 200


def server_ssl_context(cert_file: str, key_file: str, client_ca_file: str) -> ssl.SSLContext:
    """kube.tls.server_context without TLS 1.3 session tickets (the threaded server reads blocking);
    a client without a certificate is answered with 401 by AgentAuth."""
    try:
        return tls.server_context(cert_file, key_file, client_ca_file, session_tickets=False)
    except tls.TLSConfigError as e:
        raise AuthConfigError(str(e)) from None


def user_from_cert(cert: dict[str, Any] | None) -> User | None:
    """The user of a verified peer certificate (ssl's getpeercert() form), None without one or a CN."""
    if not cert:
        return None
    cn, orgs = "", []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = str(value)
            elif key == "organizationName":
                orgs.append(str(value))
    if not cn:
        return None
    return User(cn, tuple(dict.fromkeys([*orgs, AUTHENTICATED])))


def request_attributes(user: User, method: str, path: str, node: str) -> Attributes:
    """Upstream's kubelet request attributes (see the module docstring)."""
    verb = VERBS.get(method.upper(), method.lower())
    sub = next((s for prefix, s in SUBRESOURCES if path == prefix or path.startswith(prefix + "/")), "proxy")
    return Attributes(user, verb, sub, node)


def forbidden(a: Attributes) -> str:
    return f"Forbidden (user={a.user.name}, verb={a.verb}, resource=nodes, subresource={a.subresource})"


Reviewer = Callable[[Attributes], bool]  # True allowed, False denied; raises when it cannot say


class SubjectAccessReviewer:
    """Asks the apiserver (authorization.k8s.io/v1 SubjectAccessReview) with the agent's own client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __call__(self, a: Attributes) -> bool:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
                "spec": {"user": a.user.name, "groups": list(a.user.groups),
                         "resourceAttributes": {"verb": a.verb, "resource": "nodes", "subresource": a.subresource,
                                                "name": a.node}}}
        answer = self.client.create("subjectaccessreviews", body)
        return bool((answer.get("status") or {}).get("allowed"))


class AgentAuth:
    """Authentication + authorization of one agent API request (see the module docstring)."""

    def __init__(self, node: str, review: Reviewer | None = None, *, clock: Callable[[], float] = time.monotonic,
                 allowed_ttl: float = ALLOWED_TTL, denied_ttl: float = DENIED_TTL) -> None:
        self.node = node
        self.review = review
        self.clock = clock
        self.allowed_ttl, self.denied_ttl = allowed_ttl, denied_ttl
        self._cache: dict[Attributes, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def check(self, cert: dict[str, Any] | None, method: str, path: str) -> Decision:
        user = user_from_cert(cert)
        if user is None:
            return Decision(401, "Unauthorized")
        a = request_attributes(user, method, path, self.node)
        if user.name == APISERVER_CLIENT or MASTERS in user.groups:
            return Decision(200)
        try:
            allowed = self._reviewed(a)
        except Exception as e:  # noqa: BLE001 - the apiserver could not answer: not the client's fault
            log.warning("authorization error user=%s verb=%s subresource=%s error=%s", user.name, a.verb,
                        a.subresource, e)
            return Decision(500, f"Authorization error (user={user.name}, verb={a.verb}, resource=nodes, "
                                 f"subresource={a.subresource})")
        if not allowed:
            log.info("forbidden user=%s verb=%s subresource=%s", user.name, a.verb, a.subresource)
            return Decision(403, forbidden(a))
        return Decision(200)

    def _reviewed(self, a: Attributes) -> bool:
        if self.review is None:
            return False
        now = self.clock()
        with self._lock:
            hit = self._cache.get(a)
            if hit is not None and hit[1] > now:
                return hit[0]
        allowed = self.review(a)
        with self._lock:
            if len(self._cache) > 4096:  # bounded: forget everything rather than grow without end
                self._cache.clear()
            self._cache[a] = (allowed, now + (self.allowed_ttl if allowed else self.denied_ttl))
        return allowed
