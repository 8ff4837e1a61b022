"""kube.api.schema: unknown fields and JSON type errors like the upstream decoder's."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kube.api import schema

ROOT = Path(__file__).resolve().parents[2]

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {"a": "b"}, "finalizers": ["x"],
                 "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "1"}]},
    "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": "web"}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{
                "name": "nginx", "image": "nginx", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": 0.5}},
                "env": [{"name": "A", "value": "1"}],
                "livenessProbe": {"httpGet": {"port": "http", "path": "/"}},
            }], "tolerations": [{"key": "k", "operator": "Exists"}]},
        },
    },
    "status": {"replicas": 3, "conditions": [{"type": "Available", "status": "True",
                                              "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
}


def test_known_kinds() -> None:
    for av, kind in [("v1", "Pod"), ("v1", "PodList"), ("apps/v1", "Deployment"), ("v1", "Status"),
                     ("v1", "DeleteOptions"), ("autoscaling/v1", "Scale"), ("v1", "Binding"),
                     ("discovery.k8s.io/v1", "EndpointSlice"), ("coordination.k8s.io/v1", "Lease"),
                     ("batch/v1", "Job"), ("v1", "Event"), ("apps/v1", "DaemonSetList")]:
        assert schema.known_kind(av, kind), (av, kind)
    assert not schema.known_kind("apps/v1", "Pod")
    assert not schema.known_kind("v1", "Widget")


def test_valid_deployment_is_clean() -> None:
    assert schema.unknown_fields("apps/v1", "Deployment", DEPLOYMENT) == []
    assert schema.type_errors("apps/v1", "Deployment", DEPLOYMENT) == []


def test_unknown_fields_with_upstream_paths() -> None:
    dep = copy.deepcopy(DEPLOYMENT)
    dep["spec"]["replicass"] = 3
    dep["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostport"] = 1
    dep["metadata"]["labels"]["anything.example.com/goes"] = "yes"  # maps take any key
    paths = schema.unknown_fields("apps/v1", "Deployment", dep)
    # document order: new keys were appended at the end of their objects
    assert paths == ["spec.template.spec.containers[0].ports[0].hostport",
                     "spec.template.spec.containers[0].imagee", "spec.replicass"]
    assert schema.strict_decoding_error(["spec.replicass", "spec.template.spec.containers[0].imagee"]) == (
        'strict decoding error: unknown field "spec.replicass", '
        'unknown field "spec.template.spec.containers[0].imagee"')
    assert schema.decode_error("apps/v1", "Deployment", "x") == (
        'Deployment in version "v1" cannot be handled as a Deployment: x')


def test_unknown_fields_is_case_sensitive_and_skips_free_form() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"Name": "x",
           "managedFields": [{"fieldsV1": {"f:spec": {"f:whatever": {}}}}]}, "spec": {"containers": []}}
    assert schema.unknown_fields("v1", "Pod", pod) == ["metadata.Name"]
    assert schema.unknown_fields("v1", "Widget", {"x": 1}) == []


def test_type_errors_name_go_struct_field() -> None:
    dep = copy.deepcopy(DEPLOYMENT)
    dep["spec"]["replicas"] = "3"
    assert schema.type_errors("apps/v1", "Deployment", dep) == [
        "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"]

    dep = copy.deepcopy(DEPLOYMENT)
    dep["spec"]["template"]["spec"]["containers"] = {"name": "x"}
    assert schema.type_errors("apps/v1", "Deployment", dep) == [
        "json: cannot unmarshal object into Go struct field PodSpec.spec.template.spec.containers "
        "of type []v1.Container"]

    dep = copy.deepcopy(DEPLOYMENT)
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = 5
    dep["metadata"]["labels"]["n"] = 1
    dep["spec"]["paused"] = "yes"
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 80.5
    assert schema.type_errors("apps/v1", "Deployment", dep) == [
        "json: cannot unmarshal number into Go struct field ObjectMeta.metadata.labels of type string",
        "json: cannot unmarshal number into Go struct field Container.spec.template.spec.containers.image "
        "of type string",
        "json: cannot unmarshal number 80.5 into Go struct field "
        "ContainerPort.spec.template.spec.containers.ports.containerPort of type int32",
        "json: cannot unmarshal string into Go struct field DeploymentSpec.spec.paused of type bool",
    ]


def test_nulls_int_or_string_quantity_and_int64() -> None:
    dep = copy.deepcopy(DEPLOYMENT)
    dep["spec"]["replicas"] = None
    dep["spec"]["template"]["spec"]["containers"][0]["ports"] = None
    dep["metadata"]["generation"] = 2**40
    assert schema.type_errors("apps/v1", "Deployment", dep) == []
    dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = True
    dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = ["1"]
    errs = schema.type_errors("apps/v1", "Deployment", dep)
    assert errs[0] == "json: cannot unmarshal bool into Go value of type int32"
    assert errs[1].startswith("quantities must match the regular expression")
    dep = copy.deepcopy(DEPLOYMENT)
    dep["spec"]["replicas"] = 2**31
    assert schema.type_errors("apps/v1", "Deployment", dep) == [
        "json: cannot unmarshal number 2147483648 into Go struct field DeploymentSpec.spec.replicas of type int32"]


def test_service_and_secret() -> None:
    svc: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8081}],
                    "selector": {"app": "x"}}}
    assert schema.type_errors("v1", "Service", svc) == []
    svc["spec"]["ports"][0]["port"] = "80"
    assert schema.type_errors("v1", "Service", svc) == [
        "json: cannot unmarshal string into Go struct field ServicePort.spec.ports.port of type int32"]
    sec: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "aGVsbG8="},
           "stringData": {"b": "plain"}}
    assert schema.type_errors("v1", "Secret", sec) == []
    sec["data"]["a"] = "not base64!"
    assert schema.type_errors("v1", "Secret", sec) == ["illegal base64 data at input byte 3"]


def test_top_level_must_be_object() -> None:
    assert schema.type_errors("v1", "Pod", ["x"]) == ["json: cannot unmarshal array into Go value of type v1.Pod"]


def test_data_file_is_up_to_date_with_generator() -> None:
    pytest.importorskip("kubernetes")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-schema"), "--check"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
