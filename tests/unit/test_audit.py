"""apiserver/audit.py: request info, the Event shape, the writer (rotation, retention, 0600), the middleware."""

from __future__ import annotations

import asyncio
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from apiserver.audit import AuditFileWriter, AuditMiddleware, RequestInfo, make_event, request_info
from apiserver.auth import USER_KEY, UserInfo


def test_request_info() -> None:
    assert request_info("POST", "/api/v1/namespaces/dev/secrets") == RequestInfo("create", "", "v1", "secrets", "dev")
    assert request_info("PUT", "/api/v1/namespaces/dev/pods/web/status") == \
        RequestInfo("update", "", "v1", "pods", "dev", "web", "status")
    assert request_info("PATCH", "/apis/apps/v1/namespaces/d/deployments/x/scale") == \
        RequestInfo("patch", "apps", "v1", "deployments", "d", "x", "scale")
    assert request_info("DELETE", "/api/v1/namespaces/d/configmaps") == \
        RequestInfo("deletecollection", "", "v1", "configmaps", "d")
    assert request_info("DELETE", "/api/v1/nodes/n1") == RequestInfo("delete", "", "v1", "nodes", "", "n1")
    # namespaces themselves, and their status/finalize subresources
    assert request_info("DELETE", "/api/v1/namespaces/dev") == \
        RequestInfo("delete", "", "v1", "namespaces", "dev", "dev")
    assert request_info("PUT", "/api/v1/namespaces/dev/finalize") == \
        RequestInfo("update", "", "v1", "namespaces", "dev", "dev", "finalize")
    assert request_info("GET", "/api/v1/namespaces/dev/pods", b"watch=1").verb == "watch"  # type: ignore[union-attr]
    assert request_info("GET", "/api/v1/pods").verb == "list"  # type: ignore[union-attr]
    ex = request_info("GET", "/api/v1/namespaces/d/pods/p/exec", b"command=sh")
    assert ex == RequestInfo("create", "", "v1", "pods", "d", "p", "exec") and ex.audited
    for path in ("/healthz", "/version", "/api", "/api/v1", "/apis/apps", "/apis/apps/v1", "/openapi/v3"):
        assert request_info("GET", path) is None
    audited = {v: request_info(m, p).audited for v, m, p in (  # type: ignore[union-attr]
        ("get", "GET", "/api/v1/namespaces/d/pods/p"), ("list", "GET", "/api/v1/pods"),
        ("create", "POST", "/api/v1/namespaces/d/pods"), ("delete", "DELETE", "/api/v1/namespaces/d/pods/p"))}
    assert audited == {"get": False, "list": False, "create": True, "delete": True}


def test_event_shape() -> None:
    scope = {"type": "http", "method": "POST", "path": "/api/v1/namespaces/dev/secrets", "raw_path":
             b"/api/v1/namespaces/dev/secrets", "query_string": b"fieldManager=kubectl", "client": ("10.1.2.3", 5000),
             "headers": [(b"user-agent", b"kubectl/v1.32.0")],
             USER_KEY: UserInfo("bob", ("devs", "system:authenticated"), uid="u-1")}
    info = request_info("POST", scope["path"])
    assert info is not None
    t0 = datetime(2026, 12, 1, 10, 0, 0, 123456, UTC).timestamp()
    ev = make_event("id-1", "ResponseComplete", info, scope, 201, t0, t0 + 0.002)
    assert ev == {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": "id-1",
        "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/dev/secrets?fieldManager=kubectl",
        "verb": "create", "user": {"username": "bob", "uid": "u-1", "groups": ["devs", "system:authenticated"]},
        "sourceIPs": ["10.1.2.3"], "userAgent": "kubectl/v1.32.0",
        "objectRef": {"resource": "secrets", "namespace": "dev", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 201},
        "requestReceivedTimestamp": "2026-12-01T10:00:00.123456Z", "stageTimestamp": "2026-12-01T10:00:00.125456Z",
    }


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_writer_appends_json_lines_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    w = AuditFileWriter(str(path))
    try:
        for i in range(3):
            w.submit({"auditID": str(i)})
        w.flush()
        assert [e["auditID"] for e in lines(path)] == ["0", "1", "2"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        w.close()
    # an existing file is appended to, and made 0600
    path.chmod(0o644)
    w = AuditFileWriter(str(path))
    w.submit({"auditID": "3"})
    w.close()
    assert len(lines(path)) == 4 and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unusable_path_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError):
        AuditFileWriter(str(tmp_path / "f" / "audit.log"))
    with pytest.raises(ValueError, match="maxage"):
        AuditFileWriter(str(tmp_path / "a.log"), max_age_days=-1)


def test_rotation_by_size_keeps_maxbackup_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    clock = [datetime(2026, 12, 1, tzinfo=UTC).timestamp()]
    w = AuditFileWriter(str(path), max_backups=2, max_size_mb=1, clock=lambda: clock[0])
    pad = "x" * 1000
    try:
        for i in range(4500):  # ~4.6 MB: four rotations
            w.submit({"auditID": str(i), "pad": pad})
            if i % 1000 == 999:
                w.flush()
                clock[0] += 60
        w.flush()
    finally:
        w.close()
    backups = sorted(p.name for p in tmp_path.iterdir() if p.name != "audit.log")
    assert len(backups) == 2  # the older ones were deleted
    assert all(b.startswith("audit-2026-12-01T") and b.endswith(".log") for b in backups)
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 1024 * 1024
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    # no event lost or duplicated across the files kept: the newest ones, in order
    kept = [e["auditID"] for b in backups for e in lines(tmp_path / b)] + [e["auditID"] for e in lines(path)]
    assert kept == [str(i) for i in range(4500 - len(kept), 4500)]


def test_rotation_deletes_backups_older_than_maxage(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    old = tmp_path / "audit-2026-10-01T00-00-00.000.log"  # 61 days before the clock below
    recent = tmp_path / "audit-2026-11-25T00-00-00.000.log"
    other = tmp_path / "unrelated-2026-10-01T00-00-00.000.log"
    for p in (old, recent, other):
        p.write_text("{}\n")
    now = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    w = AuditFileWriter(str(path), max_age_days=30, max_size_mb=1, clock=lambda: now)
    try:
        for i in range(1100):
            w.submit({"auditID": str(i), "pad": "y" * 1000})
        w.flush()
    finally:
        w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert old.name not in names
    assert recent.name in names and other.name in names and "audit-2026-12-01T00-00-00.000.log" in names


class App:
    """Answers like the apiserver: a Status or an object."""

    def __init__(self, code: int = 201) -> None:
        self.code = code

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[USER_KEY] = UserInfo("bob", ("system:authenticated",))  # as authentication does, in place
        await send({"type": "http.response.start", "status": self.code, "headers": []})
        await send({"type": "http.response.body", "body": b'{"data":{"password":"c2VjcmV0"}}'})


class Collect:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def submit(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)


def call(mw: AuditMiddleware, method: str, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"data":{"password":"c2VjcmV0"}}', "more_body": False}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    s = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": [], "client": ("1.2.3.4", 1)}
    asyncio.run(mw(s, receive, send))
    return sent


def test_middleware_audits_mutating_requests_only_without_bodies() -> None:
    out = Collect()
    mw = AuditMiddleware(App(), out)  # type: ignore[arg-type]
    sent = call(mw, "POST", "/api/v1/namespaces/d/secrets")
    call(mw, "GET", "/api/v1/namespaces/d/secrets/s")
    call(mw, "GET", "/api/v1/secrets")
    call(mw, "GET", "/healthz")
    call(mw, "DELETE", "/api/v1/namespaces/d/secrets/s")
    assert [e["verb"] for e in out.events] == ["create", "delete"]
    ev = out.events[0]
    assert ev["user"] == {"username": "bob", "groups": ["system:authenticated"]}  # set by the app, read at the end
    assert ev["responseStatus"]["code"] == 201 and ev["stage"] == "ResponseComplete"
    assert dict(sent[0]["headers"])[b"audit-id"].decode() == ev["auditID"]
    blob = orjson.dumps(out.events)
    assert b"c2VjcmV0" not in blob and b"password" not in blob


def test_middleware_records_failures() -> None:
    out = Collect()

    async def crash(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        call(AuditMiddleware(crash, out), "PUT", "/api/v1/namespaces/d/pods/p")  # type: ignore[arg-type]
    call(AuditMiddleware(App(code=403), out), "PATCH", "/api/v1/nodes/n1")  # type: ignore[arg-type]
    assert [(e["verb"], e["responseStatus"]["code"]) for e in out.events] == [("update", 500), ("patch", 403)]
    assert out.events[0]["user"] == {}  # never authenticated


def test_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    w = AuditFileWriter("-")
    w.submit({"auditID": "x"})
    w.close()
    assert orjson.loads(capfd.readouterr().out) == {"auditID": "x"}
    assert not os.path.exists("-")
