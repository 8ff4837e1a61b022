"""The agent API over HTTPS with client-certificate authentication, and the apiserver as its client.

A TLS apiserver with its own PKI, the node's certificates from `kubeling pki node`, the agent as a
process with --tls-cert-file/--tls-private-key-file/--client-ca-file (secure_agent_fixtures). Checked:
who gets in (401 without a certificate, a failed handshake with a foreign CA, 403 for other identities,
200 for the apiserver's kubelet client certificate, for system:masters, and for a user RBAC grants
nodes/proxy), the unauthenticated healthz port, the flags the agent refuses, and `kubectl logs`, `exec`
and `port-forward` through the secure apiserver to the secure agent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from apiserver_proc import free_port
from polling import wait_for
from secure_agent_fixtures import REPO, SecureNode, create_pod, issue_user_cert, needs_agent_env, running
from secure_agent_fixtures import secure_node as secure_node  # the fixture

from kube import pki

KUBECTL = shutil.which("kubectl")
pytestmark = [needs_agent_env, pytest.mark.docker, pytest.mark.netns]


def forbidden(user: str, subresource: str = "proxy") -> str:
    return f"Forbidden (user={user}, verb=get, resource=nodes, subresource={subresource})"


def test_who_may_call_the_agent_api(secure_node: SecureNode, tmp_path: Path) -> None:
    n = secure_node
    healthz_port = free_port()
    # with the CIS-style spellings the lab passes (the only values these flags accept)
    n.start("--healthz-port", str(healthz_port), "--anonymous-auth=false", "--profiling=false", "--read-only-port", "0",
            "--authorization-mode", "Webhook")

    with n.agent_http(cert=None) as c:  # no client certificate: 401 on every path
        for path in ("/pods", "/healthz", "/metrics", "/containerLogs/default/p/c", "/exec/default/p/c"):
            r = c.get(path)
            assert (r.status_code, r.text.strip()) == (401, "Unauthorized"), path
    with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port gets no HTTP answer
        httpx.get(f"http://{n.endpoint}/pods", timeout=5)

    # a certificate of another CA: the handshake fails (the agent asks only for certificates of its client CA)
    other_ca = tmp_path / "other-pki"
    pki.init_cluster(str(other_ca))
    with pytest.raises(httpx.TransportError, match="unknown ca"), n.agent_http(cert=(str(other_ca / "admin.crt"),
                                                               str(other_ca / "admin.key"))) as c:
        c.get("/pods")

    # identities of the cluster CA that have no business on this node's API: 403, upstream's words
    pki.add_node(n.pki_dir, "other-node", "127.0.0.2", server=n.api.url)
    other = pki.node_dir(n.pki_dir, "other-node")
    jane = issue_user_cert(n, "jane", "jane", ("developers",))
    for cert, user in (((f"{other}/client.crt", f"{other}/client.key"), "system:node:other-node"),
                       ((f"{n.node_dir}/client.crt", f"{n.node_dir}/client.key"), f"system:node:{n.name}"),
                       (jane, "jane")):
        with n.agent_http(cert=cert) as c:
            r = c.get("/pods")
            assert (r.status_code, r.text.strip()) == (403, forbidden(user)), user
            r = c.get("/metrics")
            assert (r.status_code, r.text.strip()) == (403, forbidden(user, "metrics")), user
            assert c.post("/exec/default/p/c").text.strip() == forbidden(user).replace("verb=get", "verb=create")

    # the apiserver's kubelet client certificate, and an admin (system:masters): in
    with n.agent_http(cert=n.cert("apiserver-kubelet-client")) as c:
        r = c.get("/pods")
        assert r.status_code == 200 and r.json()["kind"] == "PodList"
        assert c.get("/healthz").text.strip() == "ok"
    with n.agent_http(cert=n.cert("admin")) as c:
        assert c.get("/metrics").status_code == 200

    # a user RBAC grants nodes/proxy (the SubjectAccessReview path): in, on that subresource only
    n.admin.create("clusterroles", {"metadata": {"name": "node-proxy"}, "rules": [
        {"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}]})
    n.admin.create("clusterrolebindings", {"metadata": {"name": "jane2-node-proxy"},
                                           "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                       "kind": "ClusterRole", "name": "node-proxy"},
                                           "subjects": [{"kind": "User", "name": "jane2"}]})
    jane2 = issue_user_cert(n, "jane2", "jane2")
    with n.agent_http(cert=jane2) as c:
        assert c.get("/pods").status_code == 200
        assert c.get("/metrics").text.strip() == forbidden("jane2", "metrics")

    # the healthz port: plain HTTP on 127.0.0.1, nothing but /healthz, no authentication
    assert httpx.get(f"http://127.0.0.1:{healthz_port}/healthz", timeout=5).text.strip() == "ok"
    assert httpx.get(f"http://127.0.0.1:{healthz_port}/pods", timeout=5).status_code == 404


def test_flags_the_agent_refuses(secure_node: SecureNode) -> None:
    n = secure_node
    kubeconfig = os.path.join(n.node_dir, "kubeconfig")

    def agent(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.main", "--node-name", n.name, *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=30)

    cases = [
        (["--kubeconfig", kubeconfig], "the apiserver is https, so the agent API must be too"),
        (n.argv("--read-only-port", "10255")[5:], "--read-only-port 10255: only 0 is accepted"),
        (n.argv("--anonymous-auth=true")[5:], "--anonymous-auth=true is not supported"),
        (n.argv("--profiling=true")[5:], "--profiling=true is not supported"),
        (n.argv("--authorization-mode", "AlwaysAllow")[5:], "'AlwaysAllow' is not supported"),
        (n.argv("--insecure-serving")[5:], "--insecure-serving serves plain HTTP without authentication: drop"),
        (["--kubeconfig", kubeconfig, "--tls-cert-file", os.path.join(n.node_dir, "serving.crt")],
         "--tls-private-key-file is missing"),
        (n.argv("--client-ca-file", "/nonexistent/ca.crt")[5:], "cannot load --client-ca-file"),
        (n.argv("--tls-cert-file", "/nonexistent/s.crt")[5:], "cannot load --tls-cert-file: /nonexistent/s.crt does not"),
    ]
    for argv, message in cases:
        r = agent(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, (argv, r.stderr)


@pytest.mark.kubectl
@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_logs_exec_port_forward_through_tls(secure_node: SecureNode, tmp_path: Path) -> None:
    assert KUBECTL
    n = secure_node
    n.start()
    create_pod(n.admin, n, "web", [{"name": "web", "command": ["sh", "-c", "echo hello from web; "
                                                                "echo served > /tmp/index.html; "
                                                                "exec httpd -f -p 8080 -h /tmp"]}])
    wait_for(lambda: running(n.admin, "web"), 60, "pod web running")
    env = {**n.api.kubectl_env(), "KUBECACHEDIR": str(tmp_path / "cache")}
    base = [KUBECTL, "--cache-dir", str(tmp_path / "cache")]

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=30, env=env)

    r = wait_for(lambda: (lambda r: r if "hello from web" in r.stdout else None)(kubectl("logs", "web")), 15,
                 "kubectl logs")
    assert r.returncode == 0 and r.stdout.strip() == "hello from web"
    r = kubectl("exec", "web", "--", "sh", "-c", "echo $((6*7)); exit 3")
    assert (r.returncode, r.stdout.strip()) == (3, "42"), r.stderr
    # stdin and stdout at once over both TLS legs (the agent reads and writes its TLS socket from two threads)
    data = os.urandom(3 << 20)
    echo = subprocess.run([*base, "exec", "-i", "web", "--", "cat"], input=data, capture_output=True, timeout=60,
                          env=env)
    assert echo.returncode == 0 and echo.stdout == data, echo.stderr[-500:]

    port = free_port()
    out = tmp_path / "pf.out"
    with open(out, "w") as f:
        pf = subprocess.Popen([*base, "port-forward", "pod/web", f"{port}:8080"], stdout=f, stderr=subprocess.STDOUT,
                              env=env, start_new_session=True)
    try:
        wait_for(lambda: "Forwarding from 127.0.0.1:" in out.read_text(), 15, "kubectl port-forward")
        assert httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=10).text.strip() == "served"
    finally:
        if pf.poll() is None:
            os.kill(pf.pid, signal.SIGTERM)
        pf.wait(10)


def test_apiserver_refuses_an_agent_it_cannot_verify(secure_node: SecureNode, tmp_path: Path) -> None:
    """An agent serving a certificate of another CA: the apiserver does not talk to it (503, the TLS error)."""
    n = secure_node
    other = tempfile.mkdtemp(dir=tmp_path)
    pki.init_cluster(other)
    pki.add_node(other, n.name, "127.0.0.1")
    serving = pki.node_dir(other, n.name)
    n.start("--tls-cert-file", f"{serving}/serving.crt", "--tls-private-key-file", f"{serving}/serving.key")
    create_pod(n.admin, n, "quiet", [{"name": "c", "command": ["sleep", "3600"]}])
    wait_for(lambda: running(n.admin, "quiet"), 60, "pod quiet running")
    with n.api.http() as h:
        r = h.get("/api/v1/namespaces/default/pods/quiet/log")
    assert r.status_code == 503, r.text
    assert "CERTIFICATE_VERIFY_FAILED" in r.json()["message"]
