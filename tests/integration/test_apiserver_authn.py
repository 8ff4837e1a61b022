"""A secure `kubeling server` (the default: HTTPS, a PKI in DATA_DIR/pki, no anonymous access):
who gets in with what credential, TLS settings, TokenRequest, and kubectl over TLS."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from apiserver_proc import ApiServer
from polling import wait_for

from apiserver.auth.tokens import TokenSigner, claims_for, load_signing_key
from kube import pki

ISSUER = "https://kubernetes.default.svc.cluster.local"
UNAUTHORIZED = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized",
                "reason": "Unauthorized", "code": 401}


@pytest.fixture(scope="module")
def srv() -> Iterator[ApiServer]:
    with tempfile.TemporaryDirectory(prefix="kubeling-authn-") as d:
        s = ApiServer(d, command="server", secure=True)
        s.start()
        try:
            yield s
        finally:
            s.stop()


def ca_context(srv: ApiServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.path.join(srv.pki_dir, "ca.crt"))


def anonymous(srv: ApiServer) -> httpx.Client:
    return httpx.Client(base_url=srv.url, verify=ca_context(srv), timeout=10)


def bearer(srv: ApiServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, verify=ca_context(srv), timeout=10,
                        headers={"Authorization": f"Bearer {token}"})


def new_namespace(srv: ApiServer) -> str:
    ns = f"authn-{uuid.uuid4().hex[:8]}"
    with srv.http() as c:
        assert c.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
    return ns


def request_token(srv: ApiServer, ns: str, sa: str, **spec: object) -> str:
    with srv.http() as c:
        r = c.post(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                   json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    assert r.status_code == 201, r.text
    return str(r.json()["status"]["token"])


def whoami(client: httpx.Client) -> httpx.Response:
    return client.post("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                       json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json() == UNAUTHORIZED


def test_pki_and_kubeconfig_are_made_at_first_start(srv: ApiServer) -> None:
    for name in ("ca.key", "apiserver.key", "sa.key", "admin.key"):
        assert os.stat(os.path.join(srv.pki_dir, name)).st_mode & 0o077 == 0, name
    text = Path(srv.kubeconfig).read_text()
    assert f"server: https://127.0.0.1:{srv.port}" in text and "client-certificate-data" in text
    assert os.stat(srv.kubeconfig).st_mode & 0o077 == 0


def test_anonymous_is_refused_everywhere(srv: ApiServer) -> None:
    with anonymous(srv) as c:
        for path in ("/api/v1/pods", "/healthz", "/version", "/api", "/metrics"):
            assert_unauthorized(c.get(path))
        assert_unauthorized(c.post("/api/v1/namespaces", json={"metadata": {"name": "x"}}))


def test_admin_certificate_gets_in(srv: ApiServer) -> None:
    with srv.http() as c:
        assert c.get("/api/v1/pods").status_code == 200
        assert c.get("/healthz").text == "ok"
        me = whoami(c).json()["status"]["userInfo"]
    assert me["username"] == "kubeling-admin"
    assert set(me["groups"]) == {"system:masters", "system:authenticated"}


def test_certificate_of_another_ca_is_refused(srv: ApiServer, tmp_path: Path) -> None:
    key, ca = pki.create_ca("not-the-cluster-ca")
    k, cert = pki.issue(key, ca, pki.CertSpec("x", "kubeling-admin", ("system:masters",), client=True))
    (tmp_path / "x.crt").write_bytes(pki.cert_pem(cert))
    (tmp_path / "x.key").write_bytes(pki.key_pem(k))
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ca_context(srv)
        ctx.maximum_version = version
        ctx.load_cert_chain(str(tmp_path / "x.crt"), str(tmp_path / "x.key"))
        # Python's ssl verifies a presented client certificate in the handshake, so the connection is
        # refused there (upstream's Go server answers 401 instead): either way, no API access.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{srv.url}/api/v1/pods", verify=ctx, timeout=10)


def test_service_account_token_and_its_controller(srv: ApiServer) -> None:
    ns = new_namespace(srv)
    with srv.http() as c:
        wait_for(lambda: c.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default").status_code == 200,
                 timeout=15, what="the default ServiceAccount made by the controller")
    token = request_token(srv, ns, "default")
    with bearer(srv, token) as c:
        me = whoami(c).json()["status"]["userInfo"]
        assert me["username"] == f"system:serviceaccount:{ns}:default"
        assert set(me["groups"]) == {"system:serviceaccounts", f"system:serviceaccounts:{ns}",
                                     "system:authenticated"}
        assert c.get(f"/api/v1/namespaces/{ns}/pods").status_code != 401  # authenticated (RBAC decides the rest)


def test_expired_forged_and_wrong_audience_tokens_get_401(srv: ApiServer) -> None:
    ns = new_namespace(srv)
    with srv.http() as c:
        sa = c.post(f"/api/v1/namespaces/{ns}/serviceaccounts", json={"metadata": {"name": "robot"}}).json()
    signer = TokenSigner(load_signing_key(os.path.join(srv.pki_dir, "sa.key")), ISSUER)
    uid = sa["metadata"]["uid"]
    fresh = signer.sign(claims_for(ns, "robot", uid, audiences=[ISSUER], expiration_seconds=600))
    expired = signer.sign(claims_for(ns, "robot", uid, audiences=[ISSUER], expiration_seconds=600,
                                     now=time.time() - 7200))
    other_key = TokenSigner(pki.generate_key(), ISSUER)
    foreign = other_key.sign(claims_for(ns, "robot", uid, audiences=[ISSUER], expiration_seconds=600))
    head, body, sig = fresh.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["kubernetes.io"]["namespace"] = "kube-system"
    claims["sub"] = "system:serviceaccount:kube-system:robot"
    tampered = f"{head}.{base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b'=').decode()}.{sig}"
    wrong_audience = request_token(srv, ns, "robot", audiences=["https://vault.example"])
    with bearer(srv, fresh) as c:
        assert whoami(c).status_code == 201  # the control: a good token of the same shape gets in
    for token in (expired, foreign, tampered, wrong_audience, "garbage", fresh[:-4]):
        with bearer(srv, token) as c:
            assert_unauthorized(c.get("/api/v1/namespaces/default/pods"))


def test_token_of_a_deleted_service_account_gets_401(srv: ApiServer) -> None:
    ns = new_namespace(srv)
    with srv.http() as c:
        assert c.post(f"/api/v1/namespaces/{ns}/serviceaccounts", json={"metadata": {"name": "temp"}}).status_code \
            == 201
        token = request_token(srv, ns, "temp")
        with bearer(srv, token) as b:
            assert whoami(b).status_code == 201
        assert c.delete(f"/api/v1/namespaces/{ns}/serviceaccounts/temp").status_code == 200
        # recreated under the same name: a new uid, the old token stays dead
        assert c.post(f"/api/v1/namespaces/{ns}/serviceaccounts", json={"metadata": {"name": "temp"}}).status_code \
            == 201
    with bearer(srv, token) as b:
        assert_unauthorized(whoami(b))


def test_token_request_validation(srv: ApiServer) -> None:
    with srv.http() as c:
        r = c.post("/api/v1/namespaces/default/serviceaccounts/default/token",
                   json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"expirationSeconds": 60}})
        assert r.status_code == 422 and r.json()["code"] == 422
        assert "may not specify a duration less than 10 minutes" in r.json()["message"]
        r = c.post("/api/v1/namespaces/default/serviceaccounts/nobody/token", json={"spec": {}})
        assert r.status_code == 404 and r.json()["message"] == 'serviceaccounts "nobody" not found'
        resources = c.get("/api/v1").json()["resources"]
    token_sub = next(r for r in resources if r["name"] == "serviceaccounts/token")
    assert token_sub["kind"] == "TokenRequest" and token_sub["verbs"] == ["create"]
    assert token_sub["group"] == "authentication.k8s.io"


@pytest.mark.kubectl
def test_kubectl_over_tls(srv: ApiServer) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--kubeconfig", srv.kubeconfig, *args], capture_output=True, text=True,
                              timeout=30)

    assert kubectl("get", "pods").returncode == 0
    who = kubectl("auth", "whoami")
    assert who.returncode == 0 and "kubeling-admin" in who.stdout and "system:masters" in who.stdout, who.stderr
    with srv.http() as c:
        wait_for(lambda: c.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200,
                 timeout=15, what="default/default ServiceAccount")
    made = kubectl("create", "token", "default", "--duration", "15m")  # protobuf TokenRequest
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    as_sa = subprocess.run(["kubectl", "--server", srv.url, "--certificate-authority",
                            os.path.join(srv.pki_dir, "ca.crt"), "--token", token, "auth", "whoami"],
                           capture_output=True, text=True, timeout=30)
    assert as_sa.returncode == 0 and "system:serviceaccount:default:default" in as_sa.stdout, as_sa.stderr
    bogus = subprocess.run(["kubectl", "--server", srv.url, "--certificate-authority",
                            os.path.join(srv.pki_dir, "ca.crt"), "--token", token[:-4], "get", "pods"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert bogus.returncode != 0 and "You must be logged in to the server (Unauthorized)" in bogus.stderr


def test_plain_http_to_the_tls_port_gets_no_data(srv: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not data.startswith(b"HTTP/") and b"PodList" not in data and b"kind" not in data


def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, ctx.wrap_socket(s) as t:
        return str(t.version())


def _legacy_client(max_version: ssl.TLSVersion, ciphers: str = "DEFAULT:@SECLEVEL=0") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_ciphers(ciphers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = min(max_version, ssl.TLSVersion.TLSv1_2)
        ctx.maximum_version = max_version
    return ctx


def test_tls_1_1_and_weak_ciphers_are_refused(srv: ApiServer) -> None:
    tls11 = _legacy_client(ssl.TLSVersion.TLSv1_1)
    # the control: a permissive local server shows this client can speak TLS 1.1 on this machine
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(os.path.join(srv.pki_dir, "apiserver.crt"), os.path.join(srv.pki_dir, "apiserver.key"))
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)

        def accept() -> None:
            conn, _ = ls.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as t:
                    t.recv(1)
            except (ssl.SSLError, OSError):
                conn.close()

        threading.Thread(target=accept, daemon=True).start()
        try:
            control = _handshake(ls.getsockname()[1], tls11)
        except ssl.SSLError:
            control = ""
    if control:
        assert control == "TLSv1.1"
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _handshake(srv.port, tls11)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _handshake(srv.port, _legacy_client(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA"))  # CBC, no AEAD
    assert _handshake(srv.port, _legacy_client(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")) == "TLSv1.2"
    assert _handshake(srv.port, _legacy_client(ssl.TLSVersion.TLSv1_3)) == "TLSv1.3"


def test_anonymous_auth_flag_and_insecure_serving_conflicts(tmp_path: Path) -> None:
    srv = ApiServer(tmp_path / "anon", secure=True, args=("--anonymous-auth=true",))
    srv.start()
    try:
        with anonymous(srv) as c:
            assert c.get("/healthz").text == "ok"  # system:anonymous, allowed the public info by RBAC
            pods = c.get("/api/v1/pods")
            assert pods.status_code == 403 and "system:anonymous" in pods.json()["message"]
            assert_unauthorized(c.get("/healthz", headers={"Authorization": "Bearer not-a-token"}))
    finally:
        srv.stop()
    p = subprocess.run([sys.executable, "-m", "kubeling.cli", "apiserver", "--listen", "127.0.0.1:1",
                        "--data-dir", str(tmp_path / "x"), "--insecure-serving", "--tls-cert-file", "a.crt"],
                       capture_output=True, text=True, timeout=30)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "--insecure-serving" in lines[0], p.stderr


def websocket_upgrade(srv: ApiServer, ctx: ssl.SSLContext, path: str) -> tuple[int, bytes]:
    """(HTTP status, body) of a WebSocket upgrade request, on a connection closed at once afterwards."""
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: portforward.k8s.io\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s, \
            ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
        t.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = t.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length and (chunk := t.recv(4096)):
            body += chunk
    return int(head.split(b" ")[1]), body


def test_websocket_routes_are_authenticated_too(srv: ApiServer) -> None:
    path = "/api/v1/namespaces/default/pods/nope/portforward?ports=80"
    status, body = websocket_upgrade(srv, ca_context(srv), path)
    assert status == 401 and orjson.loads(body) == UNAUTHORIZED
    admin = ca_context(srv)
    admin.load_cert_chain(os.path.join(srv.pki_dir, "admin.crt"), os.path.join(srv.pki_dir, "admin.key"))
    status, body = websocket_upgrade(srv, admin, path)
    # the certificate reached the websocket scope: past authentication and authorization (no such pod)
    assert status not in (401, 403), body
