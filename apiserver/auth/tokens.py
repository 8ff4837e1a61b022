"""Service-account tokens: JWTs signed by the apiserver, in upstream's bound-token shape.

    signer = TokenSigner(load_signing_key("sa.key"), issuer="https://kubernetes.default.svc.cluster.local")
    token, exp = signer.sign(claims_for(sa, pod=None, audiences=["https://..."], expiration_seconds=3600))
    verifier = TokenVerifier([public key ...], issuers=[issuer], audiences=[...])
    claims = verifier.verify(token)            # TokenError when forged, expired, not for us, ...

Claims, as upstream's bound tokens (pkg/serviceaccount/claims.go):

    {"iss": ISSUER, "sub": "system:serviceaccount:NS:NAME", "aud": [...], "exp": T, "iat": T, "nbf": T,
     "jti": UUID, "kubernetes.io": {"namespace": NS, "serviceaccount": {"name": NAME, "uid": UID},
                                    "pod": {"name": P, "uid": U}, "node": {...}}}   # pod/node when bound

The header is {"alg": "ES256"|"RS256", "kid": KEY_ID}; the key id is the unpadded base64url SHA-256 of
the public key's DER (PKIX), as upstream computes it. Checking that the service account (and the bound
pod) still exist is the authenticator's job (authn.py): this module is pure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
LEEWAY = 60  # seconds of clock skew accepted on exp/nbf/iat, as upstream's JWT validation
MIN_EXPIRATION = 600
MAX_EXPIRATION = 1 << 32
DEFAULT_EXPIRATION = 3600
MAX_TOKEN_BYTES = 64 * 1024  # far above any real token; bigger input is refused before parsing

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class TokenError(Exception):
    """Not a valid token of ours; the message is for logs, never for the client."""


class KeyFileError(Exception):
    """A key file that cannot be used; printed as one line at start-up."""


# -- keys ---------------------------------------------------------------------------------


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks, rest = [], data
    while b"-----BEGIN " in rest:
        start = rest.index(b"-----BEGIN ")
        end_marker = rest.find(b"-----END ", start)
        if end_marker < 0:
            break
        end = rest.find(b"-----", end_marker + 9)
        if end < 0:
            break
        blocks.append(rest[start:end + 5])
        rest = rest[end + 5:]
    return blocks


def load_public_keys(path: str) -> list[PublicKey]:
    """Every public key in a PEM file: PUBLIC KEY blocks, certificates, or private keys (their public half),
    as upstream's --service-account-key-file accepts."""
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KeyFileError(f"cannot read the service-account key file {path}: {e.strerror}") from None
    keys: list[PublicKey] = []
    for block in _pem_blocks(data):
        key: Any = None
        try:
            if b"CERTIFICATE" in block[:40]:
                key = x509.load_pem_x509_certificate(block).public_key()
            elif b"PRIVATE KEY" in block[:40]:
                key = serialization.load_pem_private_key(block, password=None).public_key()
            elif b"PUBLIC KEY" in block[:40]:
                key = serialization.load_pem_public_key(block)
        except (ValueError, TypeError):
            raise KeyFileError(f"{path} holds a PEM block that is not a readable key") from None
        if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            keys.append(key)
    if not keys:
        raise KeyFileError(f"{path} holds no ECDSA or RSA public key (PEM)")
    return keys


def load_signing_key(path: str) -> PrivateKey:
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise KeyFileError(f"cannot read the service-account signing key {path}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError(f"{path}: ECDSA signing keys must be P-256 (ES256), not {key.curve.name}")
        return key
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    raise KeyFileError(f"{path}: service-account signing keys must be ECDSA P-256 or RSA")


def key_id(key: PublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _b64(hashlib.sha256(der).digest())


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    return "RS256" if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) else "ES256"


# -- encoding -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or any(c in text for c in "=+/ \n"):
        raise TokenError("malformed base64url segment")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed base64url segment") from None


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: R || S, 32 bytes each


def _verify(key: PublicKey, alg: str, data: bytes, sig: bytes) -> bool:
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
            return True
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            if len(sig) != 64:
                return False
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            key.verify(der, data, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


# -- claims -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundObject:
    kind: str  # "Pod"
    name: str
    uid: str


def claims_for(namespace: str, sa_name: str, sa_uid: str, *, audiences: Sequence[str], expiration_seconds: int,
               pod: BoundObject | None = None, node: BoundObject | None = None,
               now: float | None = None) -> dict[str, Any]:
    """The private and public claims of a bound token (iss is added by the signer)."""
    t = int(now if now is not None else time.time())
    k8s: dict[str, Any] = {"namespace": namespace, "serviceaccount": {"name": sa_name, "uid": sa_uid}}
    if pod is not None:
        k8s["pod"] = {"name": pod.name, "uid": pod.uid}
    if node is not None:
        k8s["node"] = {"name": node.name, "uid": node.uid} if node.uid else {"name": node.name}
    return {
        "aud": list(audiences), "exp": t + int(expiration_seconds), "iat": t, "nbf": t, "jti": str(uuid.uuid4()),
        "kubernetes.io": k8s, "sub": f"system:serviceaccount:{namespace}:{sa_name}",
    }


class TokenSigner:
    def __init__(self, key: PrivateKey, issuer: str = DEFAULT_ISSUER) -> None:
        self.key = key
        self.issuer = issuer
        self.alg = algorithm_for(key)
        self.kid = key_id(key.public_key())

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": self.alg, "kid": self.kid}
        payload = {"iss": self.issuer, **claims}
        signing_input = _b64(orjson.dumps(header)) + "." + _b64(orjson.dumps(payload))
        return signing_input + "." + _b64(_sign(self.key, signing_input.encode("ascii")))


@dataclass(frozen=True)
class VerifiedClaims:
    namespace: str
    sa_name: str
    sa_uid: str
    audiences: tuple[str, ...]  # the token's audiences that this server accepts
    jti: str
    pod: BoundObject | None
    node: BoundObject | None
    expires: int
    raw: dict[str, Any]


class TokenVerifier:
    def __init__(self, keys: Iterable[PublicKey], issuers: Sequence[str], audiences: Sequence[str]) -> None:
        self.keys = {key_id(k): k for k in keys}
        self.issuers = tuple(issuers)
        self.audiences = tuple(audiences)

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        return token.count(".") == 2 and token.startswith("eyJ")

    def verify(self, token: str, audiences: Sequence[str] | None = None, now: float | None = None) -> VerifiedClaims:
        """The claims of a token signed by one of our keys, issued by one of our issuers, for one of our
        audiences (or of `audiences`), and valid now; TokenError otherwise."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("token too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a JWS compact serialization")
        try:
            header = orjson.loads(_unb64(parts[0]))
            claims = orjson.loads(_unb64(parts[1]))
        except orjson.JSONDecodeError:
            raise TokenError("header or claims are not JSON") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenError("header and claims must be JSON objects")
        alg = header.get("alg")
        if alg not in ("ES256", "RS256"):
            raise TokenError(f"unsupported alg {alg!r}")
        kid = header.get("kid")
        candidates = [self.keys[kid]] if isinstance(kid, str) and kid in self.keys else list(self.keys.values())
        signing_input, sig = (parts[0] + "." + parts[1]).encode("ascii"), _unb64(parts[2])
        if not any(_verify(k, str(alg), signing_input, sig) for k in candidates):
            raise TokenError("signature does not verify with any service-account key")
        return self._check_claims(claims, audiences, now)

    def _check_claims(self, c: dict[str, Any], audiences: Sequence[str] | None, now: float | None) -> VerifiedClaims:
        t = time.time() if now is None else now
        if c.get("iss") not in self.issuers:
            raise TokenError(f"issuer {c.get('iss')!r} is not ours")
        for claim in ("exp", "iat", "nbf"):
            if claim in c and not (isinstance(c[claim], int | float) and not isinstance(c[claim], bool)):
                raise TokenError(f"{claim} must be a number")
        if "exp" not in c:
            raise TokenError("no exp: only bound (expiring) tokens are accepted")
        if t > c["exp"] + LEEWAY:
            raise TokenError("token has expired")
        if "nbf" in c and t < c["nbf"] - LEEWAY:
            raise TokenError("token is not valid yet")
        if "iat" in c and t < c["iat"] - LEEWAY:
            raise TokenError("token was issued in the future")
        aud = c.get("aud")
        token_auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        wanted = self.audiences if audiences is None else tuple(audiences)
        matched = tuple(a for a in token_auds if isinstance(a, str) and a in wanted)
        if not matched:
            raise TokenError(f"audiences {token_auds!r} are not ours")
        k8s = c.get("kubernetes.io")
        if not isinstance(k8s, dict):
            raise TokenError("no kubernetes.io claim")
        ns, sa = k8s.get("namespace"), k8s.get("serviceaccount")
        if not isinstance(ns, str) or not ns or not isinstance(sa, dict):
            raise TokenError("kubernetes.io claim has no namespace/serviceaccount")
        name, uid = sa.get("name"), sa.get("uid")
        if not isinstance(name, str) or not name or not isinstance(uid, str) or not uid:
            raise TokenError("kubernetes.io.serviceaccount has no name/uid")
        if c.get("sub") != f"system:serviceaccount:{ns}:{name}":
            raise TokenError("sub does not match the service account")
        return VerifiedClaims(ns, name, uid, matched, str(c.get("jti") or ""), _bound(k8s, "pod", "Pod"),
                              _bound(k8s, "node", "Node"), int(c["exp"]), c)


def _bound(k8s: dict[str, Any], key: str, kind: str) -> BoundObject | None:
    ref = k8s.get(key)
    if ref is None:
        return None
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not isinstance(ref.get("uid", ""), str):
        raise TokenError(f"kubernetes.io.{key} is malformed")
    return BoundObject(kind, str(ref["name"]), str(ref.get("uid") or ""))
