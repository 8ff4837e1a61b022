"""Pure parts of the Deployment controller: pod-template-hash, fenceposts, annotations, conditions."""

from __future__ import annotations

import pytest

from controllers.deployment import (
    DESIRED_REPLICAS,
    HASH_LABEL,
    MAX_REPLICAS,
    REVISION,
    REVISION_HISTORY,
    calculate_status,
    compute_hash,
    deployment_complete,
    deployment_timed_out,
    equal_ignore_hash,
    fenceposts,
    fnv32a,
    new_rs_replicas,
    safe_encode,
    scaled_value,
    set_condition,
    set_new_rs_annotations,
)

TEMPLATE = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "img:1"}]}}


def deployment(replicas: int = 10, surge: int | str = "25%", unavailable: int | str = "25%", **spec: object) -> dict:
    return {"metadata": {"name": "d", "namespace": "ns", "uid": "u1", "generation": 1,
                         "annotations": {"kubernetes.io/change-cause": "why", REVISION: "7",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"replicas": replicas, "template": TEMPLATE, "progressDeadlineSeconds": 600,
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}, **spec},
            "status": {}}


def test_fnv32a_and_safe_encoding() -> None:
    assert fnv32a(b"") == 0x811C9DC5
    assert fnv32a(b"a") == 0xE40C292C
    assert safe_encode("0123456789") == "456789bcdf"


def test_hash_is_stable_and_depends_on_template_and_collisions() -> None:
    h = compute_hash(TEMPLATE)
    assert h == compute_hash({"spec": TEMPLATE["spec"], "metadata": TEMPLATE["metadata"]})
    assert set(h) <= set("bcdfghjklmnpqrstvwxz2456789") and 1 <= len(h) <= 10
    assert compute_hash(TEMPLATE, 1) != h
    other = {**TEMPLATE, "spec": {"containers": [{"name": "c", "image": "img:2"}]}}
    assert compute_hash(other) != h


def test_equal_ignore_hash() -> None:
    with_hash = {"metadata": {"labels": {"app": "x", HASH_LABEL: "abc"}}, "spec": TEMPLATE["spec"]}
    assert equal_ignore_hash(with_hash, TEMPLATE)
    assert not equal_ignore_hash(with_hash, {**TEMPLATE, "spec": {"containers": [{"name": "c", "image": "z"}]}})
    assert equal_ignore_hash({**TEMPLATE, "metadata": {"labels": {"app": "x"}, "annotations": {}}}, TEMPLATE)


@pytest.mark.parametrize(("value", "total", "up", "want"), [
    (3, 10, True, 3), ("25%", 10, True, 3), ("25%", 10, False, 2), ("10%", 5, True, 1), ("10%", 5, False, 0),
    ("100%", 4, False, 4), ("0%", 4, True, 0),
])
def test_scaled_value_rounding(value: int | str, total: int, up: bool, want: int) -> None:
    assert scaled_value(value, total, up) == want


def test_fenceposts() -> None:
    assert fenceposts(deployment(10)) == (3, 2)  # surge rounds up, unavailable down
    assert fenceposts(deployment(1, "10%", "10%")) == (1, 0)
    assert fenceposts(deployment(5, 0, "10%")) == (0, 1)  # both 0 would deadlock: unavailable 1


def test_new_rs_replicas_respects_surge() -> None:
    d = deployment(5, 1, 0)
    old = {"metadata": {"name": "old"}, "spec": {"replicas": 5}}
    new = {"metadata": {"name": "new"}, "spec": {"replicas": 0}}
    assert new_rs_replicas(d, [old, new], new) == 1
    old["spec"]["replicas"] = 4
    new["spec"]["replicas"] = 1
    assert new_rs_replicas(d, [old, new], new) == 2
    d["spec"]["strategy"] = {"type": "Recreate"}
    assert new_rs_replicas(d, [old, new], new) == 5


def test_new_rs_annotations_copy_and_revision_history() -> None:
    d = deployment(4, 1, 0)
    rs: dict = {"metadata": {"name": "rs"}, "spec": {"replicas": 0}}
    assert set_new_rs_annotations(d, rs, 1, exists=False)
    ann = rs["metadata"]["annotations"]
    assert ann == {"kubernetes.io/change-cause": "why", REVISION: "1", DESIRED_REPLICAS: "4", MAX_REPLICAS: "5"}
    assert not set_new_rs_annotations(d, rs, 1, exists=True)
    assert set_new_rs_annotations(d, rs, 3, exists=True)  # brought back by a rollback
    assert ann[REVISION] == "3" and ann[REVISION_HISTORY] == "1"


def test_conditions_keep_transition_time() -> None:
    status: dict = {"conditions": []}
    set_condition(status, {"type": "Progressing", "status": "True", "reason": "A", "message": "",
                           "lastUpdateTime": "t1", "lastTransitionTime": "t1"})
    set_condition(status, {"type": "Progressing", "status": "True", "reason": "B", "message": "",
                           "lastUpdateTime": "t2", "lastTransitionTime": "t2"})
    assert status["conditions"] == [{"type": "Progressing", "status": "True", "reason": "B", "message": "",
                                     "lastUpdateTime": "t2", "lastTransitionTime": "t1"}]


def test_status_and_completion() -> None:
    d = deployment(3, 1, 0)
    new = {"metadata": {"name": "n"}, "spec": {"replicas": 3},
           "status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3}}
    old = {"metadata": {"name": "o"}, "spec": {"replicas": 0}, "status": {"replicas": 0}}
    st = calculate_status(d, [old, new], new)
    assert (st["replicas"], st["updatedReplicas"], st["availableReplicas"], st["unavailableReplicas"]) == (3, 3, 3, 0)
    assert st["conditions"][0]["reason"] == "MinimumReplicasAvailable"
    assert deployment_complete(d, st)
    new["status"]["availableReplicas"] = 2
    st = calculate_status(d, [old, new], new)
    assert st["unavailableReplicas"] == 1 and st["conditions"][0]["status"] == "False"
    assert not deployment_complete(d, st)


def test_timed_out() -> None:
    d = deployment(3)
    d["spec"]["progressDeadlineSeconds"] = 10
    st = {"conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                          "lastUpdateTime": "2024-01-01T00:00:00Z"}]}
    assert deployment_timed_out(d, st, now=1704067200 + 11)
    assert not deployment_timed_out(d, st, now=1704067200 + 5)
