"""Kubernetes protobuf request bodies -> JSON dicts.

The fixtures under fixtures/protobuf/ are the raw bodies the real kubectl 1.32 sent
(recorded by scripts/capture-kubectl-bodies); the hand-built bodies below cover what
kubectl create does not send (volumes, probes, inline structs, times, errors).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from apiserver import protobuf
from apiserver.protobuf import ProtobufError, decode_k8s_protobuf, go_duration

FIXTURES = Path(__file__).parent / "fixtures" / "protobuf"


def _fixture(name: str) -> dict[str, Any]:
    return decode_k8s_protobuf((FIXTURES / f"{name}.bin").read_bytes())


# -- a tiny encoder for hand-built bodies --------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_varint(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def f_bytes(num: int, data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return varint(num << 3 | 2) + varint(len(raw)) + raw


def f_map(num: int, key: str, value: bytes | str) -> bytes:
    return f_bytes(num, f_bytes(1, key) + f_bytes(2, value))


def envelope(api_version: str, kind: str, payload: bytes) -> bytes:
    return b"k8s\x00" + f_bytes(1, f_bytes(1, api_version) + f_bytes(2, kind)) + f_bytes(2, payload)


def meta(name: str, *extra: bytes) -> bytes:
    # what gogo writes for a fresh ObjectMeta: every non-pointer field, zero or not
    return f_bytes(1, f_bytes(1, name) + f_bytes(2, "") + f_bytes(3, "") + f_varint(7, 0) + f_bytes(8, b"")
                   + b"".join(extra))


# -- real kubectl bodies -------------------------------------------------------------


def test_kubectl_create_namespace() -> None:
    assert _fixture("namespace") == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo"},
                                     "spec": {}, "status": {}}


def test_kubectl_create_deployment() -> None:
    assert _fixture("deployment") == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25",
                                         "ports": [{"containerPort": 80}], "resources": {}}]},
            },
            "strategy": {},
        },
        "status": {},
    }


def test_zero_replicas_is_kept_because_replicas_is_a_pointer() -> None:
    assert _fixture("deployment-zero")["spec"]["replicas"] == 0


def test_kubectl_create_configmap_and_secret() -> None:
    assert _fixture("configmap") == {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                                     "data": {"a": "b"}}
    assert _fixture("secret") == {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                                  "data": {"k": "dg=="}}  # base64("v"), as in JSON


def test_kubectl_create_services() -> None:
    svc = _fixture("service-nodeport")
    assert svc["metadata"] == {"name": "n", "labels": {"app": "n"}}
    assert svc["spec"] == {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080,
                                      "nodePort": 30080}],
                           "selector": {"app": "n"}, "type": "NodePort"}
    assert _fixture("service-clusterip")["spec"]["type"] == "ClusterIP"


def test_kubectl_create_serviceaccount_and_job() -> None:
    assert _fixture("serviceaccount") == {"apiVersion": "v1", "kind": "ServiceAccount",
                                          "metadata": {"name": "robot"}}
    job = _fixture("job")
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"] == [{"name": "j", "image": "busybox", "command": ["echo", "hi"], "resources": {}}]


def test_every_fixture_round_trips_through_json() -> None:
    for path in sorted(FIXTURES.glob("*.bin")):
        obj = decode_k8s_protobuf(path.read_bytes())
        assert json.loads(json.dumps(obj)) == obj, path.name


# -- hand-built bodies -----------------------------------------------------------------


def test_pod_with_inline_structs_volumes_probes_and_quantities() -> None:
    env_from_cm = f_bytes(3, f_bytes(1, f_bytes(1, "cfg")) + f_bytes(2, "key") + f_varint(3, 0))
    container = (
        f_bytes(1, "app") + f_bytes(2, "busybox")
        + f_bytes(7, f_bytes(1, "A") + f_bytes(2, "1"))                        # env A=1
        + f_bytes(7, f_bytes(1, "B") + f_bytes(3, env_from_cm))                # env B from configMapKeyRef
        + f_bytes(8, f_map(1, "cpu", f_bytes(1, "500m")) + f_map(2, "memory", f_bytes(1, "64Mi")))
        + f_bytes(10, f_bytes(1, f_bytes(2, f_bytes(1, "/healthz") + f_bytes(2, f_varint(1, 1) + f_bytes(3, "http"))))
                  + f_varint(2, 5))                                            # livenessProbe.httpGet, inline handler
        + f_bytes(9, f_bytes(1, "data") + f_bytes(3, "/data"))
    )
    spec = (
        f_bytes(1, f_bytes(1, "data") + f_bytes(2, f_bytes(2, b"")))           # volume data: emptyDir: {}
        + f_bytes(1, f_bytes(1, "cfg") + f_bytes(2, f_bytes(19, f_bytes(1, f_bytes(1, "cfg"))
                                                             + f_varint(3, 0o644))))
        + f_bytes(2, container)
        + f_varint(21, 0)                                                      # automountServiceAccountToken: false
        + f_varint(4, 30)
        + f_bytes(22, f_bytes(1, "k") + f_varint(5, 0))                        # tolerationSeconds: 0 (pointer)
        + f_bytes(999, "a field this server does not know")
    )
    status = f_bytes(7, f_varint(1, 1764572400)) + f_bytes(1, "Pending")
    body = envelope("v1", "Pod", meta("p", f_map(11, "app", "p"), f_map(12, "note", "")) + f_bytes(2, spec)
                    + f_bytes(3, status))
    pod = decode_k8s_protobuf(body)
    assert pod["metadata"] == {"name": "p", "labels": {"app": "p"}, "annotations": {"note": ""}}
    s = pod["spec"]
    assert s["volumes"] == [{"name": "data", "emptyDir": {}},
                            {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420}}]
    c = s["containers"][0]
    # configMapKeyRef embeds LocalObjectReference (inline); its optional is a *bool, so false stays
    assert c["env"] == [{"name": "A", "value": "1"},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "key",
                                                                        "optional": False}}}]
    assert c["resources"] == {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}}
    assert c["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 5}
    assert c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert s["automountServiceAccountToken"] is False
    assert s["terminationGracePeriodSeconds"] == 30
    assert s["tolerations"] == [{"key": "k", "tolerationSeconds": 0}]
    assert pod["status"] == {"startTime": "2025-12-01T07:00:00Z", "phase": "Pending"}


def test_last_value_of_a_singular_field_wins_and_zero_non_pointers_are_dropped() -> None:
    env = f_bytes(1, "A") + f_bytes(2, "1") + f_bytes(2, "2")
    pod = decode_k8s_protobuf(envelope("v1", "Pod", meta("p") + f_bytes(2, f_bytes(2, f_bytes(1, "c") + f_bytes(7, env)))))
    assert pod["spec"]["containers"][0]["env"] == [{"name": "A", "value": "2"}]
    env = f_bytes(1, "A") + f_bytes(2, "1") + f_bytes(2, "")
    pod = decode_k8s_protobuf(envelope("v1", "Pod", meta("p") + f_bytes(2, f_bytes(2, f_bytes(1, "c") + f_bytes(7, env)))))
    assert pod["spec"]["containers"][0]["env"] == [{"name": "A"}]


def test_lease_micro_time_and_endpointslice_pointer_bools() -> None:
    lease = decode_k8s_protobuf(envelope("coordination.k8s.io/v1", "Lease", meta("node-1") + f_bytes(2, (
        f_bytes(1, "node-1") + f_varint(2, 40) + f_bytes(4, f_varint(1, 1764572400) + f_varint(2, 123456000))))))
    assert lease["spec"] == {"holderIdentity": "node-1", "leaseDurationSeconds": 40,
                             "renewTime": "2025-12-01T07:00:00.123456Z"}
    eps = decode_k8s_protobuf(envelope("discovery.k8s.io/v1", "EndpointSlice", meta("s-1") + f_bytes(4, "IPv4")
                                       + f_bytes(2, f_bytes(1, "10.0.0.5") + f_bytes(2, f_varint(1, 0))
                                                 + f_bytes(6, "n1"))
                                       + f_bytes(3, f_bytes(1, "") + f_varint(3, 8080))))
    assert eps["addressType"] == "IPv4"
    assert eps["endpoints"] == [{"addresses": ["10.0.0.5"], "conditions": {"ready": False}, "nodeName": "n1"}]
    assert eps["ports"] == [{"name": "", "port": 8080}]


def test_int_or_string_pointer_zero_is_kept_and_negative_ints_decode() -> None:
    strategy = f_bytes(1, "RollingUpdate") + f_bytes(2, f_bytes(1, f_varint(1, 1) + f_bytes(3, "25%"))
                                                     + f_bytes(2, f_varint(1, 0) + f_varint(2, 0)))
    dep = decode_k8s_protobuf(envelope("apps/v1", "Deployment", meta("d") + f_bytes(2, f_bytes(4, strategy))))
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 0}}
    ev = decode_k8s_protobuf(envelope("v1", "Event", meta("e") + f_varint(8, -1) + f_bytes(9, "Normal")))
    assert ev["count"] == -1 and ev["type"] == "Normal"


def test_scale_binding_and_delete_options() -> None:
    scale = decode_k8s_protobuf(envelope("autoscaling/v1", "Scale", meta("web") + f_bytes(2, f_varint(1, 3))))
    assert scale == {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"},
                     "spec": {"replicas": 3}}
    binding = decode_k8s_protobuf(envelope("v1", "Binding", meta("p") + f_bytes(2, f_bytes(1, "Node")
                                                                                + f_bytes(3, "n1"))))
    assert binding["target"] == {"kind": "Node", "name": "n1"}
    # typed clients stamp DeleteOptions with their own group version
    opts = decode_k8s_protobuf(envelope("apps/v1", "DeleteOptions", f_varint(1, 0) + f_bytes(4, "Background")))
    assert opts == {"apiVersion": "apps/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                    "propagationPolicy": "Background"}


def test_packed_repeated_ints_and_raw_extension() -> None:
    sc = f_bytes(4, varint(1000) + varint(2000))  # supplementalGroups, packed
    pod = decode_k8s_protobuf(envelope("v1", "Pod", meta("p") + f_bytes(2, f_bytes(14, sc + f_varint(5, 3000)))))
    assert pod["spec"]["securityContext"] == {"supplementalGroups": [1000, 2000], "fsGroup": 3000}
    assert protobuf._message(f_bytes(1, b'{"a": [1]}'), protobuf.RAW_EXTENSION, 0) == {"a": [1]}
    mf = f_bytes(17, f_bytes(1, "kubectl") + f_bytes(6, "FieldsV1") + f_bytes(7, f_bytes(1, b'{"f:data":{}}')))
    cm = decode_k8s_protobuf(envelope("v1", "ConfigMap", meta("c", mf)))
    assert cm["metadata"]["managedFields"] == [{"manager": "kubectl", "fieldsType": "FieldsV1",
                                                "fieldsV1": {"f:data": {}}}]


def test_go_duration_strings() -> None:
    assert go_duration(0) == "0s"
    assert go_duration(1_500_000_000) == "1.5s"
    assert go_duration(3_723_000_000_000) == "1h2m3s"
    assert go_duration(150_000_000) == "150ms"
    assert go_duration(-60_000_000_000) == "-1m0s"


# -- malformed input -------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    (b'{"kind": "Namespace"}', "magic"),
    (b"k8s\x00\x0a", "truncated varint"),
    (b"k8s\x00\x0a\x05ab", "says 5 bytes"),
    (b"k8s\x00" + f_bytes(2, b""), "no apiVersion/kind"),
    (envelope("v1", "Widget", b""), "no protobuf schema for v1 Widget"),
    (envelope("example.com/v1", "Namespace", b""), "no protobuf schema"),
    (envelope("v1", "Namespace", f_varint(1, 5)), "expected a length-delimited field"),
    (envelope("v1", "Namespace", f_bytes(1, f_bytes(1, b"\xff\xfe"))), "not valid UTF-8"),
    (envelope("v1", "Namespace", varint(1 << 3 | 3)), "unsupported wire type start-group"),
    (envelope("v1", "Namespace", b"\x00\x00"), "field number 0"),
    (envelope("v1", "Event", meta("e") + f_varint(8, 1 << 40)), "does not fit int32"),
    (b"k8s\x00" + f_bytes(1, f_bytes(1, "v1") + f_bytes(2, "Namespace")) + f_bytes(3, "gzip"), "contentEncoding"),
])
def test_malformed_bodies_raise_protobuf_error(body: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        decode_k8s_protobuf(body)


def test_protobuf_error_is_a_value_error_and_deep_nesting_is_refused() -> None:
    assert issubclass(ProtobufError, ValueError)
    with pytest.raises(ProtobufError, match="nested deeper"):
        protobuf._message(b"", "k8s.io.api.core.v1.Pod", protobuf.MAX_DEPTH + 1)


def test_fixed_width_scalars() -> None:
    assert protobuf._scalar("double", 1, struct.pack("<d", 1.5), "x") == [1.5]
    assert protobuf._scalar("sint64", 0, 3, "x") == [-2]
