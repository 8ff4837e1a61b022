"""`kubeling server`: the apiserver with the scheduler and controllers inside,
driven by kubectl against simulated nodes -- the control plane's whole flow:
Deployment -> ReplicaSet -> pods -> bound to nodes -> endpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from apiserver_proc import ApiServer, free_port
from polling import wait_for
from sim import SimCluster

from kube.client import Client

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 5
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: kubeling/test:1
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 64Mi}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"""


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_server_runs_the_whole_control_plane(tmp_path: Path) -> None:
    srv = ApiServer(tmp_path / "data", free_port(), ("--node-monitor-period", "1"), command="server")
    srv.start()
    client = Client.from_kubeconfig(srv.kubeconfig)
    try:
        with SimCluster(client) as sim:
            for n in ("n1", "n2", "n3"):
                sim.add_node(n)
            manifest = tmp_path / "web.yaml"
            manifest.write_text(MANIFEST)
            kubectl = ["kubectl", "--kubeconfig", srv.kubeconfig, "--cache-dir", str(tmp_path / "cache")]
            out = subprocess.run([*kubectl, "apply", "-f", str(manifest)], capture_output=True, text=True,
                                 timeout=60)
            assert out.returncode == 0, out.stderr
            out = subprocess.run([*kubectl, "rollout", "status", "deploy/web", "--timeout=60s"],
                                 capture_output=True, text=True, timeout=90)
            assert out.returncode == 0, out.stderr + out.stdout

            pods = client.list("pods", namespace="default", label_selector="app=web")["items"]
            assert len(pods) == 5
            assert sorted(Counter(p["spec"]["nodeName"] for p in pods).values()) == [1, 2, 2]
            # node IPAM gave every node a podCIDR
            cidrs = {n["spec"].get("podCIDR") for n in client.list("nodes")["items"]}
            assert len(cidrs) == 3 and None not in cidrs
            # the Service's endpoints follow the Ready pods, port resolved by name
            ips = {p["status"]["podIP"] for p in pods}

            def slice_ips() -> set[str]:
                got: set[str] = set()
                for s in client.list("endpointslices.discovery.k8s.io", namespace="default",
                                     label_selector="kubernetes.io/service-name=web")["items"]:
                    assert all(p["port"] == 8080 for p in s.get("ports") or [])
                    for e in s.get("endpoints") or []:
                        if (e.get("conditions") or {}).get("ready"):
                            got.update(e["addresses"])
                return got

            wait_for(lambda: slice_ips() == ips, what="endpoint slices with all 5 pods")
            # deleting the Deployment cascades (garbage collector) to its ReplicaSet and pods
            out = subprocess.run([*kubectl, "delete", "deploy", "web"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            wait_for(lambda: not client.list("pods", namespace="default", label_selector="app=web")["items"],
                     what="pods to be garbage-collected")
            rs = json.loads(subprocess.run([*kubectl, "get", "rs", "-o", "json"], capture_output=True, text=True,
                                           timeout=60).stdout)
            assert rs["items"] == []
    finally:
        client.close()
        srv.stop()


NODE_FAIL_MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: fo}
spec:
  replicas: 4
  selector: {matchLabels: {app: fo}}
  template:
    metadata: {labels: {app: fo}}
    spec:
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers: [{name: c, image: kubeling/test:1}]
"""


def test_node_failure_moves_pods_to_the_other_nodes(tmp_path: Path) -> None:
    srv = ApiServer(tmp_path / "data", free_port(), ("--node-monitor-grace-period", "2", "--node-monitor-period",
                                                     "0.5"), command="server")
    srv.start()
    client = Client.from_kubeconfig(srv.kubeconfig)
    try:
        with SimCluster(client, lease_period=0.5) as sim:
            for n in ("n1", "n2", "n3"):
                sim.add_node(n)
            client.create("deployments.apps", yaml.safe_load(NODE_FAIL_MANIFEST), namespace="default")

            def running_on() -> Counter[str]:
                pods = client.list("pods", namespace="default", label_selector="app=fo")["items"]
                return Counter(p["spec"].get("nodeName", "") for p in pods
                               if (p.get("status") or {}).get("phase") == "Running"
                               and not p["metadata"].get("deletionTimestamp"))

            wait_for(lambda: sum(running_on().values()) == 4, what="4 running pods")
            victim = running_on().most_common(1)[0][0]
            sim.stop_lease(victim)
            node = wait_for(lambda: next((c for c in client.get("nodes", victim)["status"]["conditions"]
                                          if c["type"] == "Ready" and c["status"] == "Unknown"), None),
                            timeout=15, what="the node to become Unknown")
            assert node["reason"] == "NodeStatusUnknown"
            # the taint is a separate write after the condition: wait for it too
            wait_for(lambda: "node.kubernetes.io/unreachable" in {
                t["key"] for t in client.get("nodes", victim)["spec"].get("taints") or []}, timeout=10,
                what="the unreachable taint")
            wait_for(lambda: sum(running_on().values()) == 4 and victim not in running_on(), timeout=30,
                     what="replacements on the other nodes")
    finally:
        client.close()
        srv.stop()


def test_controller_manager_leader_election(apiserver) -> None:
    from controllers.manager import ControllerManager

    clients = [Client.from_kubeconfig(apiserver.kubeconfig) for _ in range(2)]
    cms = [ControllerManager(c, controllers=["replicaset"], leader_elect=True, identity=f"cm-{i}",
                             lease_duration=2, renew_deadline=1.5, retry_period=0.2)
           for i, c in enumerate(clients)]
    try:
        for cm in cms:
            cm.start()
        leader = wait_for(lambda: next((cm for cm in cms if cm.running), None), what="a leader")
        other = cms[1 - cms.index(leader)]
        watch_until = time.monotonic() + 0.5  # both must never act at once
        while time.monotonic() < watch_until:
            assert not other.running
            time.sleep(0.02)
        leader.stop()
        wait_for(lambda: other.running, timeout=10, what="the other replica to take over")
        lease = clients[1].get("leases.coordination.k8s.io", "kube-controller-manager", namespace="kube-system")
        assert lease["spec"]["holderIdentity"] == f"cm-{cms.index(other)}"
    finally:
        for cm in cms:
            cm.stop()
        for c in clients:
            c.close()
