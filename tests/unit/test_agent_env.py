"""agent.env: env/valueFrom/envFrom as the kubelet resolves them."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agent.env import expand, resolve_env
from agent.errors import ContainerConfigError


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


POD: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "ns1", "uid": "u-1", "labels": {"app": "web", "tier": "fe"},
                 "annotations": {"note": "hi"}},
    "spec": {"nodeName": "node-a", "serviceAccountName": "sa1", "containers": [
        {"name": "c", "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m"}}},
        {"name": "side"}]},
    "status": {"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}], "hostIP": "192.168.56.11"},
}
CMS = {("ns1", "cfg"): {"data": {"k": "v", "a": "1", "bad key": "x", "1num": "y"}}}
SECRETS = {("ns1", "s"): {"data": {"password": b64("p@ss"), "user": b64("admin")}}}


def getter(store: dict[tuple[str, str], dict[str, Any]]) -> Any:
    return lambda ns, name: store.get((ns, name))


def env_of(container: dict[str, Any], pod: dict[str, Any] = POD, **kw: Any) -> dict[str, str]:
    out = resolve_env(pod, {"name": "c", **container}, getter(CMS), getter(SECRETS), **kw)
    return dict(e.split("=", 1) for e in out)


@pytest.mark.parametrize("text,want", [
    ("$(A)-$(B)", "1-two"),
    ("$$(A)", "$(A)"),
    ("$(MISSING)", "$(MISSING)"),
    ("$(A", "$(A"),
    ("a$b", "a$b"),
    ("end$", "end$"),
    ("$$$$", "$$"),
    ("$()", "$()"),
    ("x$(A)y$(B)z", "x1ytwoz"),
])
def test_expand_like_upstream(text: str, want: str) -> None:
    vals = {"A": "1", "B": "two"}
    assert expand(text, vals.get) == want


def test_values_expand_only_earlier_vars() -> None:
    got = env_of({"env": [{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(C)"},
                          {"name": "C", "value": "c"}, {"name": "E", "value": ""}]})
    assert got == {"A": "x", "B": "x-$(C)", "C": "c", "E": ""}


def test_field_refs() -> None:
    paths = {"N": "metadata.name", "NS": "metadata.namespace", "UID": "metadata.uid",
             "L": "metadata.labels['app']", "AN": "metadata.annotations['note']", "NODE": "spec.nodeName",
             "SA": "spec.serviceAccountName", "IP": "status.podIP", "IPS": "status.podIPs",
             "HOST": "status.hostIP", "LABELS": "metadata.labels"}
    got = env_of({"env": [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in paths.items()]})
    assert got == {"N": "web", "NS": "ns1", "UID": "u-1", "L": "web", "AN": "hi", "NODE": "node-a", "SA": "sa1",
                   "IP": "10.1.0.5", "IPS": "10.1.0.5,fd00::5", "HOST": "192.168.56.11",
                   "LABELS": 'app="web"\ntier="fe"'}


def test_pod_ip_override() -> None:
    got = env_of({"env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]},
                 pod_ips=["10.9.9.9"])
    assert got == {"IP": "10.9.9.9"}


def test_resource_field_refs_with_divisor_and_defaults() -> None:
    def ref(resource: str, divisor: str | None = None, container: str | None = None) -> dict[str, Any]:
        r: dict[str, Any] = {"resource": resource}
        if divisor:
            r["divisor"] = divisor
        if container:
            r["containerName"] = container
        return {"valueFrom": {"resourceFieldRef": r}}
    env = [{"name": "CPU", **ref("limits.cpu")}, {"name": "MCPU", **ref("limits.cpu", "1m")},
           {"name": "MEM", **ref("limits.memory", "1Mi")}, {"name": "MEMB", **ref("limits.memory")},
           {"name": "RCPU", **ref("requests.cpu", "1m")}, {"name": "RMEM", **ref("requests.memory", "1Mi")},
           {"name": "SIDE", **ref("limits.memory", "1Gi", "side")}]
    container = {"env": env, "resources": POD["spec"]["containers"][0]["resources"]}
    got = env_of(container, allocatable={"cpu": "2", "memory": "4Gi"})
    assert got == {"CPU": "1", "MCPU": "500", "MEM": "128", "MEMB": str(128 << 20), "RCPU": "250",
                   "RMEM": "128", "SIDE": "4"}


def test_configmap_and_secret_key_refs() -> None:
    got = env_of({"env": [
        {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
        {"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
        {"name": "O1", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        {"name": "O2", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nokey", "optional": True}}},
        {"name": "O3", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nokey", "optional": True}}},
    ]})
    assert got == {"K": "v", "P": "p@ss"}


@pytest.mark.parametrize("src,message", [
    ({"configMapKeyRef": {"name": "nope", "key": "k"}}, 'configmap "nope" not found'),
    ({"configMapKeyRef": {"name": "cfg", "key": "zz"}}, "couldn't find key zz in ConfigMap ns1/cfg"),
    ({"secretKeyRef": {"name": "nope", "key": "k"}}, 'secret "nope" not found'),
    ({"secretKeyRef": {"name": "s", "key": "zz"}}, "couldn't find key zz in Secret ns1/s"),
])
def test_missing_required_reference(src: dict[str, Any], message: str) -> None:
    with pytest.raises(ContainerConfigError) as e:
        env_of({"env": [{"name": "X", "valueFrom": src}]})
    assert e.value.reason == "CreateContainerConfigError"
    assert e.value.message == message


def test_env_from_prefix_invalid_keys_and_precedence() -> None:
    got = env_of({"envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "s"}, "prefix": "S_"},
                              {"configMapRef": {"name": "gone", "optional": True}}],
                  "env": [{"name": "a", "value": "override-$(k)"}]})
    # "bad key" and "1num"... "1num" is invalid only because it starts with a digit
    assert got == {"k": "v", "a": "override-v", "S_password": "p@ss", "S_user": "admin"}


def test_env_from_missing_required() -> None:
    with pytest.raises(ContainerConfigError, match='secret "gone" not found'):
        env_of({"envFrom": [{"secretRef": {"name": "gone"}}]})
    with pytest.raises(ContainerConfigError, match='configmap "gone" not found'):
        env_of({"envFrom": [{"configMapRef": {"name": "gone"}}]})
