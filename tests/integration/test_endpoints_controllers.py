"""Endpoints + EndpointSlice controllers against a real apiserver, with simulated nodes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from polling import wait_for as eventually
from sim import SimCluster

from controllers.endpoints import EndpointsController
from controllers.endpointslice import EndpointSliceController
from kube.client import Client

T = TypeVar("T")
NS = "default"
ES = "endpointslices.discovery.k8s.io"


def pod(name: str, node: str, port: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                                                        "ports": [{"name": "web", "containerPort": port}]}]}}


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "web"}], **spec}}


def slices(client: Client, svc: str) -> list[dict[str, Any]]:
    items = client.list(ES, NS, label_selector=f"kubernetes.io/service-name={svc}")["items"]
    return sorted(items, key=lambda s: s["metadata"]["name"])


def slice_endpoints(client: Client, svc: str) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """pod name -> (endpoint, the slice's ports)"""
    out = {}
    for sl in slices(client, svc):
        for ep in sl.get("endpoints") or []:
            out[ep["targetRef"]["name"]] = (ep, sl["ports"])
    return out


def set_ready(client: Client, name: str, ready: bool) -> None:
    cur = client.get("pods", name, namespace=NS)
    t = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for c in cur["status"]["conditions"]:
        if c["type"] in ("Ready", "ContainersReady"):
            c["status"] = str(ready)
            c["lastTransitionTime"] = t
    client.update_status("pods", cur)


@pytest.fixture
def cluster(apiserver: Any) -> Iterator[tuple[Client, SimCluster]]:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    controllers = [EndpointsController(client), EndpointSliceController(client)]
    try:
        with SimCluster(client) as sim:
            sim.add_node("n1")
            for c in controllers:
                assert c.start(20)
            try:
                yield client, sim
            finally:
                for c in controllers:
                    c.stop()
    finally:
        client.close()


def test_slices_and_endpoints_follow_readiness_with_named_ports(cluster: tuple[Client, SimCluster]) -> None:
    client, _sim = cluster
    svc = client.create("services", service("web"), namespace=NS)
    client.create("services", service("web-headless", clusterIP="None"), namespace=NS)
    client.create("pods", pod("a", "n1", 8080), namespace=NS)
    client.create("pods", pod("b", "n1", 9090), namespace=NS)

    def both_ready() -> dict[str, Any] | None:
        eps = slice_endpoints(client, "web")
        ok = len(eps) == 2 and all(ep["conditions"]["ready"] for ep, _ in eps.values())
        return eps if ok else None

    eps = eventually(both_ready, 10, "two ready endpoints")
    # named targetPort resolved per pod: different numbers, so different slices
    assert eps["a"][1] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert eps["b"][1] == [{"name": "http", "port": 9090, "protocol": "TCP"}]
    ep_a = eps["a"][0]
    assert ep_a["nodeName"] == "n1" and ep_a["targetRef"]["kind"] == "Pod"
    assert ep_a["conditions"] == {"ready": True, "serving": True, "terminating": False}
    sl = slices(client, "web")[0]
    assert sl["addressType"] == "IPv4"
    assert sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert sl["metadata"]["labels"]["tier"] == "front"
    assert sl["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]
    assert sl["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
    headless = eventually(lambda: len(slice_endpoints(client, "web-headless")) == 2 and
                          slices(client, "web-headless"), 5, "headless slices")
    assert "service.kubernetes.io/headless" in headless[0]["metadata"]["labels"]

    ep_obj = eventually(lambda: (e := client.get("endpoints", "web", namespace=NS)) and
                        sum(len(s.get("addresses") or []) for s in e["subsets"]) == 2 and e, 5, "Endpoints")
    assert sorted(s["ports"][0]["port"] for s in ep_obj["subsets"]) == [8080, 9090]

    # readiness flips reach both objects within a second
    t0 = time.monotonic()
    set_ready(client, "a", False)
    eventually(lambda: not slice_endpoints(client, "web")["a"][0]["conditions"]["ready"], 1.0, "slice not ready")
    eventually(lambda: any(a["targetRef"]["name"] == "a" for s in client.get("endpoints", "web", namespace=NS)
                           ["subsets"] for a in s.get("notReadyAddresses") or []), 1.0 - (time.monotonic() - t0),
               "Endpoints notReadyAddresses")
    ep = slice_endpoints(client, "web")["a"][0]
    assert ep["conditions"] == {"ready": False, "serving": False, "terminating": False}
    set_ready(client, "a", True)
    eventually(lambda: slice_endpoints(client, "web")["a"][0]["conditions"]["ready"], 1.0, "slice ready again")


def test_terminating_pods_and_selectorless_services(cluster: tuple[Client, SimCluster]) -> None:
    client, _sim = cluster
    client.create("services", service("web"), namespace=NS)
    # a pod on a node nobody runs: its deletion stays pending, so it stays terminating
    p = client.create("pods", pod("t", "ghost", 8080), namespace=NS)
    p["status"] = {"phase": "Running", "podIP": "10.244.9.9", "podIPs": [{"ip": "10.244.9.9"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    client.update_status("pods", p)
    eventually(lambda: "t" in slice_endpoints(client, "web"), 5, "endpoint for t")
    client.delete("pods", "t", namespace=NS)
    cond = eventually(lambda: (c := slice_endpoints(client, "web")["t"][0]["conditions"])["terminating"] and c, 2,
                      "terminating endpoint")
    assert cond == {"ready": False, "serving": True, "terminating": True}
    # Endpoints leave terminating pods out
    eventually(lambda: not any(s.get("addresses") or s.get("notReadyAddresses")
                               for s in client.get("endpoints", "web", namespace=NS)["subsets"]), 2,
               "Endpoints without the terminating pod")

    # a Service without selector: its user-managed Endpoints are left alone, no slices made
    client.create("services", {"metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}}, namespace=NS)
    client.create("endpoints", {"metadata": {"name": "manual"},
                                "subsets": [{"addresses": [{"ip": "192.0.2.50"}], "ports": [{"port": 80}]}]},
                  namespace=NS)
    client.create("pods", pod("x", "n1", 8080), namespace=NS)  # some churn for the controllers
    eventually(lambda: "x" in slice_endpoints(client, "web"), 5, "endpoint for x")
    assert client.get("endpoints", "manual", namespace=NS)["subsets"][0]["addresses"] == [{"ip": "192.0.2.50"}]
    assert slices(client, "manual") == []

    # the Service goes: its Endpoints and slices go
    client.delete("services", "web", namespace=NS)
    eventually(lambda: not slices(client, "web"), 5, "slices deleted")
    eventually(lambda: not client.list("endpoints", NS, field_selector="metadata.name=web")["items"], 5,
               "Endpoints deleted")
