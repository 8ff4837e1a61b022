"""The namespace controller against a real apiserver: deleting a namespace empties it
(pods bound and unbound included), then finalizes it so the apiserver removes it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from apiserver_proc import ApiServer, apiserver  # noqa: F401  (module-scoped fixture)
from polling import wait_for
from sim import SimCluster

from controllers.garbagecollector import GarbageCollector
from controllers.namespace import NamespaceController, finalize_namespace
from kube.client import Client
from kube.client.errors import ApiError


def ns_gone(client: Client, name: str) -> bool:
    try:
        client.get("namespaces", name)
    except ApiError as e:
        return e.is_not_found()
    return False


@pytest.fixture(autouse=True)
def finalize_works(apiserver: ApiServer) -> None:  # noqa: F811
    """The apiserver must honour PUT .../finalize with spec.finalizers emptied. At the time of writing
    registry._write_update re-applies the namespace defaults on that path (spec.finalizers
    ["kubernetes"] again): fixed by not defaulting on the "finalize" subresource, as for "status"."""
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    name = f"probe-{uuid.uuid4().hex[:6]}"
    client.create("namespaces", {"metadata": {"name": name}})
    client.delete("namespaces", name)
    ns = client.get("namespaces", name)
    ns["spec"]["finalizers"] = []
    finalize_namespace(client, ns)
    if not ns_gone(client, name):
        pytest.xfail("apiserver bug: PUT namespaces/NAME/finalize re-defaults spec.finalizers to [kubernetes]")


def pod(name: str, node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name}, "spec": spec}


def test_deleting_a_namespace_removes_its_content_then_itself(apiserver: ApiServer) -> None:  # noqa: F811
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    ns = f"ns-{uuid.uuid4().hex[:6]}"
    keep = f"keep-{uuid.uuid4().hex[:6]}"
    nsc = NamespaceController(client)
    with SimCluster(client) as sim:
        sim.add_node("ns-node")
        for n in (ns, keep):
            client.create("namespaces", {"metadata": {"name": n}})
            client.create("configmaps", {"metadata": {"name": "cm"}, "data": {"a": "b"}}, namespace=n)
        client.create("secrets", {"metadata": {"name": "s"}, "stringData": {"k": "v"}}, namespace=ns)
        client.create("services", {"metadata": {"name": "svc"},
                                   "spec": {"ports": [{"port": 80}], "selector": {"app": "x"}}}, namespace=ns)
        client.create("pods", pod("bound", "ns-node"), namespace=ns)
        client.create("pods", pod("unbound"), namespace=ns)
        # A pod on a node no agent serves would wait for its grace period: the namespace waits too.
        wait_for(lambda: client.get("pods", "bound", namespace=ns).get("status", {}).get("phase") == "Running",
                 what="bound pod running")
        assert nsc.start(20)
        try:
            client.delete("namespaces", ns)
            wait_for(lambda: ns_gone(client, ns), what="namespace removed")
            for rt in ("configmaps", "secrets", "services", "pods"):
                assert client.list(rt, ns)["items"] == [], rt
            assert client.get("configmaps", "cm", namespace=keep)  # other namespaces untouched
            assert not ns_gone(client, keep)
        finally:
            nsc.stop()
    client.close()


def test_namespace_waits_for_finalizers_and_reports_conditions(apiserver: ApiServer) -> None:  # noqa: F811
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    ns = f"ns-{uuid.uuid4().hex[:6]}"
    client.create("namespaces", {"metadata": {"name": ns}})
    client.create("configmaps", {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}, namespace=ns)
    owner = client.create("configmaps", {"metadata": {"name": "owner"}}, namespace=ns)
    client.create("configmaps", {"metadata": {"name": "dep", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]}},
        namespace=ns)
    nsc, gc = NamespaceController(client), GarbageCollector(client)
    assert nsc.start(20) and gc.start(20)
    try:
        client.delete("namespaces", ns)

        def remaining() -> dict[str, Any] | None:
            conds = {c["type"]: c for c in client.get("namespaces", ns).get("status", {}).get("conditions", [])}
            c = conds.get("NamespaceFinalizersRemaining")
            return conds if c and c["status"] == "True" else None

        conds = wait_for(remaining, what="finalizers-remaining condition")
        assert conds["NamespaceContentRemaining"]["reason"] == "SomeResourcesRemain"
        assert "example.com/hold in 1" in conds["NamespaceFinalizersRemaining"]["message"]
        held = client.get("configmaps", "held", namespace=ns)
        held["metadata"]["finalizers"] = []
        client.update("configmaps", held, namespace=ns)
        wait_for(lambda: ns_gone(client, ns), what="namespace removed")
    finally:
        nsc.stop()
        gc.stop()
        client.close()
