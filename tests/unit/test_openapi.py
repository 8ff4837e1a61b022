"""OpenAPI v3 documents: shape checks, and real kubectl apply against a tiny server."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from apiserver import openapi
from kube.api.resources import RESOURCES, group_versions

SCHEMAS = "#/components/schemas/"


def _schemas(gv: str) -> dict[str, Any]:
    doc = openapi.openapi_v3_group_version(gv)
    assert doc is not None
    return doc["components"]["schemas"]


def test_root_lists_every_group_version_with_document_hash() -> None:
    root = openapi.openapi_v3_root()
    expected = {f"apis/{g}/{v}" if g else f"api/{v}" for g, v in group_versions()}
    assert set(root["paths"]) == expected
    url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/apps/v1?hash=")
    assert url.split("hash=")[1] == openapi.openapi_v3_hash("apis/apps/v1")
    assert openapi.openapi_v3_group_version("apis/nope/v1") is None


def test_deployment_schema_has_gvk_and_container_patch_metadata() -> None:
    schemas = _schemas("apis/apps/v1")
    dep = schemas["io.k8s.api.apps.v1.Deployment"]
    assert dep["x-kubernetes-group-version-kind"] == [{"group": "apps", "kind": "Deployment", "version": "v1"}]
    assert dep["properties"]["spec"]["allOf"] == [{"$ref": SCHEMAS + "io.k8s.api.apps.v1.DeploymentSpec"}]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert containers["x-kubernetes-patch-strategy"] == "merge"
    assert containers["items"]["allOf"] == [{"$ref": SCHEMAS + "io.k8s.api.core.v1.Container"}]
    volumes = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"]
    assert volumes["x-kubernetes-patch-strategy"] == "merge,retainKeys"
    ports = schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"]
    assert ports["x-kubernetes-patch-merge-key"] == "containerPort"
    assert "x-kubernetes-patch-merge-key" not in schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["tolerations"]
    meta = schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]
    assert meta["ownerReferences"]["x-kubernetes-patch-merge-key"] == "uid"
    assert meta["finalizers"]["x-kubernetes-patch-strategy"] == "merge"
    assert schemas["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["replicas"] == {
        "type": "integer", "format": "int32"}


def test_service_ports_merge_on_port_and_int_or_string_target() -> None:
    schemas = _schemas("api/v1")
    ports = schemas["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]
    assert ports["x-kubernetes-patch-merge-key"] == "port"
    target = schemas["io.k8s.api.core.v1.ServicePort"]["properties"]["targetPort"]
    assert target["allOf"] == [{"$ref": SCHEMAS + "io.k8s.apimachinery.pkg.util.intstr.IntOrString"}]


def test_every_ref_resolves() -> None:
    for g, v in group_versions():
        gv = f"apis/{g}/{v}" if g else f"api/{v}"
        doc = openapi.openapi_v3_group_version(gv)
        assert doc is not None
        text = json.dumps(doc)
        names = set(doc["components"]["schemas"])
        for part in text.split('"$ref": "')[1:]:
            ref = part.split('"', 1)[0]
            assert ref.startswith(SCHEMAS) and ref[len(SCHEMAS):] in names, (gv, ref)


def test_every_patch_operation_lists_field_validation_and_smp() -> None:
    for g, v in group_versions():
        gv = f"apis/{g}/{v}" if g else f"api/{v}"
        doc = openapi.openapi_v3_group_version(gv)
        assert doc is not None
        patches = [item["patch"] for item in doc["paths"].values() if "patch" in item]
        patchable = [r for r in RESOURCES if (r.group, r.version) == (g, v) and "patch" in r.verbs]
        assert patches or not patchable, gv  # create-only groups (access and token reviews) have no patch
        for op in patches:
            assert "fieldValidation" in [p["name"] for p in op["parameters"]]
            assert "application/strategic-merge-patch+json" in op["requestBody"]["content"]
            assert {"group", "version", "kind"} <= set(op["x-kubernetes-group-version-kind"])
    kinds = {(r.group, r.kind) for r in RESOURCES if "patch" in r.verbs}
    seen = set()
    for g, v in group_versions():
        doc = openapi.openapi_v3_group_version(f"apis/{g}/{v}" if g else f"api/{v}")
        assert doc is not None
        for item in doc["paths"].values():
            if "patch" in item:
                gvk = item["patch"]["x-kubernetes-group-version-kind"]
                seen.add((gvk["group"], gvk["kind"]))
    assert kinds <= seen


def test_documents_are_cached_and_deterministic() -> None:
    a = openapi.openapi_v3_group_version("api/v1")
    assert a is not None and a is openapi.openapi_v3_group_version("api/v1")
    assert openapi.canonical_bytes(a) == openapi.canonical_bytes(copy.deepcopy(a))
    assert openapi.openapi_v3_root() == openapi.openapi_v3_root()


def test_v2_has_definitions_with_definition_refs() -> None:
    v2 = openapi.openapi_v2_json()
    assert v2["swagger"] == "2.0"
    props = v2["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]
    assert props["containers"]["items"] == {"$ref": "#/definitions/io.k8s.api.core.v1.Container"}
    assert "#/components/" not in json.dumps(v2)


# ---------------------------------------------------------------- kubectl end to end

DEPLOYMENT_YAML = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: {image}
        ports:
        - containerPort: 80
"""


def _discovery(group: str, version: str) -> dict[str, Any]:
    resources = []
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        resources.append({"name": r.name, "singularName": r.singular, "namespaced": r.namespaced,
                          "kind": r.kind, "verbs": list(r.verbs), "shortNames": list(r.short_names)})
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, what: str) -> None:
        self._send(404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "message": f"{what} not found", "reason": "NotFound", "code": 404})

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                         "content_type": self.headers.get("Content-Type", ""),
                                         "body": body.decode()})
        path = url.path.rstrip("/")
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0",
                                    "platform": "linux/amd64"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                       "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                      for g, v in group_versions() if g]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path == "/api/v1":
            return self._send(200, _discovery("", "v1"))
        if path.startswith("/apis/") and path.count("/") == 3:
            _, _, g, v = path.split("/")
            return self._send(200, _discovery(g, v))
        if path == "/openapi/v3":
            return self._send(200, openapi.openapi_v3_root())
        if path.startswith("/openapi/v3/"):
            doc = openapi.openapi_v3_group_version(path[len("/openapi/v3/"):])
            return self._send(200, doc) if doc is not None else self._not_found(path)
        prefix = "/apis/apps/v1/namespaces/default/deployments"
        if path == prefix and self.command == "POST":
            obj = json.loads(body)
            obj["metadata"].update({"namespace": "default", "uid": "u-1", "resourceVersion": "1",
                                    "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1})
            self.server.objects[obj["metadata"]["name"]] = obj
            return self._send(201, obj)
        if path.startswith(prefix + "/"):
            name = path[len(prefix) + 1:]
            obj = self.server.objects.get(name)
            if obj is None:
                return self._not_found(f'deployments.apps "{name}"')
            return self._send(200, obj)  # GET and PATCH: the test only inspects the patch sent
        return self._not_found(path)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _kubectl(tmp: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t", "namespace": "default"}}],
        "users": [{"name": "t", "user": {}}],
    }))
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp / "cache"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.kubectl
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_apply_uses_openapi_v3(server: _Server, tmp_path: Path) -> None:
    port = server.server_address[1]
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(DEPLOYMENT_YAML.format(replicas=3, image="nginx:1.14.2"))

    first = _kubectl(tmp_path, port, "apply", "-f", str(manifest))
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    posts = [r for r in server.requests if r["method"] == "POST"]
    assert len(posts) == 1
    assert posts[0]["query"].get("fieldValidation") == ["Strict"]
    assert posts[0]["query"].get("fieldManager") == ["kubectl-client-side-apply"]
    sent = json.loads(posts[0]["body"])
    assert "kubectl.kubernetes.io/last-applied-configuration" in sent["metadata"]["annotations"]

    manifest.write_text(DEPLOYMENT_YAML.format(replicas=2, image="nginx:1.16.1"))
    second = _kubectl(tmp_path, port, "apply", "-f", str(manifest))
    assert second.returncode == 0, second.stderr
    assert "openapi" not in second.stderr  # no "error calculating patch from openapi v3 spec" warning
    patches = [r for r in server.requests if r["method"] == "PATCH"]
    assert len(patches) == 1
    assert patches[0]["content_type"] == "application/strategic-merge-patch+json"
    assert patches[0]["query"].get("fieldValidation") == ["Strict"]
    patch = json.loads(patches[0]["body"])
    assert patch["spec"]["replicas"] == 2
    tmpl = patch["spec"]["template"]["spec"]
    assert tmpl["$setElementOrder/containers"] == [{"name": "nginx"}]
    assert tmpl["containers"] == [{"image": "nginx:1.16.1", "name": "nginx"}]
