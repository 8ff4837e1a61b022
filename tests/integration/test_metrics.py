"""Each component's Prometheus /metrics parses, and its named metrics move when it works."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver_proc import ApiServer, free_port
from polling import wait_for
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sim import SimCluster

from agent.metrics import Metrics as AgentMetrics
from agent.metrics import metered
from agent.server import AgentServer
from controllers.manager import ControllerManager
from kube.client import Client
from scheduler.scheduler import Scheduler


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def value(text: str, metric: str, /, **labels: str) -> float:
    """The sum of the samples called metric whose labels include labels (0 if none)."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def names(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
def client(apiserver: ApiServer) -> Iterator[Client]:
    c = Client.from_kubeconfig(apiserver.kubeconfig)
    yield c
    c.close()


def test_apiserver_counts_requests_and_watch_events(apiserver: ApiServer, client: Client) -> None:
    url = apiserver.url + "/metrics"
    before = scrape(url)
    created = value(before, "apiserver_request_total", verb="create", resource="configmaps", code="201")
    client.create("configmaps", {"metadata": {"name": "m1"}, "data": {"a": "b"}}, namespace="default")
    client.get("configmaps", "m1", namespace="default")
    after = scrape(url)
    assert value(after, "apiserver_request_total", verb="create", resource="configmaps", code="201") == created + 1
    assert value(after, "apiserver_request_total", verb="get", resource="configmaps", code="200") >= 1
    assert value(after, "apiserver_request_duration_seconds_count", verb="create", resource="configmaps") >= 1
    assert "apiserver_current_inflight_requests" in names(after)
    # a watch: its events are counted as they are sent
    rv = client.list("configmaps", namespace="default")["metadata"]["resourceVersion"]
    req = urllib.request.Request(f"{apiserver.url}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}")
    events = value(after, "apiserver_watch_events_total", resource="configmaps")
    with urllib.request.urlopen(req, timeout=10) as stream:
        client.create("configmaps", {"metadata": {"name": "m2"}}, namespace="default")
        assert b'"ADDED"' in stream.readline()
        wait_for(lambda: value(scrape(url), "apiserver_watch_events_total", resource="configmaps") >= events + 1,
                 5, "watch event counted")
    assert value(scrape(url), "apiserver_request_total", verb="watch", resource="configmaps") >= 1


def test_scheduler_counts_attempts_and_serves_metrics(client: Client) -> None:
    with SimCluster(client) as sim:
        sim.add_node("n1")
        sched = Scheduler(client, seed=1).start()
        server = sched.metrics.serve(f"127.0.0.1:{free_port()}")
        try:
            assert sched.wait_for_sync(10)
            client.create("pods", {"metadata": {"name": "p1"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
                          namespace="default")
            wait_for(lambda: client.get("pods", "p1", namespace="default")["spec"].get("nodeName"), 10, "p1 bound")
            text = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
            assert value(text, "scheduler_schedule_attempts_total", result="scheduled") >= 1
            assert value(text, "scheduler_scheduling_attempt_duration_seconds_count", result="scheduled") >= 1
            assert {"scheduler_pending_pods"} <= names(text)
            # a pod that fits nowhere
            client.create("pods", {"metadata": {"name": "big"}, "spec": {"containers": [
                {"name": "c", "image": "x", "resources": {"requests": {"cpu": "100"}}}]}}, namespace="default")
            wait_for(lambda: value(generate_latest(sched.metrics.registry).decode(),
                                   "scheduler_schedule_attempts_total", result="unschedulable") >= 1, 10,
                     "unschedulable attempt counted")
            assert value(generate_latest(sched.metrics.registry).decode(), "scheduler_pending_pods") >= 1
        finally:
            server.shutdown()
            sched.stop()
        wait_for(lambda: not any(t.name.endswith("(_start_pod)") for t in threading.enumerate()), 5, "sim idle")


def test_controller_workqueue_metrics(client: Client) -> None:
    cm = ControllerManager(client, controllers=["replicaset"])
    cm.start()
    try:
        client.create("replicasets.apps", {
            "metadata": {"name": "rs1"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "rs1"}},
                     "template": {"metadata": {"labels": {"app": "rs1"}},
                                  "spec": {"containers": [{"name": "c", "image": "x"}]}}}}, namespace="default")

        def text() -> str:
            return generate_latest(cm.metrics.registry).decode()

        wait_for(lambda: value(text(), "workqueue_adds_total", name="replicaset") >= 1, 10, "an add counted")
        wait_for(lambda: value(text(), "workqueue_work_duration_seconds_count", name="replicaset") >= 1, 10,
                 "a reconcile timed")
        assert "workqueue_depth" in names(text())
    finally:
        cm.stop()


def test_kubeling_server_serves_every_components_metrics(tmp_path: Path) -> None:
    srv = ApiServer(tmp_path / "data", free_port(), command="server")
    srv.start()
    try:
        def ready() -> str | None:
            text = scrape(srv.url + "/metrics")
            return text if "workqueue_adds_total" in text and "scheduler_schedule_attempts_total" in text else None

        text = wait_for(ready, 20, "scheduler and controller metrics on the apiserver's /metrics")
        assert "apiserver_request_total" in names(text)
    finally:
        srv.stop()


class _FakeRuntime:
    def __init__(self) -> None:
        self.created = 0

    def create(self, spec: Any) -> str:
        self.created += 1
        return f"c{self.created}"

    def start(self, cid: str) -> None:
        raise RuntimeError("no such container")


def test_agent_metrics_and_its_server() -> None:
    clock = [100.0]
    m = AgentMetrics(clock=lambda: clock[0])
    rt = metered(_FakeRuntime(), m)  # type: ignore[arg-type]
    assert rt.create(None) == "c1"  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        rt.start("c1")
    m.seen("u1")
    clock[0] = 102.5
    waiting: dict[str, Any] = {"containerStatuses": [{"state": {"running": {}}}, {"state": {"waiting": {}}}]}
    m.status("u1", waiting)
    clock[0] = 103.0
    m.status("u1", {"containerStatuses": [{"state": {"running": {}}}, {"state": {"running": {}}}]})
    m.status("u1", {"containerStatuses": [{"state": {"running": {}}}, {"state": {"running": {}}}]})  # once only
    srv = AgentServer("127.0.0.1:0", pods=lambda: [], logs=lambda *a, **kw: iter(()),  # type: ignore[arg-type]
                      metrics=m.text).start()
    try:
        text = scrape(f"http://{srv.endpoint}/metrics")
    finally:
        srv.stop()
    assert value(text, "kubelet_runtime_operations_total", operation_type="create_container") == 1
    assert value(text, "kubelet_runtime_operations_total", operation_type="start_container") == 1
    assert value(text, "kubelet_runtime_operations_errors_total", operation_type="start_container") == 1
    assert value(text, "kubelet_pod_start_sli_duration_seconds_count") == 1
    assert value(text, "kubelet_pod_start_sli_duration_seconds_sum") == pytest.approx(3.0)
    assert value(text, "kubelet_running_pods") == 1
    assert value(text, "kubelet_running_containers", container_state="running") == 2
    m.forget("u1")
    assert value(m.text().decode(), "kubelet_running_pods") == 0
