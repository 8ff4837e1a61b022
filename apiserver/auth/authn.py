"""Who is asking: authentication of every request, and the authentication.k8s.io API.

    authn = Authenticator(registry, verifier=TokenVerifier(...), anonymous=False)
    app = AuthnMiddleware(fastapi_app, authn)        # plain ASGI: HTTP and WebSocket requests

The order is upstream's: a client certificate (verified in the TLS handshake against the client CA;
CN = user name, O = groups), else a bearer token (a service-account JWT this apiserver issued, whose
service account -- and bound pod -- still exist with the same uid), else anonymous when enabled.
Anything else is 401 Unauthorized, as is a presented credential that does not verify (anonymous never
rescues a bad credential). Authenticated users get system:authenticated, service accounts also
system:serviceaccounts and system:serviceaccounts:NS. The result is kept in scope[USER_KEY] for
authorization, admission and audit.

--insecure-serving: Authenticator(insecure=True) makes every request INSECURE_USER, nothing is checked.

Also here: the serviceaccounts/token subresource (TokenRequest), SelfSubjectReview (`kubectl auth
whoami`) and TokenReview.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from kube.api.resources import lookup

from .. import errors
from ..errors import APIError
from . import (
    ALL_AUTHENTICATED,
    ANONYMOUS,
    INSECURE_USER,
    SERVICE_ACCOUNT_PREFIX,
    SERVICE_ACCOUNTS,
    USER_KEY,
    UserInfo,
)
from .tokens import (
    DEFAULT_EXPIRATION,
    MAX_EXPIRATION,
    MIN_EXPIRATION,
    BoundObject,
    TokenError,
    TokenSigner,
    TokenVerifier,
    VerifiedClaims,
    claims_for,
)

log = logging.getLogger("kubeling.apiserver.authn")

Scope = MutableMapping[str, Any]
Receive = Callable[..., Awaitable[Any]]
Send = Callable[..., Awaitable[Any]]
ASGIApp = Callable[..., Awaitable[None]]  # (scope, receive, send)

AUTHN_GROUP = "authentication.k8s.io"
AUTHN_API_VERSION = "authentication.k8s.io/v1"
# UserInfo.extra keys of service-account users (upstream's names)
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_NODE_UID = "authentication.kubernetes.io/node-uid"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"

UNAUTHORIZED_BODY = orjson.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": "Unauthorized", "reason": "Unauthorized", "code": 401})


def unauthorized() -> APIError:
    return APIError(401, "Unauthorized", "Unauthorized")


def service_account_groups(namespace: str) -> tuple[str, ...]:
    return (SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{namespace}", ALL_AUTHENTICATED)


def user_from_cert(cert: dict[str, Any]) -> UserInfo | None:
    """The user of a verified client certificate (getpeercert() form): CN is the name, each O a group."""
    cn, orgs = "", []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    if not cn:
        return None
    groups = tuple(dict.fromkeys([*orgs, ALL_AUTHENTICATED]))
    return UserInfo(cn, groups)


def _deleted_before(obj: dict[str, Any], now: float) -> bool:
    """True when obj has a deletionTimestamp that has passed (a pod in its grace period still counts)."""
    ts = (obj.get("metadata") or {}).get("deletionTimestamp")
    if not ts:
        return False
    try:
        when = dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return True
    return when <= now


class Authenticator:
    """Turns a request's credentials into a UserInfo, or None (401)."""

    def __init__(self, registry: Any, *, verifier: TokenVerifier | None = None, anonymous: bool = False,
                 insecure: bool = False) -> None:
        self.registry = registry
        self.verifier = verifier
        self.anonymous = anonymous
        self.insecure = insecure

    async def authenticate(self, scope: Scope) -> UserInfo | None:
        if self.insecure:
            return INSECURE_USER
        tls = (scope.get("extensions") or {}).get("tls")
        if tls and tls.get("client_cert"):
            user = user_from_cert(tls["client_cert"])
            if user is not None:
                return user
            return None  # a verified certificate without a CN names nobody: 401, as upstream
        token = bearer_token(scope.get("headers") or ())
        if token is not None:
            return await self.authenticate_token(token)
        return ANONYMOUS if self.anonymous else None

    async def authenticate_token(self, token: str, audiences: Sequence[str] | None = None) -> UserInfo | None:
        if self.verifier is None or not token:
            return None
        try:
            claims = self.verifier.verify(token, audiences)
        except TokenError as e:
            log.debug("bearer token rejected: %s", e)
            return None
        if not await self._still_valid(claims):
            return None
        return user_from_claims(claims)

    async def _still_valid(self, c: VerifiedClaims) -> bool:
        """The service account (and the bound pod) still exist, are the ones the token names, and are not
        deleted: a token dies with what it was issued for."""
        now = time.time()
        sa = await self._get("serviceaccounts", c.namespace, c.sa_name)
        if sa is None or sa["metadata"].get("uid") != c.sa_uid or _deleted_before(sa, now):
            log.debug("token of %s/%s refused: the service account is gone or was recreated", c.namespace, c.sa_name)
            return False
        if c.pod is not None:
            pod = await self._get("pods", c.namespace, c.pod.name)
            if pod is None or pod["metadata"].get("uid") != c.pod.uid or _deleted_before(pod, now):
                log.debug("token bound to pod %s/%s refused: the pod is gone", c.namespace, c.pod.name)
                return False
        return True

    async def _get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        rt = lookup("", "v1", resource)
        assert rt is not None
        try:
            obj: dict[str, Any] = await self.registry.get(rt, namespace, name)
            return obj
        except APIError as e:
            if e.code == 404:
                return None
            raise


def bearer_token(headers: Any) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header; '' for a malformed one, None when absent."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer":
                return None  # Basic and others: not ours, as if absent
            return token.strip()
    return None


def user_from_claims(c: VerifiedClaims) -> UserInfo:
    extra: dict[str, tuple[str, ...]] = {}
    if c.pod is not None:
        extra[EXTRA_POD_NAME], extra[EXTRA_POD_UID] = (c.pod.name,), (c.pod.uid,)
    if c.node is not None:
        extra[EXTRA_NODE_NAME] = (c.node.name,)
        if c.node.uid:
            extra[EXTRA_NODE_UID] = (c.node.uid,)
    if c.jti:
        extra[EXTRA_CREDENTIAL_ID] = (f"JTI={c.jti}",)
    return UserInfo(f"{SERVICE_ACCOUNT_PREFIX}{c.namespace}:{c.sa_name}", service_account_groups(c.namespace),
                    uid=c.sa_uid, extra=extra)


class AuthnMiddleware:
    """ASGI middleware: authenticate every HTTP and WebSocket request, answer 401 or pass it on with
    scope[USER_KEY] set. Plain ASGI (no BaseHTTPMiddleware): it costs one header scan per request."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            user = await self.authenticator.authenticate(scope)
        except Exception as e:  # the store failed under us: not the client's fault, not a 401
            log.warning("authentication failed: %s", e)
            await _send_status(scope, send, errors.unavailable(f"authentication is unavailable: {e}"))
            return
        if user is None:
            await _send_status(scope, send, unauthorized())
            return
        scope[USER_KEY] = user
        await self.app(scope, receive, send)


async def _send_status(scope: Scope, send: Send, err: APIError) -> None:
    body = UNAUTHORIZED_BODY if err.code == 401 else orjson.dumps(err.status())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": err.code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": err.code, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403


def user_of(scope: Scope) -> UserInfo:
    """The authenticated user of a request (INSECURE_USER when no middleware ran, e.g. in-process tests)."""
    user = scope.get(USER_KEY)
    return user if isinstance(user, UserInfo) else INSECURE_USER


# -- the authentication.k8s.io API ---------------------------------------------------------


@dataclass
class TokenIssuer:
    """What TokenRequest needs: the signer, the default audiences, an optional cap on the lifetime."""

    signer: TokenSigner
    audiences: tuple[str, ...]
    max_expiration: int = 0  # seconds; 0 = no cap


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_kind(body: Any, kind: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.bad_request(f"the body of the request must be a JSON object describing a {kind}")
    if body.get("apiVersion") not in (None, AUTHN_API_VERSION):
        raise errors.bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the "
                                 f"expected API version ({AUTHN_API_VERSION})")
    if body.get("kind") not in (None, kind):
        raise errors.bad_request(f"the kind in the data ({body.get('kind')}) does not match the expected kind "
                                 f"({kind})")
    spec = body.get("spec", {})
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise errors.bad_request(f"{kind}.spec must be an object")
    return spec


def _invalid(kind: str, name: str, field: str, value: Any, message: str) -> APIError:
    detail = f"Invalid value: {orjson.dumps(value).decode()}: {message}"
    return APIError(422, "Invalid", f'{kind}.{AUTHN_GROUP} "{name}" is invalid: {field}: {detail}',
                    details={"name": name, "group": AUTHN_GROUP, "kind": kind,
                             "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}]})


async def create_token(registry: Any, issuer: TokenIssuer | None, namespace: str, name: str,
                       body: Any) -> dict[str, Any]:
    """POST .../serviceaccounts/NAME/token: a TokenRequest in, the same with status.token out."""
    if issuer is None:
        raise errors.unavailable("this apiserver has no service-account signing key "
                                 "(--service-account-signing-key-file): it cannot issue tokens")
    spec = _check_kind(body, "TokenRequest")
    exp = spec.get("expirationSeconds", DEFAULT_EXPIRATION)
    if exp is None:
        exp = DEFAULT_EXPIRATION
    if isinstance(exp, bool) or not isinstance(exp, int):
        raise errors.bad_request("TokenRequest.spec.expirationSeconds must be an integer")
    if exp < MIN_EXPIRATION:
        raise _invalid("TokenRequest", "", "spec.expirationSeconds", exp, "may not specify a duration less than "
                       "10 minutes")
    if exp > MAX_EXPIRATION:
        raise _invalid("TokenRequest", "", "spec.expirationSeconds", exp, "may not specify a duration larger "
                       "than 2^32 seconds")
    audiences = spec.get("audiences") or []
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise errors.bad_request("TokenRequest.spec.audiences must be a list of non-empty strings")
    audiences = audiences or list(issuer.audiences)
    if issuer.max_expiration and exp > issuer.max_expiration:
        exp = issuer.max_expiration
    sa_rt, pod_rt, node_rt = lookup("", "v1", "serviceaccounts"), lookup("", "v1", "pods"), lookup("", "v1", "nodes")
    assert sa_rt and pod_rt and node_rt
    sa = await registry.get(sa_rt, namespace, name)  # 404 serviceaccounts "NAME" not found
    pod = node = None
    ref = spec.get("boundObjectRef")
    if ref is not None:
        if not isinstance(ref, dict):
            raise errors.bad_request("TokenRequest.spec.boundObjectRef must be an object")
        kind, api_version = ref.get("kind") or "", ref.get("apiVersion") or ""
        if (api_version not in ("v1", "")) or kind != "Pod":
            group = api_version.rpartition("/")[0] if "/" in api_version else ""
            version = api_version.rpartition("/")[2]
            raise errors.bad_request(f"cannot bind token to object of type {group}/{version}, Kind={kind}")
        ref_name = ref.get("name")
        if not isinstance(ref_name, str) or not ref_name:
            raise errors.bad_request("TokenRequest.spec.boundObjectRef.name is required")
        obj = await registry.get(pod_rt, namespace, ref_name)  # 404 pods "NAME" not found
        if (obj.get("spec") or {}).get("serviceAccountName", "default") != name:
            raise errors.bad_request(f'cannot bind token for serviceaccount "{name}" to pod running with '
                                     f'different serviceaccount name.')
        uid = obj["metadata"]["uid"]
        if ref.get("uid") and ref["uid"] != uid:
            raise APIError(409, "Conflict", f'Operation cannot be fulfilled on Pod "{ref_name}": the UID in the bound '
                           f'object reference ({ref["uid"]}) does not match the UID in record. The object might '
                           f'have been deleted and then recreated', details={"name": ref_name, "kind": "Pod"})
        pod = BoundObject("Pod", ref_name, uid)
        node_name = (obj.get("spec") or {}).get("nodeName")
        if node_name:
            try:
                node_obj = await registry.get(node_rt, None, node_name)
                node = BoundObject("Node", node_name, node_obj["metadata"]["uid"])
            except APIError as e:
                if e.code != 404:
                    raise
                node = BoundObject("Node", node_name, "")
    now = time.time()
    claims = claims_for(namespace, name, sa["metadata"]["uid"], audiences=audiences, expiration_seconds=exp,
                        pod=pod, node=node, now=now)
    token = issuer.signer.sign(claims)
    out_spec: dict[str, Any] = {"audiences": audiences, "expirationSeconds": exp}
    if ref is not None:
        out_spec["boundObjectRef"] = ref
    return {
        "kind": "TokenRequest", "apiVersion": AUTHN_API_VERSION,
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": _rfc3339(now)},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": _rfc3339(claims["exp"])},
    }


def user_info_json(user: UserInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"username": user.name, "groups": list(user.groups)}
    if user.uid:
        out["uid"] = user.uid
    if user.extra:
        out["extra"] = {k: list(v) for k, v in user.extra.items()}
    return out


def self_subject_review(user: UserInfo, body: Any) -> dict[str, Any]:
    """POST /apis/authentication.k8s.io/v1/selfsubjectreviews: who the caller is (`kubectl auth whoami`)."""
    _check_kind(body, "SelfSubjectReview")
    return {"kind": "SelfSubjectReview", "apiVersion": AUTHN_API_VERSION,
            "metadata": {"creationTimestamp": _rfc3339(time.time())},
            "status": {"userInfo": user_info_json(user)}}


async def token_review(authenticator: Authenticator | None, body: Any) -> dict[str, Any]:
    """POST /apis/authentication.k8s.io/v1/tokenreviews: whose is this token (for agents and webhooks)."""
    spec = _check_kind(body, "TokenReview")
    token, audiences = spec.get("token"), spec.get("audiences") or None
    if not isinstance(token, str) or not token:
        raise errors.bad_request(f"token is required for TokenReview in {AUTHN_API_VERSION}")
    if audiences is not None and (not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences)):
        raise errors.bad_request("TokenReview.spec.audiences must be a list of strings")
    status: dict[str, Any] = {}
    user = None
    if authenticator is not None and authenticator.verifier is not None:
        user = await authenticator.authenticate_token(token, audiences)
    if user is None or authenticator is None:
        status = {"authenticated": False, "user": {}, "error": "[invalid bearer token, service account token "
                                                               "has been invalidated]"}
    else:
        verifier = authenticator.verifier
        assert verifier is not None
        status = {"authenticated": True, "user": user_info_json(user),
                  "audiences": list(audiences if audiences is not None else verifier.audiences)}
    out_spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        out_spec["audiences"] = audiences
    return {"kind": "TokenReview", "apiVersion": AUTHN_API_VERSION,
            "metadata": {"creationTimestamp": _rfc3339(time.time())}, "spec": out_spec, "status": status}
