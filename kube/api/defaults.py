"""Upstream defaulting for the served resources, in place on wire-format dicts.

This gathers what several upstream layers do on create so a stored object
looks like one from a real cluster:

* the ``SetDefaults_*`` functions of k8s.io/kubernetes ``pkg/apis/*/v1``;
* pod admission that every cluster runs: ServiceAccount (``default``),
  Priority (``priority: 0``, ``preemptionPolicy``), DefaultTolerationSeconds
  (not-ready / unreachable ``NoExecute`` for 300 s);
* registry strategies: pod ``status.phase``/``qosClass``, namespace
  ``spec.finalizers``, service ``ipFamilies``/``ipFamilyPolicy``, and the
  Secret ``stringData`` fold into ``data``.

Metadata (uid, creationTimestamp, resourceVersion, ...) is the apiserver's.
Defaulting is idempotent: running it twice changes nothing more.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from kube.api.quantity import QuantityError, parse_quantity

__all__ = [
    "apply_defaults",
    "default_pod_spec",
    "default_pod_template",
    "default_container",
    "image_pull_policy",
    "pod_qos_class",
    "DEFAULT_TOLERATION_SECONDS",
]

DEFAULT_TOLERATION_SECONDS = 300
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
_DEFAULT_FILE_MODE = 0o644  # 420, volume defaultMode
SECRET_FILE_MODE = 0o400  # 256, a secret volume's defaultMode (kubeling's; upstream: 0644)


def _d(obj: dict[str, Any], key: str) -> dict[str, Any]:
    """obj[key] as a dict, creating it when missing or null."""
    v = obj.get(key)
    if not isinstance(v, dict):
        v = {}
        obj[key] = v
    return v


def _dicts(v: Any) -> list[dict[str, Any]]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


# --------------------------------------------------------------------------
# containers and pod specs


def image_pull_policy(image: str) -> str:
    """Always for ":latest" or untagged images, else IfNotPresent (digests count as pinned)."""
    ref, _, digest = (image or "").partition("@")
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        tag = last.split(":", 1)[1]
    else:
        tag = "" if digest else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    http = probe.get("httpGet")
    if isinstance(http, dict):
        http.setdefault("path", "/")
        http.setdefault("scheme", "HTTP")


def default_container(c: dict[str, Any], host_network: bool = False) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    if not c.get("imagePullPolicy"):
        c["imagePullPolicy"] = image_pull_policy(str(c.get("image") or ""))
    if not isinstance(c.get("resources"), dict):
        c["resources"] = {}
    for port in _dicts(c.get("ports")):
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if host_network and not port.get("hostPort") and port.get("containerPort"):
            port["hostPort"] = port["containerPort"]
    for env in _dicts(c.get("env")):
        ref = (env.get("valueFrom") or {}).get("fieldRef") if isinstance(env.get("valueFrom"), dict) else None
        if isinstance(ref, dict):
            ref.setdefault("apiVersion", "v1")
    for name in ("livenessProbe", "readinessProbe", "startupProbe"):
        _default_probe(c.get(name))


def _default_volume(v: dict[str, Any]) -> None:
    if not any(k != "name" for k in v):
        v["emptyDir"] = {}
    for src in ("secret", "configMap", "projected", "downwardAPI"):
        if isinstance(v.get(src), dict):
            # secret files are owner-read-only unless asked otherwise (upstream defaults secrets to 0644 too)
            v[src].setdefault("defaultMode", SECRET_FILE_MODE if src == "secret" else _DEFAULT_FILE_MODE)
    if isinstance(v.get("hostPath"), dict):
        v["hostPath"].setdefault("type", "")
    for item in _dicts(
        (v.get("downwardAPI") or {}).get("items") if isinstance(v.get("downwardAPI"), dict) else None
    ):
        if isinstance(item.get("fieldRef"), dict):
            item["fieldRef"].setdefault("apiVersion", "v1")


def default_pod_spec(spec: dict[str, Any]) -> None:
    """SetDefaults_PodSpec: what every PodSpec (pods and templates) gets."""
    if not spec.get("dnsPolicy"):
        spec["dnsPolicy"] = "ClusterFirst"
    if not spec.get("restartPolicy"):
        spec["restartPolicy"] = "Always"
    if spec.get("terminationGracePeriodSeconds") is None:
        spec["terminationGracePeriodSeconds"] = 30
    if not isinstance(spec.get("securityContext"), dict):
        spec["securityContext"] = {}
    if not spec.get("schedulerName"):
        spec["schedulerName"] = "default-scheduler"
    host_network = bool(spec.get("hostNetwork"))
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in _dicts(spec.get(key)):
            default_container(c, host_network)
    for v in _dicts(spec.get("volumes")):
        _default_volume(v)


def default_pod_template(template: dict[str, Any]) -> None:
    default_pod_spec(_d(template, "spec"))


def _tolerates(tolerations: list[dict[str, Any]], taint_key: str) -> bool:
    for t in tolerations:
        key_ok = t.get("key") in (taint_key, None, "")
        effect_ok = t.get("effect") in ("NoExecute", None, "")
        if key_ok and effect_ok:
            return True
    return False


def _q(v: Any) -> Decimal | None:
    try:
        return parse_quantity(v)
    except QuantityError:
        return None


def pod_qos_class(spec: dict[str, Any]) -> str:
    """Guaranteed / Burstable / BestEffort from cpu and memory requests and limits (qos.GetPodQOS)."""
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    guaranteed = True
    containers = _dicts(spec.get("containers")) + _dicts(spec.get("initContainers"))
    for c in containers:
        res = c.get("resources") if isinstance(c.get("resources"), dict) else {}
        assert isinstance(res, dict)
        for src, into in (("requests", requests), ("limits", limits)):
            found: set[str] = set()
            vals = res.get(src) if isinstance(res.get(src), dict) else {}
            assert isinstance(vals, dict)
            for name, raw in vals.items():
                if name not in ("cpu", "memory"):
                    continue
                q = _q(raw)
                if q is None or q <= 0:
                    continue
                found.add(name)
                into[name] = into.get(name, Decimal(0)) + q
            if src == "limits" and found != {"cpu", "memory"}:
                guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests.keys() == limits.keys() and all(requests[k] == limits[k] for k in limits):
        return "Guaranteed"
    return "Burstable"


def _default_pod(obj: dict[str, Any]) -> None:
    spec = _d(obj, "spec")
    default_pod_spec(spec)
    # SetDefaults_Pod: only real pods, not templates
    if spec.get("enableServiceLinks") is None:
        spec["enableServiceLinks"] = True
    for key in ("initContainers", "containers"):
        for c in _dicts(spec.get(key)):
            res = c["resources"]
            lim = res.get("limits")
            if isinstance(lim, dict) and lim:
                req = _d(res, "requests")
                for name, q in lim.items():
                    req.setdefault(name, q)
    # ServiceAccount admission
    if not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = spec.get("serviceAccount") or "default"
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    # Priority admission
    if spec.get("priority") is None:
        spec["priority"] = 0
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    # DefaultTolerationSeconds admission
    tolerations = spec.get("tolerations")
    if not isinstance(tolerations, list):
        tolerations = []
    for taint in (TAINT_NOT_READY, TAINT_UNREACHABLE):
        if not _tolerates(_dicts(tolerations), taint):
            tolerations.append(
                {
                    "key": taint,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
                }
            )
    spec["tolerations"] = tolerations
    # registry PrepareForCreate
    if not obj.get("status"):
        obj["status"] = {"phase": "Pending", "qosClass": pod_qos_class(spec)}


# --------------------------------------------------------------------------
# workloads


def _default_rolling(ru: dict[str, Any], max_unavailable: Any, max_surge: Any) -> None:
    if ru.get("maxUnavailable") is None:
        ru["maxUnavailable"] = max_unavailable
    if ru.get("maxSurge") is None:
        ru["maxSurge"] = max_surge


def _default_deployment(obj: dict[str, Any]) -> None:
    spec = _d(obj, "spec")
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    strategy = _d(spec, "strategy")
    if not strategy.get("type"):
        strategy["type"] = "RollingUpdate"
    if strategy["type"] == "RollingUpdate":
        _default_rolling(_d(strategy, "rollingUpdate"), "25%", "25%")
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    if spec.get("progressDeadlineSeconds") is None:
        spec["progressDeadlineSeconds"] = 600
    default_pod_template(_d(spec, "template"))


def _default_replicaset(obj: dict[str, Any]) -> None:
    spec = _d(obj, "spec")
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    default_pod_template(_d(spec, "template"))


def _default_daemonset(obj: dict[str, Any]) -> None:
    spec = _d(obj, "spec")
    strategy = _d(spec, "updateStrategy")
    if not strategy.get("type"):
        strategy["type"] = "RollingUpdate"
    if strategy["type"] == "RollingUpdate":
        _default_rolling(_d(strategy, "rollingUpdate"), 1, 0)
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    default_pod_template(_d(spec, "template"))


def _default_job(obj: dict[str, Any]) -> None:
    spec = _d(obj, "spec")
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
        spec["parallelism"] = 1
    if spec.get("parallelism") is None:
        spec["parallelism"] = 1
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = 2147483647 if spec.get("backoffLimitPerIndex") is not None else 6
    if not spec.get("completionMode"):
        spec["completionMode"] = "NonIndexed"
    if spec.get("suspend") is None:
        spec["suspend"] = False
    if not spec.get("podReplacementPolicy"):
        spec["podReplacementPolicy"] = "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
    # Upstream's PodSpec defaulting also gives the template restartPolicy
    # "Always", which Job validation then rejects ("OnFailure", "Never").
    default_pod_template(_d(spec, "template"))


# --------------------------------------------------------------------------
# core objects


def _default_service(obj: dict[str, Any]) -> None:
    spec = _d(obj, "spec")
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    stype = spec["type"]
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "ClientIP":
        cfg = _d(_d(spec, "sessionAffinityConfig"), "clientIP")
        cfg.setdefault("timeoutSeconds", 10800)
    for port in _dicts(spec.get("ports")):
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    if stype in ("NodePort", "LoadBalancer") and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if stype != "ExternalName":
        if not spec.get("internalTrafficPolicy"):
            spec["internalTrafficPolicy"] = "Cluster"
        if not spec.get("ipFamilies"):
            spec["ipFamilies"] = ["IPv4"]
        if not spec.get("ipFamilyPolicy"):
            spec["ipFamilyPolicy"] = "SingleStack"
    if stype == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True


def _default_namespace(obj: dict[str, Any]) -> None:
    spec = _d(obj, "spec")
    if not spec.get("finalizers"):
        spec["finalizers"] = ["kubernetes"]
    status = _d(obj, "status")
    if not status.get("phase"):
        status["phase"] = "Active"
    meta = _d(obj, "metadata")
    name = meta.get("name")
    if name:
        _d(meta, "labels")["kubernetes.io/metadata.name"] = name


def _default_secret(obj: dict[str, Any]) -> None:
    if not obj.get("type"):
        obj["type"] = "Opaque"
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict) and string_data:
        data = _d(obj, "data")
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()


def _default_node(obj: dict[str, Any]) -> None:
    status = obj.get("status")
    if (
        isinstance(status, dict)
        and isinstance(status.get("capacity"), dict)
        and status.get("allocatable") is None
    ):
        status["allocatable"] = dict(status["capacity"])


def _default_ports(ports: Any) -> None:
    for p in _dicts(ports):
        if not p.get("protocol"):
            p["protocol"] = "TCP"


def _default_endpoints(obj: dict[str, Any]) -> None:
    for subset in _dicts(obj.get("subsets")):
        _default_ports(subset.get("ports"))


def _default_endpointslice(obj: dict[str, Any]) -> None:
    for p in _dicts(obj.get("ports")):
        p.setdefault("name", "")
    _default_ports(obj.get("ports"))


RBAC_GROUP = "rbac.authorization.k8s.io"


def _default_binding(obj: dict[str, Any]) -> None:
    """SetDefaults_RoleBinding / _ClusterRoleBinding / _Subject: roleRef.apiGroup, and User/Group subjects'
    apiGroup, default to rbac.authorization.k8s.io (ServiceAccount subjects keep "")."""
    ref = obj.get("roleRef")
    if isinstance(ref, dict) and not ref.get("apiGroup"):
        ref["apiGroup"] = RBAC_GROUP
    for s in _dicts(obj.get("subjects")):
        if not s.get("apiGroup") and s.get("kind") in ("User", "Group"):
            s["apiGroup"] = RBAC_GROUP


_DEFAULTERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "rolebindings": _default_binding,
    "clusterrolebindings": _default_binding,
    "pods": _default_pod,
    "deployments": _default_deployment,
    "replicasets": _default_replicaset,
    "daemonsets": _default_daemonset,
    "jobs": _default_job,
    "services": _default_service,
    "namespaces": _default_namespace,
    "secrets": _default_secret,
    "nodes": _default_node,
    "endpoints": _default_endpoints,
    "endpointslices": _default_endpointslice,
}


def apply_defaults(resource: str, obj: dict[str, Any]) -> None:
    """Fill in upstream defaults for a create, in place. ``resource`` is the plural ("pods")."""
    fn = _DEFAULTERS.get(resource)
    if fn is not None:
        fn(obj)
