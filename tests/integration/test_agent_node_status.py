"""NodeStatusManager against a real apiserver: registration, Lease, Ready flips, adoption, kubectl."""

from __future__ import annotations

import functools
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver_proc import ApiServer
from polling import wait_for

from agent.node import ENDPOINT_ANNOTATION, KUBELET_VERSION, NodeStatusManager
from kube.client import ApiError, Client

KUBECTL = shutil.which("kubectl")
LEASES = "leases.coordination.k8s.io"


@pytest.fixture
def client(apiserver: ApiServer) -> Iterator[Client]:
    with Client.from_kubeconfig(apiserver.kubeconfig) as c:
        yield c


def manager(client: Client, name: str, **kw: Any) -> NodeStatusManager:
    kw.setdefault("lease_period", 0.2)
    kw.setdefault("status_period", 30.0)
    return NodeStatusManager(client, name, internal_ip="10.99.0.7", api_endpoint="127.0.0.1:10250",
                             runtime_version=lambda: "27.5.1", labels={"node-role.kubernetes.io/worker": ""},
                             **kw)


def cond(node: dict[str, Any], typ: str) -> dict[str, Any]:
    return next(c for c in node["status"]["conditions"] if c["type"] == typ)


def test_registers_renews_and_flips_ready(client: Client) -> None:
    name = f"n-{uuid.uuid4().hex[:6]}"
    nsm = manager(client, name).start()
    try:
        assert nsm.wait_registered(10)
        node = client.get("nodes", name)
        labels = node["metadata"]["labels"]
        assert labels["kubernetes.io/hostname"] == name and labels["kubernetes.io/os"] == "linux"
        assert labels["beta.kubernetes.io/arch"] == labels["kubernetes.io/arch"]
        assert node["metadata"]["annotations"][ENDPOINT_ANNOTATION] == "127.0.0.1:10250"
        st = node["status"]
        assert int(st["capacity"]["cpu"]) >= 1 and st["capacity"]["memory"].endswith("Ki")
        assert st["capacity"]["pods"] == "110" and "ephemeral-storage" in st["allocatable"]
        assert {"type": "InternalIP", "address": "10.99.0.7"} in st["addresses"]
        assert st["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250
        info = st["nodeInfo"]
        assert (info["kubeletVersion"], info["containerRuntimeVersion"]) == (KUBELET_VERSION, "docker://27.5.1")
        assert info["operatingSystem"] == "linux" and info["osImage"] and info["bootID"]
        ready = cond(node, "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
        assert cond(node, "MemoryPressure")["reason"] in ("KubeletHasSufficientMemory",
                                                          "KubeletHasInsufficientMemory")

        lease = wait_for(lambda: _lease(client, name), what="the node lease")
        assert lease["spec"]["holderIdentity"] == name and lease["spec"]["leaseDurationSeconds"] == 40
        assert "." in lease["spec"]["renewTime"]  # MicroTime
        assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
        first = lease["spec"]["renewTime"]
        wait_for(lambda: _lease(client, name).get("spec", {}).get("renewTime", first) > first,
                 what="renewTime to advance")

        ready_since = ready["lastTransitionTime"]
        nsm.set_runtime_ready(False, "DockerDown", "cannot reach docker.sock")
        down = wait_for(lambda: _ready_status(client, name, "False"), what="Ready False")
        assert down["reason"] == "KubeletNotReady" and "DockerDown" in down["message"]
        nsm.set_runtime_ready(True)
        up = wait_for(lambda: _ready_status(client, name, "True"), what="Ready True again")
        assert up["lastTransitionTime"] >= ready_since

        # node IPAM's podCIDR reaches pod_cidr() through the watch
        assert nsm.pod_cidr() == ""
        client.patch("nodes", name, {"spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"]}})
        wait_for(lambda: nsm.pod_cidr() == "10.244.3.0/24", what="pod_cidr()")
    finally:
        nsm.stop()


def test_restart_adopts_existing_node(client: Client) -> None:
    name = f"n-{uuid.uuid4().hex[:6]}"
    client.create("nodes", {"metadata": {"name": name, "labels": {"mine": "kept"}},
                            "spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.9.0/24"]}})
    uid = client.get("nodes", name)["metadata"]["uid"]
    for _ in range(2):  # adopt, then a restart adopts again
        nsm = manager(client, name).start()
        try:
            assert nsm.wait_registered(10)
            wait_for(functools.partial(_has_cidr, nsm, "10.244.9.0/24"), what="pod_cidr() from the existing node")
            node = client.get("nodes", name)
            assert node["metadata"]["uid"] == uid and node["metadata"]["labels"]["mine"] == "kept"
            assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name
            assert cond(node, "Ready")["status"] == "True"
        finally:
            nsm.stop()


def test_deleted_node_is_registered_again(client: Client) -> None:
    name = f"n-{uuid.uuid4().hex[:6]}"
    nsm = manager(client, name).start()
    try:
        assert nsm.wait_registered(10)
        uid = client.get("nodes", name)["metadata"]["uid"]
        client.delete("nodes", name)
        wait_for(lambda: _uid(client, name) not in ("", uid), what="the node to come back")
    finally:
        nsm.stop()


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_get_nodes(apiserver: ApiServer, client: Client, tmp_path: Path) -> None:
    name = f"n-{uuid.uuid4().hex[:6]}"
    nsm = manager(client, name).start()
    try:
        assert nsm.wait_registered(10)
        assert KUBECTL
        r = subprocess.run([KUBECTL, "--kubeconfig", apiserver.kubeconfig, "--cache-dir", str(tmp_path / "cache"),
                            "get", "nodes"], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
        row = next(line.split() for line in lines[1:] if line.split()[0] == name)
        assert (row[1], row[2], row[4]) == ("Ready", "worker", KUBELET_VERSION)
    finally:
        nsm.stop()


def _lease(client: Client, name: str) -> dict[str, Any]:
    try:
        return client.get(LEASES, name, "kube-node-lease")
    except ApiError as e:
        if e.is_not_found():
            return {}
        raise


def _ready_status(client: Client, name: str, status: str) -> dict[str, Any]:
    c = cond(client.get("nodes", name), "Ready")
    return c if c["status"] == status else {}


def _has_cidr(nsm: NodeStatusManager, cidr: str) -> bool:
    return nsm.pod_cidr() == cidr


def _uid(client: Client, name: str) -> str:
    try:
        return str(client.get("nodes", name)["metadata"]["uid"])
    except ApiError as e:
        if e.is_not_found():
            return ""
        raise
