"""Pure parts of the node lifecycle controller: taints from conditions, eviction timing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controllers.nodelifecycle import desired_node_taints, eviction_delay, toleration_tolerates

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2024-01-01T11:59:58Z"}


def node(ready: str, taints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"spec": {"taints": taints or []}, "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def test_taints_follow_ready() -> None:
    assert desired_node_taints(node("True"), "T") == []
    unknown = desired_node_taints(node("Unknown", [{"key": "mine", "effect": "NoSchedule"}]), "T")
    assert unknown == [{"key": "mine", "effect": "NoSchedule"},
                       {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
                       {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "T"}]
    # kept taints keep their timeAdded; a node going from Unknown to False swaps the keys
    assert desired_node_taints(node("Unknown", unknown), "T2") == unknown
    assert {t["key"] for t in desired_node_taints(node("False", unknown), "T")} == {
        "mine", "node.kubernetes.io/not-ready"}
    assert desired_node_taints(node("True", unknown), "T") == [{"key": "mine", "effect": "NoSchedule"}]


def test_toleration_matching() -> None:
    assert toleration_tolerates({"operator": "Exists"}, UNREACHABLE)
    assert toleration_tolerates({"key": "node.kubernetes.io/unreachable", "operator": "Exists"}, UNREACHABLE)
    assert not toleration_tolerates({"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                     "effect": "NoSchedule"}, UNREACHABLE)
    assert toleration_tolerates({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoSchedule"})
    assert not toleration_tolerates({"key": "k", "value": "w"}, {"key": "k", "value": "v", "effect": "NoSchedule"})


def test_eviction_delay() -> None:
    def pod(*tolerations: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"tolerations": list(tolerations)}}

    tol = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}
    assert eviction_delay(pod(), [UNREACHABLE], NOW, None) == 0.0  # not tolerated: now
    assert eviction_delay(pod(), [UNREACHABLE], NOW, 10) == 8.0  # the option stands in
    assert eviction_delay(pod(tol), [UNREACHABLE], NOW, 10) is None  # tolerated for ever
    assert eviction_delay(pod({**tol, "tolerationSeconds": 300}), [UNREACHABLE], NOW, None) == 298.0
    assert eviction_delay(pod({**tol, "tolerationSeconds": 1}), [UNREACHABLE], NOW, None) == -1.0
    other = {"key": "custom", "effect": "NoExecute"}
    assert eviction_delay(pod({**tol, "tolerationSeconds": 300}), [UNREACHABLE, other], NOW, 10) == 0.0
