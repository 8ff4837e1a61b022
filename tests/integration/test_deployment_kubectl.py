"""The Deployment and ReplicaSet controllers driven by the real kubectl against a real apiserver
with three simulated nodes: apply, a rolling update that never drops below the desired ready
count (maxUnavailable 0), rollout status / history / undo, and kubectl scale."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_replicaset_controller import cluster, running, wait_for

from controllers.deployment import HASH_LABEL, REVISION, DeploymentController
from controllers.replicaset import ReplicaSetController
from kube.client import Client, Informer
from kube.client.errors import ApiError

pytestmark = [pytest.mark.kubectl,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")]

Obj = dict[str, Any]

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
  annotations:
    kubernetes.io/change-cause: first
spec:
  replicas: 5
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: c
        image: img:1
"""


class Kubectl:
    def __init__(self, kubeconfig: str, cache: Path) -> None:
        self.base = ["kubectl", "--kubeconfig", kubeconfig, "--cache-dir", str(cache)]

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        p = subprocess.run([*self.base, *args], input=stdin, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr}{p.stdout}"
        return p.stdout


class ReadyWatcher:
    """Records, at every pod event, how many pods of app=web are Ready and not terminating."""

    def __init__(self, client: Client, ns: str) -> None:
        self.lock = threading.Lock()
        self.counts: list[int] = []
        self.inf = Informer(client, "pods", namespace=ns, label_selector="app=web",
                            on_add=lambda _p: self._record(), on_update=lambda _o, _n: self._record(),
                            on_delete=lambda _p: self._record())

    def _record(self) -> None:
        ready = 0
        for p in self.inf.list():
            if p["metadata"].get("deletionTimestamp"):
                continue
            if any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (p.get("status") or {}).get("conditions") or []):
                ready += 1
        with self.lock:
            self.counts.append(ready)

    def __enter__(self) -> ReadyWatcher:
        self.inf.start()
        assert self.inf.wait_for_sync(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.inf.stop()


@pytest.fixture
def client(apiserver) -> Iterator[Client]:
    c = Client.from_kubeconfig(apiserver.kubeconfig)
    yield c
    c.close()


def live_pods(client: Client, ns: str) -> list[Obj]:
    return [p for p in client.list("pods", ns, label_selector="app=web")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def ready_pods(client: Client, ns: str) -> list[Obj]:
    return [p for p in live_pods(client, ns)
            if any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (p.get("status") or {}).get("conditions") or [])]


def images(client: Client, ns: str) -> set[str]:
    return {p["spec"]["containers"][0]["image"] for p in live_pods(client, ns)}


def test_deployment_rollout_with_kubectl(apiserver, client: Client, tmp_path: Path) -> None:
    ns = "dep1"
    kubectl = Kubectl(apiserver.kubeconfig, tmp_path / "kube-cache")
    kubectl("create", "namespace", ns)
    with cluster(client), running(ReplicaSetController(client), DeploymentController(client)):
        kubectl("apply", "-f", "-", stdin=MANIFEST.format(ns=ns))
        kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=30s")
        wait_for("5 ready pods", lambda: len(ready_pods(client, ns)) == 5)
        pods = ready_pods(client, ns)
        spread = sorted(Counter(p["spec"]["nodeName"] for p in pods).values())
        assert spread == [1, 2, 2], spread
        d = client.get("deployments.apps", "web", ns)
        assert d["metadata"]["annotations"][REVISION] == "1"
        st = d["status"]
        assert (st["replicas"], st["updatedReplicas"], st["readyReplicas"], st["availableReplicas"]) == (5, 5, 5, 5)
        assert st["observedGeneration"] == d["metadata"]["generation"]
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Available"]["reason"] == "MinimumReplicasAvailable"
        assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
        first_rs = client.list("replicasets.apps", ns)["items"]
        assert len(first_rs) == 1
        h = first_rs[0]["metadata"]["labels"][HASH_LABEL]
        assert first_rs[0]["metadata"]["name"] == f"web-{h}"
        assert first_rs[0]["spec"]["selector"]["matchLabels"] == {"app": "web", HASH_LABEL: h}
        assert all(p["metadata"]["labels"][HASH_LABEL] == h for p in pods)

        # rolling update with maxUnavailable 0: never fewer than 5 ready pods
        with ReadyWatcher(client, ns) as watcher:
            kubectl("set", "image", "deployment/web", "c=img:2", "-n", ns)
            kubectl("annotate", "deployment/web", "kubernetes.io/change-cause=second", "--overwrite", "-n", ns)
            kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=30s")
            wait_for("all pods on img:2", lambda: images(client, ns) == {"img:2"} and len(live_pods(client, ns)) == 5)
        assert watcher.counts and min(watcher.counts) >= 5, watcher.counts
        assert max(watcher.counts) <= 6, watcher.counts  # maxSurge 1
        d = client.get("deployments.apps", "web", ns)
        assert d["metadata"]["annotations"][REVISION] == "2"
        history = kubectl("rollout", "history", "deployment/web", "-n", ns)
        rows = {line.split()[0]: line.split(None, 1)[1].strip() for line in history.splitlines()[2:] if line.strip()}
        assert rows.get("1") == "first" and rows.get("2") == "second", history

        # undo goes back to the first template, as revision 3
        kubectl("rollout", "undo", "deployment/web", "-n", ns)
        kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=30s")
        wait_for("all pods back on img:1", lambda: images(client, ns) == {"img:1"} and len(live_pods(client, ns)) == 5)
        d = client.get("deployments.apps", "web", ns)
        assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "img:1"
        assert d["metadata"]["annotations"][REVISION] == "3"
        rs_names = {rs["metadata"]["name"] for rs in client.list("replicasets.apps", ns)["items"]}
        assert first_rs[0]["metadata"]["name"] in rs_names and len(rs_names) == 2

        # kubectl scale through the scale subresource
        kubectl("scale", "deployment/web", "--replicas=2", "-n", ns)
        wait_for("2 pods", lambda: len(live_pods(client, ns)) == 2)
        kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=30s")
        st = client.get("deployments.apps", "web", ns)["status"]
        assert (st["replicas"], st["availableReplicas"]) == (2, 2)


def test_recreate_paused_and_history_limit(apiserver, client: Client, tmp_path: Path) -> None:
    ns = "dep2"
    kubectl = Kubectl(apiserver.kubeconfig, tmp_path / "kube-cache")
    kubectl("create", "namespace", ns)
    manifest = (MANIFEST.format(ns=ns)
                .replace("    type: RollingUpdate\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}\n",
                         "    type: Recreate\n")
                .replace("  replicas: 5\n", "  replicas: 3\n  revisionHistoryLimit: 1\n"))
    with cluster(client), running(ReplicaSetController(client), DeploymentController(client)):
        kubectl("apply", "-f", "-", stdin=manifest)
        kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=30s")
        # Recreate: no new pod while an old one is alive
        mixed: list[set[str]] = []

        def record(_old: Obj, _new: Obj) -> None:
            mixed.append({p["spec"]["containers"][0]["image"] for p in watcher.list()})

        watcher = Informer(client, "pods", namespace=ns, on_update=record)
        watcher.start()
        try:
            for image in ("img:2", "img:3"):
                kubectl("set", "image", "deployment/web", f"c={image}", "-n", ns)
                kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=30s")
                wait_for(f"pods on {image}", lambda image=image: images(client, ns) == {image}
                         and len(live_pods(client, ns)) == 3)
        finally:
            watcher.stop()
        assert all(len(s) <= 1 for s in mixed), [s for s in mixed if len(s) > 1]
        # revisionHistoryLimit 1: of the two old ReplicaSets (both at 0) only the newest stays
        wait_for("old revisions pruned", lambda: len(client.list("replicasets.apps", ns)["items"]) == 2)

        # paused: a template change is not rolled out, scaling still works
        kubectl("rollout", "pause", "deployment/web", "-n", ns)
        kubectl("set", "image", "deployment/web", "c=img:4", "-n", ns)
        kubectl("scale", "deployment/web", "--replicas=4", "-n", ns)
        wait_for("4 pods while paused", lambda: len(ready_pods(client, ns)) == 4)
        assert images(client, ns) == {"img:3"}
        cond = wait_for("paused condition", lambda: next(
            (c for c in client.get("deployments.apps", "web", ns)["status"].get("conditions", [])
             if c["type"] == "Progressing" and c["reason"] == "DeploymentPaused"), None))
        assert cond["status"] == "Unknown"
        kubectl("rollout", "resume", "deployment/web", "-n", ns)
        kubectl("rollout", "status", "deployment/web", "-n", ns, "--timeout=30s")
        wait_for("resumed onto img:4", lambda: images(client, ns) == {"img:4"} and len(live_pods(client, ns)) == 4)


def test_progress_deadline_exceeded(apiserver, client: Client, tmp_path: Path) -> None:
    ns = "dep3"
    kubectl = Kubectl(apiserver.kubeconfig, tmp_path / "kube-cache")
    kubectl("create", "namespace", ns)
    manifest = MANIFEST.format(ns=ns).replace("  replicas: 5\n", "  replicas: 2\n  progressDeadlineSeconds: 2\n")
    with cluster(client) as sim, running(ReplicaSetController(client), DeploymentController(client)):
        sim.not_ready = lambda pod: True
        kubectl("apply", "-f", "-", stdin=manifest)
        cond = wait_for("ProgressDeadlineExceeded", lambda: next(
            (c for c in (client.get("deployments.apps", "web", ns).get("status") or {}).get("conditions", [])
             if c["type"] == "Progressing" and c["reason"] == "ProgressDeadlineExceeded"), None), timeout=15)
        assert cond["status"] == "False"
        p = subprocess.run([*kubectl.base, "rollout", "status", "deployment/web", "-n", ns, "--timeout=10s"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and "exceeded its progress deadline" in p.stderr, p.stderr
    try:
        client.delete("namespaces", ns)
    except ApiError:
        pass
