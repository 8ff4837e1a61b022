"""A node for agent tests: a node network namespace of the test, a real apiserver, an agent.

Names carry a per-run prefix (klt-<pid>-ag...): the node name, its network namespace and,
through the node name, every pod netns.  Every container the agent makes carries the labels
io.kubeling.pod-uid and io.kubeling.node=<our node>; the finalizer removes those (by ID, only
with our node label), unmounts our pod netns files and deletes our namespaces, also on failure.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cni_fixtures import NETNS_DIR, Namespaces, sh

from agent import runtime as rt
from agent.agent import Agent
from agent.main import _hooks, cni_conf_for
from agent.sandbox import SandboxManager, unbind_netns
from kube.client import Client

REPO = Path(__file__).resolve().parents[2]
POD_CIDR = "10.244.7.0/24"
TEST_IMAGE = "kubeling/test:1"
_nodes = itertools.count()


def _docker_ok() -> bool:
    try:
        import docker
        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


needs_agent_env = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None or not _docker_ok()
    or not os.path.exists("/usr/bin/busybox"),
    reason="needs root, iproute2, nsenter, a running Docker engine and busybox-static")


@dataclass
class Node:
    name: str
    netns: str
    root: str
    kubeconfig: str
    client: Client
    runtime: rt.DockerRuntime
    agent: Agent | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    extra_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_agent(self, workers: int = 8) -> Agent:
        sandboxes = SandboxManager(self.runtime, self.name, self.root, node_netns=self.netns,
                                   cni_conf=lambda: cni_conf_for(POD_CIDR, os.path.join(self.root, "cni")))
        hooks = _hooks(self.client, self.root, self.netns,
                       on_probe_change=lambda uid, *_: self.agent.queue.add(uid) if self.agent else None)
        self.agent = Agent(self.client, self.name, self.runtime, sandboxes, hooks=hooks, host_ip="10.0.0.1",
                           workers=workers, relist_period=0.5)
        return self.agent.start()

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None

    def start_process(self) -> subprocess.Popen[bytes]:
        """The agent as a subprocess (`python -m agent.main`), for SIGKILL tests."""
        self.log_path = os.path.join(self.root, "agent.log")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.main", "--node-name", self.name, "--kubeconfig", self.kubeconfig,
                 "--node-netns", self.netns, "--pod-cidr", POD_CIDR, "--root-dir", self.root,
                 "--listen", "127.0.0.1:0", "--node-ip", "10.0.0.1"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        return self.proc

    def kill_process(self, sig: int = signal.SIGKILL) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait(10)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def ours(self) -> list[rt.ContainerInfo]:
        return self.runtime.containers({rt.L_NODE: self.name})

    def pod_netns_files(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(self.name + "-"))
        except FileNotFoundError:
            return []

    def cleanup(self) -> None:
        self.stop_agent()
        self.kill_process()
        for p in self.extra_procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
        for cid in self.runtime.list_ids({rt.L_NODE: self.name}):
            self.runtime.remove(cid)  # only containers labelled with our node
        for n in self.pod_netns_files():
            unbind_netns(n)
        self.client.close()


def nsexec(node: Node, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return sh("nsenter", f"--net={NETNS_DIR}/{node.netns}", *argv, check=False, timeout=timeout)


@pytest.fixture
def node(apiserver: Any) -> Iterator[Node]:
    from agent.images import ensure_images
    ensure_images()
    logging.getLogger("kubeling").setLevel(logging.INFO)
    nss = Namespaces()
    n = next(_nodes)
    name = f"klt-{os.getpid()}-ag{n}"
    netns = nss.new("agnode")
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    root = tempfile.mkdtemp(prefix=f"{name}-")
    nd = Node(name=name, netns=netns, root=root, kubeconfig=apiserver.kubeconfig,
              client=Client.from_kubeconfig(apiserver.kubeconfig), runtime=rt.DockerRuntime())
    try:
        yield nd
    finally:
        try:
            nd.cleanup()
        finally:
            nss.cleanup()
            shutil.rmtree(root, ignore_errors=True)


def pod_manifest(node: Node, name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    for c in containers:
        c.setdefault("image", TEST_IMAGE)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node.name, "containers": containers, **spec}}


def get_pod(node: Node, name: str) -> dict[str, Any]:
    return dict(node.client.get("pods", name, "default"))


def cstatus(pod: dict[str, Any], cname: str) -> dict[str, Any]:
    for s in (pod.get("status") or {}).get("containerStatuses") or []:
        if s["name"] == cname:
            return dict(s)
    return {}


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def ready_pod(node: Node, name: str) -> dict[str, Any] | None:
    p = get_pod(node, name)
    return p if is_ready(p) else None


def http_from_node(node: Node, ip: str, port: int) -> str | None:
    """GET / over plain TCP from inside the node namespace (busybox nc; its wget segfaults here)."""
    r = subprocess.run(["nsenter", f"--net={NETNS_DIR}/{node.netns}", "busybox", "nc", "-w", "2", ip, str(port)],
                       input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=10)
    return r.stdout if r.returncode == 0 and r.stdout else None
