"""`kubectl exec`, `attach` and `cp` end to end: the real kubectl 1.32 -> a real apiserver (WebSocket,
v5.channel.k8s.io) -> a real agent process (`python -m agent.main`) -> `docker exec` / attach.

One apiserver, one node (its network namespace, the agent process) and a few pods serve the whole
module; everything is removed at the end by recorded name/ID (agent_fixtures.Node.cleanup).
Interactive sessions run under tmux (a session of our own, killed by name), driven with
send-keys and read with capture-pane.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_fixtures import Node, needs_agent_env
from apiserver_proc import ApiServer, free_port
from cni_fixtures import Namespaces, sh
from polling import wait_for

from agent import runtime as rt
from kube import websocket
from kube.client import Client

KUBECTL = shutil.which("kubectl")
TMUX = shutil.which("tmux")
NS = "default"
pytestmark = [needs_agent_env, pytest.mark.docker, pytest.mark.netns, pytest.mark.kubectl,
              pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")]


@dataclass
class Cluster:
    srv: ApiServer
    node: Node
    cache: str
    dead_node: str

    def kubectl(self, *args: str, input: str | bytes | None = None, timeout: float = 30,
                text: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[Any]:
        assert KUBECTL
        return subprocess.run([KUBECTL, *self.kubectl_args(), *args], input=input, capture_output=True,
                              text=text, timeout=timeout, env={**os.environ, **(env or {})})

    def kubectl_args(self) -> list[str]:
        return ["--kubeconfig", self.srv.kubeconfig, "--cache-dir", self.cache, "-n", NS]

    def container_id(self, pod: str, container: str) -> str:
        p = self.node.client.get("pods", pod, NS)
        for s in p["status"]["containerStatuses"]:
            if s["name"] == container:
                return str(s["containerID"]).removeprefix("docker://")
        raise AssertionError(f"no status for {pod}/{container}")


def _pod(node: Node, name: str, containers: list[dict[str, Any]], **spec: Any) -> None:
    for c in containers:
        c.setdefault("image", "kubeling/test:1")
    node.client.create("pods", {"metadata": {"name": name}, "spec": {
        "nodeName": node.name, "terminationGracePeriodSeconds": 1, "containers": containers, **spec}}, NS)


def _running(node: Node, name: str) -> bool:
    p = node.client.get("pods", name, NS)
    return bool((p.get("status") or {}).get("containerStatuses")) and all(
        "running" in (s.get("state") or {}) for s in p["status"]["containerStatuses"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from agent.images import ensure_images
    ensure_images()
    d = tmp_path_factory.mktemp("kexec")
    srv = ApiServer(d / "data")
    nss = Namespaces()
    name = f"klt-{os.getpid()}-ex{uuid.uuid4().hex[:4]}"
    root = tempfile.mkdtemp(prefix=f"{name}-")
    node: Node | None = None
    srv.start()
    try:
        netns = nss.new("exnode")
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        node = Node(name=name, netns=netns, root=root, kubeconfig=srv.kubeconfig,
                    client=Client.from_kubeconfig(srv.kubeconfig), runtime=rt.DockerRuntime())
        node.start_process()
        sleeper = {"command": ["sleep", "3600"]}
        _pod(node, "web", [{"name": "app", **sleeper}])
        _pod(node, "two", [{"name": "a", **sleeper}, {"name": "b", **sleeper}])
        _pod(node, "term", [{"name": "shell", "command": ["sh"], "stdin": True, "tty": True}])
        _pod(node, "echoer", [{"name": "loop", "stdin": True,
                               "command": ["sh", "-c", "while read line; do echo got-$line; done"]}])
        # a node whose agent does not answer (a closed loopback port), and a pod on it
        dead = f"{name}-dead"
        node.client.create("nodes", {"metadata": {"name": dead, "annotations": {
            "kubeling.io/agent-endpoint": f"127.0.0.1:{free_port()}"}}})
        node.client.create("pods", {"metadata": {"name": "ondead"}, "spec": {
            "nodeName": dead, "containers": [{"name": "c", "image": "kubeling/test:1"}]}}, NS)
        node.client.create("pods", {"metadata": {"name": "unbound"}, "spec": {
            "containers": [{"name": "c", "image": "kubeling/test:1"}]}}, NS)
        for pod in ("web", "two", "term", "echoer"):
            wait_for(lambda pod=pod: _running(node, pod), 60, f"pod {pod} running\n{node.log()}")  # type: ignore[misc]
        yield Cluster(srv, node, str(d / "kubectl-cache"), dead)
    finally:
        try:
            if node is not None:
                node.cleanup()
        finally:
            nss.cleanup()
            shutil.rmtree(root, ignore_errors=True)
            srv.stop()


# -- exec ------------------------------------------------------------------------------------


def test_exec_prints_the_pod_name_as_hostname(cluster: Cluster) -> None:
    r = cluster.kubectl("exec", "web", "--", "cat", "/etc/hostname")
    assert (r.returncode, r.stdout, r.stderr) == (0, "web\n", "")


def test_exec_speaks_websocket_v5_without_fallback(cluster: Cluster) -> None:
    r = cluster.kubectl("exec", "-v=4", "web", "--", "true")
    assert r.returncode == 0, r.stderr
    assert "The subprotocol is v5.channel.k8s.io" in r.stderr
    assert "fallback" not in r.stderr.lower()  # SPDY was never tried


def test_spdy_only_kubectl_gets_a_clear_refusal(cluster: Cluster) -> None:
    r = cluster.kubectl("exec", "web", "--", "true", env={"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"})
    assert r.returncode == 1
    assert r.stderr.startswith("Error from server (BadRequest): exec needs a WebSocket upgrade"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_concurrent_sessions(cluster: Cluster) -> None:
    assert KUBECTL
    procs = [subprocess.Popen([KUBECTL, *cluster.kubectl_args(), "exec", "-i", "web", "--", "sh", "-c",
                               f"read x; echo session-{i}-$x"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(6)]
    try:
        outs = [p.communicate(f"in{i}\n", timeout=30) for i, p in enumerate(procs)]
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    assert [o for o, _ in outs] == [f"session-{i}-in{i}\n" for i in range(6)], outs
    assert [p.returncode for p in procs] == [0] * 6


def test_exec_stdout_and_stderr_stay_apart(cluster: Cluster) -> None:
    r = cluster.kubectl("exec", "web", "--", "sh", "-c", "echo to-out; echo to-err >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "to-out\n", "to-err\n")


def test_exec_stdin_is_echoed_and_eof_ends_it(cluster: Cluster) -> None:
    r = cluster.kubectl("exec", "-i", "web", "--", "sh", "-c", "cat", input="hello\nworld\n")
    assert (r.returncode, r.stdout) == (0, "hello\nworld\n"), r.stderr
    # more than one message each way (32 KiB per message), byte for byte
    blob = os.urandom(300_000)
    r = cluster.kubectl("exec", "-i", "web", "--", "cat", input=blob, text=False)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(blob).hexdigest()
    r = cluster.kubectl("exec", "-i", "web", "--", "wc", "-c", input=blob, text=False)
    assert r.stdout.split() == [b"300000"]


def test_exec_exit_code_propagates(cluster: Cluster) -> None:
    r = cluster.kubectl("exec", "web", "--", "sh", "-c", "exit 3")
    assert r.returncode == 3
    assert r.stderr.strip() == "command terminated with exit code 3"


def test_exec_in_a_chosen_container(cluster: Cluster) -> None:
    r = cluster.kubectl("exec", "two", "-c", "b", "--", "sh", "-c", "echo from-b")
    assert (r.returncode, r.stdout) == (0, "from-b\n"), r.stderr
    r = cluster.kubectl("exec", "two", "--", "true")  # kubectl defaults to the first container and says so
    assert r.returncode == 0 and 'Defaulted container "a"' in r.stderr, r.stderr


def test_exec_command_not_found_is_a_clear_error(cluster: Cluster) -> None:
    r = cluster.kubectl("exec", "web", "--", "no-such-command")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Internal error occurred: error executing command in "
                                                   "container:"), r.stderr
    assert 'exec: "no-such-command": executable file not found in $PATH' in lines[0]
    assert r.stdout == ""  # the engine's message is the error, not the command's output


def test_exec_errors(cluster: Cluster) -> None:
    r = cluster.kubectl("exec", "no-such-pod", "--", "true")
    assert r.returncode == 1 and 'pods "no-such-pod" not found' in r.stderr, r.stderr
    r = cluster.kubectl("exec", "web", "-c", "nope", "--", "true")
    assert r.returncode == 1
    assert r.stderr.strip() == "Error from server (BadRequest): container nope is not valid for pod web"
    r = cluster.kubectl("exec", "unbound", "--", "true")
    assert r.returncode == 1
    assert r.stderr.strip() == "Error from server (BadRequest): pod unbound does not have a host assigned"
    r = cluster.kubectl("exec", "ondead", "--", "true")
    assert r.returncode == 1
    assert r.stderr.startswith("Error from server (ServiceUnavailable): cannot reach the agent of node "
                               f'"{cluster.dead_node}"'), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_exec_api_statuses(cluster: Cluster) -> None:
    """The raw API: the WebSocket refusals are Statuses with upstream's codes; a plain request is a 400."""
    port = cluster.srv.port

    def ws_refusal(path: str) -> tuple[int, dict[str, Any]]:
        with pytest.raises(websocket.HandshakeError) as e:
            websocket.connect("127.0.0.1", port, path, subprotocols=["v5.channel.k8s.io"])
        import json
        return e.value.status, json.loads(e.value.body)

    base = f"/api/v1/namespaces/{NS}/pods"
    status, body = ws_refusal(f"{base}/nope/exec?command=true&stdout=true")
    assert (status, body["kind"], body["reason"], body["code"]) == (404, "Status", "NotFound", 404)
    assert body["message"] == 'pods "nope" not found'
    status, body = ws_refusal(f"{base}/two/exec?command=true&stdout=true")
    assert (status, body["message"]) == (400, "a container name must be specified for pod two, choose one of: [a b]")
    status, body = ws_refusal(f"{base}/web/exec?command=true&stdout=maybe")
    assert status == 400 and "stdout='maybe' is not a boolean" in body["message"]
    status, body = ws_refusal(f"{base}/ondead/attach?stdout=true")
    assert (status, body["reason"]) == (503, "ServiceUnavailable")
    for method in ("GET", "POST"):  # no upgrade at all: upstream's 400
        r = httpx.request(method, f"{cluster.srv.url}{base}/web/exec", params={"command": "true", "stdout": "true"})
        assert (r.status_code, r.json()["message"]) == (400, "Upgrade request required")
    r = httpx.request("POST", f"{cluster.srv.url}{base}/nope/exec", params={"command": "true"})
    assert r.status_code == 404


def test_exec_v4_subprotocol_and_status(cluster: Cluster) -> None:
    """v4.channel.k8s.io through the apiserver: output on channel 1, the Status on channel 3, a normal close."""
    path = f"/api/v1/namespaces/{NS}/pods/web/exec?command=sh&command=-c&command=echo+hi;+exit+2&stdout=true"
    ws = websocket.connect("127.0.0.1", cluster.srv.port, path, subprotocols=["v4.channel.k8s.io"])
    try:
        assert ws.subprotocol == "v4.channel.k8s.io"
        got: dict[int, bytes] = {}
        while (msg := ws.recv()) is not None:
            got[msg.data[0]] = got.get(msg.data[0], b"") + msg.data[1:]
        import json
        status = json.loads(got[3])
        assert got[1] == b"hi\n"
        assert (status["status"], status["reason"], status["details"]["causes"]) == (
            "Failure", "NonZeroExitCode", [{"reason": "ExitCode", "message": "2"}])
        assert ws.close_code == 1000
    finally:
        ws.abort()


def test_killed_kubectl_ends_the_session(cluster: Cluster) -> None:
    """kubectl gone mid-session -> the relay and the agent close the engine connection -> `cat` gets EOF."""
    assert KUBECTL
    marker = f"/tmp/cat-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([KUBECTL, *cluster.kubectl_args(), "exec", "-i", "web", "--", "sh", "-c",
                             f"touch {marker}; exec cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    cid = cluster.container_id("web", "app")
    docker = cluster.node.runtime.api

    def cats() -> int:
        return sum(1 for p in docker.top(cid)["Processes"] if p[-1] == "cat")
    try:
        wait_for(lambda: cluster.kubectl("exec", "web", "--", "test", "-e", marker).returncode == 0, 20,
                 "the exec'd command to start")
        assert cats() == 1
    finally:
        proc.kill()
        proc.wait(10)
    wait_for(lambda: cats() == 0, 20, "the exec'd cat to end after kubectl was killed")


# -- cp --------------------------------------------------------------------------------------


def test_cp_both_directions(cluster: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "hello.txt").write_text("hello from the host\n")
    blob = os.urandom(200_000)
    (src / "sub" / "blob.bin").write_bytes(blob)
    r = cluster.kubectl("cp", str(src), "web:/tmp/copied")
    assert r.returncode == 0, r.stderr
    r = cluster.kubectl("exec", "web", "--", "cat", "/tmp/copied/hello.txt")
    assert r.stdout == "hello from the host\n", r.stderr
    r = cluster.kubectl("exec", "web", "--", "sha256sum", "/tmp/copied/sub/blob.bin")
    assert r.stdout.split()[0] == hashlib.sha256(blob).hexdigest(), r.stderr
    back = tmp_path / "back"
    r = cluster.kubectl("cp", "web:/tmp/copied", str(back))
    assert r.returncode == 0, r.stderr
    assert (back / "hello.txt").read_text() == "hello from the host\n"
    assert (back / "sub" / "blob.bin").read_bytes() == blob
    r = cluster.kubectl("cp", "web:/etc/hostname", str(tmp_path / "hostname"))
    assert r.returncode == 0 and (tmp_path / "hostname").read_text() == "web\n", r.stderr


# -- attach ----------------------------------------------------------------------------------


def test_attach_to_a_stdin_container(cluster: Cluster) -> None:
    """Not a terminal: kubectl's stdin reaches the container's stdin, its output comes back."""
    assert KUBECTL
    proc = subprocess.Popen([KUBECTL, *cluster.kubectl_args(), "attach", "-i", "echoer"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin and proc.stdout
        proc.stdin.write(b"one\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"got-one\n"
        proc.stdin.write(b"two\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"got-two\n"
    finally:
        proc.kill()
        proc.wait(10)
    r = cluster.kubectl("attach", "web", "-i")  # a container without stdin: a clear refusal, no hang
    assert r.returncode == 1
    assert "does not take stdin" in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr


# -- terminals under tmux --------------------------------------------------------------------


class Tmux:
    """A tmux session of our own (unique name), killed by that name."""

    def __init__(self, command: str, width: int, height: int) -> None:
        assert TMUX
        self.name = f"klt-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        subprocess.run([TMUX, "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), command],
                       check=True, timeout=10)
        subprocess.run([TMUX, "set-option", "-t", self.name, "remain-on-exit", "on"], check=True, timeout=10)

    def keys(self, *keys: str) -> None:
        assert TMUX
        subprocess.run([TMUX, "send-keys", "-t", self.name, *keys], check=True, timeout=10)

    def screen(self) -> str:
        assert TMUX
        return subprocess.run([TMUX, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True,
                              timeout=10).stdout

    def resize(self, width: int, height: int) -> None:
        assert TMUX
        subprocess.run([TMUX, "resize-window", "-t", self.name, "-x", str(width), "-y", str(height)], check=True,
                       timeout=10)

    def wait_screen(self, text: str, what: str) -> str:
        def shown() -> str:
            screen = self.screen()
            return screen if text in screen else ""
        try:
            return wait_for(shown, 20, f"{what}: {text!r} on screen")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- screen ---\n{self.screen()}") from None

    def kill(self) -> None:
        assert TMUX
        subprocess.run([TMUX, "kill-session", "-t", self.name], capture_output=True, timeout=10)


needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


def _kubectl_line(cluster: Cluster, *args: str) -> str:
    assert KUBECTL
    cmd = " ".join([KUBECTL, *cluster.kubectl_args(), *args])
    return f"{cmd}; echo kubectl-exit=$?"


@needs_tmux
def test_exec_tty_under_tmux_with_resize(cluster: Cluster) -> None:
    t = Tmux(_kubectl_line(cluster, "exec", "-it", "web", "--", "sh"), 100, 30)
    try:
        t.keys("echo tty-$((40+2))", "Enter")
        t.wait_screen("tty-42", "the shell's answer")
        t.keys("stty size", "Enter")
        t.wait_screen("30 100", "the terminal size")
        t.resize(120, 40)
        t.keys("clear; stty size", "Enter")
        t.wait_screen("40 120", "the new size after resize-window")
        t.keys("tty", "Enter")
        t.wait_screen("/dev/pts/", "a pseudo-terminal in the container")
        t.keys("exit 5", "Enter")
        t.wait_screen("kubectl-exit=5", "kubectl ending with the shell's exit code")
    finally:
        t.kill()


@needs_tmux
def test_attach_tty_under_tmux(cluster: Cluster) -> None:
    t = Tmux(_kubectl_line(cluster, "attach", "-it", "term"), 90, 25)
    try:
        t.wait_screen("If you don't see a command prompt, try pressing enter.", "kubectl attach's hint")
        t.keys("Enter")
        t.keys("echo attached-$((2+3))", "Enter")
        t.wait_screen("attached-5", "the container's shell answering")
        t.keys("stty size", "Enter")
        t.wait_screen("25 90", "the terminal size sent on attach")
    finally:
        t.kill()


def test_agent_and_apiserver_stay_up(cluster: Cluster) -> None:
    node = cluster.node.client.get("nodes", cluster.node.name)
    endpoint = node["metadata"]["annotations"]["kubeling.io/agent-endpoint"]
    assert httpx.get(f"http://{endpoint}/healthz").text == "ok\n"
    assert cluster.node.proc is not None and cluster.node.proc.poll() is None
    r = cluster.kubectl("exec", "web", "--", "echo", "still-here")
    assert r.stdout == "still-here\n"
