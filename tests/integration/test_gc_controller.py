"""The garbage collector against a real apiserver: background, foreground and orphan
cascades through ownerReferences, on hand-made owners and dependents."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_proc import ApiServer, apiserver  # noqa: F401  (module-scoped fixture)
from polling import wait_for

from controllers.garbagecollector import GarbageCollector
from kube.client import Client
from kube.client.errors import ApiError


def gone(client: Client, resource: str, name: str, ns: str) -> bool:
    try:
        client.get(resource, name, namespace=ns)
    except ApiError as e:
        return e.is_not_found()
    return False


@pytest.fixture
def env(apiserver: ApiServer) -> Iterator[tuple[Client, str, GarbageCollector]]:  # noqa: F811
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    ns = f"gc-{uuid.uuid4().hex[:6]}"
    client.create("namespaces", {"metadata": {"name": ns}})
    gc = GarbageCollector(client)
    assert gc.start(20)
    try:
        yield client, ns, gc
    finally:
        gc.stop()
        client.close()


def owner_ref(owner: dict[str, Any], block: bool = False) -> dict[str, Any]:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"]}
    if block:
        ref["blockOwnerDeletion"] = True
    return ref


def make_rs(client: Client, ns: str, name: str) -> dict[str, Any]:
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
          "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                   "template": {"metadata": {"labels": {"app": name}},
                                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
    out = client.create("replicasets.apps", rs, namespace=ns)
    out.setdefault("apiVersion", "apps/v1")
    out.setdefault("kind", "ReplicaSet")
    return out


def make_cm(client: Client, ns: str, name: str, *refs: dict[str, Any],
            finalizers: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if refs:
        meta["ownerReferences"] = list(refs)
    if finalizers:
        meta["finalizers"] = finalizers
    out = client.create("configmaps", {"metadata": meta}, namespace=ns)
    out.setdefault("apiVersion", "v1")
    out.setdefault("kind", "ConfigMap")
    return out


def test_background_deletes_dependents_whose_owners_are_all_gone(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, _ = env
    rs = make_rs(client, ns, "owner")
    other = make_cm(client, ns, "other-owner")
    make_cm(client, ns, "dep-1", owner_ref(rs))
    make_cm(client, ns, "dep-2", owner_ref(rs, block=True))
    make_cm(client, ns, "two-owners", owner_ref(rs), owner_ref(other))
    client.delete("replicasets.apps", "owner", namespace=ns, propagation_policy="Background")
    wait_for(lambda: gone(client, "configmaps", "dep-1", ns) and gone(client, "configmaps", "dep-2", ns),
             what="dependents deleted")
    # The one with a surviving owner stays, without the reference to the gone owner.
    survivor = wait_for(lambda: (lambda o: o if len(o["metadata"].get("ownerReferences", [])) == 1 else None)(
        client.get("configmaps", "two-owners", namespace=ns)), what="dangling reference removed")
    assert survivor["metadata"]["ownerReferences"][0]["uid"] == other["metadata"]["uid"]


def test_owner_uid_that_never_existed_is_gone(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, _ = env
    fake = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ghost", "uid": str(uuid.uuid4())}}
    make_cm(client, ns, "orphaned-dep", owner_ref(fake))
    wait_for(lambda: gone(client, "configmaps", "orphaned-dep", ns), what="dependent of a ghost deleted")


def test_owner_with_same_name_but_other_uid_is_gone(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, _ = env
    make_cm(client, ns, "reborn")  # exists under this name, with another uid
    fake = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "reborn", "uid": str(uuid.uuid4())}}
    make_cm(client, ns, "dep-of-old", owner_ref(fake))
    wait_for(lambda: gone(client, "configmaps", "dep-of-old", ns), what="dependent of the old uid deleted")
    assert not gone(client, "configmaps", "reborn", ns)


def test_foreground_deletes_dependents_before_the_owner(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, _ = env
    rs = make_rs(client, ns, "fg-owner")
    # A dependent held by a finalizer of someone else's keeps the owner waiting.
    make_cm(client, ns, "fg-held", owner_ref(rs, block=True), finalizers=["example.com/hold"])
    make_cm(client, ns, "fg-dep", owner_ref(rs, block=True))
    make_cm(client, ns, "fg-nonblocking", owner_ref(rs))
    client.delete("replicasets.apps", "fg-owner", namespace=ns, propagation_policy="Foreground")
    wait_for(lambda: gone(client, "configmaps", "fg-dep", ns), what="blocking dependent deleted")
    held = wait_for(lambda: (lambda o: o if o["metadata"].get("deletionTimestamp") else None)(
        client.get("configmaps", "fg-held", namespace=ns)), what="held dependent marked for deletion")
    assert held
    owner = client.get("replicasets.apps", "fg-owner", namespace=ns)  # still there: a blocking dependent remains
    assert owner["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in owner["metadata"]["finalizers"]
    held["metadata"]["finalizers"] = []
    client.update("configmaps", held, namespace=ns)
    wait_for(lambda: gone(client, "replicasets.apps", "fg-owner", ns), what="owner removed after its dependents")
    assert gone(client, "configmaps", "fg-held", ns)
    wait_for(lambda: gone(client, "configmaps", "fg-nonblocking", ns), what="non-blocking dependent deleted")


def test_foreground_cascades_through_a_chain(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, _ = env
    top = make_cm(client, ns, "chain-top")
    mid = make_cm(client, ns, "chain-mid", owner_ref(top, block=True))
    make_cm(client, ns, "chain-leaf", owner_ref(mid, block=True))
    client.delete("configmaps", "chain-top", namespace=ns, propagation_policy="Foreground")
    wait_for(lambda: all(gone(client, "configmaps", n, ns) for n in ("chain-top", "chain-mid", "chain-leaf")),
             what="the whole chain deleted")


def test_orphan_removes_the_reference_and_keeps_dependents(env) -> None:  # type: ignore[no-untyped-def]
    client, ns, _ = env
    rs = make_rs(client, ns, "orphaner")
    other = make_cm(client, ns, "orphan-other")
    make_cm(client, ns, "orphan-1", owner_ref(rs, block=True))
    make_cm(client, ns, "orphan-2", owner_ref(rs), owner_ref(other))
    client.delete("replicasets.apps", "orphaner", namespace=ns, propagation_policy="Orphan")
    wait_for(lambda: gone(client, "replicasets.apps", "orphaner", ns), what="owner removed")
    one = client.get("configmaps", "orphan-1", namespace=ns)
    assert not one["metadata"].get("ownerReferences")
    two = client.get("configmaps", "orphan-2", namespace=ns)
    assert [r["uid"] for r in two["metadata"]["ownerReferences"]] == [other["metadata"]["uid"]]


def test_pods_bound_to_a_node_are_collected_when_the_owner_goes(env) -> None:  # type: ignore[no-untyped-def]
    from sim import SimCluster

    client, ns, _ = env
    rs = make_rs(client, ns, "podowner")
    with SimCluster(client) as sim:
        sim.add_node(f"n-{ns}")
        for i in range(2):
            client.create("pods", {"metadata": {"name": f"p{i}", "ownerReferences": [owner_ref(rs, block=True)]},
                                   "spec": {"nodeName": f"n-{ns}",
                                            "containers": [{"name": "c", "image": "busybox"}]}}, namespace=ns)
        client.delete("replicasets.apps", "podowner", namespace=ns, propagation_policy="Foreground")
        wait_for(lambda: gone(client, "replicasets.apps", "podowner", ns), what="owner removed")
        assert gone(client, "pods", "p0", ns) and gone(client, "pods", "p1", ns)
