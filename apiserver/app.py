"""The HTTP face of the apiserver: routing, content negotiation, discovery.

One catch-all route per API root parses the path the way Kubernetes lays it
out (`/api/v1/namespaces/NS/pods/NAME/status`, `/apis/apps/v1/deployments`),
decodes the body (JSON or YAML, with or without a Content-Type), calls the
registry and encodes the answer as JSON, a meta.k8s.io Table, or a stream of
watch events. Every error leaves as a `Status`.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

import orjson
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from kube.api.resources import AUTHN_RESOURCES, RESOURCES, ResourceType, group_versions, lookup

from . import errors, nodeproxy, openapi, portforward, printers, protobuf, streaming
from .auth import authn, reviews
from .auth.authz import AuthorizationMiddleware
from .errors import APIError
from .metrics import MUTATING, VERBS, Metrics, exposition
from .registry import Registry, Result, list_options
from .store.base import StoreUnavailable

log = logging.getLogger("kubeling.apiserver")

MAX_BODY = 3 * 1024 * 1024
VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0+kubeling", "gitCommit": "", "gitTreeState": "clean",
    "buildDate": "2026-12-01T00:00:00Z", "goVersion": "python", "compiler": "cpython", "platform": "linux/amd64",
}
JSON = "application/json"
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml")
SUBRESOURCE_VERBS = {
    "status": ["get", "patch", "update"], "scale": ["get", "patch", "update"], "binding": ["create"],
    "finalize": ["update"], "log": ["get"], "token": ["create"], "portforward": ["create", "get"],
    "exec": ["create", "get"], "attach": ["create", "get"],
}


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def json_response(body: Any, code: int = 200, warnings: list[str] | None = None) -> Response:
    headers = {}
    if warnings:
        headers["Warning"] = ", ".join('299 - "' + _warning_text(w) + '"' for w in warnings[:10])
    return Response(dumps(body), status_code=code, media_type=JSON, headers=headers)


def _warning_text(text: str, limit: int = 256) -> str:
    """A warning (which may quote field names the client sent) made safe for a header value: control
    characters replaced, quotes escaped, cut at `limit` characters, and UTF-8 on the wire (Starlette
    writes header strings as latin-1, so the UTF-8 bytes go as they are)."""
    text = "".join(c if c >= " " and c != "\x7f" else "?" for c in text[:limit])
    return text.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8", "replace").decode("latin-1")



# -- content negotiation ---------------------------------------------------------


def wants_table(accept: str) -> bool:
    for part in accept.split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in part.split(";")[1:] if "=" in p}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return True
    return False


def check_accept(accept: str) -> None:
    if not accept:
        return
    for part in accept.split(","):
        mt = part.split(";")[0].strip().lower()
        if mt in ("*/*", "application/*", JSON, "application/yaml", "application/json-seq") or mt.endswith("+json"):
            return
    raise errors.not_acceptable(accept)


async def read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise errors.too_large(MAX_BODY)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise errors.too_large(MAX_BODY)
        chunks.append(chunk)
    return b"".join(chunks)


MAX_DEPTH = 100  # nesting of a request body; the deepest built-in object is far below


def decode_body(raw: bytes, content_type: str, *, required: bool = True) -> Any:
    """The body as JSON values (JSON, YAML or kubectl's protobuf); 400 when it cannot be, or when it
    nests deeper than MAX_DEPTH (recursive code further on must not hit Python's recursion limit)."""
    body = _decode_body(raw, content_type, required=required)
    if _deeper_than(body, MAX_DEPTH):
        raise errors.bad_request(f"the body nests objects or lists deeper than {MAX_DEPTH} levels")
    return body


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def _decode_body(raw: bytes, content_type: str, *, required: bool = True) -> Any:
    mt = content_type.split(";")[0].strip().lower()
    if not raw.strip():
        if required:
            raise errors.bad_request("the request body is empty: send a JSON or YAML object")
        return None
    if mt in ("", "application/json", "text/plain", "application/x-www-form-urlencoded") or mt.endswith("+json"):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            if mt not in ("", "text/plain", "application/x-www-form-urlencoded"):
                raise errors.bad_request(f"the body is not valid JSON: {e}") from None
    elif mt == protobuf.MEDIA_TYPE:  # kubectl's typed clients (create namespace/deployment/...) send protobuf
        try:
            return protobuf.decode_k8s_protobuf(raw)
        except protobuf.ProtobufError as e:
            raise errors.bad_request(f"the protobuf body could not be decoded: {e}") from None
    elif mt not in ("application/yaml", "application/x-yaml", "text/yaml") and not mt.endswith("+yaml"):
        raise errors.unsupported_media_type(content_type)
    try:
        docs = [d for d in yaml.safe_load_all(raw) if d is not None]
        if len(docs) != 1:
            raise errors.bad_request(f"the body must hold exactly one object, found {len(docs)} YAML documents")
        return _jsonable(docs[0], [MAX_YAML_NODES])
    except yaml.YAMLError as e:
        raise errors.bad_request(f"the body is neither valid JSON nor valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise errors.bad_request(f"the body nests objects or lists deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # PyYAML's int() of a 5,000-digit number, and the like
        raise errors.bad_request(f"the YAML body holds a value that cannot be read: {e}") from None


MAX_YAML_NODES = 1_000_000  # YAML aliases can make a small body a huge object ("billion laughs")


def _jsonable(v: Any, budget: list[int]) -> Any:
    """YAML may produce dates, sets and non-string keys; the API is JSON. budget: values left to make."""
    budget[0] -= 1
    if budget[0] < 0:
        raise errors.bad_request(f"the YAML body expands to more than {MAX_YAML_NODES} values (aliases?)")
    if isinstance(v, dict):
        return {str(k): _jsonable(x, budget) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x, budget) for x in v]
    if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
        try:
            return float(v)  # as a JSON decoder does with integers beyond 64 bits
        except OverflowError:
            raise errors.bad_request("the YAML body holds an integer too large for any number type") from None
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


# -- path parsing ----------------------------------------------------------------


class Target:
    def __init__(self, rt: ResourceType, namespace: str | None, name: str | None, sub: str) -> None:
        self.rt, self.namespace, self.name, self.sub = rt, namespace, name, sub


def parse_target(group: str, version: str, segs: list[str], path: str) -> Target:
    if not segs:
        raise errors.path_not_found(path)
    ns: str | None = None
    if segs[0] == "namespaces" and len(segs) >= 3:
        inner = lookup(group, version, segs[2])
        if inner is not None and inner.namespaced:
            ns, segs = segs[1], segs[2:]
    rt = lookup(group, version, segs[0])
    if rt is None or len(segs) > 3:
        raise errors.path_not_found(path)
    if rt.namespaced is False and ns is not None:
        raise errors.path_not_found(path)
    name = segs[1] if len(segs) >= 2 else None
    sub = segs[2] if len(segs) == 3 else ""
    if sub and sub not in rt.subresources:
        raise errors.path_not_found(path)
    if name == "":
        raise errors.path_not_found(path)
    return Target(rt, ns, name, sub)


# -- discovery -------------------------------------------------------------------


def resource_list(group: str, version: str) -> dict[str, Any]:
    out = []
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        entry: dict[str, Any] = {"name": r.name, "singularName": r.singular, "namespaced": r.namespaced,
                                 "kind": r.kind, "verbs": list(r.verbs)}
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        out.append(entry)
        for sub in r.subresources:
            kind = {"scale": "Scale", "binding": "Binding", "token": "TokenRequest", "exec": "PodExecOptions",
                    "attach": "PodAttachOptions"}.get(sub, r.kind)
            e = {"name": f"{r.name}/{sub}", "singularName": "", "namespaced": r.namespaced, "kind": kind,
                 "verbs": SUBRESOURCE_VERBS.get(sub, ["get"])}
            if sub == "scale":
                e.update(group="autoscaling", version="v1")
            elif sub == "token":
                e.update(group="authentication.k8s.io", version="v1")
            out.append(e)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
            "resources": out}


def group_list() -> dict[str, Any]:
    groups = []
    for g, v in group_versions():
        if not g:
            continue
        gv = {"groupVersion": f"{g}/{v}", "version": v}
        groups.append({"name": g, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


# -- the app ---------------------------------------------------------------------


def create_app(registry: Registry, *, metrics: Metrics | None = None,
               extra_metrics: list[CollectorRegistry] | None = None) -> FastAPI:
    """extra_metrics: registries of in-process components (`kubeling server`'s scheduler and
    controllers), served after the apiserver's own on /metrics; the list may grow later."""
    app = FastAPI(title="kubeling apiserver", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.registry = registry
    # authorization of every route (HTTP and websocket) once app.state.authz is set (apiserver/auth/authz.py)
    app.add_middleware(AuthorizationMiddleware)
    m = app.state.metrics = metrics if metrics is not None else Metrics()
    extra = extra_metrics if extra_metrics is not None else []

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return errors.status_response(exc)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(_: Request, exc: StoreUnavailable) -> Response:
        # a Status 503 the client can act on, not a 500 and a dropped connection
        return errors.status_response(errors.unavailable(f"the store is unavailable: {exc}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return errors.status_response(errors.method_not_allowed())
        if exc.status_code == 404:
            return errors.status_response(errors.path_not_found(request.url.path))
        return errors.status_response(APIError(exc.status_code, "Unknown", str(exc.detail)))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        # where and what, never the exception's message: it may quote the request body (a Secret's data)
        log.error("internal error method=%s path=%s error=%s\n%s", request.method, request.url.path,
                  type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)).rstrip())
        return errors.status_response(errors.internal(f"{type(exc).__name__}: {exc}"))

    @app.get("/version")
    async def version() -> Response:
        return json_response(VERSION)

    for probe in ("/healthz", "/readyz", "/livez"):
        @app.get(probe)
        async def health() -> Response:
            return Response(b"ok", media_type="text/plain")

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(exposition([m.registry, *extra]), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api")
    async def api_versions(request: Request) -> Response:
        host = request.url.netloc
        return json_response({"kind": "APIVersions", "versions": ["v1"],
                              "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})

    @app.get("/apis")
    async def apis() -> Response:
        return json_response(group_list())

    @app.get("/openapi/v3")
    async def openapi_root() -> Response:
        return json_response(openapi.openapi_v3_root())

    @app.get("/openapi/v3/{gv:path}")
    async def openapi_gv(request: Request, gv: str) -> Response:
        doc = openapi.openapi_v3_group_version(gv)
        if doc is None:
            raise errors.path_not_found(f"/openapi/v3/{gv}")
        return Response(openapi.canonical_bytes(doc), media_type=JSON,
                        headers={"ETag": f'"{openapi.openapi_v3_hash(gv)}"',
                                 "Cache-Control": "public, immutable" if request.query_params.get("hash")
                                 else "no-cache, private"})

    # The API roots are plain Starlette routes: FastAPI's parameter solving
    # would cost more per request than the registry itself.
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

    async def core(request: Request) -> Response:
        segs = [s for s in request.path_params["rest"].split("/") if s != ""]
        if not segs or segs[0] != "v1":
            raise errors.path_not_found(request.url.path)
        if len(segs) == 1:
            if request.method != "GET":
                raise errors.method_not_allowed()
            return json_response(resource_list("", "v1"))
        return await timed(request, registry, parse_target("", "v1", segs[1:], request.url.path), m)

    async def named(request: Request) -> Response:
        segs = [s for s in request.path_params["rest"].split("/") if s != ""]
        gvs = {g: v for g, v in group_versions() if g}
        if not segs or segs[0] not in gvs:
            raise errors.path_not_found(request.url.path)
        group = segs[0]
        if len(segs) == 1:
            gv = {"groupVersion": f"{group}/{gvs[group]}", "version": gvs[group]}
            return json_response({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv],
                                  "preferredVersion": gv})
        if segs[1] != gvs[group]:
            raise errors.path_not_found(request.url.path)
        if len(segs) == 2:
            if request.method != "GET":
                raise errors.method_not_allowed()
            return json_response(resource_list(group, segs[1]))
        return await timed(request, registry, parse_target(group, segs[1], segs[2:], request.url.path), m)

    app.add_route("/api/{rest:path}", core, methods=methods)
    app.add_route("/apis/{rest:path}", named, methods=methods)
    # kubectl port-forward: a WebSocket tunnel relayed to the node agent (apiserver/portforward.py)
    app.router.add_websocket_route("/api/v1/namespaces/{namespace}/pods/{name}/portforward",
                                   portforward.pod_portforward_ws)
    # kubectl exec / attach / cp: WebSocket sessions relayed to the node agent (apiserver/streaming.py)
    app.router.add_websocket_route("/api/v1/namespaces/{namespace}/pods/{name}/exec", streaming.pod_exec_ws)
    app.router.add_websocket_route("/api/v1/namespaces/{namespace}/pods/{name}/attach", streaming.pod_attach_ws)
    return app


async def timed(request: Request, registry: Registry, t: Target, metrics: Metrics) -> Response:
    """handle(), counted and timed into metrics, with a debug line per request (cheap when debug is off)."""
    method = request.method
    verb = VERBS.get(method, method.lower())
    watch = False
    if t.name is None:
        if method == "GET":
            watch = request.query_params.get("watch", "").lower() in ("1", "true")
            verb = "watch" if watch else "list"
        elif method == "DELETE":
            verb = "deletecollection"
    inflight = metrics.inflight_rw if method in MUTATING else metrics.inflight_ro
    inflight.inc()
    t0 = time.perf_counter()
    code = 500
    try:
        resp = await handle(request, registry, t)
        code = resp.status_code
        return resp
    except APIError as e:
        code = e.code
        raise
    except StoreUnavailable:
        code = 503
        raise
    finally:
        elapsed = time.perf_counter() - t0
        inflight.dec()
        metrics.observe(verb, t.rt.name, t.sub, code, None if watch else elapsed)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request method=%s path=%s code=%d ms=%.1f", method, request.url.path, code, elapsed * 1000)


def _params(request: Request) -> dict[str, str]:
    return dict(request.query_params.items())


async def handle(request: Request, registry: Registry, t: Target) -> Response:
    params = _params(request)
    method = request.method
    accept = request.headers.get("accept", "")
    check_accept(accept)
    table = wants_table(accept)
    content_type = request.headers.get("content-type", "")
    rt = t.rt

    if rt.name in reviews.RESOURCES:  # access reviews: answered from the authorizer, never stored
        if method != "POST" or t.name is not None:
            raise errors.method_not_allowed()
        body = decode_body(await read_body(request), content_type)
        return json_response(await reviews.review(getattr(request.app.state, "authz", None),
                                                  authn.user_of(request.scope), rt, t.namespace, body), 201)
    if rt.name in AUTHN_RESOURCES:  # selfsubjectreviews, tokenreviews: answered, never stored
        if method != "POST" or t.name is not None:
            raise errors.method_not_allowed()
        body = decode_body(await read_body(request), content_type)
        if rt.name == "selfsubjectreviews":
            return json_response(authn.self_subject_review(authn.user_of(request.scope), body), 201)
        return json_response(await authn.token_review(getattr(request.app.state, "authenticator", None), body), 201)
    if t.name is None:  # collection
        if method == "GET":
            opts = list_options(rt, params)
            if params.get("watch", "").lower() in ("1", "true"):
                return watch_response(registry, t, opts, table, params,
                                      request.app.state.metrics.watch_counter(rt.name))
            items, meta = await registry.list(rt, t.namespace, opts)
            if table:
                return json_response(printers.to_table(rt.name, items, list_metadata=meta,
                                                       include_object=params.get("includeObject", "Metadata")))
            return json_response({"kind": rt.list_kind_name, "apiVersion": rt.api_version, "metadata": meta,
                                  "items": items})
        if method == "POST":
            if rt.namespaced and t.namespace is None:
                raise errors.method_not_allowed(f"create {rt.name} in a namespace: POST /.../namespaces/NS/{rt.name}")
            body = decode_body(await read_body(request), content_type)
            return result_response(await registry.create(rt, t.namespace, body, params), rt, table, params)
        if method == "DELETE":
            if "deletecollection" not in rt.verbs:
                raise errors.method_not_allowed()
            body = decode_body(await read_body(request), content_type, required=False) or {}
            return result_response(await registry.delete_collection(rt, t.namespace, body, params), rt, False, params)
        raise errors.method_not_allowed()

    name = t.name
    if t.sub == "scale":
        if method == "GET":
            return json_response(await registry.get_scale(rt, t.namespace, name))
        if method in ("PUT", "PATCH"):
            body = decode_body(await read_body(request), content_type)
            ctype = content_type.split(";")[0].strip() if method == "PATCH" else None
            res = await registry.update_scale(rt, t.namespace, name, ctype, body, params)
            return json_response(res.body, res.code, res.warnings)
        raise errors.method_not_allowed()
    if t.sub == "binding":
        if method != "POST":
            raise errors.method_not_allowed()
        body = decode_body(await read_body(request), content_type)
        res = await registry.bind(rt, t.namespace, name, body)
        return json_response(res.body, res.code)

    if t.sub == "token":  # serviceaccounts/NAME/token: a TokenRequest
        if method != "POST":
            raise errors.method_not_allowed()
        body = decode_body(await read_body(request), content_type)
        issuer = getattr(request.app.state, "token_issuer", None)
        return json_response(await authn.create_token(registry, issuer, t.namespace or "default", name, body), 201)
    if t.sub == "log":
        if method != "GET":
            raise errors.method_not_allowed()
        return await nodeproxy.pod_logs(registry, rt, t.namespace, name, params,  # streamed from the node agent
                                        kubelet=nodeproxy.kubelet_client(request.app.state))
    if t.sub in ("exec", "attach"):  # not a WebSocket upgrade (those take the routes above): say why
        return await streaming.pod_stream_http(registry, rt, t.namespace, name, t.sub, request)
    if t.sub == "portforward":  # only a WebSocket upgrade is served (the route above); this explains why
        if method not in ("GET", "POST"):
            raise errors.method_not_allowed()
        return await portforward.pod_portforward_http(registry, rt, t.namespace, name)
    if method == "GET":
        if t.sub == "finalize":
            raise errors.method_not_allowed()
        obj = await registry.get(rt, t.namespace, name)
        if table and not t.sub:
            return json_response(printers.to_table(rt.name, [obj], include_object=params.get("includeObject",
                                                                                             "Metadata")))
        return json_response(obj)
    if method == "PUT":
        if t.sub not in ("", "status", "finalize"):
            raise errors.method_not_allowed()
        body = decode_body(await read_body(request), content_type)
        res = await registry.update(rt, t.namespace, name, body, params, t.sub)
        return result_response(res, rt, table, params)
    if method == "PATCH":
        if t.sub not in ("", "status"):
            raise errors.method_not_allowed()
        ctype = content_type.split(";")[0].strip().lower()
        if ctype not in PATCH_TYPES:
            raise errors.unsupported_media_type(content_type)
        raw = await read_body(request)
        body = decode_body(raw, "application/yaml" if ctype.endswith("yaml") else JSON)
        res = await registry.patch(rt, t.namespace, name, ctype, body, params, t.sub)
        return result_response(res, rt, table, params)
    if method == "DELETE":
        if t.sub:
            raise errors.method_not_allowed()
        body = decode_body(await read_body(request), content_type, required=False) or {}
        res = await registry.delete(rt, t.namespace, name, body, params)
        return result_response(res, rt, False, params)
    raise errors.method_not_allowed()


def result_response(res: Result, rt: ResourceType, table: bool, params: dict[str, str]) -> Response:
    body = res.body
    if table and isinstance(body, dict) and body.get("kind") == rt.kind:
        body = printers.to_table(rt.name, [body], include_object=params.get("includeObject", "Metadata"))
    return json_response(body, res.code, res.warnings)


def watch_response(registry: Registry, t: Target, opts: Any, table: bool, params: dict[str, str],
                   sent: Any = None) -> Response:
    """sent: a counter (apiserver_watch_events_total's child) incremented per event."""
    include = params.get("includeObject", "Metadata")

    async def stream() -> AsyncIterator[bytes]:
        async for ev in registry.watch(t.rt, t.namespace, opts):
            obj = ev["object"]
            if table and ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                obj = printers.to_table(t.rt.name, [obj], include_object=include)
            if sent is not None:
                sent.inc()
            yield dumps({"type": ev["type"], "object": obj}) + b"\n"

    return StreamingResponse(stream(), media_type=JSON, headers={"Cache-Control": "no-cache, private"})
