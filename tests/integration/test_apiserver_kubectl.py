"""Acceptance 1: the real kubectl against a running `kubeling apiserver`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.kubectl,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")]

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  namespace: web
  labels:
    app: nginx
spec:
  replicas: 2
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: {image}
        ports:
        - containerPort: 80
      - name: sidecar
        image: busybox:1.36
        command: ["sleep", "3600"]
---
apiVersion: v1
kind: Service
metadata:
  name: my-service
  namespace: web
spec:
  type: NodePort
  selector:
    app: nginx
  ports:
  - protocol: TCP
    port: 80
    targetPort: 80
"""


class Kubectl:
    def __init__(self, kubeconfig: str, cache: Path) -> None:
        self.base = ["kubectl", "--kubeconfig", kubeconfig, "--cache-dir", str(cache)]

    def __call__(self, *args: str, stdin: str | None = None, ok: bool = True) -> str:
        p = subprocess.run([*self.base, *args], input=stdin, capture_output=True, text=True, timeout=60)
        if ok:
            assert p.returncode == 0, f"kubectl {' '.join(args)} failed: {p.stderr}"
        return p.stdout + (p.stderr if not ok else "")


@pytest.fixture
def kubectl(apiserver, tmp_path: Path) -> Kubectl:
    return Kubectl(apiserver.kubeconfig, tmp_path / "kube-cache")


def header(out: str) -> list[str]:
    return out.splitlines()[0].split()


def test_kubectl_workflow(kubectl: Kubectl, tmp_path: Path) -> None:
    assert "namespace/web created" in kubectl("create", "namespace", "web")
    assert "web" in kubectl("get", "ns")
    manifest = tmp_path / "app.yaml"
    manifest.write_text(MANIFEST.format(image="nginx:1.14.2"))
    out = kubectl("apply", "-f", str(manifest))  # default apply: validation on, via /openapi/v3
    assert "deployment.apps/nginx-deployment created" in out and "service/my-service created" in out
    dep = json.loads(kubectl("get", "deploy", "nginx-deployment", "-n", "web", "-o", "json"))
    assert dep["metadata"]["generation"] == 1
    assert "kubectl.kubernetes.io/last-applied-configuration" in dep["metadata"]["annotations"]

    # apply again with a changed image: a strategic merge patch, generation increments,
    # the other container survives (merge by name)
    manifest.write_text(MANIFEST.format(image="nginx:1.16.1"))
    assert "deployment.apps/nginx-deployment configured" in kubectl("apply", "-f", str(manifest))
    dep = json.loads(kubectl("get", "deploy", "nginx-deployment", "-n", "web", "-o", "json"))
    assert dep["metadata"]["generation"] == 2
    containers = {c["name"]: c["image"] for c in dep["spec"]["template"]["spec"]["containers"]}
    assert containers == {"nginx": "nginx:1.16.1", "sidecar": "busybox:1.36"}
    # an unchanged apply is a no-op
    assert "unchanged" in kubectl("apply", "-f", str(manifest))

    # printing: tables with kubectl's usual columns
    out = kubectl("get", "pods,svc,deploy", "-A")
    assert "NAMESPACE" in out and "CLUSTER-IP" in out and "UP-TO-DATE" in out
    out = kubectl("get", "svc", "-n", "web")
    assert header(out) == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    row = out.splitlines()[1].split()
    assert row[0] == "my-service" and row[1] == "NodePort" and row[2].startswith("10.")
    assert row[4].startswith("80:") and row[4].endswith("/TCP")
    out = kubectl("get", "deploy", "-n", "web", "-o", "wide")
    assert header(out) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert "nginx:1.16.1,busybox:1.36" in out and "app=nginx" in out
    out = kubectl("get", "ns")
    assert header(out) == ["NAME", "STATUS", "AGE"]

    # pods: create one directly, check the columns, -o wide adds IP and NODE
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "namespace": "web"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    kubectl("create", "-f", "-", stdin=json.dumps(pod))
    out = kubectl("get", "pods", "-n", "web")
    assert header(out) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert out.splitlines()[1].split()[:4] == ["p1", "0/1", "Pending", "0"]
    out = kubectl("get", "pods", "-n", "web", "-o", "wide")
    assert header(out)[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]

    # structured output
    y = yaml.safe_load(kubectl("get", "svc", "my-service", "-n", "web", "-o", "yaml"))
    assert y["kind"] == "Service" and y["spec"]["clusterIP"] == y["spec"]["clusterIPs"][0]
    assert 30000 <= y["spec"]["ports"][0]["nodePort"] <= 32767
    lst = json.loads(kubectl("get", "pods", "-n", "web", "-o", "json"))
    assert lst["kind"] == "List" and lst["items"][0]["metadata"]["name"] == "p1"

    # describe
    out = kubectl("describe", "deploy", "nginx-deployment", "-n", "web")
    assert "Name:" in out and "nginx-deployment" in out and "nginx:1.16.1" in out
    out = kubectl("describe", "pod", "p1", "-n", "web")
    assert "busybox" in out

    # label / annotate
    kubectl("label", "deploy", "nginx-deployment", "-n", "web", "tier=frontend")
    kubectl("annotate", "svc", "my-service", "-n", "web", "owner=team-a")
    assert kubectl("get", "deploy", "-n", "web", "-l", "tier=frontend", "-o", "name").strip() == \
        "deployment.apps/nginx-deployment"
    svc = json.loads(kubectl("get", "svc", "my-service", "-n", "web", "-o", "json"))
    assert svc["metadata"]["annotations"]["owner"] == "team-a"

    # scale through the scale subresource
    assert "scaled" in kubectl("scale", "deploy/nginx-deployment", "-n", "web", "--replicas=3")
    dep = json.loads(kubectl("get", "deploy", "nginx-deployment", "-n", "web", "-o", "json"))
    assert dep["spec"]["replicas"] == 3 and dep["metadata"]["generation"] == 3

    # delete -f removes both objects (kubectl waits for them to be gone)
    out = kubectl("delete", "-f", str(manifest))
    assert 'deployment.apps "nginx-deployment" deleted' in out and 'service "my-service" deleted' in out
    out = kubectl("get", "deploy,svc", "-n", "web", ok=False)
    assert "nginx-deployment" not in out and "my-service" not in out


def test_kubectl_errors_are_one_line_statuses(kubectl: Kubectl) -> None:
    out = kubectl("get", "pod", "nope", ok=False)
    assert 'pods "nope" not found' in out
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}
    out = kubectl("create", "-f", "-", stdin=json.dumps(bad), ok=False)
    assert "is invalid" in out and "metadata.name" in out
