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
from apiserver_proc import ApiServer, free_port
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


def wait_for(fn, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


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
