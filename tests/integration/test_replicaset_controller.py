"""The ReplicaSet controller against a real apiserver with simulated nodes (tests/sim.py):
it keeps the replica count, replaces a deleted pod, adopts a matching orphan, releases a pod
whose labels stop matching, and reports status through the status subresource."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sim import SimCluster

from controllers.replicaset import ReplicaSetController
from kube.client import Client, Informer
from kube.client.errors import ApiError

Obj = dict[str, Any]


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class RoundRobinBinder:
    """Test-only stand-in for the scheduler: binds every unscheduled pod to the next sim node."""

    def __init__(self, client: Client, nodes: list[str]) -> None:
        self.client = client
        self.nodes = itertools.cycle(nodes)
        self.lock = threading.Lock()
        self.informer = Informer(client, "pods", on_add=self._bind, on_update=lambda _o, n: self._bind(n))

    def _bind(self, pod: Obj) -> None:
        if (pod.get("spec") or {}).get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            return
        with self.lock:
            node = next(self.nodes)
        try:
            self.client.bind(pod, node, namespace=pod["metadata"]["namespace"])
        except ApiError:
            pass  # already bound or gone

    def __enter__(self) -> RoundRobinBinder:
        self.informer.start()
        self.informer.wait_for_sync(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.informer.stop()


def scheduler_class() -> Any:
    """The real scheduler once scheduler/ offers a Scheduler(client) with start()/stop(), else None."""
    import importlib
    for mod in ("scheduler", "scheduler.main", "scheduler.scheduler"):
        try:
            cls = getattr(importlib.import_module(mod), "Scheduler", None)
        except ImportError:
            continue
        if cls is not None and hasattr(cls, "start") and hasattr(cls, "stop"):
            return cls
    return None


@contextmanager
def binder(client: Client, names: list[str]) -> Iterator[bool]:
    """Binds pods to the sim nodes: the real scheduler if there is one (yields True), else round-robin."""
    cls = scheduler_class()
    if cls is None:
        with RoundRobinBinder(client, names):
            yield False
        return
    sched = cls(client)
    sched.start()
    try:
        yield True
    finally:
        sched.stop()


@contextmanager
def cluster(client: Client, nodes: int = 3, run_delay: float = 0.0) -> Iterator[SimCluster]:
    """Simulated nodes n1..nN plus something that binds pods to them."""
    with SimCluster(client, run_delay=run_delay) as sim:
        names = [f"n{i}" for i in range(1, nodes + 1)]
        for n in names:
            sim.add_node(n)
        with binder(client, names) as real:
            sim.real_scheduler = real  # type: ignore[attr-defined]
            yield sim


@contextmanager
def running(*controllers: Any) -> Iterator[None]:
    try:
        for c in controllers:
            assert c.start(20)
        yield
    finally:
        for c in controllers:
            c.stop()


def rs_manifest(name: str, replicas: int, labels: dict[str, str], min_ready: int = 0) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "minReadySeconds": min_ready,
                     "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "img:1"}]}}}}


def pods_of(client: Client, ns: str, uid: str) -> list[Obj]:
    return [p for p in client.list("pods", ns)["items"]
            if any(r.get("uid") == uid and r.get("controller") for r in p["metadata"].get("ownerReferences") or [])
            and not p["metadata"].get("deletionTimestamp")]


def status_if(client: Client, ns: str, name: str, **want: Any) -> Obj | None:
    """The ReplicaSet's status if every field in `want` has that value, else None."""
    st = client.get("replicasets.apps", name, ns).get("status") or {}
    return st if all(st.get(k) == v for k, v in want.items()) else None


@pytest.fixture
def client(apiserver) -> Iterator[Client]:
    c = Client.from_kubeconfig(apiserver.kubeconfig)
    yield c
    c.close()


def test_replicaset_keeps_replicas_adopts_and_releases(client: Client) -> None:
    ns = "rs1"
    client.create("namespaces", {"metadata": {"name": ns}})
    with cluster(client), running(ReplicaSetController(client)):
        rs = client.create("replicasets.apps", rs_manifest("web", 3, {"app": "web"}), namespace=ns)
        uid = rs["metadata"]["uid"]

        def ready_status() -> Obj | None:
            st = client.get("replicasets.apps", "web", ns).get("status") or {}
            ok = st.get("readyReplicas") == 3 and st.get("availableReplicas") == 3 and st.get("observedGeneration") == 1
            return st if ok else None

        st = wait_for("3 ready replicas", ready_status)
        assert st["replicas"] == 3 and st["fullyLabeledReplicas"] == 3
        pods = pods_of(client, ns, uid)
        assert len(pods) == 3
        for p in pods:
            assert p["metadata"]["generateName"] == "web-" and p["metadata"]["name"].startswith("web-")
            ref = p["metadata"]["ownerReferences"][0]
            assert ref == {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": uid,
                           "controller": True, "blockOwnerDeletion": True}

        # a deleted pod is replaced
        victim = pods[0]["metadata"]["name"]
        client.delete("pods", victim, ns)
        wait_for("a replacement pod", lambda: len(names := {p["metadata"]["name"] for p in pods_of(client, ns, uid)}) == 3
                 and victim not in names)

        # a matching orphan is adopted (it may then go at once, being the 4th and unscheduled pod)
        owners: list[str] = []
        seen = Informer(client, "pods", namespace=ns, on_update=lambda _o, n: owners.extend(
            r["uid"] for r in n["metadata"].get("ownerReferences") or [] if n["metadata"]["name"] == "orphan"))
        seen.start()
        try:
            seen.wait_for_sync(5)
            client.create("pods", {"metadata": {"name": "orphan", "labels": {"app": "web"}},
                                   "spec": {"containers": [{"name": "c", "image": "img:1"}]}}, namespace=ns)
            wait_for("the orphan adopted", lambda: uid in owners)
        finally:
            seen.stop()
        wait_for("back to 3 pods", lambda: len(pods_of(client, ns, uid)) == 3)
        wait_for("status 3 again", ready_status)

        # a pod whose labels stop matching is released and replaced
        keep = pods_of(client, ns, uid)[0]["metadata"]["name"]
        client.patch("pods", keep, {"metadata": {"labels": {"app": "other"}}}, ns)
        wait_for("the pod released", lambda: not client.get("pods", keep, ns)["metadata"].get("ownerReferences"))
        wait_for("a new pod for the released one", lambda: len(pods_of(client, ns, uid)) == 3
                 and keep not in {p["metadata"]["name"] for p in pods_of(client, ns, uid)})

        # scaling through the scale subresource
        client.scale("replicasets.apps", "web", 1, ns)
        wait_for("scaled to 1", lambda: len(pods_of(client, ns, uid)) == 1)
        st = wait_for("status after scale", lambda: status_if(client, ns, "web", replicas=1, observedGeneration=2))
        assert st["readyReplicas"] == 1


def test_replicaset_never_over_creates_and_deletes_not_ready_first(client: Client) -> None:
    ns = "rs2"
    client.create("namespaces", {"metadata": {"name": ns}})
    created: list[str] = []
    watcher = Informer(client, "pods", namespace=ns, on_add=lambda p: created.append(p["metadata"]["name"]))
    with cluster(client) as sim, running(ReplicaSetController(client)):
        sim.not_ready = lambda pod: pod["metadata"].get("labels", {}).get("ready") == "no"
        watcher.start()
        try:
            rs = client.create("replicasets.apps", rs_manifest("burst", 20, {"app": "burst"}), namespace=ns)
            uid = rs["metadata"]["uid"]
            wait_for("20 ready", lambda: (client.get("replicasets.apps", "burst", ns).get("status") or {})
                     .get("readyReplicas") == 20)
            assert len(created) == 20, created  # expectations: never a pod too many while the cache lagged
            # a not-ready pod, scheduled and adopted, goes first when scaling down
            client.create("pods", {"metadata": {"name": "sick", "labels": {"app": "burst", "ready": "no"}},
                                   "spec": {"containers": [{"name": "c", "image": "img:1"}]}}, namespace=ns)
            wait_for("sick pod gone", lambda: "sick" not in {p["metadata"]["name"] for p in pods_of(client, ns, uid)}
                     and len(pods_of(client, ns, uid)) == 20, timeout=20)
        finally:
            watcher.stop()


def test_replicaset_min_ready_seconds(client: Client) -> None:
    ns = "rs3"
    client.create("namespaces", {"metadata": {"name": ns}})
    with cluster(client), running(ReplicaSetController(client)):
        client.create("replicasets.apps", rs_manifest("slow", 2, {"app": "slow"}, min_ready=2), namespace=ns)
        st = wait_for("2 ready", lambda: status_if(client, ns, "slow", readyReplicas=2))
        assert st.get("availableReplicas", 0) < 2
        wait_for("2 available after minReadySeconds", lambda: (client.get("replicasets.apps", "slow", ns)
                                                               .get("status") or {}).get("availableReplicas") == 2,
                 timeout=10)
