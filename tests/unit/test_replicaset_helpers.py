"""Pure parts of the ReplicaSet controller and podcontrol: deletion ranking, expectations, status."""

from __future__ import annotations

import time

from controllers.podcontrol import Expectations, claim, deletion_order, is_pod_available, pod_from_template
from controllers.replicaset import calculate_status, next_available_in
from kube.api.selectors import label_selector_from_dict


def pod(name: str, *, node: str = "n1", phase: str = "Running", ready: bool = True, created: str = "2024-01-01T00:00:00Z",
        ready_since: str = "2024-01-01T00:00:10Z", restarts: int = 0, labels: dict | None = None,
        owner: str | None = None) -> dict:
    meta: dict = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "creationTimestamp": created,
                  "labels": labels if labels is not None else {"app": "x"}}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": "rs", "uid": owner, "controller": True}]
    return {"metadata": meta, "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "containerStatuses": [{"restartCount": restarts}],
                       "conditions": [{"type": "Ready", "status": str(ready), "lastTransitionTime": ready_since}]}}


def names(pods: list[dict]) -> list[str]:
    return [p["metadata"]["name"] for p in pods]


def test_deletion_order_follows_active_pods_ranking() -> None:
    pods = [
        pod("old-ready"),
        pod("unscheduled", node="", phase="Pending", ready=False),
        pod("pending", phase="Pending", ready=False),
        pod("not-ready", ready=False),
        pod("new-ready", created="2024-01-02T00:00:00Z", ready_since="2024-01-01T00:00:10Z"),
        pod("recently-ready", ready_since="2024-01-03T00:00:00Z"),
        pod("restarted", restarts=3),
    ]
    assert names(deletion_order(pods)) == ["unscheduled", "pending", "not-ready", "recently-ready", "restarted",
                                           "new-ready", "old-ready"]


def test_deletion_order_prefers_doubled_up_nodes() -> None:
    pods = [pod("alone", node="a"), pod("crowded", node="b")]
    assert names(deletion_order(pods, [1, 3])) == ["crowded", "alone"]


def test_expectations() -> None:
    e = Expectations(timeout=60)
    assert e.satisfied("k")
    e.expect_creations("k", 2)
    assert not e.satisfied("k")
    e.creation_observed("k")
    assert not e.satisfied("k") and e.pending("k") == (1, 0)
    e.creation_observed("k")
    assert e.satisfied("k")
    e.expect_deletions("k", ["ns/a", "ns/b"])
    e.deletion_observed("k", "ns/a")
    assert not e.satisfied("k")
    e.deletion_observed("k", "ns/b")
    assert e.satisfied("k")
    e.expect_creations("k", 1)
    e.timeout = 0.0
    time.sleep(0.01)
    assert e.satisfied("k")  # expired: a lost event cannot wedge the controller


def test_claim_adopts_releases_and_ignores_others() -> None:
    owner = {"metadata": {"name": "rs", "uid": "me"}}
    ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "me", "controller": True,
           "blockOwnerDeletion": True}
    sel = label_selector_from_dict({"matchLabels": {"app": "x"}})
    mine, orphan = pod("mine", owner="me"), pod("orphan")
    stray, other = pod("stray", owner="me", labels={"app": "y"}), pod("other", owner="you")
    patches: list[tuple[str, dict]] = []
    got = claim(owner, ref, sel, [mine, orphan, stray, other], lambda o, b: patches.append((o["metadata"]["name"], b)),
                lambda: True)
    assert names(got) == ["mine", "orphan"]
    assert patches == [
        ("orphan", {"metadata": {"ownerReferences": [ref], "uid": "uid-orphan"}}),
        ("stray", {"metadata": {"ownerReferences": [{"$patch": "delete", "uid": "me"}], "uid": "uid-stray"}}),
    ]
    assert names(claim(owner, ref, sel, [orphan], lambda o, b: None, lambda: False)) == []


def test_pod_from_template() -> None:
    ref = {"kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": True}
    p = pod_from_template({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}, ref, "rs-")
    assert p["metadata"] == {"generateName": "rs-", "ownerReferences": [ref], "labels": {"a": "b"}}


def test_status_and_min_ready_seconds() -> None:
    rs = {"metadata": {"generation": 4}, "spec": {"replicas": 3, "minReadySeconds": 10,
                                                  "template": {"metadata": {"labels": {"app": "x", "t": "1"}}}}}
    now = 1704067200 + 15  # 2024-01-01T00:00:15Z
    pods = [pod("a", labels={"app": "x", "t": "1"}), pod("b", ready_since="2024-01-01T00:00:10Z"),
            pod("c", ready=False), pod("d", ready_since="2024-01-01T00:00:00Z")]
    st = calculate_status(rs, pods, None, 0, now=now)
    assert st == {"replicas": 4, "fullyLabeledReplicas": 1, "readyReplicas": 3, "availableReplicas": 1,
                  "observedGeneration": 4}
    assert is_pod_available(pods[0], 10, now=now + 10)
    wait = next_available_in(pods, 10, now=now)
    assert wait is not None and 4.9 < wait < 5.2
