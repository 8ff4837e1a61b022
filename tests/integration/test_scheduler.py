"""The scheduler against a real apiserver with simulated nodes: filters with counter-examples,
the upstream FailedScheduling message, retry on a new node, spreading, host ports."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from polling import wait_for
from sim import SimCluster

from kube.client import Client
from scheduler.scheduler import Scheduler

T = TypeVar("T")
NS = "default"


class Env:
    def __init__(self, client: Client, sim: SimCluster, sched: Scheduler) -> None:
        self.client, self.sim, self.sched = client, sim, sched

    def pod(self, name: str, *, cpu: str | None = None, memory: str | None = None, **spec: Any) -> dict[str, Any]:
        res: dict[str, Any] = {}
        if cpu or memory:
            res = {"requests": {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}}
        containers = spec.pop("containers", None) or [{"name": "c", "image": "busybox", "resources": res}]
        meta = spec.pop("metadata", {})
        return self.client.create("pods", {"metadata": {"name": name, **meta},
                                           "spec": {"containers": containers, **spec}}, namespace=NS)

    def node_of(self, name: str) -> str:
        return str(self.client.get("pods", name, namespace=NS)["spec"].get("nodeName") or "")

    def wait_bound(self, name: str, timeout: float = 10.0) -> str:
        return wait_for(lambda: self.node_of(name), timeout, f"pod {name} bound")

    def wait_unschedulable(self, name: str) -> dict[str, Any]:
        def cond() -> dict[str, Any] | None:
            pod = self.client.get("pods", name, namespace=NS)
            for c in pod.get("status", {}).get("conditions") or []:
                if c["type"] == "PodScheduled" and c["status"] == "False":
                    return dict(c)
            return None
        c = wait_for(cond, 10, f"pod {name} PodScheduled=False")
        assert not self.node_of(name)
        return c

    def failed_events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.client.list("events", namespace=NS)["items"]
                if e.get("reason") == "FailedScheduling" and e["involvedObject"].get("name") == name]


@pytest.fixture
def env(apiserver: Any) -> Iterator[Env]:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    with SimCluster(client) as sim:
        sched = Scheduler(client, seed=1).start()
        assert sched.wait_for_sync(10)
        try:
            yield Env(client, sim, sched)
        finally:
            sched.stop()
    # The stand-in kubelet starts pods on threads of its own: let them finish before closing the client.
    wait_for(lambda: not any(t.name.endswith("(_start_pod)") for t in threading.enumerate()), 5, "sim idle")
    client.close()


def test_fits_nowhere_message_and_condition_then_new_node_schedules_it(env: Env) -> None:
    env.sim.add_node("small-1", cpu="1")
    env.sim.add_node("small-2", cpu="1")
    env.sim.add_node("gpu", cpu="8", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    env.pod("big", cpu="2")
    expected = ("0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. "
                "preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, "
                "2 No preemption victims found for incoming pod.")
    cond = env.wait_unschedulable("big")
    assert cond["reason"] == "Unschedulable"
    assert cond["message"] == expected
    ev = wait_for(lambda: env.failed_events("big"), 5, "FailedScheduling event")[0]
    assert ev["type"] == "Warning"
    assert ev["message"] == expected
    assert ev["involvedObject"]["kind"] == "Pod" and ev["involvedObject"]["namespace"] == NS
    assert ev["source"]["component"] == "default-scheduler"
    assert env.client.get("pods", "big", namespace=NS)["status"].get("phase") in (None, "Pending")

    env.sim.add_node("large", cpu="4")
    added = time.monotonic()
    assert env.wait_bound("big", timeout=5) == "large"
    assert time.monotonic() - added < 1.0
    wait_for(lambda: env.client.get("pods", "big", namespace=NS)["status"].get("phase") == "Running", 5, "Running")


def test_resource_fit_counts_bound_and_assumed_pods(env: Env) -> None:
    env.sim.add_node("n1", cpu="2", memory="1Gi")
    env.pod("a", cpu="1500m")
    assert env.wait_bound("a") == "n1"
    env.pod("b", cpu="1")  # 1.5 + 1 > 2: counter-example
    env.pod("m", memory="2Gi")  # more memory than the node has
    assert env.wait_unschedulable("b")["message"].startswith("0/1 nodes are available: 1 Insufficient cpu.")
    assert env.wait_unschedulable("m")["message"].startswith("0/1 nodes are available: 1 Insufficient memory.")
    env.pod("c", cpu="500m")  # exactly fills the node
    assert env.wait_bound("c") == "n1"
    # Deleting a pod frees its share: the waiting pod "b" (1 cpu) fits once "a" is gone.
    env.client.delete("pods", "a", namespace=NS, grace_period_seconds=0)
    assert env.wait_bound("b") == "n1"


def test_too_many_pods_and_init_containers(env: Env) -> None:
    env.sim.add_node("n1", cpu="2", pods="2")
    init = [{"name": "init", "image": "busybox", "resources": {"requests": {"cpu": "3"}}}]
    env.pod("init-big", cpu="100m", initContainers=init)  # the init container's 3 cpu counts
    assert "Insufficient cpu" in env.wait_unschedulable("init-big")["message"]
    env.pod("p1")
    env.pod("p2")
    env.wait_bound("p1")
    env.wait_bound("p2")
    env.pod("p3")
    assert env.wait_unschedulable("p3")["message"].startswith("0/1 nodes are available: 1 Too many pods.")


def test_node_selector(env: Env) -> None:
    env.sim.add_node("ssd", labels={"disk": "ssd"})
    env.sim.add_node("hdd", labels={"disk": "hdd"})
    for i in range(3):
        env.pod(f"s{i}", nodeSelector={"disk": "ssd"})
    assert {env.wait_bound(f"s{i}") for i in range(3)} == {"ssd"}
    env.pod("none", nodeSelector={"disk": "nvme"})
    assert env.wait_unschedulable("none")["message"].startswith(
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.")


def _required(*exprs: dict[str, Any], fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    term: dict[str, Any] = {"matchExpressions": list(exprs)}
    if fields:
        term["matchFields"] = fields
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def test_required_node_affinity_operators(env: Env) -> None:
    env.sim.add_node("a", labels={"zone": "z1", "gen": "3"})
    env.sim.add_node("b", labels={"zone": "z2", "gen": "5", "gpu": "yes"})
    cases = {
        "in": (_required({"key": "zone", "operator": "In", "values": ["z2"]}), "b"),
        "notin": (_required({"key": "zone", "operator": "NotIn", "values": ["z2"]}), "a"),
        "exists": (_required({"key": "gpu", "operator": "Exists"}), "b"),
        "dne": (_required({"key": "gpu", "operator": "DoesNotExist"}), "a"),
        "gt": (_required({"key": "gen", "operator": "Gt", "values": ["4"]}), "b"),
        "lt": (_required({"key": "gen", "operator": "Lt", "values": ["4"]}), "a"),
        "field": (_required(fields=[{"key": "metadata.name", "operator": "In", "values": ["a"]}]), "a"),
    }
    for name, (aff, _) in cases.items():
        env.pod(name, affinity=aff)
    for name, (_, node) in cases.items():
        assert env.wait_bound(name) == node, name
    # Counter-example: nothing has gen > 9.
    env.pod("none", affinity=_required({"key": "gen", "operator": "Gt", "values": ["9"]}))
    assert "2 node(s) didn't match Pod's node affinity/selector" in env.wait_unschedulable("none")["message"]


def test_preferred_node_affinity(env: Env) -> None:
    env.sim.add_node("a", labels={"zone": "z1"})
    env.sim.add_node("b", labels={"zone": "z2"})
    pref = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 80, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}}]}}
    for i in range(4):
        env.pod(f"p{i}", affinity=pref)
    assert {env.wait_bound(f"p{i}") for i in range(4)} == {"b"}
    # Counter-example: preferring a zone no node has still schedules (preference only).
    miss = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 80, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z9"]}]}}]}}
    env.pod("miss", affinity=miss)
    assert env.wait_bound("miss") in ("a", "b")


def test_taints_and_tolerations(env: Env) -> None:
    env.sim.add_node("tainted", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    env.sim.add_node("evict", taints=[{"key": "maint", "effect": "NoExecute"}])
    env.sim.add_node("soft", taints=[{"key": "spot", "effect": "PreferNoSchedule"}])
    env.sim.add_node("cordoned", unschedulable=True)
    for i in range(3):
        env.pod(f"plain{i}")
    assert {env.wait_bound(f"plain{i}") for i in range(3)} == {"soft"}  # the only one left, though soft-tainted
    env.pod("tol", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"},
                                {"key": "maint", "operator": "Exists"}],
            nodeSelector={"kubernetes.io/hostname": "tainted"})
    assert env.wait_bound("tol") == "tainted"
    env.pod("tol-exec", tolerations=[{"key": "maint", "operator": "Exists", "effect": "NoExecute"}],
            nodeSelector={"kubernetes.io/hostname": "evict"})
    assert env.wait_bound("tol-exec") == "evict"
    # Counter-example: a wrong value does not tolerate.
    env.pod("wrong", tolerations=[{"key": "dedicated", "value": "web", "effect": "NoSchedule"}],
            nodeSelector={"kubernetes.io/hostname": "tainted"})
    msg = env.wait_unschedulable("wrong")["message"]
    # Upstream plugin order: NodeUnschedulable, TaintToleration, then NodeAffinity; the first failure counts.
    assert msg == ("0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
                   "1 node(s) had untolerated taint {dedicated: db}, 1 node(s) had untolerated taint {maint: }, "
                   "1 node(s) were unschedulable. preemption: 0/4 nodes are available: "
                   "4 Preemption is not helpful for scheduling."), msg
    # PreferNoSchedule only scores: with a toleration-free choice the clean node wins.
    env.sim.add_node("clean")
    for i in range(3):
        env.pod(f"later{i}")
    assert {env.wait_bound(f"later{i}") for i in range(3)} <= {"clean", "soft"}
    assert env.node_of("later0") == "clean"
    env.pod("cord", nodeSelector={"kubernetes.io/hostname": "cordoned"})
    assert "1 node(s) were unschedulable" in env.wait_unschedulable("cord")["message"]


def test_host_ports(env: Env) -> None:
    env.sim.add_node("n1")
    env.sim.add_node("n2")

    def ported(name: str, port: int, proto: str = "TCP") -> None:
        env.pod(name, containers=[{"name": "c", "image": "busybox",
                                   "ports": [{"containerPort": 80, "hostPort": port, "protocol": proto}]}])

    ported("w1", 8080)
    ported("w2", 8080)
    assert {env.wait_bound("w1"), env.wait_bound("w2")} == {"n1", "n2"}
    ported("udp", 8080, "UDP")  # another protocol does not conflict
    env.wait_bound("udp")
    ported("w3", 8080)  # counter-example: both nodes use TCP 8080
    assert env.wait_unschedulable("w3")["message"].startswith(
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports.")


def test_replicas_of_one_owner_spread_2_2_1(env: Env) -> None:
    for n in ("n1", "n2", "n3"):
        env.sim.add_node(n)
    owner = {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                                  "uid": "11111111-2222-3333-4444-555555555555", "controller": True}],
             "labels": {"app": "web"}}
    for i in range(5):
        env.pod(f"web-{i}", metadata=owner)
    counts = Counter(env.wait_bound(f"web-{i}") for i in range(5))
    assert sorted(counts.values()) == [1, 2, 2], counts


def test_pods_of_other_schedulers_and_pinned_pods_are_left_alone(env: Env) -> None:
    env.sim.add_node("n1", cpu="1")
    env.pod("other", schedulerName="someone-else")
    env.pod("pinned", cpu="800m", nodeName="n1")  # counted against n1 although we never scheduled it
    assert env.wait_bound("pinned") == "n1"
    env.pod("mine", cpu="500m")
    assert "1 Insufficient cpu" in env.wait_unschedulable("mine")["message"]
    assert not env.node_of("other")
