"""Service-account tokens (apiserver/auth/tokens.py) and the authenticator/TokenRequest logic
(apiserver/auth/authn.py), with an in-memory registry: no server process."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from apiserver import errors
from apiserver.auth import ANONYMOUS, INSECURE_USER, USER_KEY, UserInfo, authn
from apiserver.auth.tokens import (
    LEEWAY,
    BoundObject,
    TokenError,
    TokenSigner,
    TokenVerifier,
    claims_for,
    key_id,
    load_public_keys,
)
from apiserver.errors import APIError
from kube import pki
from kube.api.resources import ResourceType

ISSUER = "https://kubernetes.default.svc.cluster.local"


class FakeRegistry:
    """registry.get(rt, ns, name) over a dict, 404 as the real one."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}

    def put(self, resource: str, ns: str | None, name: str, uid: str, **extra: Any) -> dict[str, Any]:
        obj = {"metadata": {"name": name, "namespace": ns, "uid": uid, **extra.pop("metadata", {})}, **extra}
        self.objects[(resource, ns, name)] = obj
        return obj

    async def get(self, rt: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        try:
            return self.objects[(rt.name, ns, name)]
        except KeyError:
            raise errors.not_found(rt, name) from None


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(pki.generate_key(), ISSUER)


@pytest.fixture
def verifier(signer: TokenSigner) -> TokenVerifier:
    return TokenVerifier([signer.key.public_key()], [ISSUER], [ISSUER])


def sa_token(signer: TokenSigner, **kw: Any) -> str:
    args: dict[str, Any] = {"audiences": [ISSUER], "expiration_seconds": 3600}
    args.update(kw)
    return signer.sign(claims_for("default", "builder", "sa-uid", **args))


def segments(token: str) -> list[Any]:
    head, body, _ = token.split(".")
    return [json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))) for s in (head, body)]


# -- tokens -------------------------------------------------------------------------------


def test_token_shape_is_upstreams(signer: TokenSigner) -> None:
    pod = BoundObject("Pod", "web-1", "pod-uid")
    token = sa_token(signer, pod=pod, node=BoundObject("Node", "n1", "node-uid"), now=1000)
    header, claims = segments(token)
    assert header == {"alg": "ES256", "kid": key_id(signer.key.public_key())}
    assert claims["iss"] == ISSUER and claims["sub"] == "system:serviceaccount:default:builder"
    assert claims["aud"] == [ISSUER] and claims["iat"] == claims["nbf"] == 1000 and claims["exp"] == 4600
    assert claims["kubernetes.io"] == {"namespace": "default", "serviceaccount": {"name": "builder", "uid": "sa-uid"},
                                       "pod": {"name": "web-1", "uid": "pod-uid"},
                                       "node": {"name": "n1", "uid": "node-uid"}}
    assert len(claims["jti"]) == 36


def test_round_trip_es256_and_rs256() -> None:
    for key in (pki.generate_key(), rsa.generate_private_key(public_exponent=65537, key_size=2048)):
        s = TokenSigner(key, ISSUER)
        v = TokenVerifier([key.public_key()], [ISSUER], [ISSUER])
        c = v.verify(sa_token(s))
        assert (c.namespace, c.sa_name, c.sa_uid, c.audiences) == ("default", "builder", "sa-uid", (ISSUER,))
        assert segments(sa_token(s))[0]["alg"] == ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")


def test_expiry_with_leeway(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = sa_token(signer, expiration_seconds=600, now=10_000)
    verifier.verify(token, now=10_600 + LEEWAY - 1)
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(token, now=10_600 + LEEWAY + 1)
    with pytest.raises(TokenError, match="not valid yet"):
        verifier.verify(token, now=10_000 - LEEWAY - 5)


def test_forged_and_foreign_tokens_are_refused(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = sa_token(signer)
    head, body, sig = token.split(".")
    claims = segments(token)[1]
    claims["kubernetes.io"]["serviceaccount"]["name"] = "admin"
    claims["sub"] = "system:serviceaccount:default:admin"
    forged_body = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature"):
        verifier.verify(f"{head}.{forged_body}.{sig}")
    other = TokenSigner(pki.generate_key(), ISSUER)  # same issuer name, another key
    with pytest.raises(TokenError, match="signature"):
        verifier.verify(sa_token(other))
    none_head = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(TokenError, match="alg"):
        verifier.verify(f"{none_head}.{body}.")
    hs_head = base64.urlsafe_b64encode(b'{"alg":"HS256"}').rstrip(b"=").decode()
    with pytest.raises(TokenError, match="alg"):
        verifier.verify(f"{hs_head}.{body}.{sig}")


def test_audience_and_issuer(signer: TokenSigner, verifier: TokenVerifier) -> None:
    with pytest.raises(TokenError, match="audiences"):
        verifier.verify(sa_token(signer, audiences=["vault"]))
    assert verifier.verify(sa_token(signer, audiences=["vault"]), audiences=["vault"]).audiences == ("vault",)
    elsewhere = TokenSigner(signer.key, "https://other.example")
    with pytest.raises(TokenError, match="issuer"):
        verifier.verify(sa_token(elsewhere))


def test_garbage_is_a_token_error_never_a_crash(verifier: TokenVerifier) -> None:
    rng = random.Random(9)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.=+/ {}\""
    samples = ["", ".", "..", "a.b.c", "eyJ.eyJ.", "x" * 70_000,
               base64.urlsafe_b64encode(b'{"alg":"ES256"}').decode().rstrip("=") + ".bnVsbA.AAAA",
               base64.urlsafe_b64encode(b"[1]").decode().rstrip("=") + ".e30.AAAA"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for _ in range(300)]
    for s in samples:
        with pytest.raises(TokenError):
            verifier.verify(s)


def test_public_keys_load_from_pub_private_and_cert(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    pki.init_cluster(str(d))
    pub = load_public_keys(str(d / "sa.pub"))
    priv = load_public_keys(str(d / "sa.key"))
    assert [key_id(k) for k in pub] == [key_id(k) for k in priv]
    assert isinstance(load_public_keys(str(d / "ca.crt"))[0], ec.EllipticCurvePublicKey)
    (tmp_path / "empty.pem").write_text("nothing here")
    with pytest.raises(Exception, match="no ECDSA or RSA public key"):
        load_public_keys(str(tmp_path / "empty.pem"))


# -- the authenticator --------------------------------------------------------------------


@pytest.fixture
def registry() -> FakeRegistry:
    r = FakeRegistry()
    r.put("serviceaccounts", "default", "builder", "sa-uid")
    r.put("pods", "default", "web-1", "pod-uid", spec={"serviceAccountName": "builder", "nodeName": "n1"})
    r.put("nodes", None, "n1", "node-uid")
    return r


def http_scope(token: str | None = None, cert: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token is not None else []
    scope: dict[str, Any] = {"type": "http", "headers": headers}
    if cert is not None:
        scope["extensions"] = {"tls": {"client_cert": cert}}
    return scope


def test_service_account_user(registry: FakeRegistry, signer: TokenSigner, verifier: TokenVerifier) -> None:
    a = authn.Authenticator(registry, verifier=verifier)
    user = run(a.authenticate(http_scope(sa_token(signer, pod=BoundObject("Pod", "web-1", "pod-uid")))))
    assert user.name == "system:serviceaccount:default:builder" and user.uid == "sa-uid"
    assert user.groups == ("system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated")
    assert user.extra[authn.EXTRA_POD_NAME] == ("web-1",) and user.extra[authn.EXTRA_POD_UID] == ("pod-uid",)
    assert user.extra[authn.EXTRA_CREDENTIAL_ID][0].startswith("JTI=")
    assert user.service_account == ("default", "builder")


def test_token_dies_with_its_service_account_or_pod(registry: FakeRegistry, signer: TokenSigner,
                                                    verifier: TokenVerifier) -> None:
    a = authn.Authenticator(registry, verifier=verifier)
    bound = sa_token(signer, pod=BoundObject("Pod", "web-1", "pod-uid"))
    plain = sa_token(signer)
    registry.put("pods", "default", "web-1", "pod-uid",
                 metadata={"deletionTimestamp": "2999-01-01T00:00:00Z"})  # terminating, grace not over
    assert run(a.authenticate(http_scope(bound))) is not None
    registry.put("pods", "default", "web-1", "pod-uid", metadata={"deletionTimestamp": "2000-01-01T00:00:00Z"})
    assert run(a.authenticate(http_scope(bound))) is None
    del registry.objects[("pods", "default", "web-1")]
    assert run(a.authenticate(http_scope(bound))) is None
    assert run(a.authenticate(http_scope(plain))) is not None
    registry.put("serviceaccounts", "default", "builder", "another-uid")  # deleted and recreated
    assert run(a.authenticate(http_scope(plain))) is None
    del registry.objects[("serviceaccounts", "default", "builder")]
    assert run(a.authenticate(http_scope(plain))) is None


def test_order_cert_then_token_then_anonymous(registry: FakeRegistry, signer: TokenSigner,
                                             verifier: TokenVerifier) -> None:
    cert = {"subject": ((("organizationName", "system:nodes"),), (("commonName", "system:node:n1"),))}
    a = authn.Authenticator(registry, verifier=verifier, anonymous=True)
    user = run(a.authenticate(http_scope(sa_token(signer), cert=cert)))
    assert user == UserInfo("system:node:n1", ("system:nodes", "system:authenticated")) and user.node_name == "n1"
    assert run(a.authenticate(http_scope())) == ANONYMOUS
    assert run(a.authenticate(http_scope("not-a-token"))) is None, "a bad credential is never anonymous"
    assert run(a.authenticate(http_scope(""))) is None
    off = authn.Authenticator(registry, verifier=verifier)
    assert run(off.authenticate(http_scope())) is None
    assert run(off.authenticate({"type": "http", "headers": [(b"authorization", b"Basic dTpw")]})) is None
    assert run(authn.Authenticator(registry, insecure=True).authenticate(http_scope())) == INSECURE_USER
    nameless = {"subject": ((("organizationName", "system:masters"),),)}
    assert run(a.authenticate(http_scope(cert=nameless))) is None


def asgi_call(app: Any, scope: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}

    async def inner(s: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(s)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run(authn.AuthnMiddleware(inner, app)(scope, receive, send))
    return sent, seen


def test_middleware_401_status_and_user_in_scope(registry: FakeRegistry, signer: TokenSigner,
                                                 verifier: TokenVerifier) -> None:
    a = authn.Authenticator(registry, verifier=verifier)
    sent, seen = asgi_call(a, http_scope())
    assert sent[0]["status"] == 401 and not seen
    body = orjson.loads(sent[1]["body"])
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    sent, seen = asgi_call(a, http_scope(sa_token(signer)))
    assert sent[0]["status"] == 200 and seen[USER_KEY].name == "system:serviceaccount:default:builder"
    ws = {"type": "websocket", "headers": [], "extensions": {"websocket.http.response": {}}}
    sent, seen = asgi_call(a, ws)
    assert sent[0] == {"type": "websocket.http.response.start", "status": 401,
                       "headers": sent[0]["headers"]} and not seen
    sent, _ = asgi_call(a, {"type": "websocket", "headers": []})
    assert sent == [{"type": "websocket.close", "code": 1008}]


# -- TokenRequest, SelfSubjectReview, TokenReview ------------------------------------------


def token_request(registry: FakeRegistry, signer: TokenSigner, spec: dict[str, Any] | None = None,
                  name: str = "builder") -> dict[str, Any]:
    issuer = authn.TokenIssuer(signer, (ISSUER,))
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec or {}}
    result: dict[str, Any] = run(authn.create_token(registry, issuer, "default", name, body))
    return result


def test_token_request_defaults(registry: FakeRegistry, signer: TokenSigner, verifier: TokenVerifier) -> None:
    t0 = time.time()
    out = token_request(registry, signer)
    assert out["kind"] == "TokenRequest" and out["spec"] == {"audiences": [ISSUER], "expirationSeconds": 3600}
    claims = verifier.verify(out["status"]["token"])
    assert claims.sa_uid == "sa-uid" and abs(claims.expires - (t0 + 3600)) < 5
    assert out["status"]["expirationTimestamp"].endswith("Z")


def test_token_request_bound_to_a_pod(registry: FakeRegistry, signer: TokenSigner, verifier: TokenVerifier) -> None:
    ref = {"kind": "Pod", "apiVersion": "v1", "name": "web-1"}
    out = token_request(registry, signer, {"boundObjectRef": ref, "audiences": ["vault"], "expirationSeconds": 600})
    c = verifier.verify(out["status"]["token"], audiences=["vault"])
    assert c.pod == BoundObject("Pod", "web-1", "pod-uid") and c.node == BoundObject("Node", "n1", "node-uid")


@pytest.mark.parametrize("spec, code, message", [
    ({"expirationSeconds": 599}, 422, "spec.expirationSeconds: Invalid value: 599: may not specify a duration less "
                                      "than 10 minutes"),
    ({"expirationSeconds": 2**32 + 1}, 422, "larger than 2^32 seconds"),
    ({"expirationSeconds": "1h"}, 400, "must be an integer"),
    ({"audiences": [""]}, 400, "audiences"),
    ({"boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "s"}}, 400,
     "cannot bind token to object of type /v1, Kind=Secret"),
    ({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "gone"}}, 404, 'pods "gone" not found'),
    ({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-1", "uid": "old"}}, 409,
     "the UID in the bound object reference (old) does not match the UID in record"),
])
def test_token_request_errors(registry: FakeRegistry, signer: TokenSigner, spec: dict[str, Any], code: int,
                              message: str) -> None:
    with pytest.raises(APIError) as e:
        token_request(registry, signer, spec)
    assert e.value.code == code and message in e.value.message


def test_token_request_needs_the_service_account_and_a_matching_pod(registry: FakeRegistry,
                                                                   signer: TokenSigner) -> None:
    with pytest.raises(APIError) as e:
        token_request(registry, signer, name="nobody")
    assert e.value.code == 404 and e.value.message == 'serviceaccounts "nobody" not found'
    registry.put("serviceaccounts", "default", "other", "other-uid")
    with pytest.raises(APIError) as e:
        token_request(registry, signer, {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-1"}},
                      name="other")
    assert e.value.code == 400 and "different serviceaccount name" in e.value.message
    with pytest.raises(APIError) as e:
        run(authn.create_token(registry, None, "default", "builder", {}))
    assert e.value.code == 503


def test_reviews(registry: FakeRegistry, signer: TokenSigner, verifier: TokenVerifier) -> None:
    user = UserInfo("kubeling-admin", ("system:masters", "system:authenticated"))
    review = authn.self_subject_review(user, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert review["status"]["userInfo"] == {"username": "kubeling-admin",
                                            "groups": ["system:masters", "system:authenticated"]}
    a = authn.Authenticator(registry, verifier=verifier)
    good = run(authn.token_review(a, {"spec": {"token": sa_token(signer)}}))
    assert good["status"]["authenticated"] is True
    assert good["status"]["user"]["username"] == "system:serviceaccount:default:builder"
    bad = run(authn.token_review(a, {"spec": {"token": "nope"}}))
    assert bad["status"]["authenticated"] is False and bad["status"]["error"]
    with pytest.raises(APIError) as e:
        run(authn.token_review(a, {"spec": {}}))
    assert e.value.code == 400
