"""agent.auth + AgentServer over TLS: request attributes, who is allowed, the review cache, 401/403 answers."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.auth import AgentAuth, Attributes, User, request_attributes, server_ssl_context, user_from_cert
from agent.server import AgentServer
from kube import pki


def test_request_attributes_follow_the_kubelet() -> None:
    u = User("jane", ("system:authenticated",))
    got = {(m, p): (a.verb, a.subresource) for m, p in [
        ("GET", "/pods"), ("GET", "/containerLogs/ns/p/c"), ("POST", "/exec/ns/p/c"), ("GET", "/exec/ns/p/c"),
        ("GET", "/portForward/ns/p"), ("GET", "/metrics"), ("GET", "/metrics/cadvisor"), ("GET", "/stats/summary"),
        ("GET", "/logs/syslog"), ("GET", "/spec/"), ("HEAD", "/healthz"), ("DELETE", "/x"), ("GET", "/metricsX")]
        for a in [request_attributes(u, m, p, "n1")]}
    assert got == {("GET", "/pods"): ("get", "proxy"), ("GET", "/containerLogs/ns/p/c"): ("get", "proxy"),
                   ("POST", "/exec/ns/p/c"): ("create", "proxy"), ("GET", "/exec/ns/p/c"): ("get", "proxy"),
                   ("GET", "/portForward/ns/p"): ("get", "proxy"), ("GET", "/metrics"): ("get", "metrics"),
                   ("GET", "/metrics/cadvisor"): ("get", "metrics"), ("GET", "/stats/summary"): ("get", "stats"),
                   ("GET", "/logs/syslog"): ("get", "log"), ("GET", "/spec/"): ("get", "spec"),
                   ("HEAD", "/healthz"): ("get", "proxy"), ("DELETE", "/x"): ("delete", "proxy"),
                   ("GET", "/metricsX"): ("get", "proxy")}


def cert(cn: str, *orgs: str) -> dict[str, object]:
    subject = tuple((("organizationName", o),) for o in orgs) + (((("commonName", cn),)),)
    return {"subject": subject}


class Reviews:
    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed
        self.asked: list[Attributes] = []
        self.fail = False

    def __call__(self, a: Attributes) -> bool:
        if self.fail:
            raise RuntimeError("apiserver unreachable")
        self.asked.append(a)
        return a.user.name in self.allowed


def test_who_is_allowed_and_the_cache() -> None:
    now = [0.0]
    reviews = Reviews({"ops"})
    auth = AgentAuth("n1", reviews, clock=lambda: now[0])
    assert auth.check(None, "GET", "/pods").code == 401
    assert auth.check({}, "GET", "/pods").code == 401
    assert auth.check({"subject": ((("organizationName", "x"),),)}, "GET", "/pods").code == 401  # no CN
    assert auth.check(cert("kube-apiserver-kubelet-client", "system:masters"), "GET", "/pods").allowed
    assert auth.check(cert("kube-apiserver-kubelet-client"), "POST", "/exec/a/b/c").allowed
    assert auth.check(cert("kubeling-admin", "system:masters"), "GET", "/metrics").allowed
    assert reviews.asked == []  # decided locally
    d = auth.check(cert("system:node:n2", "system:nodes"), "GET", "/pods")
    assert (d.code, d.message) == (403, "Forbidden (user=system:node:n2, verb=get, resource=nodes, subresource=proxy)")
    assert reviews.asked[0].user.groups == ("system:nodes", "system:authenticated") and reviews.asked[0].node == "n1"
    assert auth.check(cert("ops"), "GET", "/pods").allowed
    auth.check(cert("ops"), "GET", "/pods")
    auth.check(cert("system:node:n2", "system:nodes"), "GET", "/pods")
    assert len(reviews.asked) == 2  # both answers cached
    now[0] += 31  # denials are kept 30 s, allowances 5 min
    auth.check(cert("system:node:n2", "system:nodes"), "GET", "/pods")
    auth.check(cert("ops"), "GET", "/pods")
    assert [a.user.name for a in reviews.asked] == ["system:node:n2", "ops", "system:node:n2"]
    reviews.fail = True
    d = auth.check(cert("someone"), "GET", "/metrics")
    assert (d.code, d.message) == (500, "Authorization error (user=someone, verb=get, resource=nodes, "
                                        "subresource=metrics)")
    assert user_from_cert(cert("a", "g1", "g2")) == User("a", ("g1", "g2", "system:authenticated"))


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[AgentServer, str]]:
    d = str(tmp_path / "pki")
    pki.init_cluster(d)
    pki.add_node(d, "n1", "127.0.0.1")
    nd = pki.node_dir(d, "n1")
    ctx = server_ssl_context(f"{nd}/serving.crt", f"{nd}/serving.key", f"{d}/ca.crt")
    srv = AgentServer("127.0.0.1:0", pods=lambda: [{"metadata": {"name": "p"}}], logs=lambda *a, **k: iter([b"x"]),
                      ssl_context=ctx, auth=AgentAuth("n1", Reviews(set()))).start()
    try:
        yield srv, d
    finally:
        srv.stop()


def client(d: str, stem: str | None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
    if stem:
        ctx.load_cert_chain(os.path.join(d, stem + ".crt"), os.path.join(d, stem + ".key"))
    return httpx.Client(verify=ctx, timeout=5, trust_env=False)


def test_agent_server_over_tls(tls_server: tuple[AgentServer, str]) -> None:
    srv, d = tls_server
    url = f"https://{srv.endpoint}"
    with client(d, None) as c:
        r = c.get(url + "/pods")
        assert (r.status_code, r.text) == (401, "Unauthorized\n")
    with client(d, "nodes/n1/client") as c:
        assert c.get(url + "/healthz").status_code == 403
    with client(d, "apiserver-kubelet-client") as c:
        assert c.get(url + "/pods").json()["items"] == [{"metadata": {"name": "p"}}]
        assert c.head(url + "/pods").status_code == 405  # authorized first, then the method is refused
    # a stalled client does not hold up the others: its handshake runs on its own thread
    with socket.create_connection(("127.0.0.1", srv.port)), client(d, "apiserver-kubelet-client") as c:
        assert c.get(url + "/healthz").text == "ok\n"
