# ruff: noqa: F811  (the `node` fixture is imported by name)
"""`kubectl port-forward` end to end: the real kubectl 1.32 -> a real apiserver (pods/portforward,
WebSocket tunnel) -> the agent API (GET /portForward/...) -> a SPDY/3.1 session -> TCP to
127.0.0.1:PORT inside a real pod's network namespace (docker, CNI, in-process agent).

The pod's web server listens on 127.0.0.1 only, so an answer proves the connection was made in
the pod's own namespace.  Leaks are checked precisely: the agent (this process) holds no socket
whose inode is in the pod namespace's /proc/net/tcp{,6}, and no port-forward thread is left."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_fixtures import Node, needs_agent_env, node, pod_manifest, ready_pod  # noqa: F401
from apiserver_proc import ApiServer, free_port
from polling import wait_for

from agent.portforward import netns_dialer
from agent.server import AgentServer
from kube import websocket as ws

KUBECTL = shutil.which("kubectl")
pytestmark = [needs_agent_env, pytest.mark.docker, pytest.mark.netns, pytest.mark.kubectl,
              pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")]

BIG_LINES = 150_000  # /www/big is `seq 1 150000`: ~1 MB, many SPDY frames and tunnel messages
WEB = {"name": "web", "command": ["sh", "-c",
                                  "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && "
                                  f"seq 1 {BIG_LINES} > /www/big && exec httpd -f -p 127.0.0.1:8080 -h /www"]}
ECHO = {"name": "echo", "command": ["nc", "-ll", "-p", "9090", "-e", "/bin/cat"]}  # echoes until our FIN


@pytest.fixture
def apiserver(apiserver_factory: Callable[..., ApiServer]) -> ApiServer:
    return apiserver_factory("--insecure-serving")  # plain HTTP: the raw API checks below speak it directly


@pytest.fixture
def pf(node: Node, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A running pod "web" (web server + echo server) on an agent whose API serves port-forward."""
    agent = node.start_agent()
    api = AgentServer("127.0.0.1:0", pods=agent.pod_list, logs=agent.logs,
                      portforward=agent.port_forward).start()
    try:
        annotations = {"kubeling.io/agent-endpoint": api.endpoint}
        node.client.create("nodes", {"metadata": {"name": node.name, "annotations": annotations}})
        node.client.create("pods", pod_manifest(node, "web", [WEB, ECHO]), "default")
        pod = wait_for(lambda: ready_pod(node, "web"), 30, "pod web Ready")
        info = agent.sandboxes.get(pod["metadata"]["uid"])
        assert info is not None
        dial = netns_dialer(info.netns_path)
        for port in (8080, 9090):  # Ready is "started"; the servers may still be starting up
            wait_for(lambda port=port: _listening(dial, port), 20, f"port {port} listening in the pod")
        yield {"node": node, "api": api, "pod": pod, "netns": info.netns_path,
               "cache": str(tmp_path / "cache")}
    finally:
        api.stop()


def _listening(dial: Callable[[int], socket.socket], port: int) -> bool:
    try:
        dial(port).close()
        return True
    except OSError:
        return False


class PortForward:
    """A running `kubectl port-forward`, its output collected line by line."""

    def __init__(self, env: dict[str, Any], *ports: str, pod: str = "pod/web") -> None:
        assert KUBECTL
        node: Node = env["node"]
        self.proc = subprocess.Popen([KUBECTL, "--kubeconfig", node.kubeconfig, "--cache-dir", env["cache"],
                                      "-n", "default", "port-forward", pod, *ports],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={k: v for k, v in os.environ.items()
                                          if not k.startswith("KUBECTL_")})  # kubectl's defaults
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_forwarding(self, n: int) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"kubectl exited {self.proc.returncode}: {self.err}"
            return sum(line.startswith("Forwarding from 127.0.0.1:") for line in self.out) >= n
        wait_for(ready, 15, f"kubectl to forward {n} port(s)")

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float = 15) -> int:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def forwards() -> Iterator[list[PortForward]]:
    made: list[PortForward] = []
    yield made
    for f in made:
        f.kill()


def http() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10)


def pod_socket_inodes(netns_path: str) -> set[str]:
    """Inodes of the TCP sockets that live in the pod's network namespace."""
    r = subprocess.run(["nsenter", f"--net={netns_path}", "cat", "/proc/net/tcp", "/proc/net/tcp6"],
                       capture_output=True, text=True, timeout=10, check=True)
    rows = (line.split() for line in r.stdout.splitlines())
    return {f[9] for f in rows if len(f) > 9 and f[9].isdigit()}  # the inode column


def our_pod_sockets(netns_path: str) -> set[str]:
    """Sockets this process (the agent) holds in the pod's namespace."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(target[8:-1])
    return ours & pod_socket_inodes(netns_path)


def forward_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith("portforward-") or "process_request_thread" in t.name]


def test_kubectl_port_forward_end_to_end(pf: dict[str, Any], forwards: list[PortForward]) -> None:
    web_port, echo_port = free_port(), free_port()
    fw = PortForward(pf, f"{web_port}:8080", f"{echo_port}:9090")
    forwards.append(fw)
    fw.wait_forwarding(2)
    base = f"http://127.0.0.1:{web_port}"
    with http() as h:
        for _ in range(3):  # several connections, one after the other
            r = h.get(f"{base}/", headers={"Connection": "close"})
            assert (r.status_code, r.text) == (200, "hello from web\n")
    # two at once, each a big download (many frames, far past SPDY's 64 KiB initial window)
    want = "".join(f"{i}\n" for i in range(1, BIG_LINES + 1))
    got: dict[int, str] = {}

    def fetch(i: int) -> None:
        with http() as h:
            got[i] = h.get(f"{base}/big").text
    ts = [threading.Thread(target=fetch, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert got.keys() == {0, 1} and got[0] == want and got[1] == want
    # upload: 1 MiB to the echo server, half-close, everything comes back
    blob = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", echo_port), timeout=15) as s:
        def send() -> None:
            s.sendall(blob)
            s.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send)
        sender.start()
        back = bytearray()
        while chunk := s.recv(65536):
            back += chunk
        sender.join(10)
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(blob).hexdigest()
    # while a connection is open the agent holds its socket in the pod's namespace...
    held = socket.create_connection(("127.0.0.1", echo_port), timeout=5)
    held.sendall(b"ping\n")
    assert held.recv(16) == b"ping\n"
    assert wait_for(lambda: our_pod_sockets(pf["netns"]), 10, "the agent's socket in the pod namespace")
    held.close()
    # ...and after SIGINT kubectl exits cleanly and the agent holds nothing
    assert fw.stop(signal.SIGINT) == 0, fw.err
    wait_for(lambda: not our_pod_sockets(pf["netns"]), 10, "no agent socket left in the pod namespace")
    wait_for(lambda: not forward_threads(), 10, "no port-forward thread left")
    assert "Handling connection for" in "\n".join(fw.out)


def test_refused_port_gives_kubectls_error_and_nothing_is_left(pf: dict[str, Any],
                                                                forwards: list[PortForward]) -> None:
    """Nothing listens on 7777: the agent's message goes on the connection's error stream and
    kubectl prints it as it does for the kubelet's.  kubectl 1.32 then drops the whole forward
    ("lost connection to pod": client-go closes the connection on any error-stream message since
    1.23); the agent is left clean and the next `kubectl port-forward` works."""
    web_port, dead_port = free_port(), free_port()
    fw = PortForward(pf, f"{web_port}:8080", f"{dead_port}:7777")
    forwards.append(fw)
    fw.wait_forwarding(2)
    with http() as h:
        assert h.get(f"http://127.0.0.1:{web_port}/").text == "hello from web\n"
    with socket.create_connection(("127.0.0.1", dead_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(100) == b""  # closed without an answer
    rc = fw.wait()  # kubectl gives up the whole forward on its own (see the docstring)
    err = "\n".join(fw.err)
    uid = pf["pod"]["metadata"]["uid"]
    assert (f"an error occurred forwarding {dead_port} -> 7777: error forwarding port 7777 to pod "
            f"default/web, uid {uid}: failed to connect to localhost:7777 inside the pod's network "
            "namespace") in err, err
    assert "connect to 127.0.0.1:7777: Connection refused" in err, err
    assert rc == 1 and "lost connection to pod" in err, (rc, err)
    wait_for(lambda: not our_pod_sockets(pf["netns"]) and not forward_threads(), 10, "a clean agent")
    fw2 = PortForward(pf, f"{web_port}:8080")
    forwards.append(fw2)
    fw2.wait_forwarding(1)
    with http() as h:
        assert h.get(f"http://127.0.0.1:{web_port}/").text == "hello from web\n"
    assert fw2.stop() == 0


def test_literal_18080_8080(pf: dict[str, Any], forwards: list[PortForward]) -> None:
    """The README's form, `kubectl port-forward pod/web 18080:8080`, when 18080 is free here."""
    try:
        with socket.create_server(("127.0.0.1", 18080)):
            pass
    except OSError:
        pytest.skip("127.0.0.1:18080 is in use on this machine")
    fw = PortForward(pf, "18080:8080")
    forwards.append(fw)
    fw.wait_forwarding(1)
    assert "Forwarding from 127.0.0.1:18080 -> 8080" in fw.out
    with http() as h:
        assert h.get("http://127.0.0.1:18080/").text == "hello from web\n"
    assert fw.stop() == 0


def test_api_errors_are_statuses(pf: dict[str, Any]) -> None:
    node: Node = pf["node"]
    srv_url = _server_url(node.kubeconfig)
    host, port = srv_url.removeprefix("http://").split(":")
    path = "/api/v1/namespaces/default/pods/{}/portforward"
    proto = ["SPDY/3.1+portforward.k8s.io"]
    # a plain request (kubectl's SPDY fallback) is told to use the WebSocket tunnel
    r = httpx.post(f"{srv_url}{path.format('web')}", headers={"Upgrade": "SPDY/3.1",
                   "X-Stream-Protocol-Version": "portforward.k8s.io"}, trust_env=False)
    assert r.status_code == 400 and "needs a WebSocket upgrade" in r.json()["message"]
    # unknown pod: the denial response is a Status
    with pytest.raises(ws.HandshakeError) as e:
        ws.connect(host, int(port), path.format("nope"), subprotocols=proto)
    assert e.value.status == 404 and b'pods \\"nope\\" not found' in e.value.body
    # a pod on a node whose agent does not answer: 503
    dead = f"dead-{uuid.uuid4().hex[:6]}"
    annotations = {"kubeling.io/agent-endpoint": f"127.0.0.1:{free_port()}"}
    node.client.create("nodes", {"metadata": {"name": dead, "annotations": annotations}})
    node.client.create("pods", {"metadata": {"name": "lost"}, "spec": {"nodeName": dead, "containers": [
        {"name": "c", "image": "kubeling/test:1"}]}}, "default")
    with pytest.raises(ws.HandshakeError) as e:
        ws.connect(host, int(port), path.format("lost"), subprotocols=proto)
    assert e.value.status == 503 and b"cannot reach the agent of node" in e.value.body
    # the agent itself: a pod it does not run is a 404 before any upgrade
    api: AgentServer = pf["api"]
    with pytest.raises(ws.HandshakeError) as e:
        ws.connect("127.0.0.1", api.port, "/portForward/default/nope", subprotocols=proto)
    assert e.value.status == 404 and b"not found on node" in e.value.body
    # ...and an upgrade without the tunnel's subprotocol is a 400
    with pytest.raises(ws.HandshakeError) as e:
        ws.connect("127.0.0.1", api.port, "/portForward/default/web", subprotocols=["v5.channel.k8s.io"])
    assert e.value.status == 400 and b"SPDY/3.1+portforward.k8s.io" in e.value.body


def _server_url(kubeconfig: str) -> str:
    import yaml
    with open(kubeconfig) as f:
        return str(yaml.safe_load(f)["clusters"][0]["cluster"]["server"])

