"""Filter and score plugins on hand-made NodeInfos (pure, no apiserver)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from scheduler.cache import Cache
from scheduler.framework import (
    ERR_AFFINITY,
    ERR_PORTS,
    NodeInfo,
    PodInfo,
    Result,
    filter_node,
    num_feasible_to_find,
    pod_requests,
    schedule_one,
)


def node(name: str, cpu: str = "4", memory: str = "8Gi", pods: str = "110", labels: dict[str, str] | None = None,
         taints: list[dict[str, Any]] | None = None, ready: str = "True", unschedulable: bool = False) -> NodeInfo:
    n = NodeInfo(name)
    cap = {"cpu": cpu, "memory": memory, "pods": pods}
    n.set_node({"metadata": {"name": name, "labels": labels or {}},
                "spec": {"taints": taints or [], "unschedulable": unschedulable},
                "status": {"allocatable": cap, "conditions": [{"type": "Ready", "status": ready}]}})
    return n


def pod(name: str = "p", cpu: str | None = None, memory: str | None = None, **spec: Any) -> PodInfo:
    req = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    meta = spec.pop("metadata", {})
    return PodInfo.from_pod({"metadata": {"name": name, "namespace": "default", "uid": name, **meta},
                             "spec": {"containers": [{"name": "c", "resources": {"requests": req}}], **spec}})


def test_requests_init_containers_sidecars_overhead() -> None:
    spec = {"containers": [{"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                           {"resources": {"limits": {"cpu": "250m"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}},
                               {"restartPolicy": "Always", "resources": {"requests": {"memory": "512Mi"}}}],
            "overhead": {"cpu": "100m"}}
    r = pod_requests(spec)
    assert r["cpu"] == 2100  # max(0.75 sum, 2 init) + overhead
    assert r["memory"] == 1024 ** 3 + 512 * 1024 ** 2  # sidecar adds to the running sum


def test_not_ready_is_an_untolerated_taint_unless_tolerated() -> None:
    n = node("n", ready="False")
    assert filter_node(pod(), n) == ["node(s) had untolerated taint {node.kubernetes.io/not-ready: }"]
    assert filter_node(pod(tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]), n) == []


def test_toleration_matching() -> None:
    n = node("n", taints=[{"key": "k", "value": "v", "effect": "NoExecute"}])
    assert filter_node(pod(tolerations=[{"operator": "Exists"}]), n) == []
    assert filter_node(pod(tolerations=[{"key": "k", "value": "v"}]), n) == []
    assert filter_node(pod(tolerations=[{"key": "k", "value": "v", "effect": "NoSchedule"}]), n) != []
    assert filter_node(pod(tolerations=[{"key": "k", "value": "x"}]), n) != []


def test_affinity_and_ports_and_fit() -> None:
    n = node("n1", cpu="1", labels={"a": "1"})
    assert filter_node(pod(nodeSelector={"a": "2"}), n) == [ERR_AFFINITY]
    empty_terms = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}
    assert filter_node(pod(affinity=empty_terms), n) == [ERR_AFFINITY]
    assert filter_node(pod(cpu="2", memory="9Gi"), n) == ["Insufficient cpu", "Insufficient memory"]
    ported = PodInfo.from_pod({"metadata": {"name": "x", "namespace": "d"}, "spec": {"containers": [
        {"ports": [{"containerPort": 1, "hostPort": 80, "hostIP": "10.0.0.1"}]}]}})
    n.add_pod(ported)
    other = PodInfo.from_pod({"metadata": {"name": "y", "namespace": "d"}, "spec": {"containers": [
        {"ports": [{"containerPort": 1, "hostPort": 80}]}]}})
    assert filter_node(other, n) == [ERR_PORTS]  # 0.0.0.0 conflicts with any IP
    n.remove_pod("d/x")
    assert filter_node(other, n) == []


def test_spread_by_owner_and_random_ties() -> None:
    c = Cache()
    for name in ("a", "b", "c"):
        c.set_node({"metadata": {"name": name}, "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]}})
    owner = {"ownerReferences": [{"uid": "rs1", "controller": True, "kind": "ReplicaSet", "name": "rs"}]}
    rng = random.Random(3)
    for i in range(5):
        p = pod(f"w{i}", metadata=owner)
        res = schedule_one(p, c.node_list(), rng)
        assert res.node
        c.assume(p, res.node)
    assert sorted(Counter(n.name for n in c.node_list() for _ in n.pods).values()) == [1, 2, 2]
    fresh = [node(n) for n in ("x", "y", "z")]  # equal nodes: ties are broken at random
    assert {schedule_one(pod("q"), fresh, random.Random(s)).node for s in range(30)} == {"x", "y", "z"}


def test_message_format_and_feasible_count() -> None:
    r = Result(None, 3, {"Insufficient cpu": 2, "node(s) had untolerated taint {a: b}": 1}, resolvable=2)
    assert r.message() == ("0/3 nodes are available: 1 node(s) had untolerated taint {a: b}, 2 Insufficient cpu. "
                           "preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, "
                           "2 No preemption victims found for incoming pod.")
    assert num_feasible_to_find(50) == 50
    assert num_feasible_to_find(1000) == 420
    assert num_feasible_to_find(5000) == 500
