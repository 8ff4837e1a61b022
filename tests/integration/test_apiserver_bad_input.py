"""Acceptance 6: malformed requests get the right Status code, never a 5xx, and
the server keeps serving."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

NS = "/api/v1/namespaces/default"
PODS = f"{NS}/pods"
SVCS = f"{NS}/services"
CMS = f"{NS}/configmaps"
DEPLOYS = "/apis/apps/v1/namespaces/default/deployments"


def pod(name: str = "p", **spec: Any) -> dict[str, Any]:
    s = {"containers": [{"name": "c", "image": "busybox"}]}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": s}


def svc(name: str = "s", **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"selector": {"app": "x"}, "ports": [{"port": 80}]}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": s}


def deploy(name: str = "d", replicas: Any = 1, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": labels or {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}


def with_meta(obj: dict[str, Any], **meta: Any) -> dict[str, Any]:
    obj["metadata"].update(meta)
    return obj


@dataclass
class Case:
    id: str
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    params: dict[str, str] = field(default_factory=dict)
    code: int = 422
    reason: str = "Invalid"
    field_: str = ""  # a cause with this field is expected (422)


CASES = [
    Case("uppercase-name", "POST", PODS, pod("Bad_Name"), field_="metadata.name"),
    Case("name-too-long", "POST", CMS, {"metadata": {"name": "a" * 254}}, field_="metadata.name"),
    Case("no-name", "POST", CMS, {"metadata": {}}, field_="metadata.name"),
    Case("bad-label-key", "POST", CMS, {"metadata": {"name": "c", "labels": {"bad key": "v"}}},
         field_="metadata.labels"),
    Case("label-value-too-long", "POST", CMS, {"metadata": {"name": "c", "labels": {"k": "v" * 64}}},
         field_="metadata.labels"),
    Case("annotations-too-big", "POST", CMS, {"metadata": {"name": "c", "annotations": {"a": "x" * 300_000}}},
         field_="metadata.annotations"),
    Case("no-containers", "POST", PODS, pod(containers=[]), field_="spec.containers"),
    Case("container-no-image", "POST", PODS, pod(containers=[{"name": "c"}]), field_="spec.containers[0].image"),
    Case("duplicate-container", "POST", PODS, pod(containers=[{"name": "c", "image": "a"}, {"name": "c", "image": "b"}]),
         field_="spec.containers[1].name"),
    Case("container-port-range", "POST", PODS,
         pod(containers=[{"name": "c", "image": "a", "ports": [{"containerPort": 70000}]}]),
         field_="spec.containers[0].ports[0].containerPort"),
    Case("restart-policy-enum", "POST", PODS, pod(restartPolicy="Sometimes"), field_="spec.restartPolicy"),
    Case("bad-quantity", "POST", PODS,
         pod(containers=[{"name": "c", "image": "a", "resources": {"limits": {"memory": "10MB"}}}]),
         code=400, reason="BadRequest"),
    Case("service-name-dns1035", "POST", SVCS, svc("1abc"), field_="metadata.name"),
    Case("service-port-zero", "POST", SVCS, svc(ports=[{"port": 0}]), field_="spec.ports[0].port"),
    Case("service-type-enum", "POST", SVCS, svc(type="Bogus"), field_="spec.type"),
    Case("service-nodeport-out-of-range", "POST", SVCS, svc(type="NodePort", ports=[{"port": 80, "nodePort": 80}]),
         field_="spec.ports[0].nodePort"),
    Case("service-clusterip-out-of-range", "POST", SVCS, svc(clusterIP="192.168.1.1"), field_="spec.clusterIPs"),
    Case("deploy-selector-mismatch", "POST", DEPLOYS, deploy(labels={"app": "other"}),
         field_="spec.template.metadata.labels"),
    Case("deploy-negative-replicas", "POST", DEPLOYS, deploy(replicas=-1), field_="spec.replicas"),
    Case("configmap-bad-key", "POST", CMS, {"metadata": {"name": "c"}, "data": {"a b": "x"}}, field_="data[a b]"),
    Case("wrong-type-replicas", "POST", DEPLOYS, deploy(replicas="three"), code=400, reason="BadRequest"),
    Case("wrong-type-containers", "POST", PODS, pod(containers={"name": "c"}), code=400, reason="BadRequest"),
    Case("wrong-type-labels", "POST", CMS, {"metadata": {"name": "c", "labels": ["a"]}}, code=400,
         reason="BadRequest"),
    Case("unknown-field-strict", "POST", DEPLOYS, {**deploy(), "spec": {**deploy()["spec"], "replicass": 2}},
         params={"fieldValidation": "Strict"}, code=400, reason="BadRequest"),
    Case("bad-field-validation-value", "POST", CMS, {"metadata": {"name": "c"}}, params={"fieldValidation": "Loud"},
         code=400, reason="BadRequest"),
    Case("malformed-json", "POST", CMS, raw=b'{"metadata": {"name": "c"', code=400, reason="BadRequest"),
    Case("bad-yaml", "POST", CMS, raw=b"metadata: [unclosed\n  name: : x", content_type="application/yaml",
         code=400, reason="BadRequest"),
    Case("body-not-object", "POST", CMS, raw=b"[1, 2, 3]", code=400, reason="BadRequest"),
    Case("empty-body", "POST", CMS, raw=b"", code=400, reason="BadRequest"),
    Case("oversized-body", "POST", CMS, raw=b'{"metadata":{"name":"c"},"data":{"a":"' + b"x" * (3 * 1024 * 1024) + b'"}}',
         code=413, reason="RequestEntityTooLarge"),
    Case("unsupported-media-type", "POST", CMS, raw=b"<cm/>", content_type="application/xml", code=415,
         reason="UnsupportedMediaType"),
    Case("wrong-api-version", "POST", DEPLOYS, {**deploy(), "apiVersion": "apps/v2"}, code=400, reason="BadRequest"),
    Case("wrong-kind", "POST", PODS, svc(), code=400, reason="BadRequest"),
    Case("namespace-mismatch", "POST", CMS, {"metadata": {"name": "c", "namespace": "other"}}, code=400,
         reason="BadRequest"),
    Case("bad-label-selector", "GET", PODS, params={"labelSelector": "app in (a,"}, code=400, reason="BadRequest"),
    Case("bad-field-selector", "GET", PODS, params={"fieldSelector": "spec.bogus=x"}, code=400, reason="BadRequest"),
    Case("bad-limit", "GET", PODS, params={"limit": "-1"}, code=400, reason="BadRequest"),
    Case("bad-resource-version", "GET", PODS, params={"watch": "1", "resourceVersion": "abc"}, code=400,
         reason="BadRequest"),
    Case("bad-continue", "GET", PODS, params={"limit": "1", "continue": "!!!"}, code=400, reason="BadRequest"),
    Case("not-found", "GET", f"{PODS}/nope", code=404, reason="NotFound"),
    Case("unknown-resource", "GET", f"{NS}/widgets", code=404, reason="NotFound"),
    Case("unknown-group", "GET", "/apis/example.com/v1/things", code=404, reason="NotFound"),
    Case("create-in-missing-namespace", "POST", "/api/v1/namespaces/ghost/configmaps", {"metadata": {"name": "c"}},
         code=404, reason="NotFound"),
    Case("post-to-item", "POST", f"{PODS}/x", pod(), code=405, reason="MethodNotAllowed"),
    Case("patch-bad-content-type", "PATCH", f"{CMS}/existing", {"data": {}}, content_type="application/json",
         code=415, reason="UnsupportedMediaType"),
    Case("json-patch-bad-op", "PATCH", f"{CMS}/existing", [{"op": "frobnicate", "path": "/data"}],
         content_type="application/json-patch+json", code=422, reason="Invalid"),
    Case("json-patch-test-fails", "PATCH", f"{CMS}/existing", [{"op": "test", "path": "/data/a", "value": "nope"}],
         content_type="application/json-patch+json", code=422, reason="Invalid"),
    Case("patch-changes-name", "PATCH", f"{CMS}/existing", {"metadata": {"name": "other"}},
         content_type="application/merge-patch+json", code=400, reason="BadRequest"),
    Case("already-exists", "POST", CMS, {"metadata": {"name": "existing"}}, code=409, reason="AlreadyExists"),
    Case("stale-update", "PUT", f"{CMS}/existing", {"metadata": {"name": "existing", "resourceVersion": "1"}},
         code=409, reason="Conflict"),
    Case("immutable-container-name", "PATCH", f"{PODS}/running", {"spec": {"containers": [
        {"name": "renamed", "image": "busybox"}]}}, content_type="application/merge-patch+json",
         field_="spec"),
    Case("immutable-cluster-ip", "PATCH", f"{SVCS}/web", {"spec": {"clusterIP": "10.96.200.200"}},
         content_type="application/merge-patch+json", field_="spec.clusterIP"),
    Case("delete-bad-propagation", "DELETE", f"{CMS}/existing", {"propagationPolicy": "Sideways"}, code=400,
         reason="BadRequest"),
    Case("scale-negative", "PATCH", f"{DEPLOYS}/web/scale", {"spec": {"replicas": -2}},
         content_type="application/merge-patch+json", code=422, reason="Invalid"),
    Case("logs-of-unscheduled-pod", "GET", f"{PODS}/running/log", code=400, reason="BadRequest"),
    Case("get-finalize", "GET", "/api/v1/namespaces/default/finalize", code=405, reason="MethodNotAllowed"),
    Case("bind-twice", "POST", f"{PODS}/bound/binding", {"apiVersion": "v1", "kind": "Binding",
         "metadata": {"name": "bound"}, "target": {"kind": "Node", "name": "n2"}}, code=409, reason="Conflict"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from apiserver_proc import ApiServer, free_port

    srv = ApiServer(tmp_path_factory.mktemp("bad-input") / "data", free_port())
    srv.start()
    with httpx.Client(base_url=srv.url) as c:
        assert c.post(CMS, json={"metadata": {"name": "existing"}, "data": {"a": "b"}}).status_code == 201
        assert c.post(PODS, json=pod("running")).status_code == 201
        assert c.post(PODS, json=pod("bound", nodeName="n1")).status_code == 201
        assert c.post(SVCS, json=svc("web")).status_code == 201
        assert c.post(DEPLOYS, json=deploy("web")).status_code == 201
    yield srv
    srv.kill()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_gets_status(server, case: Case) -> None:
    raw = case.raw if case.raw is not None else (orjson.dumps(case.body) if case.body is not None else b"")
    headers = {"Content-Type": case.content_type} if raw or case.method in ("POST", "PUT", "PATCH") else {}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.request(case.method, case.path, params=case.params, content=raw, headers=headers)
        assert r.status_code < 500, r.text
        st = r.json()
        assert st["kind"] == "Status" and st["status"] == "Failure", st
        assert (r.status_code, st["reason"]) == (case.code, case.reason), st
        assert st["code"] == r.status_code
        assert st["message"]
        if case.field_:
            fields = [c.get("field", "") for c in st["details"]["causes"]]
            assert any(f.startswith(case.field_) for f in fields), fields
        assert c.get("/readyz").status_code == 200


def test_enough_cases() -> None:
    assert len(CASES) >= 30
