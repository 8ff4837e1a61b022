"""`kubectl logs` end to end: real kubectl -> real apiserver -> an AgentServer with a fake logs callable.

The pods are bound to a Node object that carries the kubeling.io/agent-endpoint annotation of the
AgentServer on 127.0.0.1; no containers run."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apiserver_proc import ApiServer, free_port
from polling import wait_for

from agent.server import AgentServer
from kube.client import Client

KUBECTL = shutil.which("kubectl")
NS = "default"


class FakeLogs:
    """Canned logs per (namespace, pod, container); follow streams what feed() is given."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, str, str], list[str]] = {}
        self.previous: dict[tuple[str, str, str], list[str]] = {}
        self.calls: list[dict[str, Any]] = []
        self.follow_q: queue.Queue[str | None] = queue.Queue()
        self.closed_streams = 0

    def __call__(self, namespace: str, pod: str, container: str, **kw: Any) -> Iterator[bytes]:
        self.calls.append({"namespace": namespace, "pod": pod, "container": container, **kw})
        key = (namespace, pod, container)
        source = self.previous if kw["previous"] else self.logs
        if key not in source:
            raise KeyError(f'container "{container}" in pod "{pod}" is not known to this agent')
        lines = source[key]
        if kw["tail_lines"] is not None:
            lines = lines[len(lines) - kw["tail_lines"]:] if kw["tail_lines"] else []
        return self._stream(lines, kw["follow"])

    def _stream(self, lines: list[str], follow: bool) -> Iterator[bytes]:
        try:
            for line in lines:
                yield (line + "\n").encode()
            while follow:
                item = self.follow_q.get()
                if item is None:
                    return
                yield (item + "\n").encode()
        finally:
            self.closed_streams += 1


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("podlogs")
    srv = ApiServer(d / "data")
    srv.start()
    fake = FakeLogs()
    agent = AgentServer("127.0.0.1:0", pods=lambda: [], logs=fake).start()
    client = Client.from_kubeconfig(srv.kubeconfig)
    node = f"logs-node-{uuid.uuid4().hex[:6]}"
    client.create("nodes", {"metadata": {"name": node, "annotations": {"kubeling.io/agent-endpoint": agent.endpoint}}})
    # a node whose agent does not answer (a closed loopback port)
    dead = f"dead-node-{uuid.uuid4().hex[:6]}"
    client.create("nodes", {"metadata": {"name": dead,
                                         "annotations": {"kubeling.io/agent-endpoint": f"127.0.0.1:{free_port()}"}}})
    try:
        yield {"srv": srv, "fake": fake, "agent": agent, "client": client, "node": node, "dead": dead,
               "cache": str(d / "kubectl-cache")}
    finally:
        fake.follow_q.put(None)
        agent.stop()
        client.close()
        srv.stop()


def make_pod(env: dict[str, Any], containers: list[str], node: str | None = None) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    env["client"].create("pods", {"metadata": {"name": name}, "spec": {
        "nodeName": node or env["node"],
        "containers": [{"name": c, "image": "busybox"} for c in containers]}}, NS)
    return name


def kubectl(env: dict[str, Any], *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    assert KUBECTL
    return subprocess.run([KUBECTL, "--kubeconfig", env["srv"].kubeconfig, "--cache-dir", env["cache"],
                           "-n", NS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "KUBECONFIG": env["srv"].kubeconfig})


needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@needs_kubectl
def test_logs_single_container(env: dict[str, Any]) -> None:
    pod = make_pod(env, ["app"])
    env["fake"].logs[(NS, pod, "app")] = ["one", "two", "three"]
    r = kubectl(env, "logs", pod)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "one\ntwo\nthree\n"


@needs_kubectl
def test_logs_container_flag_tail_previous(env: dict[str, Any]) -> None:
    pod = make_pod(env, ["a", "b"])
    fake = env["fake"]
    fake.logs[(NS, pod, "a")] = ["a1"]
    fake.logs[(NS, pod, "b")] = ["b1", "b2", "b3", "b4"]
    fake.previous[(NS, pod, "b")] = ["before the restart"]
    r = kubectl(env, "logs", pod, "-c", "b")
    assert (r.returncode, r.stdout) == (0, "b1\nb2\nb3\nb4\n"), r.stderr
    r = kubectl(env, "logs", pod, "-c", "b", "--tail=2", "--timestamps")
    assert (r.returncode, r.stdout) == (0, "b3\nb4\n"), r.stderr
    call = fake.calls[-1]
    assert (call["tail_lines"], call["timestamps"], call["follow"], call["previous"]) == (2, True, False, False)
    r = kubectl(env, "logs", pod, "-c", "b", "--previous")
    assert (r.returncode, r.stdout) == (0, "before the restart\n"), r.stderr
    r = kubectl(env, "logs", pod, "-c", "b", "--limit-bytes=4", "--since=1h")
    assert (r.returncode, r.stdout) == (0, "b1\nb"), r.stderr
    assert (fake.calls[-1]["limit_bytes"], fake.calls[-1]["since_seconds"]) == (4, 3600)
    # kubectl picks the first container itself when none is given
    r = kubectl(env, "logs", pod)
    assert (r.returncode, r.stdout) == (0, "a1\n"), r.stderr


@needs_kubectl
def test_logs_follow_streams(env: dict[str, Any]) -> None:
    pod = make_pod(env, ["app"])
    fake = env["fake"]
    fake.logs[(NS, pod, "app")] = ["old"]
    assert KUBECTL
    proc = subprocess.Popen([KUBECTL, "--kubeconfig", env["srv"].kubeconfig, "--cache-dir", env["cache"],
                             "-n", NS, "logs", "-f", pod], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout
        for line in proc.stdout:
            got.put(line.rstrip("\n"))
    threading.Thread(target=read, daemon=True).start()
    try:
        assert got.get(timeout=10) == "old"
        for i in range(3):  # each line arrives as it is written, not at the end
            fake.follow_q.put(f"new {i}")
            assert got.get(timeout=10) == f"new {i}"
        assert proc.poll() is None
        closed = fake.closed_streams
        proc.kill()
        proc.wait(5)

        def agent_stream_closed() -> bool:  # kubectl gone -> apiserver drops the agent stream -> it ends
            fake.follow_q.put("nobody reads this")
            return fake.closed_streams > closed
        wait_for(agent_stream_closed, what="the agent's follow stream to end after kubectl left")
    finally:
        proc.kill()
        proc.wait(5)


def test_logs_api_direct(env: dict[str, Any]) -> None:
    """The raw API: container choice and parameter errors as upstream words them."""
    srv: ApiServer = env["srv"]
    pod = make_pod(env, ["a", "b"])
    env["fake"].logs[(NS, pod, "a")] = ["x"]
    base = f"{srv.url}/api/v1/namespaces/{NS}/pods/{pod}/log"
    r = httpx.get(base)
    assert r.status_code == 400
    assert r.json()["message"] == f"a container name must be specified for pod {pod}, choose one of: [a b]"
    r = httpx.get(base, params={"container": "zz"})
    assert (r.status_code, r.json()["message"]) == (400, f"container zz is not valid for pod {pod}")
    r = httpx.get(base, params={"container": "a", "tailLines": "x"})
    assert r.status_code == 400 and "tailLines" in r.json()["message"]
    r = httpx.get(base, params={"container": "a"})
    assert (r.status_code, r.text) == (200, "x\n")
    assert r.headers["content-type"].startswith("text/plain")
    r = httpx.get(base, params={"container": "b"})  # the agent does not know b: 404 with its message
    assert r.status_code == 404 and "is not known to this agent" in r.json()["message"]


@needs_kubectl
def test_logs_errors_are_one_line(env: dict[str, Any]) -> None:
    r = kubectl(env, "logs", "no-such-pod")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and 'pods "no-such-pod" not found' in r.stderr, r.stderr
    pod = make_pod(env, ["app"])
    r = kubectl(env, "logs", pod, "-c", "nope")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"container nope is not valid for pod {pod}" in r.stderr, r.stderr
    r = kubectl(env, "logs", pod)  # the agent knows no such container
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("Error from server (NotFound):"), r.stderr
    dead = make_pod(env, ["app"], node=env["dead"])
    r = kubectl(env, "logs", dead)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("Error from server (ServiceUnavailable): cannot reach the agent of node"), r.stderr
    env["client"].create("pods", {"metadata": {"name": "unbound"}, "spec": {
        "containers": [{"name": "c", "image": "busybox"}]}}, NS)
    r = kubectl(env, "logs", "unbound")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'pod "unbound" does not have a host assigned' in r.stderr, r.stderr


def test_agent_stays_up(env: dict[str, Any]) -> None:
    wait_for(lambda: httpx.get(f"http://{env['agent'].endpoint}/healthz").text == "ok\n", what="agent healthz")

