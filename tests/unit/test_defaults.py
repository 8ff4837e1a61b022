"""Upstream defaults applied on create."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from kube.api.defaults import apply_defaults, image_pull_policy, pod_qos_class
from kube.api.validation import validate_object


def minimal_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]
                },
            },
        },
    }


def minimal_pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }


def test_minimal_deployment_gets_upstream_defaults() -> None:
    d = minimal_deployment()
    apply_defaults("deployments", d)
    spec = d["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
    }
    assert spec["revisionHistoryLimit"] == 10
    assert spec["progressDeadlineSeconds"] == 600
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Always"
    assert pod_spec["dnsPolicy"] == "ClusterFirst"
    assert pod_spec["schedulerName"] == "default-scheduler"
    assert pod_spec["terminationGracePeriodSeconds"] == 30
    assert pod_spec["securityContext"] == {}
    c = pod_spec["containers"][0]
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "File"
    assert c["resources"] == {}
    assert c["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    # templates get PodSpec defaults only: no admission, no status
    for key in ("serviceAccountName", "enableServiceLinks", "priority", "tolerations"):
        assert key not in pod_spec
    assert "status" not in d["spec"]["template"]
    assert validate_object("deployments", d) == []


def test_defaults_are_idempotent() -> None:
    for resource, obj in (("deployments", minimal_deployment()), ("pods", minimal_pod())):
        apply_defaults(resource, obj)
        once = copy.deepcopy(obj)
        apply_defaults(resource, obj)
        assert obj == once


def test_recreate_strategy_gets_no_rolling_update() -> None:
    d = minimal_deployment()
    d["spec"]["strategy"] = {"type": "Recreate"}
    apply_defaults("deployments", d)
    assert d["spec"]["strategy"] == {"type": "Recreate"}


def test_pod_defaults_and_admission() -> None:
    p = minimal_pod()
    apply_defaults("pods", p)
    spec = p["spec"]
    assert spec["restartPolicy"] == "Always"
    assert spec["dnsPolicy"] == "ClusterFirst"
    assert spec["enableServiceLinks"] is True
    assert spec["serviceAccountName"] == "default"
    assert spec["serviceAccount"] == "default"
    assert spec["priority"] == 0
    assert spec["preemptionPolicy"] == "PreemptLowerPriority"
    assert spec["tolerations"] == [
        {
            "key": "node.kubernetes.io/not-ready",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300,
        },
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300,
        },
    ]
    assert spec["containers"][0]["imagePullPolicy"] == "Always"  # untagged means latest
    assert p["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    assert validate_object("pods", p) == []


def test_pod_existing_tolerations_and_status_kept() -> None:
    p = minimal_pod(
        tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}]
    )
    p["status"] = {"phase": "Running"}
    apply_defaults("pods", p)
    keys = [t["key"] for t in p["spec"]["tolerations"]]
    assert keys == ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"]
    assert p["status"] == {"phase": "Running"}
    # a tolerate-everything toleration covers both
    p = minimal_pod(tolerations=[{"operator": "Exists"}])
    apply_defaults("pods", p)
    assert p["spec"]["tolerations"] == [{"operator": "Exists"}]


def test_pod_container_details() -> None:
    p = minimal_pod(
        hostNetwork=True, volumes=[{"name": "scratch"}, {"name": "cfg", "configMap": {"name": "c"}}]
    )
    p["spec"]["containers"][0].update(
        {
            "ports": [{"containerPort": 8080}],
            "livenessProbe": {"httpGet": {"port": 8080}},
            "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
        }
    )
    apply_defaults("pods", p)
    c = p["spec"]["containers"][0]
    assert c["ports"] == [{"containerPort": 8080, "protocol": "TCP", "hostPort": 8080}]
    assert c["livenessProbe"] == {
        "httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"},
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] == "v1"
    assert c["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}  # requests default to limits
    assert p["status"]["qosClass"] == "Guaranteed"
    assert p["spec"]["volumes"] == [
        {"name": "scratch", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "c", "defaultMode": 420}},
    ]


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("nginx:1.25", "IfNotPresent"),
        ("registry.local:5000/team/app", "Always"),
        ("registry.local:5000/team/app:v2", "IfNotPresent"),
        ("nginx@sha256:" + "a" * 64, "IfNotPresent"),
        ("nginx:latest@sha256:" + "a" * 64, "Always"),
    ],
)
def test_image_pull_policy(image: str, policy: str) -> None:
    assert image_pull_policy(image) == policy


@pytest.mark.parametrize(
    ("containers", "qos"),
    [
        ([{"name": "a"}], "BestEffort"),
        ([{"name": "a", "resources": {"requests": {"cpu": "100m"}}}], "Burstable"),
        ([{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}], "Guaranteed"),
        ([{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}}], "Burstable"),
        ([{"name": "a", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}], "Burstable"),
        ([{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}},
          {"name": "b"}], "Burstable"),
        ([{"name": "a", "resources": {"requests": {"nvidia.com/gpu": "1"}}}], "BestEffort"),
    ],
)  # fmt: skip
def test_qos_class(containers: list[dict[str, Any]], qos: str) -> None:
    assert pod_qos_class({"containers": containers}) == qos


def test_service_defaults() -> None:
    s: dict[str, Any] = {"metadata": {"name": "web", "namespace": "default"},
                         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}}  # fmt: skip
    apply_defaults("services", s)
    spec = s["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["sessionAffinity"] == "None"
    assert spec["ports"] == [
        {"port": 80, "protocol": "TCP", "targetPort": 80},
        {"port": 53, "protocol": "UDP", "targetPort": "dns"},
    ]
    assert spec["ipFamilies"] == ["IPv4"]
    assert spec["ipFamilyPolicy"] == "SingleStack"
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert "externalTrafficPolicy" not in spec
    np: dict[str, Any] = {
        "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "ports": [{"port": 80}], "sessionAffinity": "ClientIP"},
    }
    apply_defaults("services", np)
    assert np["spec"]["externalTrafficPolicy"] == "Cluster"
    assert np["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    lb: dict[str, Any] = {
        "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }
    apply_defaults("services", lb)
    assert lb["spec"]["allocateLoadBalancerNodePorts"] is True
    ext: dict[str, Any] = {
        "metadata": {"name": "ext"},
        "spec": {"type": "ExternalName", "externalName": "example.com"},
    }
    apply_defaults("services", ext)
    assert "ipFamilies" not in ext["spec"] and "internalTrafficPolicy" not in ext["spec"]


def test_workload_defaults() -> None:
    rs: dict[str, Any] = {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}}}
    apply_defaults("replicasets", rs)
    assert rs["spec"]["replicas"] == 1
    ds: dict[str, Any] = {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}}}
    apply_defaults("daemonsets", ds)
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    assert ds["spec"]["revisionHistoryLimit"] == 10
    job: dict[str, Any] = {
        "spec": {
            "template": {"spec": {"containers": [{"name": "a", "image": "a:1"}], "restartPolicy": "Never"}}
        }
    }
    apply_defaults("jobs", job)
    spec = job["spec"]
    assert (spec["parallelism"], spec["completions"], spec["backoffLimit"]) == (1, 1, 6)
    assert spec["completionMode"] == "NonIndexed"
    assert spec["suspend"] is False
    assert spec["podReplacementPolicy"] == "TerminatingOrFailed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    par: dict[str, Any] = {"spec": {"parallelism": 3, "template": {"spec": {}}}}
    apply_defaults("jobs", par)
    assert par["spec"]["parallelism"] == 3 and "completions" not in par["spec"]


def test_job_without_restart_policy_is_rejected_like_upstream() -> None:
    job: dict[str, Any] = {"metadata": {"name": "j", "namespace": "default"},
                           "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}}}  # fmt: skip
    apply_defaults("jobs", job)
    errs = validate_object("jobs", job)
    assert [(e.field, e.message()) for e in errs] == [
        (
            "spec.template.spec.restartPolicy",
            'Unsupported value: "Always": supported values: "OnFailure", "Never"',
        )
    ]


def test_namespace_secret_node_endpoint_defaults() -> None:
    ns: dict[str, Any] = {"metadata": {"name": "team-a"}}
    apply_defaults("namespaces", ns)
    assert ns["spec"] == {"finalizers": ["kubernetes"]}
    assert ns["status"] == {"phase": "Active"}
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}

    secret: dict[str, Any] = {
        "metadata": {"name": "s"},
        "stringData": {"password": "hunter2"},
        "data": {"user": "YWRtaW4="},
    }
    apply_defaults("secrets", secret)
    assert secret["type"] == "Opaque"
    assert "stringData" not in secret
    assert base64.b64decode(secret["data"]["password"]) == b"hunter2"
    assert secret["data"]["user"] == "YWRtaW4="

    node: dict[str, Any] = {"metadata": {"name": "n1"}, "status": {"capacity": {"cpu": "2", "pods": "110"}}}
    apply_defaults("nodes", node)
    assert node["status"]["allocatable"] == {"cpu": "2", "pods": "110"}

    eps: dict[str, Any] = {"endpoints": [], "ports": [{"port": 80}]}
    apply_defaults("endpointslices", eps)
    assert eps["ports"] == [{"port": 80, "name": "", "protocol": "TCP"}]
    ep: dict[str, Any] = {"subsets": [{"ports": [{"port": 80}]}]}
    apply_defaults("endpoints", ep)
    assert ep["subsets"][0]["ports"][0]["protocol"] == "TCP"

    cm: dict[str, Any] = {"data": {"a": "b"}}
    apply_defaults("configmaps", cm)
    assert cm == {"data": {"a": "b"}}


def test_defaulted_objects_deserialize_in_the_official_client() -> None:
    """The official Python client reads what we produce (wire names and types)."""
    from kubernetes.client import ApiClient

    client = ApiClient()
    d = minimal_deployment()
    apply_defaults("deployments", d)
    model = client._ApiClient__deserialize(d, "V1Deployment")  # type: ignore[attr-defined]
    assert model.spec.strategy.rolling_update.max_surge == "25%"
    assert model.spec.template.spec.containers[0].termination_message_path == "/dev/termination-log"
    p = minimal_pod()
    apply_defaults("pods", p)
    pod = client._ApiClient__deserialize(p, "V1Pod")  # type: ignore[attr-defined]
    assert pod.status.qos_class == "BestEffort"
    assert pod.spec.tolerations[0].toleration_seconds == 300
