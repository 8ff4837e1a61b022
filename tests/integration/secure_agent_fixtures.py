"""A secure node for tests: a TLS apiserver (ApiServer(secure=True)), the node's certificates from its PKI
(`kubeling pki node`), and the agent as a process (`python -m agent.main`) with its node kubeconfig and
HTTPS + client-certificate authentication, in a network namespace of the test.

    def test_x(secure_node: SecureNode) -> None:
        secure_node.admin            # kube Client as the cluster admin
        secure_node.agent_url        # https://127.0.0.1:PORT (the agent API)
        secure_node.agent_http(cert=("ca-signed.crt", "key"))   # httpx client verifying the agent

Everything is removed at the end by recorded name, ID or PID: the agent process, containers labelled
with our node, pod netns files named after our node, tmpfs mounts below our root dir, our namespace.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_fixtures import needs_agent_env  # noqa: F401  (re-exported for the tests)
from apiserver_proc import ApiServer
from cni_fixtures import NETNS_DIR, Namespaces, sh
from polling import wait_for

from agent import runtime as rt
from agent.sandbox import unbind_netns
from agent.volumes import TmpfsMounter, unmount_all
from kube import pki
from kube.client import Client

REPO = Path(__file__).resolve().parents[2]
POD_CIDR = "10.244.9.0/24"
_nodes = itertools.count()


@dataclass
class SecureNode:
    name: str
    netns: str
    root: str
    api: ApiServer
    admin: Client
    proc: subprocess.Popen[bytes] | None = None
    endpoint: str = ""
    extra_args: list[str] = field(default_factory=list)

    @property
    def pki_dir(self) -> str:
        return self.api.pki_dir

    @property
    def node_dir(self) -> str:
        return pki.node_dir(self.pki_dir, self.name)

    @property
    def agent_url(self) -> str:
        return f"https://{self.endpoint}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "agent.log")

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def argv(self, *extra: str) -> list[str]:
        d = self.node_dir
        return [sys.executable, "-m", "agent.main", "--node-name", self.name,
                "--kubeconfig", os.path.join(d, "kubeconfig"), "--node-netns", self.netns, "--pod-cidr", POD_CIDR,
                "--root-dir", self.root, "--listen", "127.0.0.1:0", "--node-ip", "127.0.0.1",
                "--healthz-port", "0", "--tls-cert-file", os.path.join(d, "serving.crt"),
                "--tls-private-key-file", os.path.join(d, "serving.key"),
                "--client-ca-file", os.path.join(self.pki_dir, "ca.crt"), *extra]

    def start(self, *extra: str) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv(*extra), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

        def endpoint() -> str:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                node = self.admin.get("nodes", self.name)
            except Exception:  # noqa: BLE001 - not registered yet
                return ""
            return str(((node.get("metadata") or {}).get("annotations") or {}).get("kubeling.io/agent-endpoint", ""))
        self.endpoint = wait_for(endpoint, 20, "the agent to register its Node with its endpoint")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def client_context(self, cert: tuple[str, str] | None) -> ssl.SSLContext:
        """Verifies the agent's serving certificate with the cluster CA; presents cert (crt, key) if given."""
        ctx = ssl.create_default_context(cafile=os.path.join(self.pki_dir, "ca.crt"))
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx

    def agent_http(self, cert: tuple[str, str] | None) -> httpx.Client:
        return httpx.Client(base_url=self.agent_url, verify=self.client_context(cert), timeout=10, trust_env=False)

    def cert(self, stem: str) -> tuple[str, str]:
        return os.path.join(self.pki_dir, stem + ".crt"), os.path.join(self.pki_dir, stem + ".key")

    def pod_netns_files(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(self.name + "-"))
        except FileNotFoundError:
            return []

    def mounts(self) -> list[str]:
        return TmpfsMounter().mounts_under(self.root)

    def cleanup(self) -> None:
        self.stop()
        runtime = rt.DockerRuntime()
        for cid in runtime.list_ids({rt.L_NODE: self.name}):
            runtime.remove(cid)  # only containers labelled with our node
        for n in self.pod_netns_files():
            unbind_netns(n)
        unmount_all(self.root)  # tmpfs volumes of pods still there when the test ended


@pytest.fixture
def secure_node(apiserver_factory: Callable[..., ApiServer]) -> Iterator[SecureNode]:
    from agent.images import ensure_images
    ensure_images()
    api = apiserver_factory(secure=True)
    nss = Namespaces()
    name = f"klt-{os.getpid()}-sec{next(_nodes)}"
    netns = nss.new("secnode")
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    root = tempfile.mkdtemp(prefix=f"{name}-")
    pki.add_node(api.pki_dir, name, "127.0.0.1", server=api.url)
    node = SecureNode(name=name, netns=netns, root=root, api=api, admin=api.client())
    try:
        # what the serviceaccount controller would make (no controller-manager runs here)
        node.admin.create("serviceaccounts", {"metadata": {"name": "default"}}, "default")
        yield node
    finally:
        try:
            node.cleanup()
            node.admin.close()
        finally:
            nss.cleanup()
            if not node.mounts():
                shutil.rmtree(root, ignore_errors=True)


def issue_user_cert(node: SecureNode, stem: str, cn: str, orgs: tuple[str, ...] = ()) -> tuple[str, str]:
    """A client certificate of the cluster CA for another user (written into the PKI dir)."""
    d = pki.PKIDir(node.pki_dir)
    return d.ensure_cert(pki.CertSpec(stem, cn, orgs, client=True))


def create_pod(client: Client, node: SecureNode, name: str, containers: list[dict[str, Any]],
               namespace: str = "default", **spec: Any) -> dict[str, Any]:
    for c in containers:
        c.setdefault("image", "kubeling/test:1")
    return dict(client.create("pods", {"metadata": {"name": name}, "spec": {
        "nodeName": node.name, "terminationGracePeriodSeconds": 1, "containers": containers, **spec}}, namespace))


def running(client: Client, name: str, namespace: str = "default") -> dict[str, Any] | None:
    p = client.get("pods", name, namespace)
    sts = (p.get("status") or {}).get("containerStatuses") or []
    return dict(p) if sts and all("running" in (s.get("state") or {}) for s in sts) else None
