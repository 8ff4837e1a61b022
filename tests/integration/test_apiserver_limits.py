"""Request limits and the audit log on a real apiserver process, over real sockets.

Per-client rate limits (429 + Retry-After, per source address or per user, admins exempt, watches
not counted), the 3 MiB body limit for chunked bodies, the 1 MiB header limit (431), slow clients
(headers, body, idle) closed after their timeouts, the connection cap, and the audit log (mutating
requests only, no Secret data anywhere in the audit log or the server's debug log).

Clients that must count as different clients without credentials bind their own loopback source
address (127.0.0.2, 127.0.0.3: all of 127/8 is local on lo, nothing is added).
"""

from __future__ import annotations

import base64
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from apiserver_proc import ApiServer, free_port
from polling import wait_for
from procs import stop_process

from kube import pki

JSON = {"content-type": "application/json"}


def client_from(srv: ApiServer, source: str, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=10, transport=httpx.HTTPTransport(local_address=source), **kw)


def is_429(resp: httpx.Response) -> bool:
    if resp.status_code != 429:
        return False
    st = resp.json()
    assert st["kind"] == "Status" and st["code"] == 429 and st["reason"] == "TooManyRequests"
    assert int(resp.headers["retry-after"]) == st["details"]["retryAfterSeconds"] >= 1
    return True


def test_rate_limit_per_source_address(apiserver_factory: Callable[..., ApiServer]) -> None:
    srv = apiserver_factory("--max-requests-per-client-qps", "2", "--max-requests-per-client-burst", "10")
    with client_from(srv, "127.0.0.2") as flood, client_from(srv, "127.0.0.3") as other:
        # alone on the server (once the start-up probe from 127.0.0.1 is a second old), a client is not held
        # to its rate: a benchmark, a test run
        wait_for(lambda: all(flood.get("/api/v1/namespaces").status_code == 200 for _ in range(30)), timeout=5,
                 what="30 requests in a row served to a lone client")
        refused, other_codes = 0, []
        for i in range(60):
            if i % 6 == 0:  # another client is here, at its own modest pace
                other_codes.append(other.get("/api/v1/namespaces/default").status_code)
            r = flood.get("/api/v1/namespaces/default/configmaps")
            refused += is_429(r)
            if r.status_code != 429:
                assert r.status_code == 200
        assert refused >= 40  # burst 10 + 2/s: the rest is refused
        assert other_codes == [200] * 10  # the other client has its own bucket
        # a refused write is refused before its body is read, and costs nothing
        assert is_429(flood.post("/api/v1/namespaces/default/configmaps", content=b"x" * 100_000, headers=JSON))
        # watches are not counted
        other.get("/version")
        w = flood.get("/api/v1/namespaces/default/configmaps", params={"watch": "1", "timeoutSeconds": "1"})
        assert w.status_code == 200
        metrics = other.get("/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("apiserver_flowcontrol_rejected_requests_total{"))
    assert float(line.split()[-1]) >= refused + 1


class User:
    def __init__(self, srv: ApiServer, name: str, groups: tuple[str, ...] = ()) -> None:
        import ssl

        crt, key = pki.PKIDir(srv.pki_dir).ensure_cert(pki.CertSpec("limits-" + name, name, groups, client=True))
        ctx = ssl.create_default_context(cafile=os.path.join(srv.pki_dir, "ca.crt"))
        ctx.load_cert_chain(crt, key)
        self.http = httpx.Client(base_url=srv.url, verify=ctx, timeout=10)


@pytest.fixture
def secure_srv(tmp_path: Path) -> Iterator[ApiServer]:
    srv = ApiServer(tmp_path / "secure", secure=True,
                    args=("--max-requests-per-client-qps", "2", "--max-requests-per-client-burst", "3"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_rate_limit_per_user_admins_exempt(secure_srv: ApiServer) -> None:
    bob, carol = User(secure_srv, "bob"), User(secure_srv, "carol")
    with secure_srv.http() as admin, bob.http, carol.http:
        codes = []
        for _ in range(20):
            carol.http.get("/api/v1/namespaces")  # another client is active
            codes.append(bob.http.get("/api/v1/namespaces").status_code)
        # bob has no RBAC binding: 403 while his bucket lasts, then 429 (the limit comes before authorization)
        assert codes[:3] == [403] * 3 and codes.count(429) >= 15
        assert set(codes) <= {403, 429}
        # system:masters is exempt, however fast
        assert [admin.get("/api/v1/namespaces").status_code for _ in range(50)] == [200] * 50


def raw_request(port: int, data: bytes | list[bytes], timeout: float = 10.0) -> bytes:
    """Send data (chunks one after the other) on a new connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            for chunk in data if isinstance(data, list) else [data]:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        while True:
            try:
                got = s.recv(65536)
            except ConnectionResetError:
                break
            if not got:
                break
            out += got
    return out


def status_of(response: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return int(lines[0].split()[1]), headers, orjson.loads(body)


def test_chunked_body_is_cut_at_the_limit(apiserver: ApiServer) -> None:
    head = (b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    code, headers, st = status_of(raw_request(apiserver.port, [head] + [chunk] * 60))  # 3.75 MiB, no length
    assert code == 413 == st["code"] and st["reason"] == "RequestEntityTooLarge"
    assert headers["connection"] == "close"  # the rest of the body is not read: the connection ends
    big = b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n{"
    code, _, st = status_of(raw_request(apiserver.port, big))  # refused on the length, the body never sent
    assert code == 413 == st["code"]
    # just under the limit is read and judged (a ConfigMap may hold 1 MiB: 422, not 413)
    body = orjson.dumps({"metadata": {"name": "big"}, "data": {"a": "x" * (3 * 1024 * 1024 - 200)}})
    with apiserver.http() as c:
        r = c.post("/api/v1/namespaces/default/configmaps", content=body, headers=JSON)
    assert r.status_code == 422 and "1048576" in r.text, r.text[:300]


def test_header_limit(apiserver: ApiServer) -> None:
    req = b"GET /version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1100 * 1024) + b"\r\n\r\n"
    code, headers, st = status_of(raw_request(apiserver.port, req))
    assert code == 431 == st["code"] and st["kind"] == "Status" and headers["connection"] == "close"
    # many headers add up the same way
    many = b"GET /version HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(1200))
    assert status_of(raw_request(apiserver.port, many + b"\r\n"))[0] == 431
    ok = b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * (500 * 1024) + b"\r\n\r\n"
    assert raw_request(apiserver.port, ok).startswith(b"HTTP/1.1 200")


class SlowClients:
    """n connections that send a request line and then one header byte every 0.25 s, never finishing."""

    def __init__(self, port: int, n: int) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        self.closed_at: dict[int, float] = {}
        self.started = time.monotonic()
        for s in self.socks:
            s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            s.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(0.25):
            for i, s in enumerate(self.socks):
                if i in self.closed_at:
                    continue
                try:
                    if s.recv(4096) == b"":
                        self.closed_at[i] = time.monotonic()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed_at[i] = time.monotonic()
                    continue
                try:
                    s.send(b"a")
                except OSError:
                    self.closed_at[i] = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            s.close()


def answers(srv: ApiServer, n: int) -> list[float]:
    """n requests on new connections; their latencies (all must succeed)."""
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        with httpx.Client(base_url=srv.url, timeout=5) as c:
            assert c.get("/api/v1/namespaces/default").status_code == 200
        out.append(time.monotonic() - t0)
    return out


def test_slow_header_clients_are_closed_and_do_not_block_others(apiserver_factory: Callable[..., ApiServer]) -> None:
    srv = apiserver_factory("--request-header-timeout", "1.5")
    slow = SlowClients(srv.port, 200)
    try:
        latencies = answers(srv, 20)  # while 200 connections trickle their headers
        assert max(latencies) < 1.0, latencies
        wait_for(lambda: len(slow.closed_at) == 200, timeout=10, what="all slow connections closed")
        first = min(slow.closed_at.values()) - slow.started
        assert first >= 1.2  # the deadline, not earlier: trickling bytes does not extend it
        assert max(slow.closed_at.values()) - slow.started < 6
    finally:
        slow.close()


def test_connection_cap_closes_the_longest_waiting(apiserver_factory: Callable[..., ApiServer]) -> None:
    srv = apiserver_factory("--max-connections", "50")
    slow = SlowClients(srv.port, 120)
    try:
        assert len(answers(srv, 10)) == 10  # every one answered though 120 connections wait
        wait_for(lambda: len(slow.closed_at) >= 70, timeout=10, what="slow connections beyond the cap closed")
    finally:
        slow.close()


def closed_after(port: int, data: bytes, timeout: float = 10.0) -> float:
    """Seconds until the server closes a connection that sent data and then nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.monotonic()
        s.sendall(data)
        while True:
            try:
                got = s.recv(65536)
            except ConnectionResetError:
                break
            if not got:
                break
        return time.monotonic() - t0


def test_idle_and_slow_body_timeouts(apiserver_factory: Callable[..., ApiServer]) -> None:
    srv = apiserver_factory("--idle-connection-timeout", "1", "--request-body-timeout", "1")
    assert 0.8 < closed_after(srv.port, b"") < 4  # connected, never sent a byte
    keep_alive = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
    assert 0.8 < closed_after(srv.port, keep_alive) < 4  # answered, then idle on keep-alive
    slow_body = b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    assert 0.8 < closed_after(srv.port, slow_body) < 4
    with srv.http() as c:  # the server is fine
        assert c.get("/api/v1/namespaces/default").status_code == 200


SECRET = "s3cr3t-value-that-must-not-leak"


def test_audit_log_and_no_secret_in_any_log(tmp_path: Path) -> None:
    audit = tmp_path / "audit" / "audit.log"
    log_path = tmp_path / "server.log"
    port = free_port()
    with open(log_path, "wb") as log:  # debug logging: every debug path must keep bodies out too
        proc = subprocess.Popen([sys.executable, "-m", "kubeling.cli", "--log-level", "debug", "apiserver",
                                 "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"),
                                 "--insecure-serving", "--audit-log-path", str(audit)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers={"user-agent": "limits-test/1"})

        def up() -> bool:
            try:
                return c.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=20, what="apiserver ready")
        b64 = base64.b64encode(SECRET.encode()).decode()
        assert c.post("/api/v1/namespaces/default/secrets", headers=JSON, content=orjson.dumps(
            {"metadata": {"name": "s1"}, "stringData": {"password": SECRET}})).status_code == 201
        assert c.post("/api/v1/namespaces/default/secrets", headers=JSON, content=orjson.dumps(
            {"metadata": {"name": "s2"}, "data": {"password": b64}})).status_code == 201
        # invalid ones too: the error paths must not log them either
        assert c.post("/api/v1/namespaces/default/secrets", headers=JSON, content=orjson.dumps(
            {"metadata": {"name": "S3!"}, "data": {"password": SECRET}})).status_code == 400
        assert c.get("/api/v1/namespaces/default/secrets/s1").status_code == 200
        assert c.get("/api/v1/namespaces/default/secrets").status_code == 200
        assert c.patch("/api/v1/namespaces/default/secrets/s2", headers={"content-type": "application/merge-patch+json"},
                       content=orjson.dumps({"stringData": {"other": SECRET}})).status_code == 200
        assert c.delete("/api/v1/namespaces/default/secrets/s1").status_code == 200
        assert c.delete("/api/v1/namespaces/default/secrets/nope").status_code == 404

        def events() -> list[dict[str, Any]]:
            return [orjson.loads(x) for x in audit.read_bytes().splitlines()] if audit.exists() else []

        got = wait_for(lambda: len(events()) >= 5 and events(), timeout=10, what="audit events")
        assert [(e["verb"], e["objectRef"].get("name"), e["responseStatus"]["code"]) for e in got] == [
            ("create", None, 201), ("create", None, 201), ("create", None, 400), ("patch", "s2", 200),
            ("delete", "s1", 200), ("delete", "nope", 404)][: len(got)]
        ev = got[0]
        assert ev["kind"] == "Event" and ev["apiVersion"] == "audit.k8s.io/v1" and ev["level"] == "Metadata"
        assert ev["stage"] == "ResponseComplete" and ev["requestURI"] == "/api/v1/namespaces/default/secrets"
        assert ev["user"]["username"] == "system:insecure" and ev["sourceIPs"] == ["127.0.0.1"]
        assert ev["userAgent"] == "limits-test/1"
        assert ev["objectRef"] == {"resource": "secrets", "namespace": "default", "apiVersion": "v1"}
        assert ev["requestReceivedTimestamp"] <= ev["stageTimestamp"]
        assert stat.S_IMODE(audit.stat().st_mode) == 0o600
        c.close()
    finally:
        stop_process(proc)
    wait_for(lambda: len(events()) == 6, timeout=5, what="all audit events written at shutdown")
    for path in (audit, log_path):
        text = path.read_text(errors="replace")
        assert SECRET not in text and b64 not in text, f"{path.name} carries the secret"
    assert "request method=POST path=/api/v1/namespaces/default/secrets" in log_path.read_text()  # debug is on
