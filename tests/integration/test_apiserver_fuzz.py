"""The apiserver under fuzzing from its own OpenAPI document (issue 9, acceptance 3).

test_fuzz: schemathesis cases for every operation plus mutations of them (tests/fuzz_api.py), sent
to a secure apiserver as the admin: no response >= 500, and every error is a Status whose .code is
the HTTP status. KUBELING_FUZZ_REQUESTS sets the count (default 10,000: about 45 s here, seeds
included); KUBELING_FUZZ_SEED the mutation seed (default 1). bench/fuzz.py runs bigger rounds.

test_finding_stays_fixed: the requests the fuzzer found 500s with, one by one, each with the
answer it must get now.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from apiserver_proc import ApiServer
from fuzz_api import Fuzzer, check, merged_openapi, schemathesis_seeds

REQUESTS = int(os.environ.get("KUBELING_FUZZ_REQUESTS", "10000"))
SEED = int(os.environ.get("KUBELING_FUZZ_SEED", "1"))


@pytest.fixture(scope="module")
def secure_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    srv = ApiServer(tmp_path_factory.mktemp("fuzz"), secure=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(secure_apiserver: ApiServer) -> Iterator[httpx.Client]:
    with secure_apiserver.http(timeout=15) as c:
        yield c


@pytest.mark.slow
def test_fuzz(secure_apiserver: ApiServer, http: httpx.Client) -> None:
    seeds = schemathesis_seeds(merged_openapi(), positive=2, negative=1, budget_s=60)
    assert len(seeds) > 300  # every operation got cases
    fuzzer = Fuzzer(http, seeds, random.Random(SEED))
    fuzzer.setup()
    report = fuzzer.run(REQUESTS)
    print(f"fuzz seed={SEED}: {report.summary()}")
    shown = "\n".join(f"{f.why}: {f.request[:600]}\n  -> {f.body[:300]}" for f in report.failures[:5])
    assert not report.failures, f"{len(report.failures)} responses broke the rules, e.g.:\n{shown}"
    assert report.requests == REQUESTS
    assert not [c for c in report.by_code if c >= 500]
    # the cases reached the handlers, not only the router: objects were made and found, bodies judged
    assert report.by_code[200] > REQUESTS // 50 and report.by_code[201] > 10
    assert report.by_code[400] > REQUESTS // 10 and report.by_code[422] > 10
    assert "internal error" not in Path(secure_apiserver.log_path).read_text(errors="replace")


DEEP = b'{"metadata":{"name":"x"},"data":' + b"[" * 300 + b"]" * 300 + b"}"
FINDINGS = [
    # an unknown field named "" (or "a.b") pruned the wrong field: all of metadata (KeyError)
    ("PUT", "/api/v1/namespaces/default/configmaps/cm", "application/json", b'{"metadata":{"name":"cm","":1}}', 200),
    # a body nested a few hundred levels overflowed the recursion limit (patch, review and YAML code)
    ("PUT", "/api/v1/namespaces/default/configmaps/cm", "application/json", DEEP, 400),
    ("POST", "/api/v1/namespaces/default/configmaps", "application/yaml", b"a: " + b"[" * 400, 400),
    ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "application/json",
     b'{"spec":' + b"[" * 300 + b"]" * 300 + b"}", 400),
    # DeleteOptions of the wrong types
    ("DELETE", "/api/v1/namespaces/default/configmaps/cm", "application/json", b'{"preconditions":"kinds"}', 400),
    ("DELETE", "/api/v1/namespaces/default/configmaps", "application/json", b'[""]', 400),
    # an integer beyond 64 bits: sqlite (limit), orjson (a YAML body echoed back)
    ("GET", "/api/v1/namespaces/default/configmaps?limit=99999999999999999999", "", b"", 400),
    ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "application/yaml",
     b"spec: {resourceAttributes: {verb: get}}\nmetadata: {x: 99999999999999999999999}\n", 422),
    ("POST", "/api/v1/namespaces/default/configmaps", "application/yaml", b"a: " + b"9" * 5000, 400),
    # apply patches and Scale bodies whose metadata is not an object
    ("PATCH", "/apis/rbac.authorization.k8s.io/v1/clusterroles/fuzz-new", "application/apply-patch+yaml",
     b"metadata: 1.5\n", 400),
    ("PATCH", "/apis/apps/v1/namespaces/default/deployments/dep/scale", "application/merge-patch+json",
     b'{"metadata":"a..b"}', 400),
    ("POST", "/api/v1/namespaces/default/pods/pod/binding", "application/json", b'{"target":"n1"}', 400),
    # a Warning header quoting a field name with non-latin-1 / control characters (the connection broke)
    ("PUT", "/api/v1/namespaces/default/configmaps/cm", "application/json",
     b'{"metadata":{"name":"cm"},"\\u2603\\u0007x":1}', 200),
]


@pytest.mark.parametrize("method,path,ctype,body,code", FINDINGS, ids=[f"{i}-{f[0]}" for i, f in enumerate(FINDINGS)])
def test_finding_stays_fixed(http: httpx.Client, method: str, path: str, ctype: str, body: bytes, code: int) -> None:
    for name, obj in (("configmaps", {"metadata": {"name": "cm"}}),
                      ("pods", {"metadata": {"name": "pod"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})):
        http.post(f"/api/v1/namespaces/default/{name}", content=orjson.dumps(obj),
                  headers={"content-type": "application/json"})
    http.post("/apis/apps/v1/namespaces/default/deployments", content=orjson.dumps({
        "metadata": {"name": "dep"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        headers={"content-type": "application/json"})
    resp = http.request(method, path, content=body, headers={"content-type": ctype} if ctype else {})
    assert resp.status_code == code, resp.text[:300]
    assert check(resp.status_code, resp.headers.get("content-type", ""), resp.content) == ""
    if b"u2603" in body:
        raw = dict((k.lower(), v) for k, v in resp.headers.raw)[b"warning"]
        assert "\u2603".encode() in raw and b"\x07" not in raw  # UTF-8 on the wire, the control character gone
