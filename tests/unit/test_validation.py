"""Validation: field paths, error types and upstream messages."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any

import pytest

from kube.api.defaults import apply_defaults
from kube.api.validation import (
    DUPLICATE,
    FORBIDDEN,
    INVALID,
    NOT_FOUND,
    NOT_SUPPORTED,
    REQUIRED,
    TOO_LONG,
    TOO_MANY,
    FieldError,
    format_errors,
    validate_object,
    validate_status_update,
    validate_update,
)

# --------------------------------------------------------------------------
# fixtures: valid, defaulted objects


def pod() -> dict[str, Any]:
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "nginx:1.25",
                    "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}],
                    "env": [{"name": "MODE", "value": "prod"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "64Mi"},
                        "limits": {"cpu": "1", "memory": "128Mi"},
                    },
                    "readinessProbe": {"httpGet": {"port": "http", "path": "/healthz"}},
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }
    apply_defaults("pods", obj)
    return obj


def service() -> dict[str, Any]:
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    apply_defaults("services", obj)
    return obj


def deployment() -> dict[str, Any]:
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]},
            },
        },
    }
    apply_defaults("deployments", obj)
    return obj


def workload(resource: str) -> dict[str, Any]:
    obj = copy.deepcopy(deployment())
    del obj["spec"]["strategy"], obj["spec"]["progressDeadlineSeconds"]
    if resource == "jobs":
        obj["spec"] = {"template": obj["spec"]["template"]}
        obj["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    if resource == "daemonsets":
        del obj["spec"]["replicas"]
    apply_defaults(resource, obj)
    return obj


VALID: dict[str, Callable[[], dict[str, Any]]] = {
    "pods": pod,
    "services": service,
    "deployments": deployment,
    "replicasets": lambda: workload("replicasets"),
    "daemonsets": lambda: workload("daemonsets"),
    "jobs": lambda: workload("jobs"),
    "namespaces": lambda: {"metadata": {"name": "team-a"}, "spec": {"finalizers": ["kubernetes"]}},
    "nodes": lambda: {"metadata": {"name": "node-1.lab"}, "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}},
    "configmaps": lambda: {"metadata": {"name": "cfg", "namespace": "default"}, "data": {"app.conf": "x=1", "KEY_2": "y"}},
    "secrets": lambda: {"metadata": {"name": "s", "namespace": "default"}, "type": "Opaque",
                        "data": {"password": base64.b64encode(b"hunter2").decode()}},
    "events": lambda: {"metadata": {"name": "web.17a", "namespace": "default"},
                       "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"}, "reason": "Started"},
    "serviceaccounts": lambda: {"metadata": {"name": "default", "namespace": "default"}},
    "leases": lambda: {"metadata": {"name": "node-1", "namespace": "kube-node-lease"},
                       "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}},
    "endpoints": lambda: {"metadata": {"name": "web", "namespace": "default"},
                          "subsets": [{"addresses": [{"ip": "10.244.1.5"}], "ports": [{"port": 8080, "protocol": "TCP"}]}]},
    "endpointslices": lambda: {"metadata": {"name": "web-abc", "namespace": "default"}, "addressType": "IPv4",
                               "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}}],
                               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
}  # fmt: skip


@pytest.mark.parametrize("resource", sorted(VALID))
def test_valid_objects_have_no_errors(resource: str) -> None:
    assert validate_object(resource, VALID[resource]()) == []


# --------------------------------------------------------------------------
# bad objects: each mutation gives (field, type)

Mut = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Mut:
    """A mutation that sets a dotted path (list indexes as numbers)."""

    def mutate(obj: dict[str, Any]) -> None:
        parts = path.split(".")
        cur: Any = obj
        for p in parts[:-1]:
            cur = cur[int(p)] if p.isdigit() else cur.setdefault(p, {})
        last = parts[-1]
        if value is _DEL:
            del cur[int(last) if last.isdigit() else last]
        elif last.isdigit():
            cur[int(last)] = value
        else:
            cur[last] = value

    return mutate


_DEL = object()
C0 = "spec.containers.0"
T = "spec.template.spec"

BAD: list[tuple[str, str, Mut, str, str]] = [
    # (id, resource, mutation, field, type)
    ("name-missing", "pods", _set("metadata.name", _DEL), "metadata.name", REQUIRED),
    ("name-uppercase", "pods", _set("metadata.name", "Web"), "metadata.name", INVALID),
    ("name-too-long", "configmaps", _set("metadata.name", "a" * 254), "metadata.name", INVALID),
    ("generate-name-bad", "pods", lambda o: (o["metadata"].pop("name"), o["metadata"].update(generateName="Web-")),
     "metadata.generateName", INVALID),
    ("namespace-missing", "pods", _set("metadata.namespace", _DEL), "metadata.namespace", REQUIRED),
    ("namespace-bad", "pods", _set("metadata.namespace", "Team_A"), "metadata.namespace", INVALID),
    ("namespace-on-cluster-scoped", "nodes", _set("metadata.namespace", "default"), "metadata.namespace", FORBIDDEN),
    ("namespace-name-dots", "namespaces", _set("metadata.name", "team.a"), "metadata.name", INVALID),
    ("service-name-digit", "services", _set("metadata.name", "1web"), "metadata.name", INVALID),
    ("node-name-subdomain-ok-but-upper", "nodes", _set("metadata.name", "Node1"), "metadata.name", INVALID),
    ("label-key", "pods", _set("metadata.labels", {"bad key": "x"}), "metadata.labels", INVALID),
    ("label-prefix", "pods", _set("metadata.labels", {"Example.com/app": "x"}), "metadata.labels", INVALID),
    ("label-value", "pods", _set("metadata.labels", {"app": "-web"}), "metadata.labels", INVALID),
    ("label-value-long", "pods", _set("metadata.labels", {"app": "x" * 64}), "metadata.labels", INVALID),
    ("annotation-key", "pods", _set("metadata.annotations", {"a/b/c": "x"}), "metadata.annotations", INVALID),
    ("annotation-size", "pods", _set("metadata.annotations", {"big": "x" * 262142}), "metadata.annotations", TOO_LONG),
    ("finalizer", "pods", _set("metadata.finalizers", ["not a name"]), "metadata.finalizers", INVALID),
    ("finalizer-unqualified", "pods", _set("metadata.finalizers", ["custom"]), "metadata.finalizers", INVALID),
    ("owner-uid", "pods", _set("metadata.ownerReferences", [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs"}]),
     "metadata.ownerReferences.uid", INVALID),
    # pods
    ("containers-missing", "pods", _set("spec.containers", []), "spec.containers", REQUIRED),
    ("container-name-missing", "pods", _set(f"{C0}.name", _DEL), "spec.containers[0].name", REQUIRED),
    ("container-name-bad", "pods", _set(f"{C0}.name", "App_1"), "spec.containers[0].name", INVALID),
    ("container-dup", "pods", lambda o: o["spec"]["containers"].append(dict(o["spec"]["containers"][0], ports=[])),
     "spec.containers[1].name", DUPLICATE),
    ("init-container-dup", "pods", lambda o: o["spec"].update(initContainers=[{"name": "app", "image": "busybox"}]),
     "spec.containers[0].name", DUPLICATE),
    ("image-missing", "pods", _set(f"{C0}.image", ""), "spec.containers[0].image", REQUIRED),
    ("port-range", "pods", _set(f"{C0}.ports.1.containerPort", 70000), "spec.containers[0].ports[1].containerPort", INVALID),
    ("port-missing", "pods", _set(f"{C0}.ports.1.containerPort", _DEL), "spec.containers[0].ports[1].containerPort", REQUIRED),
    ("host-port-range", "pods", _set(f"{C0}.ports.0.hostPort", -1), "spec.containers[0].ports[0].hostPort", INVALID),
    ("protocol", "pods", _set(f"{C0}.ports.0.protocol", "ICMP"), "spec.containers[0].ports[0].protocol", NOT_SUPPORTED),
    ("port-name", "pods", _set(f"{C0}.ports.0.name", "HTTP"), "spec.containers[0].ports[0].name", INVALID),
    ("port-name-dup", "pods", _set(f"{C0}.ports.1.name", "http"), "spec.containers[0].ports[1].name", DUPLICATE),
    ("env-name", "pods", _set(f"{C0}.env.0.name", "1MODE"), "spec.containers[0].env[0].name", INVALID),
    ("env-name-missing", "pods", _set(f"{C0}.env.0.name", ""), "spec.containers[0].env[0].name", REQUIRED),
    ("quantity-garbage", "pods", _set(f"{C0}.resources.limits.memory", "10MB"), "spec.containers[0].resources.limits[memory]", INVALID),
    ("quantity-negative", "pods", _set(f"{C0}.resources.requests.cpu", "-1"), "spec.containers[0].resources.requests[cpu]", INVALID),
    ("requests-over-limits", "pods", _set(f"{C0}.resources.requests.cpu", "2"), "spec.containers[0].resources.requests[cpu]", INVALID),
    ("resource-name", "pods", _set(f"{C0}.resources.limits.gpu", "1"), "spec.containers[0].resources.limits[gpu]", INVALID),
    ("restart-policy", "pods", _set("spec.restartPolicy", "Sometimes"), "spec.restartPolicy", NOT_SUPPORTED),
    ("dns-policy", "pods", _set("spec.dnsPolicy", "Google"), "spec.dnsPolicy", NOT_SUPPORTED),
    ("volume-dup", "pods", lambda o: o["spec"]["volumes"].append({"name": "data", "emptyDir": {}}), "spec.volumes[1].name", DUPLICATE),
    ("volume-name", "pods", _set("spec.volumes.0.name", "Data"), "spec.volumes[0].name", INVALID),
    ("volume-two-sources", "pods", _set("spec.volumes.0.hostPath", {"path": "/x"}), "spec.volumes[0].emptyDir", FORBIDDEN),
    ("volume-mount-unknown", "pods", _set(f"{C0}.volumeMounts.0.name", "nope"), "spec.containers[0].volumeMounts[0].name", NOT_FOUND),
    ("volume-mount-path", "pods", _set(f"{C0}.volumeMounts.0.mountPath", ""), "spec.containers[0].volumeMounts[0].mountPath", REQUIRED),
    ("probe-no-handler", "pods", _set(f"{C0}.livenessProbe", {"periodSeconds": 5}), "spec.containers[0].livenessProbe", REQUIRED),
    ("probe-port", "pods", _set(f"{C0}.readinessProbe.httpGet.port", 0), "spec.containers[0].readinessProbe.httpGet.port", INVALID),
    ("probe-liveness-success", "pods", _set(f"{C0}.livenessProbe", {"tcpSocket": {"port": 80}, "successThreshold": 2}),
     "spec.containers[0].livenessProbe.successThreshold", INVALID),
    ("probe-negative", "pods", _set(f"{C0}.readinessProbe.periodSeconds", -1), "spec.containers[0].readinessProbe.periodSeconds", INVALID),
    ("grace-negative", "pods", _set("spec.terminationGracePeriodSeconds", -5), "spec.terminationGracePeriodSeconds", INVALID),
    ("deadline-zero", "pods", _set("spec.activeDeadlineSeconds", 0), "spec.activeDeadlineSeconds", INVALID),
    ("node-name", "pods", _set("spec.nodeName", "Node_1"), "spec.nodeName", INVALID),
    ("node-selector", "pods", _set("spec.nodeSelector", {"disk": "ssd drive"}), "spec.nodeSelector", INVALID),
    ("toleration-operator", "pods", _set("spec.tolerations.0.operator", "Maybe"), "spec.tolerations[0].operator", NOT_SUPPORTED),
    ("toleration-effect", "pods", _set("spec.tolerations.0.effect", "NoWay"), "spec.tolerations[0].effect", NOT_SUPPORTED),
    ("toleration-seconds", "pods", _set("spec.tolerations.0.effect", "NoSchedule"), "spec.tolerations[0].effect", INVALID),
    ("toleration-exists-value", "pods", _set("spec.tolerations.0.value", "x"), "spec.tolerations[0].value", INVALID),
    ("toleration-empty-key", "pods", _set("spec.tolerations", [{"operator": "Equal", "value": "x"}]), "spec.tolerations[0].operator", INVALID),
    ("pull-policy", "pods", _set(f"{C0}.imagePullPolicy", "Sometimes"), "spec.containers[0].imagePullPolicy", NOT_SUPPORTED),
    # services
    ("svc-ports-missing", "services", _set("spec.ports", []), "spec.ports", REQUIRED),
    ("svc-port-range", "services", _set("spec.ports.0.port", 65536), "spec.ports[0].port", INVALID),
    ("svc-port-names-required", "services", lambda o: o["spec"]["ports"].append({"port": 443, "protocol": "TCP", "targetPort": 443}),
     "spec.ports[1].name", REQUIRED),
    ("svc-port-name-dup", "services", lambda o: o["spec"]["ports"].append({"name": "http", "port": 443, "protocol": "TCP"}),
     "spec.ports[1].name", DUPLICATE),
    ("svc-port-dup", "services", lambda o: o["spec"]["ports"].append({"name": "b", "port": 80, "protocol": "TCP"}),
     "spec.ports[1]", DUPLICATE),
    ("svc-protocol", "services", _set("spec.ports.0.protocol", "HTTP"), "spec.ports[0].protocol", NOT_SUPPORTED),
    ("svc-type", "services", _set("spec.type", "Magic"), "spec.type", NOT_SUPPORTED),
    ("svc-target-port-name", "services", _set("spec.ports.0.targetPort", "Web_Port"), "spec.ports[0].targetPort", INVALID),
    ("svc-target-port-num", "services", _set("spec.ports.0.targetPort", 70000), "spec.ports[0].targetPort", INVALID),
    ("svc-affinity", "services", _set("spec.sessionAffinity", "Sticky"), "spec.sessionAffinity", NOT_SUPPORTED),
    ("svc-cluster-ip", "services", _set("spec.clusterIP", "10.0.0.300"), "spec.clusterIP", INVALID),
    ("svc-node-port-cluster-ip", "services", _set("spec.ports.0.nodePort", 30080), "spec.ports[0].nodePort", FORBIDDEN),
    ("svc-selector", "services", _set("spec.selector", {"app": "a b"}), "spec.selector", INVALID),
    ("svc-external-name-missing", "services", _set("spec.type", "ExternalName"), "spec.externalName", REQUIRED),
    # deployments and friends
    ("deploy-selector-missing", "deployments", _set("spec.selector", _DEL), "spec.selector", REQUIRED),
    ("deploy-selector-empty", "deployments", _set("spec.selector", {}), "spec.selector", INVALID),
    ("deploy-selector-mismatch", "deployments", _set("spec.template.metadata.labels", {"app": "api"}),
     "spec.template.metadata.labels", INVALID),
    ("deploy-selector-operator", "deployments", _set("spec.selector.matchExpressions", [{"key": "app", "operator": "Gt", "values": ["1"]}]),
     "spec.selector.matchExpressions[0].operator", INVALID),
    ("deploy-selector-values", "deployments", _set("spec.selector.matchExpressions", [{"key": "app", "operator": "In"}]),
     "spec.selector.matchExpressions[0].values", REQUIRED),
    ("deploy-replicas", "deployments", _set("spec.replicas", -1), "spec.replicas", INVALID),
    ("deploy-strategy", "deployments", _set("spec.strategy.type", "BlueGreen"), "spec.strategy.type", NOT_SUPPORTED),
    ("deploy-max-surge", "deployments", _set("spec.strategy.rollingUpdate.maxSurge", "25"), "spec.strategy.rollingUpdate.maxSurge", INVALID),
    ("deploy-max-unavailable-pct", "deployments", _set("spec.strategy.rollingUpdate.maxUnavailable", "150%"),
     "spec.strategy.rollingUpdate.maxUnavailable", INVALID),
    ("deploy-both-zero", "deployments", _set("spec.strategy.rollingUpdate", {"maxSurge": 0, "maxUnavailable": 0}),
     "spec.strategy.rollingUpdate.maxUnavailable", INVALID),
    ("deploy-recreate-rolling", "deployments", _set("spec.strategy.type", "Recreate"), "spec.strategy.rollingUpdate", FORBIDDEN),
    ("deploy-restart-policy", "deployments", _set(f"{T}.restartPolicy", "Never"), "spec.template.spec.restartPolicy", NOT_SUPPORTED),
    ("deploy-template-container", "deployments", _set(f"{T}.containers.0.image", ""), "spec.template.spec.containers[0].image", REQUIRED),
    ("deploy-template-label", "deployments", _set("spec.template.metadata.labels", {"app": "web", "x": "a b"}),
     "spec.template.metadata.labels", INVALID),
    ("deploy-progress-deadline", "deployments", _set("spec.minReadySeconds", 900), "spec.progressDeadlineSeconds", INVALID),
    ("rs-selector-missing", "replicasets", _set("spec.selector", _DEL), "spec.selector", REQUIRED),
    ("rs-active-deadline", "replicasets", _set(f"{T}.activeDeadlineSeconds", 10), "spec.template.spec.activeDeadlineSeconds", FORBIDDEN),
    ("ds-strategy", "daemonsets", _set("spec.updateStrategy.type", "Fast"), "spec.updateStrategy.type", NOT_SUPPORTED),
    ("ds-selector-mismatch", "daemonsets", _set("spec.selector.matchLabels", {"app": "other"}), "spec.template.metadata.labels", INVALID),
    ("job-restart-policy", "jobs", _set(f"{T}.restartPolicy", "Always"), "spec.template.spec.restartPolicy", NOT_SUPPORTED),
    ("job-restart-policy-missing", "jobs", _set(f"{T}.restartPolicy", ""), "spec.template.spec.restartPolicy", REQUIRED),
    ("job-parallelism", "jobs", _set("spec.parallelism", -1), "spec.parallelism", INVALID),
    ("job-backoff", "jobs", _set("spec.backoffLimit", -2), "spec.backoffLimit", INVALID),
    ("job-completion-mode", "jobs", _set("spec.completionMode", "Sometimes"), "spec.completionMode", NOT_SUPPORTED),
    ("job-manual-selector", "jobs", _set("spec.manualSelector", True), "spec.selector", REQUIRED),
    # config
    ("cm-key", "configmaps", _set("data", {"bad/key": "x"}), "data[bad/key]", INVALID),
    ("cm-key-dotdot", "configmaps", _set("data", {"..x": "x"}), "data[..x]", INVALID),
    ("cm-binary-dup", "configmaps", _set("binaryData", {"app.conf": "eA=="}), "binaryData[app.conf]", INVALID),
    ("cm-too-big", "configmaps", _set("data", {"big": "x" * (1024 * 1024 + 1)}), "data", TOO_LONG),
    ("secret-base64", "secrets", _set("data.password", "not base64!"), "data[password]", INVALID),
    ("secret-key", "secrets", _set("data", {"a b": "eA=="}), "data[a b]", INVALID),
    ("secret-tls", "secrets", _set("type", "kubernetes.io/tls"), "data[tls.crt]", REQUIRED),
    ("ns-finalizer", "namespaces", _set("spec.finalizers", ["bogus"]), "spec.finalizers", INVALID),
    ("node-cidr", "nodes", _set("spec.podCIDR", "10.244.1.0/33"), "spec.podCIDR", INVALID),
    ("node-taint-effect", "nodes", _set("spec.taints", [{"key": "k", "effect": "Nope"}]), "spec.taints[0].effect", NOT_SUPPORTED),
    ("node-taint-key", "nodes", _set("spec.taints", [{"effect": "NoSchedule"}]), "spec.taints[0].key", REQUIRED),
    ("event-involved", "events", _set("involvedObject", _DEL), "involvedObject", REQUIRED),
    ("event-namespace", "events", _set("involvedObject.namespace", "other"), "involvedObject.namespace", INVALID),
    ("lease-duration", "leases", _set("spec.leaseDurationSeconds", 0), "spec.leaseDurationSeconds", INVALID),
    ("ep-ip", "endpoints", _set("subsets.0.addresses.0.ip", "nope"), "subsets[0].addresses[0].ip", INVALID),
    ("ep-port", "endpoints", _set("subsets.0.ports.0.port", 0), "subsets[0].ports[0].port", INVALID),
    ("eps-address-type-missing", "endpointslices", _set("addressType", _DEL), "addressType", REQUIRED),
    ("eps-address-type", "endpointslices", _set("addressType", "IPv5"), "addressType", NOT_SUPPORTED),
    ("eps-addresses-missing", "endpointslices", _set("endpoints.0.addresses", []), "endpoints[0].addresses", REQUIRED),
    ("eps-addresses-too-many", "endpointslices", _set("endpoints.0.addresses", [f"10.0.0.{i}" for i in range(101)]),
     "endpoints[0].addresses", TOO_MANY),
    ("eps-address", "endpointslices", _set("endpoints.0.addresses", ["fe80::1"]), "endpoints[0].addresses[0]", INVALID),
    ("eps-protocol", "endpointslices", _set("ports.0.protocol", "ICMP"), "ports[0].protocol", NOT_SUPPORTED),
    ("sa-secret", "serviceaccounts", _set("secrets", [{"name": "Bad_Name"}]), "secrets[0].name", INVALID),
]  # fmt: skip


@pytest.mark.parametrize(
    ("resource", "mutate", "field", "etype"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_objects(resource: str, mutate: Mut, field: str, etype: str) -> None:
    obj = VALID[resource]()
    mutate(obj)
    errs = validate_object(resource, obj)
    assert (field, etype) in [(e.field, e.type) for e in errs], [str(e) for e in errs]


def test_wrong_json_types_never_raise() -> None:
    junk: list[Any] = [None, 1, "x", [1], {"a": None}, True]
    for resource, make in VALID.items():
        for key in ("metadata", "spec", "status", "data", "subsets", "endpoints", "ports", "involvedObject"):
            for value in junk:
                obj = make()
                obj[key] = value
                validate_object(resource, obj)
                validate_update(resource, obj, make())
                validate_status_update(resource, obj, make())
        obj = pod()
        obj["spec"]["containers"][0] = {"name": 5, "image": [], "ports": "x", "env": {}, "resources": "r"}
        validate_object("pods", obj)


# --------------------------------------------------------------------------
# upstream message texts


def errors_for(resource: str, mutate: Mut) -> list[FieldError]:
    obj = VALID[resource]()
    mutate(obj)
    return validate_object(resource, obj)


def only(resource: str, mutate: Mut) -> FieldError:
    errs = errors_for(resource, mutate)
    assert len(errs) == 1, [str(e) for e in errs]
    return errs[0]


def test_messages_match_upstream() -> None:
    e = only("pods", _set("metadata.name", "Foo"))
    assert e.message() == (
        'Invalid value: "Foo": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '
        "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
        r"validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    )
    assert e.cause() == {"reason": "FieldValueInvalid", "message": e.message(), "field": "metadata.name"}
    assert str(e) == "metadata.name: " + e.message()

    e = only("pods", _set("spec.restartPolicy", "Sometimes"))
    assert e.message() == 'Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"'

    e = only("pods", _set("metadata.name", _DEL))
    assert e.message() == "Required value: name or generateName is required"
    e = only("pods", _set("spec.containers.0.image", ""))
    assert e.message() == "Required value"

    e = only("services", _set("metadata.name", "1web"))
    assert (
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character"
        in e.message()
    )
    assert (
        "(e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
        in e.message()
    )

    e = only("pods", _set("spec.containers.0.ports.1.containerPort", 70000))
    assert (
        str(e)
        == "spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
    )

    e = only("pods", lambda o: o["spec"]["containers"].append({"name": "app", "image": "x"}))
    assert e.message() == 'Duplicate value: "app"'

    e = only("deployments", _set("spec.template.metadata.labels", {"app": "api"}))
    assert (
        str(e)
        == 'spec.template.metadata.labels: Invalid value: {"app":"api"}: `selector` does not match template `labels`'
    )

    e = only("pods", _set("metadata.labels", {"bad key": "x"}))
    assert e.message() == (
        "Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must "
        "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
        "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
    )

    e = only("pods", _set("spec.containers.0.env.0.name", "1MODE"))
    assert (
        "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit"
        in e.message()
    )
    assert "regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*'" in e.message()

    e = only("pods", _set("spec.containers.0.resources.requests.cpu", "2"))
    assert (
        str(e)
        == 'spec.containers[0].resources.requests[cpu]: Invalid value: "2": must be less than or equal to cpu limit of 1'
    )

    e = only("pods", _set("metadata.annotations", {"big": "x" * 262142}))
    assert str(e) == "metadata.annotations: Too long: may not be more than 262144 bytes"

    e = only("services", _set("spec.ports", []))
    assert str(e) == "spec.ports: Required value"

    e = only("secrets", _set("data.password", "!!"))
    assert "!!" not in e.message()  # secret data is never echoed

    e = only("pods", _set("spec.containers.0.volumeMounts.0.name", "nope"))
    assert str(e) == 'spec.containers[0].volumeMounts[0].name: Not found: "nope"'


def test_format_errors_aggregate() -> None:
    errs = errors_for(
        "pods", lambda o: (o["metadata"].update(name="Web"), o["spec"].update(restartPolicy="x"))
    )
    text = format_errors(errs)
    assert (
        text.startswith("[metadata.name: Invalid value") and "spec.restartPolicy: Unsupported value" in text
    )
    assert format_errors(errs[:1]) == str(errs[0])


def test_headless_and_external_name_services() -> None:
    headless = service()
    headless["spec"].update(clusterIP="None", ports=[])
    assert validate_object("services", headless) == []
    ext = {
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com."},
    }
    apply_defaults("services", ext)
    assert validate_object("services", ext) == []
    ext["spec"]["clusterIP"] = "10.96.0.10"
    assert [(e.field, e.type) for e in validate_object("services", ext)] == [("spec.clusterIPs", FORBIDDEN)]


def test_generate_name_with_trailing_dash_is_fine() -> None:
    obj = pod()
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "web-"
    assert validate_object("pods", obj) == []


def test_unknown_resource() -> None:
    with pytest.raises(KeyError):
        validate_object("widgets", {})


# --------------------------------------------------------------------------
# updates


def upd(resource: str, mutate: Mut, old: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    old = old if old is not None else VALID[resource]()
    new = copy.deepcopy(old)
    mutate(new)
    return [(e.field, e.type) for e in validate_update(resource, new, old)]


def test_update_allowed_changes() -> None:
    assert upd("pods", _set("spec.containers.0.image", "nginx:1.26")) == []
    assert upd("pods", _set("metadata.labels", {"app": "web", "v": "2"})) == []
    assert upd("pods", _set("spec.activeDeadlineSeconds", 100)) == []
    assert upd("pods", lambda o: o["spec"]["tolerations"].append({"key": "k", "operator": "Exists"})) == []
    assert upd("pods", _set("spec.tolerations.0.tolerationSeconds", 60)) == []
    assert upd("deployments", _set("spec.replicas", 5)) == []
    assert upd("deployments", _set("spec.template.spec.containers.0.image", "x:2")) == []
    assert upd("services", _set("spec.ports.0.targetPort", 9090)) == []
    assert upd("configmaps", _set("data.KEY_2", "z")) == []


def test_update_forbidden_changes() -> None:
    assert upd("pods", _set("metadata.name", "other")) == [("metadata.name", INVALID)]
    assert upd("pods", _set("metadata.namespace", "other")) == [("metadata.namespace", INVALID)]
    old = pod()
    old["metadata"].update(uid="u1", creationTimestamp="2024-01-01T00:00:00Z")
    assert upd("pods", _set("metadata.uid", "u2"), old) == [("metadata.uid", INVALID)]
    assert upd("pods", _set("metadata.creationTimestamp", "2025-01-01T00:00:00Z"), old) == [
        ("metadata.creationTimestamp", INVALID)
    ]
    assert upd("pods", _set("spec.restartPolicy", "Never")) == [("spec", FORBIDDEN)]
    assert upd("pods", _set("spec.containers.0.env", [])) == [("spec", FORBIDDEN)]
    assert upd("pods", lambda o: o["spec"]["containers"].append({"name": "b", "image": "b"})) == [
        ("spec.containers", FORBIDDEN)
    ]
    assert upd("pods", lambda o: o["spec"]["tolerations"].pop(0)) == [("spec.tolerations[0]", FORBIDDEN)]
    assert upd("pods", _set("spec.terminationGracePeriodSeconds", 10)) == [("spec", FORBIDDEN)]
    old = pod()
    old["spec"]["activeDeadlineSeconds"] = 100
    assert upd("pods", _set("spec.activeDeadlineSeconds", 200), old) == [
        ("spec.activeDeadlineSeconds", INVALID)
    ]
    assert upd(
        "services",
        _set("spec.clusterIP", "10.96.0.11"),
        dict(service(), spec=dict(service()["spec"], clusterIP="10.96.0.10")),
    ) == [("spec.clusterIP", INVALID)]
    for resource in ("deployments", "replicasets", "daemonsets"):
        assert upd(resource, lambda o: (o["spec"]["selector"]["matchLabels"].update(v="2"),
                                        o["spec"]["template"]["metadata"]["labels"].update(v="2"))) == [("spec.selector", INVALID)]  # fmt: skip
    assert upd("jobs", _set("spec.template.spec.containers.0.image", "x:2")) == [("spec.template", INVALID)]
    assert upd("jobs", _set("spec.completions", 3)) == [("spec.completions", INVALID)]


def test_pod_update_message() -> None:
    old = pod()
    new = copy.deepcopy(old)
    new["spec"]["restartPolicy"] = "Never"
    (e,) = validate_update("pods", new, old)
    assert e.message().startswith(
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
        "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
        "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
    )
    assert 'spec.restartPolicy: "Always" -> "Never"' in e.message()


def test_immutable_configmap_and_secret() -> None:
    old = VALID["configmaps"]()
    old["immutable"] = True
    assert upd("configmaps", _set("data.KEY_2", "z"), old) == [("data", FORBIDDEN)]
    assert upd("configmaps", _set("immutable", False), old) == [("immutable", FORBIDDEN)]
    assert upd("configmaps", _set("metadata.labels", {"a": "b"}), old) == []
    old = VALID["secrets"]()
    old["immutable"] = True
    assert upd("secrets", _set("data.password", "eA=="), old) == [("data", FORBIDDEN)]
    assert upd("secrets", _set("type", "example.com/custom"), VALID["secrets"]()) == [("type", INVALID)]


def test_node_pod_cidr_immutable_once_set() -> None:
    assert upd("nodes", lambda o: o["spec"].update(podCIDR="10.244.2.0/24", podCIDRs=["10.244.2.0/24"])) == [
        ("spec.podCIDRs", FORBIDDEN)
    ]
    unset = {"metadata": {"name": "node-1.lab"}, "spec": {}}
    assert (
        upd("nodes", lambda o: o["spec"].update(podCIDR="10.244.2.0/24", podCIDRs=["10.244.2.0/24"]), unset)
        == []
    )


def test_finalizers_cannot_be_added_while_deleting() -> None:
    old = pod()
    old["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert upd("pods", _set("metadata.finalizers", ["example.com/hold"]), old) == [
        ("metadata.finalizers", FORBIDDEN)
    ]


# --------------------------------------------------------------------------
# status


def status_errs(resource: str, status: Any, old_status: Any = None) -> list[tuple[str, str]]:
    old = VALID[resource]()
    if old_status is not None:
        old["status"] = old_status
    new = copy.deepcopy(old)
    new["status"] = status
    return [(e.field, e.type) for e in validate_status_update(resource, new, old)]


def test_status_updates() -> None:
    assert (
        status_errs(
            "pods",
            {"phase": "Running", "podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]},
        )
        == []
    )
    assert status_errs("pods", {"phase": "Sleeping"}) == [("status.phase", NOT_SUPPORTED)]
    assert status_errs("pods", {"phase": "Running", "conditions": [{"type": "Ready", "status": "Yes"}]}) == [
        ("status.conditions[0].status", NOT_SUPPORTED)
    ]
    assert status_errs("pods", {"conditions": [{"status": "True"}]}) == [
        ("status.conditions[0].type", REQUIRED)
    ]
    assert status_errs("pods", {"phase": "Running"}, {"phase": "Succeeded"}) == [("status.phase", INVALID)]
    assert status_errs("pods", {"podIP": "nope"}) == [("status.podIP", INVALID)]
    assert status_errs("deployments", {"replicas": -1}) == [("status.replicas", INVALID)]
    assert status_errs("deployments", {"replicas": 1, "readyReplicas": 2}) == [
        ("status.readyReplicas", INVALID)
    ]
    assert status_errs("nodes", {"capacity": {"cpu": "2", "memory": "bogus"}}) == [
        ("status.capacity[memory]", INVALID)
    ]
    assert status_errs("namespaces", {"phase": "Gone"}) == [("status.phase", NOT_SUPPORTED)]
    assert status_errs("jobs", {"succeeded": -1}) == [("status.succeeded", INVALID)]
    e = validate_status_update("pods", dict(pod(), status={"phase": "x"}), pod())[0]
    assert (
        e.message()
        == 'Unsupported value: "x": supported values: "Pending", "Running", "Succeeded", "Failed", "Unknown"'
    )
