"""DaemonSet controller against a real apiserver with simulated nodes (no scheduler)."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from polling import wait_for as eventually
from sim import SimCluster

from controllers.daemonset import DaemonSetController
from kube.client import Client

T = TypeVar("T")
NS = "default"


def ds_pods(client: Client) -> dict[str, dict[str, Any]]:
    """node -> the (not terminating) DaemonSet pod on it"""
    pods = client.list("pods", NS, label_selector="app=agent")["items"]
    return {p["spec"]["nodeName"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}


def test_one_pod_per_eligible_node_follows_nodes_and_rolls(apiserver: Any) -> None:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    dsc = DaemonSetController(client)
    with SimCluster(client) as sim:
        sim.add_node("n1")
        sim.add_node("gpu", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
        sim.add_node("cordoned", unschedulable=True,
                     taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])
        assert dsc.start(20)
        try:
            ds = client.create("daemonsets.apps", {
                "metadata": {"name": "agent"},
                "spec": {"selector": {"matchLabels": {"app": "agent"}},
                         "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                         "template": {"metadata": {"labels": {"app": "agent"}},
                                      "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}, namespace=NS)
            pods = eventually(lambda: (p := ds_pods(client)) and set(p) == {"n1", "cordoned"} and p, 5,
                              "pods on n1 and the cordoned node")
            pod = pods["n1"]
            assert pod["metadata"]["ownerReferences"][0]["uid"] == ds["metadata"]["uid"]
            assert pod["metadata"]["labels"]["controller-revision-hash"]
            terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert terms == {"nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}
            keys = {(t.get("key"), t.get("effect")) for t in pod["spec"]["tolerations"]}
            assert {("node.kubernetes.io/unreachable", "NoExecute"), ("node.kubernetes.io/not-ready", "NoExecute"),
                    ("node.kubernetes.io/disk-pressure", "NoSchedule")} <= keys
            status = eventually(lambda: (s := client.get("daemonsets.apps", "agent", namespace=NS).get("status"))
                                and s.get("numberReady") == 2 and s, 5, "status numberReady 2")
            assert status["desiredNumberScheduled"] == 2 and status["currentNumberScheduled"] == 2
            assert status["numberAvailable"] == 2 and status["updatedNumberScheduled"] == 2
            assert status["observedGeneration"] == ds["metadata"]["generation"]

            # a node joins: it gets a pod within 2 s; the tainted node never gets one
            sim.add_node("n3")
            t0 = time.monotonic()
            eventually(lambda: "n3" in ds_pods(client), 2, "a pod on n3")
            assert time.monotonic() - t0 < 2
            assert "gpu" not in ds_pods(client)

            # a node that stops matching (untolerated NoExecute taint) or goes away loses its pod
            client.patch("nodes", "n3", {"spec": {"taints": [{"key": "evict", "effect": "NoExecute"}]}})
            eventually(lambda: "n3" not in ds_pods(client), 3, "pod off the NoExecute-tainted n3")
            client.delete("nodes", "cordoned")
            eventually(lambda: set(ds_pods(client)) == {"n1"}, 3, "pod off the deleted node")

            # rolling update: every pod replaced by one with the new template's hash
            sim.add_node("n4")
            eventually(lambda: set(ds_pods(client)) == {"n1", "n4"}, 3, "pods on n1 and n4")
            old_hash = ds_pods(client)["n1"]["metadata"]["labels"]["controller-revision-hash"]
            client.patch("daemonsets.apps", "agent", {"spec": {"template": {"metadata": {"labels": {"version": "2"}}}}},
                         namespace=NS)
            eventually(lambda: (p := ds_pods(client)) and set(p) == {"n1", "n4"} and all(
                x["metadata"]["labels"].get("version") == "2" for x in p.values()), 10, "all pods updated")
            new_hash = ds_pods(client)["n1"]["metadata"]["labels"]["controller-revision-hash"]
            assert new_hash != old_hash
            eventually(lambda: (s := client.get("daemonsets.apps", "agent", namespace=NS)["status"])
                       .get("updatedNumberScheduled") == 2 and s.get("numberAvailable") == 2, 5, "status updated")
        finally:
            dsc.stop()
    client.close()
