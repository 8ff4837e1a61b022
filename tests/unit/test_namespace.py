"""The namespace controller's status conditions (pure)."""

from __future__ import annotations

from controllers.namespace import Pass, conditions_for


def by_type(p: Pass) -> dict[str, dict]:
    return {c["type"]: c for c in conditions_for(p)}


def test_empty_pass_reports_everything_done() -> None:
    c = by_type(Pass())
    assert all(x["status"] == "False" for x in c.values())
    assert c["NamespaceContentRemaining"]["reason"] == "ContentRemoved"
    assert c["NamespaceDeletionContentFailure"]["reason"] == "ContentDeleted"


def test_remaining_content_finalizers_and_failures() -> None:
    p = Pass()
    p.remaining["pods"] = 2
    p.finalizers["example.com/hold"] = 1
    p.failures.append("delete secrets/s: forbidden")
    c = by_type(p)
    assert c["NamespaceContentRemaining"] == {"type": "NamespaceContentRemaining", "status": "True",
                                              "reason": "SomeResourcesRemain",
                                              "message": "Some resources are remaining: pods has 2 resource "
                                                         "instances"}
    assert c["NamespaceFinalizersRemaining"]["message"].endswith("example.com/hold in 1 resource instances")
    assert c["NamespaceDeletionContentFailure"]["reason"] == "ContentDeletionFailed"
    assert not p.empty
