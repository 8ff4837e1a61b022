"""Service-account tokens for pods: TokenRequests bound to the pod, cached, refreshed before they expire.

    tokens = TokenManager(lambda ns, sa, body: client.create("serviceaccounts", body, ns, name=sa,
                                                             subresource="token"))
    token = tokens.token("ns", "default", pod_name="web-1", pod_uid="...")   # str; TokenError when it cannot
    tokens.forget_pod(uid)                                                   # the pod is gone

As upstream's kubelet token manager (pkg/kubelet/token): one cached token per (namespace, service
account, pod uid, audiences, expirationSeconds); a cached token is used until 80% of its lifetime
has passed (or it is 24 h old), then a new one is requested. A failed refresh keeps the current token
while it is still valid (a warning), and fails only once it has expired. The lifetime is the one the
apiserver granted (spec.expirationSeconds of the answer: the apiserver may cap it), counted back from
status.expirationTimestamp. Tokens never appear in logs or error messages.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kubeling.agent.tokens")

DEFAULT_EXPIRATION = 3607  # seconds: upstream's kube-api-access volume asks for 3607
REFRESH_AT = 0.8  # fraction of the lifetime after which a token is refreshed
MAX_AGE = 24 * 3600.0  # a token older than this is refreshed whatever its lifetime

Create = Callable[[str, str, dict[str, Any]], dict[str, Any]]  # (namespace, service account, TokenRequest)
Key = tuple[str, str, str, tuple[str, ...], int]


class TokenError(Exception):
    """No usable token; the message says why (never the token)."""


@dataclass(frozen=True)
class Token:
    token: str
    expires_at: float  # epoch seconds
    lifetime: float  # seconds the apiserver granted

    @property
    def issued_at(self) -> float:
        return self.expires_at - self.lifetime

    def refresh_due(self) -> float:
        """When this token should be replaced (epoch seconds)."""
        return self.issued_at + min(REFRESH_AT * self.lifetime, MAX_AGE)


def token_request(pod_name: str, pod_uid: str, audiences: Sequence[str], expiration_seconds: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"expirationSeconds": expiration_seconds,
                            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod_name, "uid": pod_uid}}
    if audiences:
        spec["audiences"] = list(audiences)
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {}, "spec": spec}


def parse_answer(answer: dict[str, Any], asked_seconds: int) -> Token:
    status, spec = answer.get("status") or {}, answer.get("spec") or {}
    token = status.get("token")
    if not isinstance(token, str) or not token:
        raise TokenError("the TokenRequest answer has no status.token")
    try:
        exp = dt.datetime.fromisoformat(str(status.get("expirationTimestamp")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise TokenError("the TokenRequest answer has no valid status.expirationTimestamp") from None
    granted = spec.get("expirationSeconds")
    lifetime = float(granted) if isinstance(granted, int) and not isinstance(granted, bool) and granted > 0 \
        else float(asked_seconds)
    return Token(token, exp, lifetime)


class TokenManager:
    def __init__(self, create: Create, clock: Callable[[], float] = time.time) -> None:
        self._create = create
        self.clock = clock
        self._cache: dict[Key, Token] = {}
        self._lock = threading.Lock()
        self.requests = 0  # TokenRequests sent (tests and metrics)

    def token(self, namespace: str, service_account: str, *, pod_name: str, pod_uid: str,
              audiences: Sequence[str] = (), expiration_seconds: int = DEFAULT_EXPIRATION) -> str:
        key: Key = (namespace, service_account, pod_uid, tuple(audiences), int(expiration_seconds))
        now = self.clock()
        with self._lock:
            cur = self._cache.get(key)
        if cur is not None and now < cur.refresh_due():
            return cur.token
        try:
            self.requests += 1
            answer = self._create(namespace, service_account,
                                  token_request(pod_name, pod_uid, audiences, int(expiration_seconds)))
            fresh = parse_answer(answer, int(expiration_seconds))
        except Exception as e:  # noqa: BLE001 - the API said no, or could not be reached
            why = _why(e)
            if cur is None:
                raise TokenError(f"failed to fetch token: {why}") from None
            if now >= cur.expires_at:
                raise TokenError(f"token of service account {namespace}/{service_account} for pod {pod_name} "
                                 f"expired and refresh failed: {why}") from None
            log.warning("token refresh failed, keeping the current token sa=%s/%s pod=%s error=%s", namespace,
                        service_account, pod_name, why)
            return cur.token
        with self._lock:
            self._cache[key] = fresh
        log.debug("token issued sa=%s/%s pod=%s lifetime=%ds", namespace, service_account, pod_name,
                  int(fresh.lifetime))
        return fresh.token

    def forget_pod(self, pod_uid: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[2] == pod_uid]:
                del self._cache[key]

    def cached(self) -> int:
        with self._lock:
            return len(self._cache)


def _why(e: BaseException) -> str:
    message = getattr(e, "message", None)
    return str(message) if message else (str(e) or type(e).__name__)
