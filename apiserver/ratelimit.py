"""Per-client rate limiting: one token bucket per client, checked before the request body is read.

    limiter = RateLimiter(qps=200, burst=400)
    app = RateLimitMiddleware(app, limiter)        # inside authentication: it reads scope[USER_KEY]

Who is a client: the authenticated user's name (scope[USER_KEY]); without a real identity
(insecure serving, anonymous) the remote address. Members of system:masters are exempt, as
upstream's "exempt" FlowSchema makes them; so are long-running requests (watches, and the
log/exec/attach/portforward streams), which hold a connection rather than the server.

Why token buckets rather than upstream APF's concurrency shares: APF divides *seats* (requests
executing at once) because a Go apiserver's scarce resource is concurrent work on many cores.
Here every request runs on one event loop for well under a millisecond, so a flooder holds few
seats at any moment while taking most of the loop's time; what must be shared is the rate. A
bucket bounds the requests per second a client gets served, and the excess is refused with a
pre-encoded 429 (a few microseconds, no routing, no body read).

Like APF's fair queuing the limit is work-conserving: a client over its rate is still served
while no other client has asked for anything within `share_window` seconds. A lone client (a
benchmark, a test run, a single-user apiserver) can use the whole server; as soon as another
client appears, each is held to its own bucket, so the other client keeps its normal latency.

Over the limit: HTTP 429 with `Retry-After` and a Status (reason TooManyRequests,
details.retryAfterSeconds), as upstream's NewTooManyRequests; kube/client and client-go wait
Retry-After and retry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import ANONYMOUS_USER, INSECURE_USER, MASTERS, USER_KEY

DEFAULT_QPS = 200.0
DEFAULT_BURST = 400
EXEMPT_GROUPS = frozenset((MASTERS,))
STREAM_SUBRESOURCES = frozenset(("exec", "attach", "portforward"))
MESSAGE = "Too many requests, please try again later."


class RateLimiter:
    """Token buckets keyed by client identity. Not thread-safe: one event loop calls it.

    qps <= 0 turns limiting off. `clock` is injectable for tests."""

    def __init__(self, qps: float = DEFAULT_QPS, burst: int = DEFAULT_BURST, *, share_window: float = 1.0,
                 max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        if qps > 0 and burst < 1:
            raise ValueError(f"the burst must be at least 1 request when qps is set (got {burst})")
        self.qps = float(qps)
        self.burst = float(burst)
        self.share_window = share_window
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # identity -> [tokens, time of the last refill]
        # the two most recent distinct clients and when each last asked: is anybody else here?
        self._recent: tuple[str, float] = ("", -math.inf)
        self._other: tuple[str, float] = ("", -math.inf)
        self.rejected = 0

    @property
    def enabled(self) -> bool:
        return self.qps > 0

    def admit(self, identity: str) -> float:
        """0.0 if the request may go on, else the seconds until this client has a token again."""
        now = self.clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._prune(now)
            bucket = self._buckets[identity] = [self.burst, now]
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.qps)
            bucket[1] = now
        self._note(identity, now)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        if now - self._other[1] > self.share_window:
            return 0.0  # nobody else wants the server: lend it (the bucket stays empty)
        self.rejected += 1
        return (1.0 - bucket[0]) / self.qps

    def _note(self, identity: str, now: float) -> None:
        if identity == self._recent[0]:
            self._recent = (identity, now)
        else:
            self._other, self._recent = self._recent, (identity, now)

    def _prune(self, now: float) -> None:
        """Forget clients whose bucket has refilled (they are idle); if all are busy, the oldest half."""
        refill = self.burst / self.qps if self.qps > 0 else 0.0
        idle = [k for k, (_, t) in self._buckets.items() if now - t >= refill]
        if len(idle) < len(self._buckets) // 10:
            idle = sorted(self._buckets, key=lambda k: self._buckets[k][1])[: len(self._buckets) // 2]
        for k in idle:
            del self._buckets[k]

    def clients(self) -> int:
        return len(self._buckets)


def client_identity(scope: Scope) -> str | None:
    """The bucket key of a request, or None when it is exempt (system:masters)."""
    user = scope.get(USER_KEY)
    if user is not None and user.name not in (INSECURE_USER.name, ANONYMOUS_USER):
        if EXEMPT_GROUPS.intersection(user.groups):
            return None
        return "user:" + user.name
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


def _query_flag(query: bytes, name: str) -> bool:
    """The flag as the app reads it: the last value of `name`, decoded, is "1" or "true"."""
    if name.encode() not in query:
        return False
    values = [v for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k == name]
    return bool(values) and values[-1].lower() in ("1", "true")


def is_long_running(scope: Scope) -> bool:
    """Watches and streams (upstream's long-running check): not counted against a bucket.

    Only what the app will really treat as long-running, so that marking a request as such does
    not slip a flood past the limit: ?watch=1 (the last value, as the app reads it), pod logs with
    follow=1, and exec/attach/portforward upgrades (websockets, SPDY)."""
    if scope.get("type") != "http":
        return True  # websocket: exec, attach, portforward
    query: bytes = scope.get("query_string", b"")
    if _query_flag(query, "watch"):
        return True
    last = scope.get("path", "").rstrip("/").rsplit("/", 1)[-1]
    if last == "log":
        return _query_flag(query, "follow")
    if last in STREAM_SUBRESOURCES:
        return any(name == b"upgrade" for name, _ in scope.get("headers", ()))
    return False


def too_many_requests_status(retry_after: int) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": MESSAGE,
            "reason": "TooManyRequests", "details": {"retryAfterSeconds": retry_after}, "code": 429}


class RateLimitMiddleware:
    """A plain ASGI middleware (no BaseHTTPMiddleware: it would cost more than the whole check).

    on_reject(identity) is called for every refused request (metrics)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, on_reject: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.limiter = limiter
        self.on_reject = on_reject
        self._responses: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # .state, .routes, ... of the wrapped app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled or is_long_running(scope):
            await self.app(scope, receive, send)
            return
        identity = client_identity(scope)
        if identity is None:
            await self.app(scope, receive, send)
            return
        wait = self.limiter.admit(identity)
        if not wait:
            await self.app(scope, receive, send)
            return
        if self.on_reject is not None:
            self.on_reject(identity)
        start, body = self._response(max(1, math.ceil(wait)))
        await send(start)
        await send(body)

    def _response(self, retry_after: int) -> tuple[dict[str, Any], dict[str, Any]]:
        cached = self._responses.get(retry_after)
        if cached is None:
            payload = orjson.dumps(too_many_requests_status(retry_after))
            cached = (
                {"type": "http.response.start", "status": 429,
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                             (b"retry-after", str(retry_after).encode())]},
                {"type": "http.response.body", "body": payload, "more_body": False},
            )
            if len(self._responses) < 64:
                self._responses[retry_after] = cached
        return cached


def rejection_counter(registry: Any) -> Callable[[str], None]:
    """on_reject for the middleware: counts refusals in upstream's APF metric on the apiserver's /metrics."""
    from prometheus_client import Counter

    counter = Counter("apiserver_flowcontrol_rejected_requests_total",
                      "Requests refused by flow control (here: a client over its per-client rate).",
                      ["flow_schema", "priority_level", "reason"], registry=registry)
    child = counter.labels("per-client", "per-client", "rate-limited")

    def on_reject(_identity: str) -> None:
        child.inc()

    return on_reject


def add_args(p: Any) -> None:
    """The request-limit flags of `kubeling apiserver/server` (ServerConfig fields of the same names)."""
    g = p.add_argument_group("request limits (per-client rate, connections, slow clients)")
    g.add_argument("--max-requests-per-client-qps", type=float, default=DEFAULT_QPS, metavar="QPS",
                   help="requests per second each client (user, or address without credentials) is served while "
                        "other clients are active; beyond, 429 with Retry-After. Watches and streams are not "
                        "counted, system:masters is exempt; 0 = no limit (default %(default)s)")
    g.add_argument("--max-requests-per-client-burst", type=int, default=DEFAULT_BURST, metavar="N",
                   help="requests a client may send at once above its rate (default %(default)s)")
    g.add_argument("--max-connections", type=int, default=4096, metavar="N",
                   help="open HTTP connections; past it the one waiting longest for its client is closed "
                        "(default %(default)s; 0 = no cap)")
    g.add_argument("--request-header-timeout", type=float, default=32.0, metavar="SECONDS",
                   help="a request's headers must arrive within this (slow clients are closed; default %(default)s)")
    g.add_argument("--request-body-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="a request's body must arrive within this after its headers (default %(default)s)")
    g.add_argument("--idle-connection-timeout", type=float, default=90.0, metavar="SECONDS",
                   help="connections without a request in progress are closed after this (default %(default)s)")


def config_from_args(args: Any) -> dict[str, Any]:
    return {"max_requests_per_client_qps": args.max_requests_per_client_qps,
            "max_requests_per_client_burst": args.max_requests_per_client_burst,
            "max_connections": args.max_connections, "request_header_timeout": args.request_header_timeout,
            "request_body_timeout": args.request_body_timeout,
            "idle_connection_timeout": args.idle_connection_timeout}
