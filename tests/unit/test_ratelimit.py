"""apiserver/ratelimit.py: token buckets per client (fake clock) and the ASGI middleware."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from apiserver.auth import ANONYMOUS, INSECURE_USER, USER_KEY, UserInfo
from apiserver.ratelimit import RateLimiter, RateLimitMiddleware, client_identity, is_long_running


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def limiter(qps: float = 10, burst: int = 5, **kw: Any) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(qps, burst, clock=clock, **kw), clock


def test_burst_then_rate_while_another_client_is_active() -> None:
    rl, clock = limiter(qps=10, burst=5)
    rl.admit("other")
    admitted = [rl.admit("flood") == 0.0 for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3  # the burst, then nothing: no time has passed
    wait = rl.admit("flood")
    assert wait == pytest.approx(0.1)  # one token comes every 1/qps seconds
    clock.t += 0.1
    assert rl.admit("flood") == 0.0
    assert rl.admit("flood") > 0
    clock.t += 0.35  # 3.5 tokens
    assert [rl.admit("flood") == 0.0 for _ in range(4)] == [True, True, True, False]
    assert rl.rejected == 6


def test_buckets_are_per_client() -> None:
    rl, clock = limiter(qps=1, burst=2)
    rl.admit("c")  # somebody else is here: no lending
    assert rl.admit("a") == 0.0 and rl.admit("a") == 0.0
    assert rl.admit("a") > 0
    assert rl.admit("b") == 0.0 and rl.admit("b") == 0.0  # b's own burst is untouched by a's flood
    assert rl.admit("b") > 0


def test_a_lone_client_borrows_the_idle_server() -> None:
    rl, clock = limiter(qps=10, burst=5, share_window=1.0)
    assert all(rl.admit("bench") == 0.0 for _ in range(100))  # nobody else: no limit
    assert rl.rejected == 0
    assert rl.admit("light") == 0.0  # another client arrives ...
    assert rl.admit("bench") > 0  # ... and the bench is held to its (empty) bucket at once
    clock.t += 1.5  # the other client has gone quiet for longer than the share window
    assert all(rl.admit("bench") == 0.0 for _ in range(100))


def test_limit_off() -> None:
    rl, _ = limiter(qps=0, burst=0)
    assert not rl.enabled
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(5, 0)


def test_idle_clients_are_forgotten() -> None:
    rl, clock = limiter(qps=10, burst=5, max_clients=100)
    for i in range(100):
        rl.admit(f"c{i}")
    clock.t += 1.0  # every bucket has refilled
    rl.admit("new")
    assert rl.clients() == 1
    for i in range(200):  # all busy: the table still stays bounded
        rl.admit(f"d{i}")
    assert rl.clients() <= 100


def scope(user: UserInfo | None = None, path: str = "/api/v1/pods", query: bytes = b"", method: str = "GET",
          headers: list[tuple[bytes, bytes]] | None = None, kind: str = "http") -> dict[str, Any]:
    s: dict[str, Any] = {"type": kind, "method": method, "path": path, "query_string": query,
                         "headers": headers or [], "client": ("10.0.0.7", 40000)}
    if user is not None:
        s[USER_KEY] = user
    return s


def test_identity() -> None:
    assert client_identity(scope(UserInfo("bob", ("devs", "system:authenticated")))) == "user:bob"
    assert client_identity(scope(UserInfo("system:node:n1", ("system:nodes",)))) == "user:system:node:n1"
    assert client_identity(scope(UserInfo("kubeling-admin", ("system:masters",)))) is None  # exempt
    # no real identity: the remote address
    assert client_identity(scope(INSECURE_USER)) == "addr:10.0.0.7"
    assert client_identity(scope(ANONYMOUS)) == "addr:10.0.0.7"
    assert client_identity(scope()) == "addr:10.0.0.7"


def test_long_running() -> None:
    assert is_long_running(scope(query=b"watch=1"))
    assert is_long_running(scope(query=b"labelSelector=a&watch=true"))
    assert not is_long_running(scope(query=b"watch=true&watch=false"))  # the app reads the last value
    assert not is_long_running(scope(query=b"watch=0"))
    assert not is_long_running(scope(query=b"watchdog=1"))
    assert is_long_running(scope(path="/api/v1/namespaces/d/pods/p/log", query=b"follow=true"))
    assert not is_long_running(scope(path="/api/v1/namespaces/d/pods/p/log"))
    assert is_long_running(scope(path="/api/v1/namespaces/d/pods/p/exec", headers=[(b"upgrade", b"SPDY/3.1")]))
    assert not is_long_running(scope(path="/api/v1/namespaces/d/pods/p/exec", method="POST"))
    assert is_long_running(scope(path="/api/v1/namespaces/d/pods/p/exec", kind="websocket"))
    assert not is_long_running(scope(path="/api/v1/namespaces/d/pods"))


class App:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def run(mw: RateLimitMiddleware, s: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body must not be read for a refused request")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(mw(s, receive, send))
    return sent


def test_middleware_refuses_with_a_status_and_retry_after() -> None:
    rl, clock = limiter(qps=0.5, burst=1)
    rejected: list[str] = []
    app = App()
    mw = RateLimitMiddleware(app, rl, on_reject=rejected.append)
    bob = UserInfo("bob", ("system:authenticated",))
    rl.admit("user:someone-else")
    assert run(mw, scope(bob))[0]["status"] == 200
    start, body = run(mw, scope(bob, method="POST"))
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"2"  # 1 token at 0.5/s
    status = orjson.loads(body["body"])
    assert status == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": "Too many requests, please try again later.", "reason": "TooManyRequests",
                      "details": {"retryAfterSeconds": 2}, "code": 429}
    assert int(headers[b"content-length"]) == len(body["body"])
    assert app.calls == 1 and rejected == ["user:bob"]
    # watches, exempt users and other clients are not held back
    assert run(mw, scope(bob, query=b"watch=1"))[0]["status"] == 200
    assert run(mw, scope(UserInfo("admin", ("system:masters",))))[0]["status"] == 200
    assert run(mw, scope(UserInfo("alice")))[0]["status"] == 200
    clock.t += 2
    assert run(mw, scope(bob))[0]["status"] == 200


def test_error_guard_answers_a_status_and_keeps_messages_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    from apiserver.errors import ErrorGuard

    async def crash_before(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("secret-in-the-message")

    async def crash_after(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        raise ValueError("secret-in-the-message")  # as Starlette re-raises after its 500 handler

    start, body = run(ErrorGuard(crash_before), scope())  # type: ignore[arg-type]
    assert start["status"] == 500
    assert orjson.loads(body["body"])["code"] == 500 and orjson.loads(body["body"])["reason"] == "InternalError"
    assert len(run(ErrorGuard(crash_after), scope())) == 2  # type: ignore[arg-type]  # swallowed, nothing more sent
    assert "ValueError" in caplog.text and "secret-in-the-message" not in caplog.text
