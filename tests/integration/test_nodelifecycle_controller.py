"""Node lifecycle against a real apiserver: a simulated node stops renewing its Lease."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, TypeVar

from polling import wait_for as eventually
from sim import SimCluster

from controllers.endpoints import EndpointsController
from controllers.endpointslice import EndpointSliceController
from controllers.nodelifecycle import NodeLifecycleController
from kube.client import Client

T = TypeVar("T")
NS = "default"


def pod(name: str, node: str, tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "tolerations": tolerations,
                     "containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]}]}}


def ready(node: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in node["status"]["conditions"] if c["type"] == "Ready")


def endpoint_pods(client: Client) -> tuple[set[str], set[str]]:
    """(ready, not ready) pod names in the Endpoints of "web"."""
    ep = client.get("endpoints", "web", namespace=NS)
    r = {a["targetRef"]["name"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}
    nr = {a["targetRef"]["name"] for s in ep.get("subsets") or [] for a in s.get("notReadyAddresses") or []}
    return r, nr


def pod_names(client: Client) -> set[str]:
    return {p["metadata"]["name"] for p in client.list("pods", NS)["items"]}


def test_dead_node_is_tainted_and_its_pods_evicted(apiserver: Any) -> None:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    controllers = [EndpointsController(client), EndpointSliceController(client),
                   NodeLifecycleController(client, node_monitor_grace_period=2.0, monitor_period=0.25)]
    with SimCluster(client, lease_period=0.3) as sim:
        sim.add_node("n1")
        sim.add_node("n2")
        for c in controllers:
            assert c.start(20)
        try:
            short = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                      "tolerationSeconds": 2}]
            forever = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]
            client.create("services", {"metadata": {"name": "web"},
                                       "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}, namespace=NS)
            client.create("pods", pod("a", "n1", short), namespace=NS)
            client.create("pods", pod("b", "n2", short), namespace=NS)
            client.create("pods", pod("c", "n2", forever), namespace=NS)
            eventually(lambda: endpoint_pods(client) == ({"a", "b", "c"}, set()), 10, "three ready endpoints")
            assert not client.get("nodes", "n2")["spec"].get("taints")

            sim.stop_lease("n2")
            stopped = time.monotonic()
            n2 = eventually(lambda: (n := client.get("nodes", "n2")) and ready(n)["status"] == "Unknown" and
                            len(n["spec"].get("taints") or []) == 2 and n, 6, "n2 Unknown and tainted")
            took = time.monotonic() - stopped
            # the last renewal was up to one lease period before the stop
            assert 2.0 - 0.3 - 0.05 <= took < 4.0, took
            assert ready(n2)["reason"] == "NodeStatusUnknown"
            assert ready(n2)["message"] == "Kubelet stopped posting node status."
            taints = {(t["key"], t["effect"]): t for t in n2["spec"]["taints"]}
            assert set(taints) == {("node.kubernetes.io/unreachable", "NoSchedule"),
                                   ("node.kubernetes.io/unreachable", "NoExecute")}
            assert taints[("node.kubernetes.io/unreachable", "NoExecute")]["timeAdded"]
            # its pods are marked not ready right away, so the endpoints drop them from addresses
            eventually(lambda: endpoint_pods(client)[0] == {"a"}, 2, "b and c not ready")
            # b tolerates for 2 s and then goes; c tolerates for ever
            eventually(lambda: "b" not in pod_names(client), 5, "b evicted")
            evicted = time.monotonic()
            # grace + tolerationSeconds, less one lease period and timeAdded's 1 s precision
            assert evicted - stopped >= 2.0 + 2.0 - 0.3 - 1.0, evicted - stopped
            eventually(lambda: endpoint_pods(client) == ({"a"}, {"c"}), 2, "endpoints without b")
            assert "c" in pod_names(client)
            n1 = client.get("nodes", "n1")
            assert ready(n1)["status"] == "True" and not n1["spec"].get("taints")

            # the node comes back: the lease is renewed and the kubelet posts Ready again
            sim.renewing.add("n2")
            cur = client.get("nodes", "n2")
            t = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for cond in cur["status"]["conditions"]:
                cond.update(status="True", reason="KubeletReady", message="back", lastHeartbeatTime=t,
                            lastTransitionTime=t)
            client.update_status("nodes", cur)
            eventually(lambda: not client.get("nodes", "n2")["spec"].get("taints"), 3, "taints removed")
            assert ready(client.get("nodes", "n2"))["status"] == "True"
        finally:
            for c in controllers:
                c.stop()
    client.close()
