"""agent/node.py: the pure status pieces, and NodeStatusManager against an in-memory fake client."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from agent import node as nodemod
from agent.node import HostFacts, NodeStatusManager
from kube.client import ApiError

GI = 1024 ** 3
HEALTHY = HostFacts(cpus=4, memory_total=8 * GI, memory_available=4 * GI, disk_total=100 * GI, disk_free=50 * GI,
                    pids=300, pid_max=32768)


def test_capacity_and_allocatable() -> None:
    cap, alloc = nodemod.capacity(HEALTHY, 110)
    assert cap == {"cpu": "4", "memory": f"{8 * 1024 * 1024}Ki", "ephemeral-storage": f"{100 * 1024 * 1024}Ki",
                   "pods": "110", "hugepages-1Gi": "0", "hugepages-2Mi": "0"}
    assert alloc["memory"] == f"{8 * 1024 * 1024 - 100 * 1024}Ki"
    assert alloc["ephemeral-storage"] == str(int(100 * GI * 0.9))


@pytest.mark.parametrize(("facts", "typ"), [
    (HostFacts(4, 8 * GI, 50 * 1024 * 1024, 100 * GI, 50 * GI, 300, 32768), "MemoryPressure"),
    (HostFacts(4, 8 * GI, 4 * GI, 100 * GI, 5 * GI, 300, 32768), "DiskPressure"),
    (HostFacts(4, 8 * GI, 4 * GI, 100 * GI, 50 * GI, 31000, 32768), "PIDPressure"),
])
def test_pressure_thresholds(facts: HostFacts, typ: str) -> None:
    assert nodemod.pressures(HEALTHY) == {"MemoryPressure": False, "DiskPressure": False, "PIDPressure": False}
    got = nodemod.pressures(facts)
    assert got[typ] is True and sum(got.values()) == 1
    conds = {c["type"]: c for c in nodemod.desired_conditions(facts, True, "", "")}
    assert conds[typ]["status"] == "True"
    assert conds[typ]["reason"] == nodemod.PRESSURE_TEXT[typ][1][0]


def test_ready_condition_texts() -> None:
    ready = nodemod.desired_conditions(HEALTHY, True, "", "")[-1]
    assert ready == {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "kubelet is posting ready status"}
    down = nodemod.desired_conditions(HEALTHY, False, "DockerDown", "no socket")[-1]
    assert (down["status"], down["reason"]) == ("False", "KubeletNotReady")
    assert down["message"] == "container runtime is not ready: DockerDown: no socket"


def test_merge_conditions_transition_only_on_change() -> None:
    existing = [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "m",
                 "lastHeartbeatTime": "t0", "lastTransitionTime": "t0"},
                {"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated", "message": "",
                 "lastHeartbeatTime": "t0", "lastTransitionTime": "t0"}]
    same = nodemod.merge_conditions(existing, nodemod.desired_conditions(HEALTHY, True, "", ""), "t1")
    by = {c["type"]: c for c in same}
    assert by["NetworkUnavailable"] == existing[1]  # not ours: kept as is
    assert (by["Ready"]["lastHeartbeatTime"], by["Ready"]["lastTransitionTime"]) == ("t1", "t0")
    assert by["MemoryPressure"]["lastTransitionTime"] == "t1"  # new
    flipped = nodemod.merge_conditions(same, nodemod.desired_conditions(HEALTHY, False, "x", ""), "t2")
    ready = next(c for c in flipped if c["type"] == "Ready")
    assert (ready["status"], ready["lastTransitionTime"]) == ("False", "t2")
    assert next(c for c in flipped if c["type"] == "MemoryPressure")["lastTransitionTime"] == "t1"


def test_split_endpoint() -> None:
    assert nodemod.split_endpoint("127.0.0.1:10250") == ("127.0.0.1", 10250)
    assert nodemod.split_endpoint("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="HOST:PORT"):
        nodemod.split_endpoint("localhost")


# -- the manager against a fake client ---------------------------------------------------------


class FakeClient:
    """Just enough of kube.client.Client: objects by (resource, namespace, name), CAS on resourceVersion,
    and `conflicts[resource]` stale-write failures to inject."""

    def __init__(self) -> None:
        self.objs: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.rv = 0
        self.conflicts: dict[str, int] = {}
        self.writes: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def _key(self, resource: str, namespace: str | None, name: str) -> tuple[str, str | None, str]:
        return (resource, namespace, name)

    def _store(self, resource: str, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        obj["metadata"].setdefault("uid", f"uid-{self.rv}")
        self.objs[self._key(resource, namespace, obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        with self.lock:
            obj = self.objs.get(self._key(resource, namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f"{resource} {name!r} not found")
            return copy.deepcopy(obj)

    def create(self, resource: str, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        with self.lock:
            self.writes.append(("create", resource))
            if self._key(resource, namespace, obj["metadata"]["name"]) in self.objs:
                raise ApiError(409, "AlreadyExists", "already exists")
            return self._store(resource, namespace, obj)

    def _cas(self, verb: str, resource: str, obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        with self.lock:
            self.writes.append((verb, resource))
            cur = self.objs.get(self._key(resource, namespace, obj["metadata"]["name"]))
            if cur is None:
                raise ApiError(404, "NotFound", "not found")
            if self.conflicts.get(resource, 0) > 0:
                self.conflicts[resource] -= 1
                self.rv += 1
                cur["metadata"]["resourceVersion"] = str(self.rv)  # somebody else wrote
            if cur["metadata"]["resourceVersion"] != obj["metadata"].get("resourceVersion"):
                raise ApiError(409, "Conflict", "the object has been modified")
            new = copy.deepcopy(cur)
            if verb == "update_status":
                new["status"] = obj["status"]
            else:
                new = obj
            return self._store(resource, namespace, new)

    def update(self, resource: str, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        return self._cas("update", resource, obj, namespace)

    def update_status(self, resource: str, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        return self._cas("update_status", resource, obj, namespace)

    def patch(self, resource: str, name: str, patch: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        with self.lock:
            self.writes.append(("patch", resource))
            cur = copy.deepcopy(self.objs[self._key(resource, namespace, name)])
            for k, v in patch["metadata"].items():
                cur["metadata"].setdefault(k, {}).update(v)
            return self._store(resource, namespace, cur)


def make(client: FakeClient, **kw: Any) -> NodeStatusManager:
    nsm = NodeStatusManager(client, "n1", internal_ip="10.0.0.5", api_endpoint="127.0.0.1:10251",  # type: ignore[arg-type]
                            runtime_version=lambda: "27.5.1", **kw)
    nsm.read_host = lambda: HEALTHY
    return nsm


def test_register_creates_node_with_status() -> None:
    c = FakeClient()
    nsm = make(c, labels={"zone": "a"}, max_pods=20)
    nsm.register()
    node = c.get("nodes", "n1")
    assert node["metadata"]["labels"]["zone"] == "a"
    assert node["metadata"]["annotations"][nodemod.ENDPOINT_ANNOTATION] == "127.0.0.1:10251"
    assert node["status"]["capacity"]["pods"] == "20"
    assert node["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10251}}
    assert [x["type"] for x in node["status"]["conditions"]] == list(nodemod.OUR_CONDITIONS)
    assert nsm.wait_registered(0)


def test_register_adopts_and_keeps_foreign_fields() -> None:
    c = FakeClient()
    c.create("nodes", {"metadata": {"name": "n1", "labels": {"mine": "x"}}, "spec": {"podCIDR": "10.244.1.0/24"},
                       "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}})
    nsm = make(c)
    nsm.register()
    node = c.get("nodes", "n1")
    assert node["metadata"]["labels"]["mine"] == "x" and node["metadata"]["labels"]["kubernetes.io/os"] == "linux"
    assert any(x["type"] == "NetworkUnavailable" for x in node["status"]["conditions"])
    assert nsm.pod_cidr() == "10.244.1.0/24"


def test_status_posted_on_change_only_and_retried_on_conflict() -> None:
    c = FakeClient()
    nsm = make(c, status_period=3600)
    nsm.register()
    n = len(c.writes)
    assert nsm.post_status() == {}  # nothing changed, not due
    assert len(c.writes) == n
    nsm.set_runtime_ready(False, "DockerDown", "gone")
    c.conflicts["nodes"] = 2
    out = nsm.post_status()
    ready = next(x for x in out["status"]["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "False" and "DockerDown" in ready["message"]
    assert c.writes[n:] == [("update_status", "nodes")] * 3


def test_runtime_version_failure_means_not_ready_until_told() -> None:
    c = FakeClient()

    def broken() -> str:
        raise ConnectionError("docker.sock refused")
    nsm = NodeStatusManager(c, "n1", internal_ip="10.0.0.5", api_endpoint="127.0.0.1:1",  # type: ignore[arg-type]
                            runtime_version=broken)
    nsm.read_host = lambda: HEALTHY
    status, conds = nsm.desired_status()
    assert status["nodeInfo"]["containerRuntimeVersion"] == "docker://unknown"
    assert conds[-1]["status"] == "False" and "docker.sock refused" in conds[-1]["message"]


def test_lease_created_owned_then_renewed_with_conflict_retry() -> None:
    c = FakeClient()
    nsm = make(c)
    nsm.register()
    lease = nsm.renew_lease()
    uid = c.get("nodes", "n1")["metadata"]["uid"]
    assert lease["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": uid}]
    assert lease["spec"]["holderIdentity"] == "n1" and lease["spec"]["leaseDurationSeconds"] == 40
    c.conflicts[nodemod.LEASES] = 1
    again = nsm.renew_lease()
    assert again["spec"]["renewTime"] >= lease["spec"]["renewTime"]
    assert int(again["metadata"]["resourceVersion"]) > int(lease["metadata"]["resourceVersion"])
