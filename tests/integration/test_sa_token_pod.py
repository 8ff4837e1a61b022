"""Service-account tokens in pods, secret volumes on tmpfs, end to end on a secure node.

A TLS apiserver, an agent with its node identity (so the node authorizer decides its TokenRequests) and
a pod whose ServiceAccount has a Role (get/list pods in its namespace). Inside the pod's container: the
projected token, ca.crt and namespace (read-only), KUBERNETES_SERVICE_HOST/PORT, a 0400 secret file.
From the pod's network namespace (a short-lived child of the test in it, with kube.client's in-cluster
config over the projected files): the token may get pods in its namespace and nothing else. The pod
reaches the apiserver at 10.96.0.1:443 as a pod does: that address is put on the loopback of the
test's node namespace, where a listening socket made inside that namespace (passed back to the test
over a unix socket) relays to the apiserver on the machine's 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from cni_fixtures import NETNS_DIR, sh
from polling import wait_for
from secure_agent_fixtures import REPO, SecureNode, create_pod, needs_agent_env, running
from secure_agent_fixtures import secure_node as secure_node  # the fixture

from agent import runtime as rt
from agent.sandbox import netns_name
from agent.volumes import PROJECTED, SA_MOUNT_PATH, SA_VOLUME, SECRET, TMPFS_SOURCE, parse_mountinfo
from kube.client import ApiError, Client, load_kubeconfig

pytestmark = [needs_agent_env, pytest.mark.docker, pytest.mark.netns]

SERVICE_IP = "10.96.0.1"  # default/kubernetes: the first IP of the apiserver's --service-cidr
NS, OTHER = "team-a", "team-b"

_LISTEN_CHILD = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[3])))
s.listen(16)
socket.send_fds(socket.socket(fileno=int(sys.argv[1])), [b"l"], [s.fileno()])
"""

_IN_POD = """
import json, sys
from kube.client import ApiError, Client, in_cluster_config
out = {}
with Client(in_cluster_config(token_dir=sys.argv[1]), max_retries=0) as c:
    def code(fn):
        try:
            fn()
            return 200
        except ApiError as e:
            return e.code
    out["namespace"] = c.namespace
    out["get_own_pod"] = code(lambda: c.get("pods", "app"))
    out["list_pods"] = code(lambda: c.list("pods", c.namespace))
    out["list_secrets"] = code(lambda: c.list("secrets", c.namespace))
    out["list_all_pods"] = code(lambda: c.list("pods"))
    out["other_namespace"] = code(lambda: c.list("pods", "team-b"))
    out["whoami"] = c.create("selfsubjectreviews", {"apiVersion": "authentication.k8s.io/v1",
                                                    "kind": "SelfSubjectReview", "metadata": {}})["status"]["userInfo"]
print(json.dumps(out))
"""


class Relay:
    """SERVICE_IP:443 inside the node namespace -> 127.0.0.1:port of the machine (bytes, both ways)."""

    def __init__(self, netns: str, port: int) -> None:
        self.port = port
        sh("ip", "-n", netns, "addr", "add", f"{SERVICE_IP}/32", "dev", "lo")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            subprocess.run(["nsenter", f"--net={NETNS_DIR}/{netns}", sys.executable, "-c", _LISTEN_CHILD,
                            str(theirs.fileno()), SERVICE_IP, "443"], pass_fds=[theirs.fileno()], check=True,
                           timeout=15, capture_output=True)
            _msg, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
        finally:
            ours.close()
            theirs.close()
        self.listener = socket.socket(fileno=fds[0])
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, name="relay", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            up.settimeout(None)
            self.conns += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.listener.close()
        self.thread.join(5)
        for c in self.conns:
            with suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


def docker_exec(container_id: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "exec", container_id, *argv], capture_output=True, text=True, timeout=20)


def container_of(n: SecureNode, pod: dict[str, Any]) -> str:
    ids = [c.id for c in rt.DockerRuntime().containers({rt.L_NODE: n.name, rt.L_POD_UID: pod["metadata"]["uid"]})
           if c.labels.get(rt.L_KIND) != "sandbox" and c.running]
    assert len(ids) == 1, ids
    return ids[0]


def tmpfs_mounts(under: str) -> dict[str, str]:
    """mount point -> source of our tmpfs mounts below `under`."""
    with open("/proc/self/mountinfo") as f:
        return {mp: src for mp, fstype, src in parse_mountinfo(f.read())
                if fstype == "tmpfs" and mp.startswith(os.path.realpath(under) + "/")}


def setup_rbac(admin: Client) -> None:
    for ns in (NS, OTHER):
        admin.create("namespaces", {"metadata": {"name": ns}})
    for sa, extra in (("reader", {}), ("quiet", {"automountServiceAccountToken": False})):
        admin.create("serviceaccounts", {"metadata": {"name": sa}, **extra}, NS)
    admin.create("roles", {"metadata": {"name": "pod-reader"},
                           "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}, NS)
    admin.create("rolebindings", {"metadata": {"name": "reader-reads-pods"},
                                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                              "name": "pod-reader"},
                                  "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}]}, NS)
    admin.create("secrets", {"metadata": {"name": "db"}, "stringData": {"password": "s3cret"}}, NS)


def test_pod_token_does_what_its_role_allows_and_nothing_else(secure_node: SecureNode) -> None:
    n = secure_node
    setup_rbac(n.admin)
    n.start()
    relay = Relay(n.netns, n.api.port)
    try:
        app = create_pod(n.admin, n, "app", [{"name": "c", "command": ["sleep", "3600"],
                                             "volumeMounts": [{"name": "db", "mountPath": "/etc/db"}]}],
                         namespace=NS, serviceAccountName="reader",
                         volumes=[{"name": "db", "secret": {"secretName": "db"}}])
        create_pod(n.admin, n, "optout", [{"name": "c", "command": ["sleep", "3600"]}], namespace=NS,
                   serviceAccountName="reader", automountServiceAccountToken=False)
        create_pod(n.admin, n, "quiet", [{"name": "c", "command": ["sleep", "3600"]}], namespace=NS,
                   serviceAccountName="quiet")
        for name in ("app", "optout", "quiet"):
            wait_for(lambda name=name: running(n.admin, name, NS), 60, f"pod {name} running")  # type: ignore[misc]
        app = n.admin.get("pods", "app", NS)
        cid = container_of(n, app)

        # what the container sees
        files = {f: docker_exec(cid, "cat", f"{SA_MOUNT_PATH}/{f}").stdout for f in ("token", "ca.crt", "namespace")}
        assert files["namespace"] == NS
        assert files["ca.crt"] == Path(n.pki_dir, "ca.crt").read_text()
        assert files["token"].count(".") == 2  # a JWT
        assert docker_exec(cid, "sh", "-c", f"echo x > {SA_MOUNT_PATH}/token").returncode != 0  # read-only
        env = dict(line.split("=", 1) for line in docker_exec(cid, "env").stdout.splitlines() if "=" in line)
        assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (SERVICE_IP, "443")
        assert env["KUBERNETES_PORT_443_TCP"] == f"tcp://{SERVICE_IP}:443"
        assert docker_exec(cid, "cat", "/etc/db/password").stdout == "s3cret"
        assert docker_exec(cid, "stat", "-L", "-c", "%a", "/etc/db/password").stdout.strip() == "400"
        for name in ("optout", "quiet"):  # automountServiceAccountToken false on the pod / on its ServiceAccount
            other = container_of(n, n.admin.get("pods", name, NS))
            assert docker_exec(other, "ls", SA_MOUNT_PATH).returncode != 0, name

        # the host side: secret and token volumes are tmpfs mounts of ours, nothing on the disk
        vol_dir = Path(n.root, "pods", "pods", app["metadata"]["uid"], "volumes")
        sa_dir, secret_dir = vol_dir / PROJECTED / SA_VOLUME, vol_dir / SECRET / "db"
        mounts = tmpfs_mounts(n.root)
        assert mounts.get(str(sa_dir.resolve())) == TMPFS_SOURCE and mounts.get(str(secret_dir.resolve())) == \
            TMPFS_SOURCE, mounts
        assert (sa_dir / "token").read_text() == files["token"]
        # the container's mount is that live tmpfs: what the agent writes later (a refreshed token) shows
        (sa_dir / "probe").write_text("live")
        assert docker_exec(cid, "cat", f"{SA_MOUNT_PATH}/probe").stdout == "live"
        (sa_dir / "probe").unlink()
        pids = subprocess.run(["docker", "inspect", "-f", "{{.HostConfig.PidsLimit}}", cid], capture_output=True,
                              text=True, timeout=20).stdout.strip()
        assert pids == "4096"  # --pod-max-pids' default

        # from the pod's network namespace, with the in-cluster config over what the container sees
        netns = netns_name(n.name, app["metadata"]["uid"])
        child = subprocess.run(["nsenter", f"--net={NETNS_DIR}/{netns}", sys.executable, "-c", _IN_POD, str(sa_dir)],
                               cwd=REPO, capture_output=True, text=True, timeout=30,
                               env={**os.environ, "KUBERNETES_SERVICE_HOST": env["KUBERNETES_SERVICE_HOST"],
                                    "KUBERNETES_SERVICE_PORT": env["KUBERNETES_SERVICE_PORT"]})
        assert child.returncode == 0, child.stderr
        got = json.loads(child.stdout)
        assert got["namespace"] == NS
        assert (got["get_own_pod"], got["list_pods"]) == (200, 200)
        assert (got["list_secrets"], got["other_namespace"], got["list_all_pods"]) == (403, 403, 403)
        assert got["whoami"]["username"] == f"system:serviceaccount:{NS}:reader"
        assert got["whoami"]["extra"]["authentication.kubernetes.io/pod-name"] == ["app"]

        # the token is bound to the pod: it dies with it; the pod's tmpfs mounts go with it too
        token = files["token"]
        n.admin.delete("pods", "app", NS)
        wait_for(lambda: not _exists(n.admin, "app"), 30, "pod app deleted")
        with httpx.Client(base_url=n.api.url, verify=ssl.create_default_context(cafile=f"{n.pki_dir}/ca.crt"),
                          timeout=10) as h:
            assert h.get(f"/api/v1/namespaces/{NS}/pods",
                         headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert not any(m.startswith(str(vol_dir.resolve())) for m in tmpfs_mounts(n.root))
        assert not vol_dir.exists()
    finally:
        relay.close()


def test_restarted_agent_unmounts_what_deleted_pods_left(secure_node: SecureNode) -> None:
    """Agent killed (SIGKILL), pod force-deleted meanwhile: the new agent finds its containers, netns and
    tmpfs mounts and removes them all."""
    n = secure_node
    n.admin.create("secrets", {"metadata": {"name": "db"}, "stringData": {"password": "s3cret"}}, "default")
    n.start()
    pod = create_pod(n.admin, n, "gone", [{"name": "c", "command": ["sleep", "3600"],
                                           "volumeMounts": [{"name": "db", "mountPath": "/etc/db"}]}],
                     volumes=[{"name": "db", "secret": {"secretName": "db"}}])
    wait_for(lambda: running(n.admin, "gone"), 60, "pod gone running")
    vol_dir = os.path.realpath(Path(n.root, "pods", "pods", pod["metadata"]["uid"], "volumes"))
    assert len([m for m in tmpfs_mounts(n.root) if m.startswith(vol_dir + "/")]) == 2  # the secret + the token
    assert n.proc is not None
    os.kill(n.proc.pid, 9)
    n.proc.wait(10)
    n.admin.delete("pods", "gone", "default", grace_period_seconds=0)
    n.start()
    wait_for(lambda: not any(m.startswith(vol_dir + "/") for m in tmpfs_mounts(n.root)), 30,
             "the restarted agent to unmount the deleted pod's volumes")
    wait_for(lambda: not os.path.exists(vol_dir), 10, "its volume directories removed")
    assert not [c for c in rt.DockerRuntime().containers({rt.L_NODE: n.name})]
    assert not n.pod_netns_files()


def test_node_gets_tokens_only_for_its_own_pods(secure_node: SecureNode) -> None:
    """The node authorizer + NodeRestriction on serviceaccounts/token, with the agent's own credentials."""
    n = secure_node
    setup_rbac(n.admin)
    n.admin.create("pods", {"metadata": {"name": "elsewhere"}, "spec": {
        "nodeName": "some-other-node", "serviceAccountName": "reader",
        "containers": [{"name": "c", "image": "kubeling/test:1"}]}}, NS)
    here = n.admin.create("pods", {"metadata": {"name": "here"}, "spec": {
        "nodeName": n.name, "serviceAccountName": "reader",
        "containers": [{"name": "c", "image": "kubeling/test:1"}]}}, NS)

    def request(pod: str, uid: str = "", sa: str = "reader") -> dict[str, Any]:
        ref = {"kind": "Pod", "apiVersion": "v1", "name": pod, **({"uid": uid} if uid else {})}
        return dict(node.create("serviceaccounts", {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                                     "metadata": {}, "spec": {"boundObjectRef": ref}},
                                NS, name=sa, subresource="token"))

    with Client(load_kubeconfig(os.path.join(n.node_dir, "kubeconfig"))) as node:
        assert request("here", here["metadata"]["uid"])["status"]["token"]
        with pytest.raises(ApiError) as e:
            request("elsewhere")
        assert e.value.code == 403 and "scheduled on a different node" in e.value.message
        with pytest.raises(ApiError) as e:
            request("here", sa="quiet")  # a service account none of the node's pods uses
        assert e.value.code == 403


def _exists(client: Client, name: str) -> bool:
    try:
        client.get("pods", name, NS)
        return True
    except ApiError as e:
        if e.code == 404:
            return False
        raise
