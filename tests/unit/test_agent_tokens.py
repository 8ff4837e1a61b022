"""agent.tokens: pod-bound TokenRequests, cached until 80% of their lifetime, refreshed, kept on failure."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agent.tokens import DEFAULT_EXPIRATION, TokenError, TokenManager
from kube.client import ApiError


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeApi:
    """Answers TokenRequests as the apiserver does; `cap` plays --service-account-max-token-expiration."""

    def __init__(self, clock: Clock, cap: int = 0) -> None:
        self.clock, self.cap = clock, cap
        self.bodies: list[tuple[str, str, dict[str, Any]]] = []
        self.fail: Exception | None = None

    def __call__(self, ns: str, sa: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        self.bodies.append((ns, sa, body))
        exp = body["spec"]["expirationSeconds"]
        if self.cap:
            exp = min(exp, self.cap)
        when = dt.datetime.fromtimestamp(self.clock.now + exp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"spec": {**body["spec"], "expirationSeconds": exp},
                "status": {"token": f"tok-{len(self.bodies)}", "expirationTimestamp": when}}


def manager(cap: int = 0) -> tuple[TokenManager, FakeApi, Clock]:
    clock = Clock()
    api = FakeApi(clock, cap)
    return TokenManager(api, clock=clock), api, clock


def get(tm: TokenManager, **kw: Any) -> str:
    return tm.token("ns", "reader", pod_name="app", pod_uid="uid-1", **kw)


def test_request_is_bound_to_the_pod_with_upstreams_lifetime() -> None:
    tm, api, _ = manager()
    assert get(tm) == "tok-1"
    ns, sa, body = api.bodies[0]
    assert (ns, sa) == ("ns", "reader")
    assert body["kind"] == "TokenRequest" and body["apiVersion"] == "authentication.k8s.io/v1"
    assert DEFAULT_EXPIRATION == 3607
    assert body["spec"] == {"expirationSeconds": 3607,
                            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "app", "uid": "uid-1"}}
    assert "audiences" not in body["spec"]  # the apiserver's own audience
    get(tm, audiences=["vault"])
    assert api.bodies[1][2]["spec"]["audiences"] == ["vault"]  # another key: another token


def test_refreshed_after_80_percent_of_the_lifetime() -> None:
    tm, api, clock = manager()
    assert get(tm) == "tok-1"
    clock.now += 0.8 * 3607 - 1
    assert get(tm) == "tok-1" and tm.requests == 1  # still cached
    clock.now += 2
    assert get(tm) == "tok-2" and tm.requests == 2  # refreshed
    clock.now += 10
    assert get(tm) == "tok-2"


def test_lifetime_is_the_one_the_apiserver_granted() -> None:
    tm, api, clock = manager(cap=1000)
    assert get(tm) == "tok-1"
    clock.now += 801  # 80% of the capped 1000 s, long before 80% of the asked 3607 s
    assert get(tm) == "tok-2"


def test_failed_refresh_keeps_a_valid_token_then_fails() -> None:
    tm, api, clock = manager()
    get(tm)
    api.fail = ApiError(503, "ServiceUnavailable", "the apiserver is busy")
    clock.now += 0.9 * 3607
    assert get(tm) == "tok-1"  # refresh failed, the token is still valid
    clock.now += 0.2 * 3607  # now expired
    with pytest.raises(TokenError, match="expired and refresh failed: the apiserver is busy"):
        get(tm)
    api.fail = None
    assert get(tm) == "tok-2"


def test_first_fetch_failure_says_why_and_forget_pod() -> None:
    tm, api, _ = manager()
    api.fail = ApiError(404, "NotFound", 'serviceaccounts "reader" not found')
    with pytest.raises(TokenError) as e:
        get(tm)
    assert str(e.value) == 'failed to fetch token: serviceaccounts "reader" not found'
    api.fail = None
    get(tm)
    assert tm.cached() == 1
    tm.forget_pod("uid-1")
    assert tm.cached() == 0
    assert get(tm) == "tok-2"  # a new pod with the same uid would get a new token


def test_a_malformed_answer_is_an_error_not_a_token() -> None:
    tm = TokenManager(lambda ns, sa, body: {"status": {"token": ""}})
    with pytest.raises(TokenError, match="no status.token"):
        get(tm)
