"""The simulated nodes used by the control-plane tests behave like a kubelet would, via the API."""

from __future__ import annotations

from polling import wait_for
from sim import SimCluster

from kube.client import Client


def test_sim_node_runs_bound_pods_and_confirms_deletes(apiserver) -> None:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    with SimCluster(client) as sim:
        sim.add_node("n1")
        node = client.get("nodes", "n1")
        assert node["status"]["conditions"][0]["status"] == "True"
        assert client.get("leases.coordination.k8s.io", "n1", namespace="kube-node-lease")
        sim.finish_pods(lambda p: p["metadata"]["name"].startswith("bad"), "Failed")
        for name in ("ok", "bad"):
            client.create("pods", {"metadata": {"name": name}, "spec": {
                "nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}}, namespace="default")
        wait_for(lambda: client.get("pods", "ok", namespace="default")["status"].get("phase") == "Running")
        wait_for(lambda: client.get("pods", "bad", namespace="default")["status"].get("phase") == "Failed")
        client.delete("pods", "ok", namespace="default")
        wait_for(lambda: not [p for p in client.list("pods", namespace="default")["items"]
                              if p["metadata"]["name"] == "ok"])
    client.close()
