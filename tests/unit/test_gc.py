"""The garbage collector's dependency graph and metadata edits (pure)."""

from __future__ import annotations

from controllers.garbagecollector import FOREGROUND, Graph, _drop_finalizer, _drop_refs, node_of
from kube.api.resources import BY_KIND

CM = BY_KIND[("v1", "ConfigMap")]


def cm(name: str, uid: str, *owners: str, **meta: object) -> dict:
    refs = [{"apiVersion": "v1", "kind": "ConfigMap", "name": o, "uid": o} for o in owners]
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "ownerReferences": refs, **meta}}


def test_graph_links_and_unlinks_dependents() -> None:
    g = Graph()
    touched = g.upsert(node_of(CM, cm("d", "d", "o1", "o2")))  # type: ignore[arg-type]
    assert touched == {"d", "o1", "o2"}
    assert [n.uid for n in g.dependents("o1")] == ["d"]
    touched = g.upsert(node_of(CM, cm("d", "d", "o2")))  # type: ignore[arg-type]
    assert "o1" in touched and g.dependents("o1") == []
    assert g.remove("o2") == {"d"}  # its dependents are what may now dangle
    assert g.remove("d") == {"o2"}
    assert len(g) == 0 and g.dependents("o2") == []


def test_node_state() -> None:
    n = node_of(CM, cm("o", "o", deletionTimestamp="2024-01-01T00:00:00Z", finalizers=[FOREGROUND]))
    assert n is not None and n.deleting_dependents() and n.where == "configmaps/ns/o"
    assert node_of(CM, {"metadata": {"name": "x"}}) is None  # no uid: not a real object


def test_drop_refs_and_finalizers() -> None:
    meta = cm("d", "d", "a", "b")["metadata"]
    assert _drop_refs(meta, {"a"}) and [r["uid"] for r in meta["ownerReferences"]] == ["b"]
    assert not _drop_refs(meta, {"zzz"})
    assert _drop_refs(meta, {"b"}) and "ownerReferences" not in meta
    m2 = {"finalizers": ["orphan", "x"]}
    assert _drop_finalizer(m2, "orphan") and m2["finalizers"] == ["x"]
    assert not _drop_finalizer(m2, "orphan")
