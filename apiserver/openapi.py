"""OpenAPI v3 (and a JSON v2) document of the served API, enough for kubectl.

kubectl's default client-side ``apply`` needs ``/openapi/v3``:

1. it checks that the PATCH operation of the kind (found by its
   ``x-kubernetes-group-version-kind``) lists the ``fieldValidation`` query
   parameter, and then sends ``fieldValidation=Strict`` instead of validating
   the manifest itself;
2. it checks that the PATCH operation accepts
   ``application/strategic-merge-patch+json``, finds the kind's schema in
   ``components.schemas`` by ``x-kubernetes-group-version-kind`` and builds the
   strategic merge patch from it, reading ``x-kubernetes-patch-merge-key`` and
   ``x-kubernetes-patch-strategy`` on list fields (following ``$ref`` /
   ``allOf`` links to other schemas).

The schemas come from kube.api.schema (field names and types) plus the patch
metadata table below (upstream's ``patchStrategy``/``patchMergeKey`` struct
tags and ``+listType`` markers). Names and layout follow the upstream
apiserver: ``io.k8s.api.core.v1.Pod``, struct-valued fields as
``{"allOf": [{"$ref": ...}], "default": {}}``.

Documents are built once and cached; the root lists each group-version with a
``hash`` that is the SHA-512 (uppercase hex, like upstream's ETag) of the
document's canonical JSON, so kubectl's cache is invalidated when it changes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

from kube.api import schema
from kube.api.resources import RESOURCES, ResourceType

JSONDict = dict[str, Any]

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
CORE = "io.k8s.api.core.v1."
INTSTR = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
TIME = META + "Time"
PATCH = META + "Patch"

KUBE_VERSION = "v1.32.0"

# (type, field) -> (patch strategy, patch merge key, list type, list map keys), from upstream types.go.
PatchInfo = tuple[str, str, str, tuple[str, ...]]
PATCH_META: dict[tuple[str, str], PatchInfo] = {
    (META + "ObjectMeta", "finalizers"): ("merge", "", "set", ()),
    (META + "ObjectMeta", "ownerReferences"): ("merge", "uid", "map", ("uid",)),
    (META + "ObjectMeta", "managedFields"): ("", "", "atomic", ()),
    (CORE + "PodSpec", "containers"): ("merge", "name", "map", ("name",)),
    (CORE + "PodSpec", "initContainers"): ("merge", "name", "map", ("name",)),
    (CORE + "PodSpec", "ephemeralContainers"): ("merge", "name", "map", ("name",)),
    (CORE + "PodSpec", "volumes"): ("merge,retainKeys", "name", "map", ("name",)),
    (CORE + "PodSpec", "imagePullSecrets"): ("merge", "name", "map", ("name",)),
    (CORE + "PodSpec", "hostAliases"): ("merge", "ip", "map", ("ip",)),
    (CORE + "PodSpec", "topologySpreadConstraints"): ("merge", "topologyKey", "map",
                                                      ("topologyKey", "whenUnsatisfiable")),
    (CORE + "PodSpec", "schedulingGates"): ("merge", "name", "map", ("name",)),
    (CORE + "PodSpec", "resourceClaims"): ("merge,retainKeys", "name", "map", ("name",)),
    (CORE + "PodSpec", "tolerations"): ("", "", "atomic", ()),
    (CORE + "PodSpec", "readinessGates"): ("", "", "atomic", ()),
    (CORE + "Container", "ports"): ("merge", "containerPort", "map", ("containerPort", "protocol")),
    (CORE + "Container", "env"): ("merge", "name", "map", ("name",)),
    (CORE + "Container", "volumeMounts"): ("merge", "mountPath", "map", ("mountPath",)),
    (CORE + "Container", "volumeDevices"): ("merge", "devicePath", "map", ("devicePath",)),
    (CORE + "Container", "resizePolicy"): ("", "", "atomic", ()),
    (CORE + "Container", "envFrom"): ("", "", "atomic", ()),
    (CORE + "EphemeralContainer", "ports"): ("merge", "containerPort", "map", ("containerPort", "protocol")),
    (CORE + "EphemeralContainer", "env"): ("merge", "name", "map", ("name",)),
    (CORE + "EphemeralContainer", "volumeMounts"): ("merge", "mountPath", "map", ("mountPath",)),
    (CORE + "EphemeralContainer", "volumeDevices"): ("merge", "devicePath", "map", ("devicePath",)),
    (CORE + "PodStatus", "conditions"): ("merge", "type", "map", ("type",)),
    (CORE + "PodStatus", "podIPs"): ("merge", "ip", "map", ("ip",)),
    (CORE + "PodStatus", "hostIPs"): ("merge", "ip", "atomic", ()),
    (CORE + "PodStatus", "resourceClaimStatuses"): ("merge,retainKeys", "name", "map", ("name",)),
    (CORE + "ServiceSpec", "ports"): ("merge", "port", "map", ("port", "protocol")),
    (CORE + "ServiceStatus", "conditions"): ("merge", "type", "map", ("type",)),
    (CORE + "NodeSpec", "podCIDRs"): ("merge", "", "set", ()),
    (CORE + "NodeSpec", "taints"): ("", "", "atomic", ()),
    (CORE + "NodeStatus", "conditions"): ("merge", "type", "map", ("type",)),
    (CORE + "NodeStatus", "addresses"): ("merge", "type", "map", ("type",)),
    (CORE + "NamespaceStatus", "conditions"): ("merge", "type", "map", ("type",)),
    (CORE + "ServiceAccount", "secrets"): ("merge", "name", "map", ("name",)),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions"): ("merge", "type", "map", ("type",)),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions"): ("merge", "type", "map", ("type",)),
    ("io.k8s.api.apps.v1.DaemonSetStatus", "conditions"): ("merge", "type", "map", ("type",)),
    ("io.k8s.api.batch.v1.JobStatus", "conditions"): ("merge", "type", "atomic", ()),
    (META + "LabelSelector", "matchExpressions"): ("", "", "atomic", ()),
}

# Extra named schemas the descriptors point at.
EXTRA_SCHEMAS: dict[str, JSONDict] = {
    INTSTR: {"type": "string", "format": "int-or-string",
             "description": "IntOrString is a type that can hold an int32 or a string."},
    QUANTITY: {"type": "string", "description": "Quantity is a fixed-point representation of a number."},
    TIME: {"type": "string", "format": "date-time",
           "description": "Time is a wrapper around time.Time which supports correct marshaling to YAML and JSON."},
    PATCH: {"type": "object", "description": "Patch is provided to give a concrete name and type to the "
                                             "Kubernetes PATCH request body."},
}

PATCH_CONTENT_TYPES = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)


def _ref(name: str, prefix: str) -> JSONDict:
    return {"$ref": prefix + name}


def _prop(desc: str, prefix: str, v3: bool) -> JSONDict:
    """The schema of one field from its kube.api.schema descriptor."""
    def wrap(name: str) -> JSONDict:
        # upstream v3 wraps struct references in allOf (so siblings like default are legal)
        return {"allOf": [_ref(name, prefix)], "default": {}} if v3 else _ref(name, prefix)

    if desc.startswith("[]"):
        return {"type": "array", "items": _prop(desc[2:], prefix, v3)}
    if desc.startswith("{}"):
        return {"type": "object", "additionalProperties": _prop(desc[2:], prefix, v3)}
    simple: dict[str, JSONDict] = {
        "string": {"type": "string"},
        "int32": {"type": "integer", "format": "int32"},
        "int64": {"type": "integer", "format": "int64"},
        "double": {"type": "number", "format": "double"},
        "boolean": {"type": "boolean"},
        "byte": {"type": "string", "format": "byte"},
        "any": {"type": "object"},
    }
    if desc in simple:
        return dict(simple[desc])
    if desc == "date-time":
        return wrap(TIME)
    if desc == "int-or-string":
        return wrap(INTSTR)
    if desc == "quantity":
        return wrap(QUANTITY)
    return wrap(desc)


def _gvk_of(type_name: str) -> list[JSONDict]:
    out = []
    for key, tn in schema.data().kinds.items():
        if tn == type_name:
            api_version, kind = key.rsplit("/", 1)
            group, _, version = api_version.rpartition("/")
            out.append({"group": group, "kind": kind, "version": version})
    return out


def _type_schema(type_name: str, prefix: str, v3: bool) -> JSONDict:
    props: JSONDict = {}
    for field, desc in schema.fields_of(type_name).items():
        p = _prop(desc, prefix, v3)
        info = PATCH_META.get((type_name, field))
        if info is not None:
            strategy, key, list_type, map_keys = info
            if list_type:
                p["x-kubernetes-list-type"] = list_type
            if map_keys:
                p["x-kubernetes-list-map-keys"] = list(map_keys)
            if key:
                p["x-kubernetes-patch-merge-key"] = key
            if strategy:
                p["x-kubernetes-patch-strategy"] = strategy
        props[field] = p
    out: JSONDict = {"type": "object", "properties": props}
    req = schema.data().required.get(type_name)
    if req:
        out["required"] = list(req)
    gvk = _gvk_of(type_name)
    if gvk:
        out["x-kubernetes-group-version-kind"] = gvk
    return out


def _closure(roots: list[str]) -> list[str]:
    """Every type reachable from ``roots``, sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        tn = todo.pop()
        if tn in seen or tn not in schema.data().types:
            continue
        seen.add(tn)
        for desc in schema.fields_of(tn).values():
            base = desc.lstrip("[]{}")
            if base not in schema.PRIMITIVES:
                todo.append(base)
    return sorted(seen)


def _schemas(roots: list[str], prefix: str, v3: bool) -> JSONDict:
    out: JSONDict = {tn: _type_schema(tn, prefix, v3) for tn in _closure(roots)}
    for name, s in EXTRA_SCHEMAS.items():
        out[name] = copy.deepcopy(s)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- operations


def _qparam(name: str, typ: str, description: str) -> JSONDict:
    return {"name": name, "in": "query", "description": description, "schema": {"type": typ, "uniqueItems": True}}


P_DRY_RUN = _qparam("dryRun", "string", "When present, indicates that modifications should not be persisted. "
                                        "Valid values are: - All: all dry run stages will be processed")
P_FIELD_MANAGER = _qparam("fieldManager", "string", "fieldManager is a name associated with the actor or "
                                                    "entity that is making these changes.")
P_FIELD_VALIDATION = _qparam(
    "fieldValidation", "string",
    "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing "
    "unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict")
P_FORCE = _qparam("force", "boolean", "Force is going to \"force\" Apply requests.")
P_PRETTY = _qparam("pretty", "string", "If 'true', then the output is pretty printed.")
P_LIST = [
    _qparam("allowWatchBookmarks", "boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
    _qparam("continue", "string", "The continue option should be set when retrieving more results from the server."),
    _qparam("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields."),
    _qparam("labelSelector", "string", "A selector to restrict the list of returned objects by their labels."),
    _qparam("limit", "integer", "limit is a maximum number of responses to return for a list call."),
    _qparam("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request "
                                         "may be served from."),
    _qparam("resourceVersionMatch", "string", "resourceVersionMatch determines how resourceVersion is applied "
                                              "to list calls."),
    _qparam("sendInitialEvents", "boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
    _qparam("timeoutSeconds", "integer", "Timeout for the list/watch call."),
    _qparam("watch", "boolean", "Watch for changes to the described resources and return them as a stream of "
                                "add, update, and remove notifications."),
]
P_DELETE = [
    P_DRY_RUN,
    _qparam("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted."),
    _qparam("orphanDependents", "boolean", "Deprecated: please use the PropagationPolicy."),
    _qparam("propagationPolicy", "string", "Whether and how garbage collection will be performed."),
]
P_WRITE = [P_DRY_RUN, P_FIELD_MANAGER, P_FIELD_VALIDATION]


def _path_param(name: str, description: str) -> JSONDict:
    return {"name": name, "in": "path", "description": description, "required": True,
            "schema": {"type": "string", "uniqueItems": True}}


def _content(schema_ref: JSONDict) -> JSONDict:
    return {t: {"schema": schema_ref} for t in ("application/json", "application/yaml")}


def _op(action: str, op_id: str, tag: str, gvk: JSONDict, params: list[JSONDict], response: str,
        body: str | None = None, body_types: tuple[str, ...] = ("*/*",), created: bool = False) -> JSONDict:
    resp_ref = _ref(response, "#/components/schemas/")
    op: JSONDict = {
        "tags": [tag],
        "description": f"{action} {gvk['kind']}",
        "operationId": op_id,
        "parameters": copy.deepcopy(params),
        "responses": {
            "200": {"description": "OK", "content": _content(resp_ref)},
            "401": {"description": "Unauthorized"},
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": dict(gvk),
    }
    if created:
        op["responses"]["201"] = {"description": "Created", "content": _content(resp_ref)}
    if body is not None:
        op["requestBody"] = {
            "content": {t: {"schema": _ref(body, "#/components/schemas/")} for t in body_types},
            "required": True,
        }
    return op


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace("-", ".").split("."))


def _paths_for(r: ResourceType) -> JSONDict:
    base = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
    kind_type = schema.type_name(r.api_version, r.kind) or ""
    list_type = schema.type_name(r.api_version, r.list_kind_name) or ""
    gvk = {"group": r.group, "kind": r.kind, "version": r.version}
    tag = f"{r.group.split('.')[0] if r.group else 'core'}_{r.version}"
    gv_camel = (_camel(r.group.split(".k8s.io")[0]) if r.group else "Core") + _camel(r.version)
    ns = "Namespaced" if r.namespaced else ""
    collection = f"{base}/namespaces/{{namespace}}/{r.name}" if r.namespaced else f"{base}/{r.name}"
    item = collection + "/{name}"
    common = [P_PRETTY]
    ns_params = [_path_param("namespace", "object name and auth scope, such as for teams and projects")] \
        if r.namespaced else []
    name_param = [_path_param("name", f"name of the {r.kind}")]
    verbs = set(r.verbs)
    paths: JSONDict = {}

    coll: JSONDict = {"parameters": ns_params + common}
    if "list" in verbs:
        coll["get"] = _op("list", f"list{gv_camel}{ns}{r.kind}", tag, gvk, P_LIST, list_type)
    if "create" in verbs:
        coll["post"] = _op("post", f"create{gv_camel}{ns}{r.kind}", tag, gvk, P_WRITE, kind_type,
                           body=kind_type, created=True)
    if "deletecollection" in verbs:
        coll["delete"] = _op("deletecollection", f"deletecollection{gv_camel}{ns}{r.kind}", tag, gvk,
                             P_DELETE + P_LIST, META + "Status", body=META + "DeleteOptions")
    paths[collection] = coll

    one: JSONDict = {"parameters": name_param + ns_params + common}
    if "get" in verbs:
        one["get"] = _op("get", f"read{gv_camel}{ns}{r.kind}", tag, gvk, [], kind_type)
    if "update" in verbs:
        one["put"] = _op("put", f"replace{gv_camel}{ns}{r.kind}", tag, gvk, P_WRITE, kind_type, body=kind_type,
                         created=True)
    if "patch" in verbs:
        one["patch"] = _op("patch", f"patch{gv_camel}{ns}{r.kind}", tag, gvk, P_WRITE + [P_FORCE], kind_type,
                           body=PATCH, body_types=PATCH_CONTENT_TYPES, created=True)
    if "delete" in verbs:
        one["delete"] = _op("delete", f"delete{gv_camel}{ns}{r.kind}", tag, gvk, P_DELETE, META + "Status",
                            body=META + "DeleteOptions")
    paths[item] = one

    for sub in r.subresources:
        sub_path = f"{item}/{sub}"
        sub_params: JSONDict = {"parameters": name_param + ns_params + common}
        sc = _camel(sub)
        if sub in ("status", "scale"):
            if sub == "scale":
                sub_gvk = {"group": "autoscaling", "kind": "Scale", "version": "v1"}
                sub_type = "io.k8s.api.autoscaling.v1.Scale"
            else:
                sub_gvk, sub_type = gvk, kind_type
            sub_params["get"] = _op("get", f"read{gv_camel}{ns}{r.kind}{sc}", tag, sub_gvk, [], sub_type)
            sub_params["put"] = _op("put", f"replace{gv_camel}{ns}{r.kind}{sc}", tag, sub_gvk, P_WRITE, sub_type,
                                    body=sub_type, created=True)
            sub_params["patch"] = _op("patch", f"patch{gv_camel}{ns}{r.kind}{sc}", tag, sub_gvk,
                                      P_WRITE + [P_FORCE], sub_type, body=PATCH, body_types=PATCH_CONTENT_TYPES,
                                      created=True)
        elif sub == "binding":
            b_gvk = {"group": "", "kind": "Binding", "version": "v1"}
            sub_params["post"] = _op("post", f"create{gv_camel}{ns}{r.kind}Binding", tag, b_gvk, P_WRITE,
                                     CORE + "Binding", body=CORE + "Binding", created=True)
        elif sub == "log":
            sub_params["get"] = {
                "tags": [tag], "description": f"read log of the specified {r.kind}",
                "operationId": f"read{gv_camel}{ns}{r.kind}Log",
                "parameters": [_qparam(n, t, n) for n, t in (
                    ("container", "string"), ("follow", "boolean"), ("limitBytes", "integer"),
                    ("previous", "boolean"), ("sinceSeconds", "integer"), ("tailLines", "integer"),
                    ("timestamps", "boolean"))],
                "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                "x-kubernetes-action": "connect",
                "x-kubernetes-group-version-kind": {"group": "", "kind": "Pod", "version": "v1"},
            }
        elif sub in ("exec", "attach"):  # WebSocket upgrades (apiserver/streaming.py), GET or POST as upstream
            names = (["command"] if sub == "exec" else []) + ["container", "stderr", "stdin", "stdout", "tty"]
            for method in ("get", "post"):
                sub_params[method] = {
                    "tags": [tag], "description": f"connect {method.upper()} requests to {sub} of {r.kind}",
                    "operationId": f"connect{gv_camel}{method.capitalize()}{ns}{r.kind}{sc}",
                    "parameters": [_qparam(n, "string" if n in ("command", "container") else "boolean", n)
                                   for n in names],
                    "responses": {"200": {"description": "OK", "content": {"*/*": {"schema": {"type": "string"}}}}},
                    "x-kubernetes-action": "connect",
                    "x-kubernetes-group-version-kind": {"group": "", "kind": f"Pod{sc}Options", "version": "v1"},
                }
        elif sub == "portforward":  # a WebSocket tunnel (apiserver/portforward.py), GET or POST as upstream
            for method in ("get", "post"):
                sub_params[method] = {
                    "tags": [tag],
                    "description": f"connect {method.upper()} requests to portforward of {r.kind}",
                    "operationId": f"connect{gv_camel}{method.capitalize()}{ns}{r.kind}Portforward",
                    "parameters": [_qparam("ports", "integer", "List of ports to forward")],
                    "responses": {"200": {"description": "OK",
                                          "content": {"*/*": {"schema": {"type": "string"}}}}},
                    "x-kubernetes-action": "connect",
                    "x-kubernetes-group-version-kind": {"group": "", "kind": "PodPortForwardOptions",
                                                        "version": "v1"},
                }
        else:
            sub_params["put"] = _op("put", f"replace{gv_camel}{ns}{r.kind}{sc}", tag, gvk, P_WRITE, kind_type,
                                    body=kind_type)
        paths[sub_path] = sub_params
    return paths


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _roots_for(resources: list[ResourceType]) -> list[str]:
    roots = [META + "Status", META + "DeleteOptions", META + "APIResourceList"]
    for r in resources:
        for kind in (r.kind, r.list_kind_name):
            tn = schema.type_name(r.api_version, kind)
            if tn:
                roots.append(tn)
        if "scale" in r.subresources:
            roots.append("io.k8s.api.autoscaling.v1.Scale")
        if "binding" in r.subresources:
            roots.append(CORE + "Binding")
    return roots


@functools.cache
def _documents() -> dict[str, JSONDict]:
    docs: dict[str, JSONDict] = {}
    by_gv: dict[str, list[ResourceType]] = {}
    for r in RESOURCES:
        by_gv.setdefault(_gv_path(r.group, r.version), []).append(r)
    for gv, resources in by_gv.items():
        paths: JSONDict = {}
        for r in resources:
            paths.update(_paths_for(r))
        docs[gv] = {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": KUBE_VERSION},
            "paths": dict(sorted(paths.items())),
            "components": {
                "schemas": _schemas(_roots_for(resources), "#/components/schemas/", v3=True),
                "securitySchemes": {"BearerToken": {"type": "apiKey", "in": "header", "name": "authorization",
                                                    "description": "Bearer Token authentication"}},
            },
        }
    return docs


def canonical_bytes(doc: JSONDict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@functools.cache
def _hashes() -> dict[str, str]:
    return {gv: hashlib.sha512(canonical_bytes(doc)).hexdigest().upper() for gv, doc in _documents().items()}


def openapi_v3_root() -> JSONDict:
    """``GET /openapi/v3``: one entry per group-version, with a content hash."""
    return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={h}"} for gv, h in _hashes().items()}}


def openapi_v3_group_version(path: str) -> JSONDict | None:
    """``GET /openapi/v3/<path>`` for path "api/v1", "apis/apps/v1", ...; None if unknown (404).

    The returned document is shared: callers must not modify it."""
    return _documents().get(path.strip("/"))


def openapi_v3_hash(path: str) -> str | None:
    """The hash (also usable as ETag) of one group-version document."""
    return _hashes().get(path.strip("/"))


@functools.cache
def openapi_v2_json() -> JSONDict:
    """A Swagger 2.0 document with the same definitions and paths, as JSON.

    kubectl asks ``/openapi/v2`` for protobuf; this JSON form serves other
    clients (and kubectl falls back to /openapi/v3 when v2 is not protobuf)."""
    paths: JSONDict = {}
    for r in RESOURCES:
        for p, item in _paths_for(r).items():
            paths[p] = _v3_path_to_v2(item)
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": KUBE_VERSION},
        "paths": dict(sorted(paths.items())),
        "definitions": _schemas(_roots_for(list(RESOURCES)), "#/definitions/", v3=False),
    }


def _v2_ref(s: JSONDict) -> JSONDict:
    return {"$ref": s["$ref"].replace("#/components/schemas/", "#/definitions/")}


def _v2_param(p: JSONDict) -> JSONDict:
    out = {k: v for k, v in p.items() if k != "schema"}
    out.update(p.get("schema", {}))
    return out


def _v3_path_to_v2(item: JSONDict) -> JSONDict:
    out: JSONDict = {}
    for key, op in item.items():
        if key == "parameters":
            out["parameters"] = [_v2_param(p) for p in op]
            continue
        new = {k: v for k, v in op.items() if k not in ("requestBody", "responses", "parameters")}
        params = [_v2_param(p) for p in op.get("parameters", [])]
        body = op.get("requestBody")
        if body:
            content = body["content"]
            new["consumes"] = sorted(content)
            params.insert(0, {"name": "body", "in": "body", "required": True,
                              "schema": _v2_ref(next(iter(content.values()))["schema"])})
        new["parameters"] = params
        responses: JSONDict = {}
        for code, resp in op.get("responses", {}).items():
            r2: JSONDict = {"description": resp.get("description", "")}
            content = resp.get("content")
            if content:
                s = next(iter(content.values()))["schema"]
                r2["schema"] = _v2_ref(s) if "$ref" in s else s
                new["produces"] = sorted(content)
            responses[code] = r2
        new["responses"] = responses
        out[key] = new
    return out
