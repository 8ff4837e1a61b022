"""Authorization: the authorizer chain, impersonation and the guard in front of every route.

    authz = Authz(store, parse_modes("Node,RBAC"))      # apiserver start (server.py)
    await authz.start()                                  # fills the in-memory policy and node graph
    app.state.authz = authz                              # AuthorizationMiddleware consults it

Every HTTP and websocket request passes `AuthorizationMiddleware` (installed by create_app, inside
the authentication middleware that puts the UserInfo into scope[USER_KEY]):

1. Impersonate-User / -Group / -Uid / -Extra-* headers: each is authorized as verb "impersonate"
   on users / groups / serviceaccounts / uids / userextras, then the request runs as that user.
2. The request's Attributes are computed from the URL as upstream's RequestInfo does: resource
   requests (verb from the method: get/list/watch/create/update/patch/delete/deletecollection; a
   list/watch with fieldSelector metadata.name=X is about object X; websocket exec/attach/
   portforward are "create") and non-resource requests (lowercase method + path).
3. The chain decides: system:masters always, then the --authorization-mode authorizers in order
   (default Node,RBAC; AlwaysAllow only when asked for), the first "allow" wins.
4. Writes by nodes pass NodeRestriction (apiserver/auth/node.py).

A refusal is upstream's 403 Status, e.g.
``pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default"``.
A denial from a stale cache is never final: the guard waits (bounded) until the in-memory policy
has caught up with every write committed before the request and decides again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson

from kube.api.selectors import SelectorError, parse_field_selector
from kube.api.validation import path_segment_name_errors

from .. import errors
from ..errors import APIError
from ..store.base import Store
from . import (
    ALL_AUTHENTICATED,
    ALL_UNAUTHENTICATED,
    ANONYMOUS,
    ANONYMOUS_USER,
    MASTERS,
    SERVICE_ACCOUNT_PREFIX,
    SERVICE_ACCOUNTS,
    USER_KEY,
    Attributes,
    Decision,
    UserInfo,
)
from .cache import StoreMirror
from .node import NodeAuthorizer, NodeGraph, Refusal, is_node_user, needs_object, node_admission
from .rbac import ALL, Policy, RBACAuthorizer, Rule, RulesResult

log = logging.getLogger("kubeling.apiserver.authz")

MODES = ("AlwaysAllow", "AlwaysDeny", "Node", "RBAC")
DEFAULT_MODES = ("Node", "RBAC")
IMPERSONATOR_KEY = "kubeling.impersonator"  # scope key: the authenticated user behind an impersonated one
DECISION_KEY = "kubeling.authz.decision"  # scope key: the Decision that let the request through (for audit)
FRESH_TIMEOUT = 1.0  # longest wait for the in-memory policy to catch up before a denial is final
MAX_BODY = 3 * 1024 * 1024
DRAIN_LIMIT = 256 * 1024  # the body a refused request may still send before its connection is closed
STREAMING_SUBRESOURCES = ("exec", "attach", "portforward")
NAMESPACE_SUBRESOURCES = ("status", "finalize")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Authorizer(Protocol):
    name: str

    def authorize(self, a: Attributes) -> Decision: ...


def parse_modes(text: str) -> tuple[str, ...]:
    """--authorization-mode: a comma list of AlwaysAllow, AlwaysDeny, Node, RBAC."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes:
        raise ValueError("--authorization-mode must name at least one mode: Node,RBAC (the default), AlwaysAllow or "
                         "AlwaysDeny")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"--authorization-mode: unknown mode {m!r}; use a comma list of {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"--authorization-mode {text!r}: a mode is listed twice")
    return modes


class PrivilegedGroups:
    """system:masters may do anything (upstream's privileged-group authorizer, first in the chain)."""

    name = "PrivilegedGroups"

    def authorize(self, a: Attributes) -> Decision:
        if MASTERS in a.user.groups:
            return MASTERS_DECISION
        return Decision(False)


MASTERS_DECISION = Decision(True, f"allowed: member of {MASTERS}")


class AlwaysAllow:
    name = "AlwaysAllow"

    def authorize(self, a: Attributes) -> Decision:
        return Decision(True, "AlwaysAllow")


class AlwaysDeny:
    name = "AlwaysDeny"

    def authorize(self, a: Attributes) -> Decision:
        return Decision(False, "Everything is forbidden.")


class Chain:
    """Upstream's union authorizer: the first allow wins; the others' reasons are joined."""

    def __init__(self, authorizers: Iterable[Authorizer]) -> None:
        self.authorizers = list(authorizers)

    def authorize(self, a: Attributes) -> Decision:
        reasons = []
        for authorizer in self.authorizers:
            d = authorizer.authorize(a)
            if d.allowed:
                return d
            if d.reason:
                reasons.append(d.reason)
        return Decision(False, ", ".join(reasons))

    def rules_for(self, user: UserInfo, namespace: str) -> RulesResult:
        """What the user may do in the namespace, as far as the chain can enumerate it."""
        out = RulesResult()
        for authorizer in self.authorizers:
            if isinstance(authorizer, RBACAuthorizer):
                got = authorizer.rules_for(user, namespace)
                out.resource_rules += got.resource_rules
                out.non_resource_rules += got.non_resource_rules
                out.errors += got.errors
            elif isinstance(authorizer, AlwaysAllow):
                out.resource_rules.append(Rule(frozenset({ALL}), frozenset({ALL}), (ALL,)))
                out.non_resource_rules.append(Rule(frozenset({ALL}), non_resource_urls=(ALL,)))
            elif isinstance(authorizer, NodeAuthorizer) and is_node_user(user):
                out.incomplete = True
                out.errors.append("node authorizer does not support user rule resolution")
        return out


class Authz:
    """Authorization at run time: the chain, and the in-memory policy and node graph it reads,
    kept current from the store by one StoreMirror."""

    def __init__(self, store: Store | None, modes: Iterable[str] = DEFAULT_MODES) -> None:
        self.modes = tuple(modes)
        self.policy = Policy()
        self.graph = NodeGraph()
        chain: list[Authorizer] = [PrivilegedGroups()]
        sinks: dict[str, Any] = {}
        for mode in self.modes:
            if mode == "RBAC":
                chain.append(RBACAuthorizer(self.policy))
                sinks.update({r: self.policy for r in Policy.RESOURCES})
            elif mode == "Node":
                chain.append(NodeAuthorizer(self.graph))
                sinks["pods"] = self.graph
            elif mode == "AlwaysAllow":
                chain.append(AlwaysAllow())
            elif mode == "AlwaysDeny":
                chain.append(AlwaysDeny())
        self.chain = Chain(chain)
        self.mirror = StoreMirror(store, sinks) if store is not None and sinks else None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Fill the caches from the store; raises TimeoutError when the store does not answer."""
        if self.mirror is None:
            return
        self._task = asyncio.create_task(self.mirror.run())
        if not await self.mirror.wait_synced(timeout):
            raise TimeoutError(f"the authorization cache did not fill within {timeout:.0f}s")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _fresh(self) -> bool:
        """True when the caches may have been behind and have now caught up (worth deciding again)."""
        if self.mirror is None:
            return False
        behind = self.mirror.revision < self.mirror.store.revision or not self.mirror.synced
        return behind and await self.mirror.wait_fresh(FRESH_TIMEOUT)

    async def decide(self, a: Attributes) -> Decision:
        d = self.chain.authorize(a)
        if not d.allowed and await self._fresh():
            d = self.chain.authorize(a)
        return d

    async def admit(self, a: Attributes, obj: dict[str, Any] | None) -> Refusal | None:
        if "Node" not in self.modes:
            return None
        refusal = node_admission(self.graph, a, obj)
        if refusal is not None and await self._fresh():
            refusal = node_admission(self.graph, a, obj)
        return refusal

    def rules_for(self, user: UserInfo, namespace: str) -> RulesResult:
        return self.chain.rules_for(user, namespace)


# -- request attributes ---------------------------------------------------------------------


def _is_true(value: str) -> bool:
    return value.lower() in ("1", "t", "true")


def request_attributes(user: UserInfo, method: str, path: str, query: dict[str, str],
                       websocket: bool = False) -> Attributes:
    """The authorization attributes of a request, from its URL alone (upstream's RequestInfoFactory)."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return Attributes(user, method.lower(), resource_request=False, path=path or "/")
    verb = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}.get(method.upper(), method.lower())
    namespace = ""
    if rest[0] == "namespaces":
        if len(rest) > 1:
            namespace = rest[1]
            if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
                rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    sub = rest[2] if len(rest) >= 3 else ""
    field_selector = ""
    if not name and verb == "get":
        verb = "watch" if _is_true(query.get("watch", "")) else "list"
        field_selector = query.get("fieldSelector", "")
        name = _exact_name(field_selector)
    elif not name and verb == "delete":
        verb = "deletecollection"
    if sub in STREAMING_SUBRESOURCES and (websocket or verb == "get"):
        verb = "create"  # exec/attach/portforward need "create" also when the stream starts with a GET
    return Attributes(user, verb, True, group, version, resource, sub, namespace, name,
                      field_selector=field_selector)


def _exact_name(field_selector: str) -> str:
    """A list/watch with fieldSelector metadata.name=X is about the single object X, as upstream."""
    if "metadata.name" not in field_selector:
        return ""
    try:
        sel = parse_field_selector(field_selector)
    except SelectorError:
        return ""
    for fld, op, value in sel.requirements:
        if fld == "metadata.name" and op == "=" and value and not path_segment_name_errors(value):
            return value
    return ""


# -- the 403 ------------------------------------------------------------------------------------


def forbidden_message(a: Attributes) -> str:
    """upstream's responsewriters.forbiddenMessage."""
    if not a.resource_request:
        return f'User "{a.user.name}" cannot {a.verb} path "{a.path}"'
    resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    where = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
    return f'User "{a.user.name}" cannot {a.verb} resource "{resource}" in API group "{a.api_group}" {where}'


def forbidden_error(a: Attributes, reason: str = "", message: str = "") -> APIError:
    """A Forbidden Status as apierrors.NewForbidden builds it: `<resource>[.<group>] ["<name>"] is forbidden: ...`.
    message replaces the "User ... cannot ..." text (admission refusals)."""
    detail = message or forbidden_message(a)
    if reason and not message:
        detail = f"{detail}: {reason}"
    if not a.resource_request:
        return APIError(403, "Forbidden", f"forbidden: {detail}", details={})
    qualified = f"{a.resource}.{a.api_group}" if a.api_group else a.resource
    text = f'{qualified} "{a.name}" is forbidden: {detail}' if a.name else f"{qualified} is forbidden: {detail}"
    details: dict[str, Any] = {}
    if a.name:
        details["name"] = a.name
    if a.api_group:
        details["group"] = a.api_group
    details["kind"] = a.resource
    return APIError(403, "Forbidden", text, details=details)


# -- impersonation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ask:
    resource: str
    name: str
    namespace: str = ""
    group: str = ""
    subresource: str = ""


def impersonation_headers(headers: Iterable[tuple[str, str]]) -> tuple[str, list[str], str, dict[str, list[str]]]:
    """(user, groups, uid, extra) asked for by Impersonate-* headers ("" / empty when absent)."""
    user, uid = "", ""
    groups: list[str] = []
    extra: dict[str, list[str]] = {}
    for key, value in headers:
        k = key.lower()
        if k == "impersonate-user":
            user = value.strip()
        elif k == "impersonate-group":
            groups.append(value.strip())
        elif k == "impersonate-uid":
            uid = value.strip()
        elif k.startswith("impersonate-extra-"):
            extra.setdefault(k[len("impersonate-extra-"):], []).append(value.strip())
    return user, groups, uid, extra


async def impersonate(authz: Authz, requestor: UserInfo, user: str, groups: list[str], uid: str,
                      extra: dict[str, list[str]]) -> UserInfo:
    """The user the request runs as; raises a 403 APIError naming the permission that is missing."""
    if not user:
        raise errors.bad_request("Impersonate-Group, Impersonate-Uid and Impersonate-Extra-* need an "
                                 "Impersonate-User header: requested groups, uid or extra without impersonating a user")
    asks: list[_Ask] = []
    final_groups = list(groups)
    if user.startswith(SERVICE_ACCOUNT_PREFIX):
        ns, _, name = user[len(SERVICE_ACCOUNT_PREFIX):].partition(":")
        asks.append(_Ask("serviceaccounts", name, ns))
        if not groups:
            final_groups = [SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{ns}"]
    else:
        asks.append(_Ask("users", user))
    asks.extend(_Ask("groups", g) for g in groups)
    if uid:
        asks.append(_Ask("uids", uid, group="authentication.k8s.io"))
    for key, values in extra.items():
        asks.extend(_Ask("userextras", v, group="authentication.k8s.io", subresource=key) for v in values)
    for ask in asks:
        attrs = Attributes(requestor, "impersonate", True, ask.group, "", ask.resource, ask.subresource,
                           ask.namespace, ask.name)
        d = await authz.decide(attrs)
        if not d.allowed:
            raise forbidden_error(attrs, d.reason)
    if user != ANONYMOUS_USER:
        if not any(g in (ALL_AUTHENTICATED, ALL_UNAUTHENTICATED) for g in final_groups):
            final_groups.append(ALL_AUTHENTICATED)
    elif ALL_UNAUTHENTICATED not in final_groups:
        final_groups.append(ALL_UNAUTHENTICATED)
    return UserInfo(user, tuple(final_groups), uid, {k: tuple(v) for k, v in extra.items()})


# -- the middleware -----------------------------------------------------------------------------


async def _send_status(scope: Scope, receive: Receive, send: Send, err: APIError) -> None:
    body = orjson.dumps(err.status())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-content-type-options", b"nosniff")]
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send({"type": "websocket.http.response.start", "status": err.code, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": err.message[:120]})
        return
    if not await _drain(receive):  # an unread body would cost the client its keep-alive connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, limit: int = DRAIN_LIMIT) -> bool:
    """Read and drop the request body, as Go's server does for a handler that did not (up to limit bytes);
    False when there was more."""
    size = 0
    while size <= limit:
        msg = await receive()
        if msg["type"] != "http.request":
            return False
        size += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return True
    return False


async def _buffer_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """Read the whole request body (None when larger than MAX_BODY) and a receive that replays it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None, receive
        chunks.append(chunk)
        if not msg.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def _decode_object(body: bytes, content_type: str) -> dict[str, Any] | None:
    from ..app import decode_body  # the app's own decoder, so admission reads what the handler will read

    try:
        obj = decode_body(body, content_type)
    except APIError:
        return None
    return obj if isinstance(obj, dict) else None


class AuthorizationMiddleware:
    """Pure ASGI: cheap per request, and it covers websocket routes too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        authz: Authz | None = getattr(getattr(scope.get("app"), "state", None), "authz", None)
        if authz is None:  # an app built without authorization (unit tests of the routes)
            await self.app(scope, receive, send)
            return
        box = [receive]  # _check may replace it with one that replays a body it read
        try:
            await self._check(authz, scope, box)
        except APIError as e:
            await _send_status(scope, box[0], send, e)
            return
        await self.app(scope, box[0], send)

    async def _check(self, authz: Authz, scope: Scope, box: list[Receive]) -> None:
        user: UserInfo = scope.get(USER_KEY) or ANONYMOUS
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers") or []]
        imp_user, imp_groups, imp_uid, imp_extra = impersonation_headers(headers)
        if imp_user or imp_groups or imp_uid or imp_extra:
            as_user = await impersonate(authz, user, imp_user, imp_groups, imp_uid, imp_extra)
            scope[IMPERSONATOR_KEY] = user
            scope[USER_KEY] = user = as_user
        elif MASTERS in user.groups:  # the first authorizer of every chain allows it: skip the URL parsing
            scope[DECISION_KEY] = MASTERS_DECISION
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        method = "GET" if scope["type"] == "websocket" else str(scope.get("method", "GET"))
        attrs = request_attributes(user, method, str(scope.get("path", "/")), query, scope["type"] == "websocket")
        decision = await authz.decide(attrs)
        if not decision.allowed:
            log.debug("forbidden user=%s verb=%s resource=%s path=%s reason=%s", user.name, attrs.verb,
                      attrs.resource, attrs.path, decision.reason)
            raise forbidden_error(attrs, decision.reason)
        scope[DECISION_KEY] = decision
        if is_node_user(user) and attrs.resource_request and attrs.verb in ("create", "update", "patch", "delete"):
            obj = None
            if needs_object(attrs):
                body, box[0] = await _buffer_body(box[0])
                if body is None:
                    raise errors.too_large(MAX_BODY)
                content_type = dict((k.lower(), v) for k, v in headers).get("content-type", "")
                obj = _decode_object(body, content_type)
                if obj is None:
                    return  # undecodable: the handler answers 400 with the decoder's reason
            refusal = await authz.admit(attrs, obj)
            if refusal is not None:
                if refusal.code == 404:
                    raise APIError(404, "NotFound", refusal.message, details={"name": attrs.name, "kind": "pods"})
                raise forbidden_error(attrs, message=refusal.message)


async def streaming_guard(scope: Scope, *, verb: str, subresource: str, namespace: str, name: str) -> None:
    """For websocket handlers (exec/attach/portforward): raise a 403 APIError unless the request's user
    may `verb` pods/`subresource` (AuthorizationMiddleware has already checked this for requests it saw)."""
    authz: Authz | None = getattr(getattr(scope.get("app"), "state", None), "authz", None)
    if authz is None or DECISION_KEY in scope:
        return
    attrs = Attributes(scope.get(USER_KEY) or ANONYMOUS, verb, True, "", "v1", "pods", subresource, namespace, name)
    d = await authz.decide(attrs)
    if not d.allowed:
        raise forbidden_error(attrs, d.reason)


async def start_authorization(registry: Any, modes: Iterable[str] = DEFAULT_MODES) -> Authz:
    """At apiserver start: write the default RBAC policy (when RBAC is on), then fill the caches."""
    from .bootstrap import ensure_policy

    modes = tuple(modes)
    if "AlwaysAllow" in modes:
        log.warning("--authorization-mode includes AlwaysAllow: every authenticated request is allowed")
    if "RBAC" in modes:
        await ensure_policy(registry)
    authz = Authz(registry.store, modes)
    await authz.start()
    return authz
