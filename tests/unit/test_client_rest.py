"""REST client against a fake transport: paths, bodies, errors, retries, watch decoding."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from kube.api.resources import BY_KIND
from kube.client import ApiError, AsyncClient, Client, TransportError, resolve, resource_path

Handler = Callable[[httpx.Request], httpx.Response]


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code,
            "reason": reason, "message": message}


class Recorder:
    """A fake apiserver: records requests, answers with `reply` (default: echo the body)."""

    def __init__(self, reply: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.reply = reply

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if self.reply is not None:
            return self.reply(request)
        body = json.loads(request.content) if request.content else None
        return httpx.Response(200, json=body if isinstance(body, dict) else {"kind": "Thing"})

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def make(reply: Handler | None = None, **kw: Any) -> tuple[Client, Recorder]:
    rec = Recorder(reply)
    return Client("http://api.test", transport=httpx.MockTransport(rec), **kw), rec


# -- naming --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind", [
    ("pods", "Pod"), ("po", "Pod"), ("Pod", "Pod"), ("pod", "Pod"),
    ("deployments.apps", "Deployment"), ("deployments.v1.apps", "Deployment"), ("deploy", "Deployment"),
    ("leases.coordination.k8s.io", "Lease"), ("endpointslices", "EndpointSlice"), ("ns", "Namespace"),
])
def test_resolve(name: str, kind: str) -> None:
    assert resolve(name).kind == kind


def test_resolve_unknown_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown resource 'widgets'.*deployments.apps"):
        resolve("widgets")
    rt = BY_KIND[("v1", "Pod")]
    assert resolve(rt) is rt


def test_resource_paths() -> None:
    pods, nodes, deploy = resolve("pods"), resolve("nodes"), resolve("deployments")
    assert resource_path(pods) == "/api/v1/pods"
    assert resource_path(pods, "ns1") == "/api/v1/namespaces/ns1/pods"
    assert resource_path(pods, "ns1", "web", "status") == "/api/v1/namespaces/ns1/pods/web/status"
    assert resource_path(nodes, "ignored", "n1") == "/api/v1/nodes/n1"
    assert resource_path(deploy, "d", "x", "scale") == "/apis/apps/v1/namespaces/d/deployments/x/scale"
    assert resource_path(resolve("configmaps"), "a", "we/ird") == "/api/v1/namespaces/a/configmaps/we%2Fird"


# -- requests ------------------------------------------------------------------------------


def test_verbs_build_standard_requests() -> None:
    c, rec = make()
    c.create("configmaps", {"metadata": {"name": "a", "namespace": "team"}})
    assert (rec.last.method, rec.last.url.path) == ("POST", "/api/v1/namespaces/team/configmaps")
    assert rec.last.headers["content-type"] == "application/json"

    c.get("pods", "p")  # no namespace given: the client's default
    assert rec.last.url.path == "/api/v1/namespaces/default/pods/p"

    c.list("pods", label_selector={"app": "web", "tier": "fe"}, field_selector="spec.nodeName=n1", limit=10,
           continue_="tok")
    assert rec.last.url.path == "/api/v1/pods"  # all namespaces
    assert dict(rec.last.url.params) == {"labelSelector": "app=web,tier=fe", "fieldSelector": "spec.nodeName=n1",
                                         "limit": "10", "continue": "tok"}

    c.update("deployments.apps", {"metadata": {"name": "d", "namespace": "x", "resourceVersion": "5"}})
    assert (rec.last.method, rec.last.url.path) == ("PUT", "/apis/apps/v1/namespaces/x/deployments/d")

    c.update_status("pods", {"metadata": {"name": "p", "namespace": "x"}, "status": {}})
    assert rec.last.url.path == "/api/v1/namespaces/x/pods/p/status"

    c.patch("nodes", "n1", {"metadata": {"labels": {"a": "b"}}}, patch_type="strategic", subresource="status")
    assert (rec.last.method, rec.last.url.path) == ("PATCH", "/api/v1/nodes/n1/status")
    assert rec.last.headers["content-type"] == "application/strategic-merge-patch+json"

    c.patch("pods", "p", [{"op": "remove", "path": "/metadata/labels/a"}], "x", patch_type="json")
    assert rec.last.headers["content-type"] == "application/json-patch+json"
    assert json.loads(rec.last.content) == [{"op": "remove", "path": "/metadata/labels/a"}]

    c.patch("configmaps", "c", {"data": {}}, "x", patch_type="apply", field_manager="agent", force=True)
    assert rec.last.headers["content-type"] == "application/apply-patch+yaml"
    assert dict(rec.last.url.params) == {"fieldManager": "agent", "force": "true"}
    with pytest.raises(ValueError, match="field_manager"):
        c.patch("configmaps", "c", {}, "x", patch_type="apply")
    with pytest.raises(ValueError, match="patch_type"):
        c.patch("configmaps", "c", {}, "x", patch_type="yolo")

    c.delete("pods", "p", "x", grace_period_seconds=0, propagation_policy="Foreground",
             preconditions={"uid": "u1"})
    assert (rec.last.method, rec.last.url.path) == ("DELETE", "/api/v1/namespaces/x/pods/p")
    assert json.loads(rec.last.content) == {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                            "propagationPolicy": "Foreground", "preconditions": {"uid": "u1"}}

    c.delete_collection("configmaps", "x", label_selector="app=web")
    assert (rec.last.method, rec.last.url.path) == ("DELETE", "/api/v1/namespaces/x/configmaps")
    assert rec.last.url.params["labelSelector"] == "app=web"


def test_bind_and_scale_helpers() -> None:
    c, rec = make()
    c.bind({"metadata": {"name": "p", "namespace": "x", "uid": "u1", "labels": {}}}, "node-1")
    assert (rec.last.method, rec.last.url.path) == ("POST", "/api/v1/namespaces/x/pods/p/binding")
    assert json.loads(rec.last.content) == {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "namespace": "x", "uid": "u1"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}
    c.scale("deployments", "d", 3, "x")
    assert (rec.last.method, rec.last.url.path) == ("PATCH", "/apis/apps/v1/namespaces/x/deployments/d/scale")
    assert json.loads(rec.last.content) == {"spec": {"replicas": 3}}
    c.get_scale("replicasets", "r", "x")
    assert rec.last.url.path == "/apis/apps/v1/namespaces/x/replicasets/r/scale"


def test_bad_objects_are_refused_before_sending() -> None:
    c, rec = make()
    with pytest.raises(ValueError, match="no metadata.name"):
        c.update("pods", {"metadata": {}})
    with pytest.raises(ValueError, match="no metadata"):
        c.create("pods", {"spec": {}})
    assert rec.requests == []


# -- errors --------------------------------------------------------------------------------


def test_status_errors_become_api_errors() -> None:
    def reply(req: httpx.Request) -> httpx.Response:
        if req.method == "POST":
            return httpx.Response(409, json=status(409, "AlreadyExists", 'pods "p" already exists'))
        if req.method == "PUT":
            return httpx.Response(409, json=status(409, "Conflict", "the object has been modified"))
        return httpx.Response(404, json=status(404, "NotFound", 'pods "p" not found'))

    c, _ = make(reply)
    with pytest.raises(ApiError) as ei:
        c.get("pods", "p", "x")
    e = ei.value
    assert (e.code, e.reason, e.message) == (404, "NotFound", 'pods "p" not found')
    assert e.is_not_found() and not e.is_conflict() and e.status["kind"] == "Status"
    with pytest.raises(ApiError) as ei:
        c.create("pods", {"metadata": {"name": "p"}})
    assert ei.value.is_already_exists() and not ei.value.is_conflict()
    with pytest.raises(ApiError) as ei:
        c.update("pods", {"metadata": {"name": "p", "resourceVersion": "1"}})
    assert ei.value.is_conflict() and not ei.value.is_already_exists()


def test_non_status_error_body() -> None:
    c, _ = make(lambda req: httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(ApiError) as ei:
        c.get("pods", "p", "x")
    assert ei.value.code == 502 and "bad gateway" in ei.value.message


# -- retries -------------------------------------------------------------------------------


class Flaky:
    """Fails the first `fails` calls with `exc`, then answers 200."""

    def __init__(self, fails: int, exc: type[httpx.TransportError]) -> None:
        self.fails = fails
        self.exc = exc
        self.calls = 0

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.fails:
            raise self.exc("boom", request=req)
        return httpx.Response(201 if req.method == "POST" else 200, json={"kind": "ConfigMap"})


def flaky_client(fails: int, exc: type[httpx.TransportError], retries: int = 3) -> tuple[Client, Flaky]:
    f = Flaky(fails, exc)
    return Client("http://api.test", transport=httpx.MockTransport(f), max_retries=retries), f


def test_get_retries_connection_errors_then_succeeds() -> None:
    c, f = flaky_client(2, httpx.ReadError)
    assert c.get("configmaps", "a", "x") == {"kind": "ConfigMap"}
    assert f.calls == 3


def test_retries_are_bounded() -> None:
    c, f = flaky_client(10, httpx.ConnectError, retries=2)
    with pytest.raises(TransportError, match="is the apiserver running"):
        c.get("configmaps", "a", "x")
    assert f.calls == 3


def test_post_is_retried_only_if_it_was_never_sent() -> None:
    c, f = flaky_client(1, httpx.ConnectError)
    c.create("configmaps", {"metadata": {"name": "a"}})
    assert f.calls == 2
    c, f = flaky_client(1, httpx.ReadError)  # may have reached the server: never repeat
    with pytest.raises(TransportError):
        c.create("configmaps", {"metadata": {"name": "a"}})
    assert f.calls == 1
    c, f = flaky_client(1, httpx.RemoteProtocolError)
    with pytest.raises(TransportError):
        c.patch("configmaps", "a", {"data": {}}, "x")
    assert f.calls == 1


def test_put_and_delete_are_idempotent_and_retried() -> None:
    c, f = flaky_client(1, httpx.ReadError)
    c.update("configmaps", {"metadata": {"name": "a", "namespace": "x"}})
    assert f.calls == 2
    c, f = flaky_client(1, httpx.ReadError)
    c.delete("configmaps", "a", "x")
    assert f.calls == 2


def test_retry_after_on_429() -> None:
    calls = []

    def reply(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0"}, json=status(429, "TooManyRequests", "slow"))
        return httpx.Response(201, json={"kind": "ConfigMap"})

    c, _ = make(reply)
    assert c.create("configmaps", {"metadata": {"name": "a"}}) == {"kind": "ConfigMap"}
    assert len(calls) == 2


# -- watch ---------------------------------------------------------------------------------


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body delivered in awkward pieces, optionally breaking at the end."""

    def __init__(self, chunks: list[bytes], then: Exception | None = None) -> None:
        self.chunks = chunks
        self.then = then

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.then is not None:
            raise self.then

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c
        if self.then is not None:
            raise self.then


def ev(typ: str, name: str, rv: int, **extra: Any) -> bytes:
    obj = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": name, "namespace": "x",
                                                                 "resourceVersion": str(rv)}, **extra}
    return json.dumps({"type": typ, "object": obj}).encode() + b"\n"


def stream(*lines: bytes, split: int = 7, then: Exception | None = None) -> httpx.Response:
    data = b"".join(lines)
    return httpx.Response(200, stream=Chunks([data[i:i + split] for i in range(0, len(data), split)], then))


def test_watch_decodes_split_lines_and_tracks_resource_version() -> None:
    bookmark = json.dumps({"type": "BOOKMARK", "object": {"kind": "ConfigMap", "apiVersion": "v1",
                                                          "metadata": {"resourceVersion": "9"}}}).encode() + b"\n"
    body = [ev("ADDED", "a", 5), b"\n", ev("MODIFIED", "a", 6, data={"k": "v"}), ev("DELETED", "a", 7), bookmark]
    c, rec = make(lambda req: stream(*body))
    w = c.watch("configmaps", "x", resource_version="4", timeout_seconds=30)
    got = [(t, o["metadata"].get("name"), o["metadata"]["resourceVersion"]) for t, o in w]
    assert got == [("ADDED", "a", "5"), ("MODIFIED", "a", "6"), ("DELETED", "a", "7"), ("BOOKMARK", None, "9")]
    assert w.resource_version == "9"
    assert rec.last.url.path == "/api/v1/namespaces/x/configmaps"
    assert dict(rec.last.url.params) == {"watch": "1", "resourceVersion": "4", "timeoutSeconds": "30",
                                         "allowWatchBookmarks": "true"}


def test_watch_error_event_410_raises_gone() -> None:
    err = json.dumps({"type": "ERROR", "object": status(410, "Expired", "too old resource version: 1 (5)")})
    c, _ = make(lambda req: stream(ev("ADDED", "a", 6), err.encode() + b"\n"))
    w = c.watch("configmaps", resource_version="1")
    assert next(w)[0] == "ADDED"
    with pytest.raises(ApiError) as ei:
        next(w)
    assert ei.value.is_gone() and "too old" in ei.value.message


def test_watch_http_error_and_broken_stream() -> None:
    c, _ = make(lambda req: httpx.Response(400, json=status(400, "BadRequest", "bad selector")))
    with pytest.raises(ApiError, match="bad selector"):
        list(c.watch("pods", label_selector="==="))
    c, _ = make(lambda req: stream(ev("ADDED", "a", 6), then=httpx.ReadError("reset")))
    w = c.watch("configmaps")
    assert next(w)[0] == "ADDED"
    with pytest.raises(TransportError):
        next(w)
    c, _ = make(lambda req: stream(ev("ADDED", "a", 6)[:-10]))
    with pytest.raises(TransportError, match="ended inside an event"):
        list(c.watch("configmaps"))


def test_watch_close_before_iterating_sends_nothing() -> None:
    c, rec = make(lambda req: stream(ev("ADDED", "a", 6)))
    w = c.watch("configmaps")
    w.close()
    assert list(w) == [] and rec.requests == []


# -- async ---------------------------------------------------------------------------------


def test_async_client_verbs_and_watch() -> None:
    rec = Recorder()
    events = [ev("ADDED", "a", 5), ev("MODIFIED", "a", 6)]

    def reply(req: httpx.Request) -> httpx.Response:
        if req.url.params.get("watch"):
            return stream(*events)
        if req.url.path.endswith("/missing"):
            return httpx.Response(404, json=status(404, "NotFound", "nope"))
        return httpx.Response(200, json=json.loads(req.content) if req.content else {"kind": "ConfigMap"})

    rec.reply = reply

    async def main() -> list[str]:
        async with AsyncClient("http://api.test", transport=httpx.MockTransport(rec)) as c:
            made = await c.create("configmaps", {"metadata": {"name": "a"}, "data": {"k": "v"}})
            assert made["data"] == {"k": "v"}
            with pytest.raises(ApiError) as ei:
                await c.get("configmaps", "missing")
            assert ei.value.is_not_found()
            await c.patch("configmaps", "a", {"data": {"k": "w"}})
            return [t async for t, _ in c.watch("configmaps", resource_version="4")]

    assert asyncio.run(main()) == ["ADDED", "MODIFIED"]
    assert [r.method for r in rec.requests] == ["POST", "GET", "PATCH", "GET"]
    assert rec.requests[2].headers["content-type"] == "application/merge-patch+json"
