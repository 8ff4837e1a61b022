"""The Job controller against a real apiserver, with a simulated node and a test-only binder
(no scheduler): completions, parallelism, backoffLimit, deadlines, TTL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from apiserver_proc import ApiServer, apiserver  # noqa: F401  (module-scoped fixture)
from polling import wait_for
from sim import SimCluster

from controllers.garbagecollector import GarbageCollector
from controllers.job import JobController, TTLAfterFinishedController
from kube.client import Client, Informer
from kube.client.errors import ApiError

NODE = "job-node"


class Binder:
    """Binds every pending pod without a node to NODE, and records, at every watched moment,
    how many pods of each job were running (not terminal, not being deleted)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.peak: dict[str, int] = {}
        self.inf = Informer(client, "pods", on_add=self._seen, on_update=lambda _o, n: self._seen(n),
                            on_delete=lambda _o: self._count())

    def _seen(self, pod: dict[str, Any]) -> None:
        self._count()
        if not pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
            try:
                self.client.bind(pod["metadata"]["name"], NODE, namespace=pod["metadata"]["namespace"])
            except ApiError:
                pass

    def _count(self) -> None:
        running: dict[str, int] = {}
        for p in self.inf.list():
            job = (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name")
            if job and p.get("status", {}).get("phase") not in ("Succeeded", "Failed") \
                    and not p["metadata"].get("deletionTimestamp"):
                key = f"{p['metadata']['namespace']}/{job}"
                running[key] = running.get(key, 0) + 1
        with self.lock:
            for k, n in running.items():
                self.peak[k] = max(self.peak.get(k, 0), n)


@pytest.fixture
def env(apiserver: ApiServer) -> Iterator[tuple[Client, str, SimCluster, Binder]]:  # noqa: F811
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    ns = f"job-{uuid.uuid4().hex[:6]}"
    client.create("namespaces", {"metadata": {"name": ns}})
    jc = JobController(client, pod_failure_backoff=0.2)
    ttl = TTLAfterFinishedController(client)
    gc = GarbageCollector(client)
    binder = Binder(client)
    with SimCluster(client) as sim:
        try:
            sim.add_node(NODE)
        except ApiError as e:
            if not e.is_conflict() and e.code != 409:
                raise
            sim.nodes[NODE] = client.get("nodes", NODE)
        binder.inf.start()
        assert binder.inf.wait_for_sync(10)
        assert jc.start(20) and ttl.start(20) and gc.start(20)
        try:
            yield client, ns, sim, binder
        finally:
            for c in (jc, ttl, gc):
                c.stop()
            binder.inf.stop()
    client.close()  # after the sim has stopped its informer


def job(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"restartPolicy": "Never",
                                           "containers": [{"name": "c", "image": "busybox"}]}}, **spec}}


def fail_first_pod_of(sim: SimCluster, job_name: str) -> None:
    """Every pod of the job succeeds, except the first one the node starts, which fails."""
    chosen: list[str] = []
    lock = threading.Lock()

    def first(pod: dict[str, Any]) -> bool:
        if not pod["metadata"]["name"].startswith(f"{job_name}-"):
            return False
        with lock:
            if not chosen:
                chosen.append(pod["metadata"]["uid"])
        return pod["metadata"]["uid"] == chosen[0]

    sim.finish_pods(lambda p: p["metadata"]["name"].startswith(f"{job_name}-"), "Succeeded")
    sim.finish_pods(first, "Failed")  # the later rule wins


def cond(j: dict[str, Any], typ: str) -> dict[str, Any] | None:
    for c in (j.get("status") or {}).get("conditions") or []:
        if c["type"] == typ and c["status"] == "True":
            return dict(c)
    return None


def finished(client: Client, ns: str, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        j = client.get("jobs.batch", name, namespace=ns)
        return j if cond(j, "Complete") or cond(j, "Failed") else None
    return check


def test_one_failure_within_backoff_limit_completes(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, sim, binder = env
    fail_first_pod_of(sim, "ok")
    client.create("jobs.batch", job("ok", completions=5, parallelism=2, backoffLimit=1), namespace=ns)
    j = wait_for(finished(client, ns, "ok"), what="job finished")
    assert cond(j, "Complete"), j["status"]
    assert cond(j, "SuccessCriteriaMet")["reason"] == "CompletionsReached"  # type: ignore[index]
    st = j["status"]
    assert (st["succeeded"], st["failed"], st["active"]) == (5, 1, 0)
    assert st["startTime"] and st["completionTime"]
    assert binder.peak[f"{ns}/ok"] <= 2, binder.peak
    pods = client.list("pods", ns)["items"]
    assert len(pods) == 6
    for p in pods:
        m = p["metadata"]
        assert m["generateName"] == "ok-"
        labels = m["labels"]
        uid = j["metadata"]["uid"]
        assert labels["batch.kubernetes.io/controller-uid"] == uid and labels["controller-uid"] == uid
        assert labels["batch.kubernetes.io/job-name"] == "ok" and labels["job-name"] == "ok"
        assert labels["app"] == "ok"
        assert m["ownerReferences"][0]["controller"] is True and m["ownerReferences"][0]["uid"] == uid


def test_backoff_limit_zero_fails_after_the_first_failure(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, sim, binder = env
    fail_first_pod_of(sim, "bad")
    sim.run_delay = 0.3  # so the other pod is still running when the first one fails
    client.create("jobs.batch", job("bad", completions=5, parallelism=2, backoffLimit=0), namespace=ns)
    j = wait_for(finished(client, ns, "bad"), what="job finished")
    assert cond(j, "Failed")["reason"] == "BackoffLimitExceeded", j["status"]  # type: ignore[index]
    assert cond(j, "FailureTarget")["reason"] == "BackoffLimitExceeded"  # type: ignore[index]
    assert j["status"]["failed"] == 1 and j["status"]["active"] == 0
    assert not cond(j, "Complete")
    assert binder.peak[f"{ns}/bad"] <= 2
    # Nothing is left running.
    wait_for(lambda: all(p["status"].get("phase") in ("Succeeded", "Failed")
                         for p in client.list("pods", ns)["items"]), what="active pods deleted")


def test_active_deadline_fails_the_job(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, _, _ = env
    client.create("jobs.batch", job("slow", completions=1, activeDeadlineSeconds=1), namespace=ns)
    j = wait_for(finished(client, ns, "slow"), what="job failed")
    assert cond(j, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]
    wait_for(lambda: not client.list("pods", ns)["items"], what="running pod deleted")


def test_ttl_after_finished_deletes_the_job_and_its_pods(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, sim, _ = env
    sim.finish_pods(lambda p: p["metadata"]["name"].startswith("short-"), "Succeeded")
    client.create("jobs.batch", job("short", ttlSecondsAfterFinished=0), namespace=ns)

    def gone() -> bool:
        try:
            client.get("jobs.batch", "short", namespace=ns)
        except ApiError as e:
            return e.is_not_found()
        return False

    wait_for(gone, what="job deleted after its TTL")
    wait_for(lambda: not client.list("pods", ns)["items"], what="its pods collected")
