"""Fuzzing the apiserver from its own OpenAPI document, for tests/integration/test_apiserver_fuzz.py
and bench/fuzz.py.

    doc = merged_openapi()                                  # every /openapi/v3/<gv> document in one
    seeds = schemathesis_seeds(doc, positive=2, negative=1)  # schema-exact valid and invalid cases
    fuzzer = Fuzzer(httpx.Client(base_url=URL, ...), seeds, random.Random(1))  # a secure server's admin client
    fuzzer.setup()                                          # objects for the cases to find
    report = fuzzer.run(10_000)                             # report.failures: what broke the rules

Two generators, because schemathesis (hypothesis) needs 30 ms to 2 s per case on the Kubernetes
schemas here (a PodSpec is deep), far too slow for 10,000 requests in a test run:

1. schemathesis: for every operation (path + method) of the document, `positive` cases that match
   the schema and `negative` cases that break it (wrong types, missing required fields, values out
   of range), with the document's schemas cut at `depth` nested $refs (deeper: any JSON value),
   which keeps a case under ~100 ms. Each seed is sent once as generated.
2. mutation (the bulk, thousands of requests per second of generation): a random seed, then one to
   three random edits: a value anywhere in the body replaced by one of another type or an extreme
   (null, 2**70, -1, "", 10,000 characters, non-ASCII, deep nesting), a key dropped or added,
   metadata.name set to the path's name or to an invalid one, the path's namespace and name taken
   from objects that exist (so update/patch/delete reach the registry, not a 404), query parameters
   set to junk (limit=-1, labelSelector garbage, resourceVersion=abc, ...), another Content-Type
   (the four patch types, YAML, protobuf with garbage after the k8s magic), a body that is not
   JSON at all, JSON patches with random operations and paths, odd Accept headers (Table).

The rules (the issue's acceptance): no response >= 500, and every error response (>= 400) is a
Status whose .code equals the HTTP status.
"""

from __future__ import annotations

import copy
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import yaml

from apiserver import openapi

JSON_TYPES = ("application/json", "application/yaml", "application/merge-patch+json",
              "application/strategic-merge-patch+json", "application/json-patch+json",
              "application/apply-patch+yaml", "application/vnd.kubernetes.protobuf", "text/plain", "",
              "application/x-www-form-urlencoded", "image/png", "application/json; charset=utf-8")
ACCEPTS = ("application/json", "application/json;as=Table;v=v1;g=meta.k8s.io", "application/yaml", "*/*",
           "application/vnd.kubernetes.protobuf", "text/html", "application/json;as=Table;g=meta.k8s.io;v=v1beta1",
           "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io", ";;;,,")
WORK_NAMESPACES = ("default", "fuzz")
JUNK_STRINGS = ("", " ", "a" * 300, "x" * 10_000, "ünïcødé-☃", "UPPER", "-lead", "trail-", "a..b", "a/b", "%2F",
                "..", "\x00", "1", "0x10", "true", "null", "{}", "[]", "a=b,c!=d", "!!!", "in (x,y", "😀" * 50)
JUNK_VALUES: tuple[Any, ...] = (None, True, False, 0, -1, 2**31, 2**70, -(2**70), 1.5, -0.0, 1e308, "", "x" * 10_000,
                                "ünïcødé", [], [None], {}, {"": None}, [[[]]], {"a": {"b": {"c": {}}}})
QUERY_JUNK: dict[str, tuple[Any, ...]] = {
    "limit": ("-1", "0", "abc", "99999999999999999999", "1.5", "3"),
    "continue": ("garbage", "eyJ9", "!!", "e30="),
    "resourceVersion": ("abc", "-1", "0", "99999999999", ""),
    "resourceVersionMatch": ("Exact", "NotOlderThan", "junk"),
    "labelSelector": JUNK_STRINGS + ("a in (b)", "!a", "a,b=c", "a notin ()"),
    "fieldSelector": ("metadata.name=x", "spec.nodeName!=", "bogus=1", "a==b==c", "metadata.namespace=default,x"),
    "timeoutSeconds": ("-5", "abc", "0"),
    "gracePeriodSeconds": ("-1", "abc", "0", "99999999999999999999"),
    "propagationPolicy": ("Orphan", "Foreground", "Background", "junk"),
    "dryRun": ("All", "junk", ""),
    "fieldValidation": ("Strict", "Warn", "Ignore", "junk"),
    "fieldManager": ("x" * 200, "kubectl", ""),
    "force": ("true", "junk"),
    "pretty": ("true", "x"),
    "includeObject": ("None", "Object", "Metadata", "junk"),
    "allowWatchBookmarks": ("true", "x"),
    "orphanDependents": ("true", "x"),
    "container": ("nope", ""),
    "tailLines": ("-1", "x"),
    "limitBytes": ("-1", "x"),
    "sinceSeconds": ("-1", "x"),
}


def merged_openapi() -> dict[str, Any]:
    """One OpenAPI 3 document with the paths and schemas of every group-version document."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for gv, _ in sorted(openapi.openapi_v3_root()["paths"].items()):
        doc = openapi.openapi_v3_group_version(gv)
        assert doc is not None
        paths.update(doc["paths"])
        schemas.update(doc["components"]["schemas"])
    return {"openapi": "3.0.0", "info": {"title": "kubeling", "version": openapi.KUBE_VERSION},
            "paths": paths, "components": {"schemas": schemas}}


def shallow(doc: dict[str, Any], depth: int) -> dict[str, Any]:
    """The document with its $refs inlined up to `depth` levels; deeper ones become {} (any value)."""
    schemas = doc["components"]["schemas"]

    def inline(node: Any, level: int) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(schemas[node["$ref"].rsplit("/", 1)[-1]], level + 1) if level < depth else {}
            return {k: inline(v, level) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v, level) for v in node]
        return node

    return {**doc, "paths": inline(doc["paths"], 0), "components": {}}


@dataclass
class Seed:
    method: str
    path: str  # the template: /api/v1/namespaces/{namespace}/pods/{name}
    path_params: dict[str, Any]
    query: dict[str, Any]
    body: Any = None
    has_body: bool = False
    media_type: str = "application/json"
    source: str = "schemathesis"


def schemathesis_seeds(doc: dict[str, Any], positive: int = 2, negative: int = 1, depth: int = 3,
                       budget_s: float = 60.0, rng: random.Random | None = None) -> list[Seed]:
    """Cases generated by schemathesis for every operation (until budget_s is spent)."""
    import schemathesis
    from schemathesis import GenerationMode

    rng = rng or random.Random(0)
    schema = schemathesis.openapi.from_dict(shallow(doc, depth))
    operations = [r.ok() for r in schema.get_all_operations()]
    rng.shuffle(operations)  # a spent budget must not always cut the same operations
    seeds: list[Seed] = []
    first_error: Exception | None = None
    deadline = time.monotonic() + budget_s
    for op in operations:
        for mode, count in ((GenerationMode.POSITIVE, positive), (GenerationMode.NEGATIVE, negative)):
            if not count or time.monotonic() > deadline:
                continue

            collect = _collector(op, mode, count, seeds)
            try:
                collect()
            except Exception as e:  # hypothesis may give up on an unsatisfiable negative schema: fine
                first_error = first_error or e
    if not seeds and first_error is not None:
        raise first_error  # not one case: the generator itself is broken
    return seeds


def _collector(op: Any, mode: Any, count: int, seeds: list[Seed]) -> Any:
    """A hypothesis test that appends `count` cases of op in mode to seeds when called."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.core import NOT_SET

    source = f"schemathesis-{mode.value}"

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(case=op.as_strategy(generation_mode=mode))
    def collect(case: Any) -> None:
        has_body = case.body is not NOT_SET
        seeds.append(Seed(case.method.upper(), case.path, dict(case.path_parameters or {}), dict(case.query or {}),
                          case.body if has_body else None, has_body, case.media_type or "application/json", source))

    return collect


@dataclass
class Failure:
    request: str
    status: int
    body: str
    why: str
    replay: dict[str, Any] = field(default_factory=dict)  # httpx.Client.request(**replay) sends it again


@dataclass
class Report:
    requests: int = 0
    by_code: Counter[int] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.by_code.items()))
        src = ", ".join(f"{s}: {n}" for s, n in sorted(self.by_source.items()))
        return (f"{self.requests} requests in {self.seconds:.1f} s ({src}); codes {codes}; "
                f">=500: {sum(n for c, n in self.by_code.items() if c >= 500)}; failures: {len(self.failures)}")


def check(status: int, content_type: str, body: bytes) -> str:
    """'' when the response keeps the rules, else why not."""
    if status >= 500:
        return f"server error {status}"
    if status < 400:
        return ""
    try:
        st = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"error {status} is not JSON ({content_type})"
    if not isinstance(st, dict) or st.get("kind") != "Status":
        return f"error {status} is not a Status"
    if st.get("code") != status:
        return f"Status.code {st.get('code')} != HTTP {status}"
    return ""


class Fuzzer:
    def __init__(self, http: httpx.Client, seeds: list[Seed], rng: random.Random) -> None:
        if not seeds:
            raise ValueError("no seeds to fuzz from")
        self.seeds = seeds
        self.rng = rng
        self.http = http
        self.names: dict[str, list[str]] = {}  # resource -> names that exist (set up, or created by a case)

    def close(self) -> None:
        self.http.close()

    # -- fixtures for the cases to find
    def setup(self) -> None:
        self._post("/api/v1/namespaces", {"metadata": {"name": "fuzz"}})
        objects = {
            "configmaps": {"metadata": {"name": "cm"}, "data": {"a": "b"}},
            "secrets": {"metadata": {"name": "sec"}, "stringData": {"password": "fuzz-secret"}},
            "serviceaccounts": {"metadata": {"name": "sa"}},
            "services": {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}},
            "pods": {"metadata": {"name": "pod", "labels": {"a": "b"}},
                     "spec": {"containers": [{"name": "c", "image": "kubeling/test:1"}]}},
            "events": {"metadata": {"name": "ev"}, "involvedObject": {"kind": "Pod", "name": "pod"},
                       "reason": "Fuzz", "message": "m"},
        }
        apps = {
            "deployments": {"metadata": {"name": "dep"}, "spec": {
                "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}},
                             "spec": {"containers": [{"name": "c", "image": "kubeling/test:1"}]}}}},
        }
        for ns in WORK_NAMESPACES:
            for res, obj in objects.items():
                self._post(f"/api/v1/namespaces/{ns}/{res}", obj)
            for res, obj in apps.items():
                self._post(f"/apis/apps/v1/namespaces/{ns}/{res}", obj)
        self._post("/api/v1/nodes", {"metadata": {"name": "node"}})
        for res, obj in {**objects, **apps, "nodes": {"metadata": {"name": "node"}}}.items():
            self.names.setdefault(res, []).append(obj["metadata"]["name"])

    def _post(self, path: str, obj: dict[str, Any]) -> None:
        self.http.post(path, content=orjson.dumps(obj), headers={"content-type": "application/json"})

    # -- one request
    def run(self, n: int, stop_after: float | None = None) -> Report:
        report = Report()
        t0 = time.monotonic()
        unsent = [s for s in self.seeds]  # every seed goes once as schemathesis made it
        self.rng.shuffle(unsent)
        while report.requests < n and (stop_after is None or time.monotonic() - t0 < stop_after):
            if unsent:
                seed, source = unsent.pop(), None
            else:
                seed, source = self.rng.choice(self.seeds), "mutated"
            req = self.build(seed, mutate=source is not None)
            self.send(req, report, source or seed.source)
        report.seconds = time.monotonic() - t0
        return report

    def build(self, seed: Seed, mutate: bool) -> dict[str, Any]:
        rng = self.rng
        params = {k: v for k, v in seed.path_params.items()}
        query = {k: v for k, v in seed.query.items() if k not in ("watch", "follow")}  # no endless streams
        body = copy.deepcopy(seed.body) if seed.has_body else None
        has_body = seed.has_body
        ctype = seed.media_type if seed.media_type != "*/*" else "application/json"
        headers: dict[str, str] = {}
        raw: bytes | None = None
        resource = _resource_of(seed.path)
        if mutate:
            if "namespace" in params and rng.random() < 0.8:
                params["namespace"] = rng.choice(WORK_NAMESPACES)
            if "name" in params and rng.random() < 0.7 and resource != "namespaces":
                params["name"] = rng.choice(self.names.get(resource) or ["missing"])
            for _ in range(rng.randint(1, 3)):
                what = rng.random()
                if what < 0.45 and has_body:
                    body = mutate_value(body, rng)
                elif what < 0.55 and has_body and isinstance(body, dict):
                    meta = body.setdefault("metadata", {}) if isinstance(body.get("metadata", {}), dict) else {}
                    meta["name"] = params.get("name") if rng.random() < 0.6 else rng.choice(JUNK_STRINGS)
                elif what < 0.7:
                    key = rng.choice(list(QUERY_JUNK))
                    query[key] = rng.choice(QUERY_JUNK[key])
                elif what < 0.78:
                    ctype = rng.choice(JSON_TYPES)
                elif what < 0.83:
                    headers["accept"] = rng.choice(ACCEPTS)
                elif what < 0.9 and seed.method == "PATCH":
                    ctype = "application/json-patch+json"
                    body, has_body = random_json_patch(rng, body), True
                elif what < 0.95:
                    raw, has_body = rng.choice(RAW_BODIES), True
                else:
                    params = {k: rng.choice(JUNK_STRINGS) or "x" for k in params}
        path = seed.path
        for k, v in params.items():
            path = path.replace("{" + k + "}", quote(_text(v), safe="") or "x")
        if has_body and raw is None:
            raw = encode(body, ctype)
        if has_body:
            headers["content-type"] = ctype
        if rng.random() < 0.002 and seed.method == "GET" and "{name}" not in seed.path:
            query.update(watch="1", timeoutSeconds="1")  # a short watch, now and then
        return {"method": seed.method, "url": path, "params": {k: _text(v) for k, v in query.items()},
                "headers": headers, "content": raw, "resource": resource}

    def send(self, req: dict[str, Any], report: Report, source: str) -> None:
        resource = req.pop("resource")
        try:
            resp = self.http.request(**req)
        except httpx.HTTPError as e:
            report.failures.append(Failure(_describe(req), 0, repr(e), "no answer", req))
            report.requests += 1
            return
        report.requests += 1
        report.by_code[resp.status_code] += 1
        report.by_source[source] += 1
        why = check(resp.status_code, resp.headers.get("content-type", ""), resp.content)
        if why:
            report.failures.append(Failure(_describe(req), resp.status_code, resp.text[:500], why, req))
        elif resp.status_code == 201 and req["method"] == "POST":
            try:
                name = orjson.loads(resp.content).get("metadata", {}).get("name")
            except (orjson.JSONDecodeError, AttributeError):
                name = None
            if name and len(self.names.setdefault(resource, [])) < 50:
                self.names[resource].append(name)


RAW_BODIES = (b"", b"{", b"[]", b"null", b"42", b'"str"', b"{" * 2000 + b"}" * 2000, b"\xff\xfe\x00garbage",
              b"k8s\x00", b"k8s\x00\x0a\x02\x08\x01\x12\xff\xff\xff\xff\x0f", b"k8s\x00" + bytes(range(256)),
              b"a: b: c", b"- - -\n  x", b"--- {}\n--- {}\n", b"!!python/object:os.system 'x'", b'{"a": 1, "a": 2}',
              b'{"metadata": {"name": "x"}, "kind": 7}', b'{"apiVersion": {}, "kind": []}', b"\t\n  ")


def _resource_of(template: str) -> str:
    parts = [p for p in template.split("/") if p and not p.startswith("{")]
    # /api/v1/namespaces/{namespace}/pods/{name}/status -> pods; /api/v1/namespaces/{name} -> namespaces
    tail = [p for p in parts[2 if parts[0] == "api" else 3:] if p != "namespaces"] or ["namespaces"]
    return tail[0]


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | dict):
        import json
        return json.dumps(v, default=str)
    return str(v)


def _describe(req: dict[str, Any]) -> str:
    q = "&".join(f"{k}={v}" for k, v in req["params"].items())
    content = req["content"] if req["content"] is not None else b""
    return f"{req['method']} {req['url']}{'?' + q if q else ''} {req['headers']} {content[:2000]!r}"


def encode(body: Any, ctype: str) -> bytes:
    if isinstance(body, bytes):
        return body
    if "yaml" in ctype:
        try:
            return yaml.safe_dump(body).encode()
        except (yaml.YAMLError, TypeError, ValueError, RecursionError):
            pass  # JSON is YAML too
    try:
        return orjson.dumps(body)
    except TypeError:  # e.g. an integer beyond 64 bits: send it as JSON text anyway
        import json
        return json.dumps(body, default=str).encode()


def junk(rng: random.Random, strings: bool = True) -> Any:
    """A fresh junk value (a copy: the same list must never end up in two places of one body)."""
    return copy.deepcopy(rng.choice(JUNK_VALUES + JUNK_STRINGS if strings else JUNK_VALUES))


def mutate_value(body: Any, rng: random.Random) -> Any:
    """Replace one randomly chosen node of a JSON value (possibly the root) by junk."""
    nodes: list[tuple[Any, Any]] = []  # (container, key)

    def walk(node: Any, depth: int) -> None:
        if depth > 12 or len(nodes) > 500:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                nodes.append((node, k))
                walk(v, depth + 1)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                nodes.append((node, i))
                walk(v, depth + 1)

    walk(body, 0)
    if not nodes or rng.random() < 0.05:
        return junk(rng, strings=False)
    container, key = rng.choice(nodes)
    choice = rng.random()
    if choice < 0.15 and isinstance(container, dict):
        del container[key]
    elif choice < 0.25 and isinstance(container, dict):
        container[rng.choice(JUNK_STRINGS) or "k"] = junk(rng, strings=False)
    elif choice < 0.3:
        deep: Any = "x"
        for _ in range(rng.choice((50, 200, 900))):
            deep = [deep]
        container[key] = deep
    else:
        container[key] = junk(rng)
    return body


def random_json_patch(rng: random.Random, body: Any) -> Any:
    ops = ("add", "remove", "replace", "move", "copy", "test", "bogus", None)
    paths = ("/metadata/labels/a", "/metadata/name", "/spec", "/spec/containers/0/image", "/spec/containers/-",
             "/metadata/annotations/x~1y", "", "/", "nope", "/spec/replicas", "/status", "/data/a", "/0", "/-")
    out = []
    for _ in range(rng.randint(0, 4)):
        op: dict[str, Any] = {"op": rng.choice(ops), "path": rng.choice(paths)}
        if rng.random() < 0.7:
            op["value"] = junk(rng)
        if rng.random() < 0.2:
            op["from"] = rng.choice(paths)
        out.append(op)
    if rng.random() < 0.1:
        return rng.choice((body, {}, "x", [1, 2]))
    return out
