"""The Job controller's pure parts: pods from the template, counting, backoff, expectations."""

from __future__ import annotations

from controllers.job import Expectations, classify, finished, pod_backoff, pod_for


def job() -> dict:
    return {"metadata": {"name": "pi", "namespace": "ns", "uid": "u-1"},
            "spec": {"template": {"metadata": {"labels": {"app": "pi"}, "annotations": {"a": "b"}},
                                  "spec": {"restartPolicy": "Never", "containers": [{"name": "c"}]}}}}


def test_pod_from_template_is_labelled_and_owned() -> None:
    p = pod_for(job())
    m = p["metadata"]
    assert m["generateName"] == "pi-" and m["annotations"] == {"a": "b"}
    assert m["labels"] == {"app": "pi", "batch.kubernetes.io/controller-uid": "u-1",
                           "batch.kubernetes.io/job-name": "pi", "controller-uid": "u-1", "job-name": "pi"}
    assert m["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi", "uid": "u-1",
                                     "controller": True, "blockOwnerDeletion": True}]
    assert p["spec"]["restartPolicy"] == "Never"


def test_classify_pods() -> None:
    pods = [{"metadata": {}, "status": {"phase": ph}} for ph in ("Succeeded", "Failed", "Running", "Pending")]
    pods.append({"metadata": {"deletionTimestamp": "t"}, "status": {"phase": "Running"}})
    c = classify(pods)
    assert (len(c.succeeded), len(c.failed), len(c.active), len(c.terminating)) == (1, 1, 2, 1)


def test_backoff_doubles_and_caps() -> None:
    assert pod_backoff(0, 10) == 0
    assert [pod_backoff(n, 10) for n in (1, 2, 3)] == [10, 20, 40]
    assert pod_backoff(30, 10) == 360


def test_finished_and_expectations() -> None:
    assert finished({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    assert not finished({"status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}})
    e = Expectations()
    e.expect_add("ns/pi", "pi-abc")
    assert not e.satisfied("ns/pi")
    e.observed_add("ns/pi", "pi-abc")
    assert e.satisfied("ns/pi")
