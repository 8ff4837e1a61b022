"""Pure parts of the DaemonSet controller: node eligibility, pinning, percentages."""

from __future__ import annotations

from typing import Any

from controllers.daemonset import pin_to_node, scaled, should_run


def ds(**spec: Any) -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [{"name": "c"}], **spec}}}}


def node(name: str = "n1", labels: dict[str, str] | None = None, taints: list[dict[str, Any]] | None = None) -> dict[
        str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"taints": taints or []}}


def test_selector_affinity_and_taints() -> None:
    assert should_run(ds(), node()) == (True, True)
    assert should_run(ds(nodeSelector={"disk": "ssd"}), node()) == (False, False)
    assert should_run(ds(nodeSelector={"disk": "ssd"}), node(labels={"disk": "ssd"})) == (True, True)
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]}]}}}
    assert should_run(ds(affinity=affinity), node(labels={"zone": "b"})) == (True, True)
    assert should_run(ds(affinity=affinity), node("special")) == (True, True)
    assert should_run(ds(affinity=affinity), node(labels={"zone": "c"})) == (False, False)
    # NoSchedule: no new pod, a running one stays; NoExecute: neither
    assert should_run(ds(), node(taints=[{"key": "x", "effect": "NoSchedule"}])) == (False, True)
    assert should_run(ds(), node(taints=[{"key": "x", "effect": "NoExecute"}])) == (False, False)
    assert should_run(ds(), node(taints=[{"key": "x", "effect": "PreferNoSchedule"}])) == (True, True)
    # the automatic DaemonSet tolerations
    for key, effect in [("node.kubernetes.io/unreachable", "NoExecute"), ("node.kubernetes.io/not-ready", "NoExecute"),
                        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
                        ("node.kubernetes.io/unschedulable", "NoSchedule")]:
        assert should_run(ds(), node(taints=[{"key": key, "effect": effect}])) == (True, True), key
    tolerating = ds(tolerations=[{"key": "x", "operator": "Exists"}])
    assert should_run(tolerating, node(taints=[{"key": "x", "effect": "NoExecute"}])) == (True, True)


def test_pin_to_node_and_scaled() -> None:
    spec = pin_to_node({"containers": [], "tolerations": [{"key": "x", "operator": "Exists"}]}, "n7")
    assert spec["nodeName"] == "n7"
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] \
        == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n7"]}]}]
    assert spec["tolerations"][0] == {"key": "x", "operator": "Exists"} and len(spec["tolerations"]) > 1
    assert scaled("25%", 10, 1) == 3 and scaled(2, 10, 1) == 2 and scaled(None, 10, 1) == 1
