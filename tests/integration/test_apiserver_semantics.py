"""REST semantics beyond the acceptance list's headline items: allocation,
graceful deletion, finalizers, subresources, paging, selectors, bookmarks."""

from __future__ import annotations

import threading

import httpx
import orjson
import pytest

NS = "/api/v1/namespaces/default"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def c(apiserver):
    with httpx.Client(base_url=apiserver.url, timeout=15) as client:
        yield client


def pod(name: str, **spec):
    s = {"containers": [{"name": "c", "image": "busybox"}]}
    s.update(spec)
    return {"metadata": {"name": name}, "spec": s}


def test_service_ip_and_port_allocation(c, apiserver) -> None:
    r = c.post(f"{NS}/services", json={"metadata": {"name": "a"}, "spec": {
        "clusterIP": "10.96.7.7", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}})
    assert r.status_code == 201 and r.json()["spec"]["clusterIPs"] == ["10.96.7.7"]
    r = c.post(f"{NS}/services", json={"metadata": {"name": "b"}, "spec": {"clusterIP": "10.96.7.7",
                                                                          "ports": [{"port": 80}]}})
    assert r.status_code == 422 and "already allocated" in r.text
    r = c.post(f"{NS}/services", json={"metadata": {"name": "b"}, "spec": {
        "type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}})
    assert r.status_code == 422 and "already allocated" in r.text
    # a PUT that leaves the allocations out keeps them
    r = c.put(f"{NS}/services/a", json={"metadata": {"name": "a"}, "spec": {
        "type": "NodePort", "selector": {"x": "y"}, "ports": [{"port": 80}]}})
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["clusterIP"] == "10.96.7.7" and r.json()["spec"]["ports"][0]["nodePort"] == 30080
    # allocations survive a restart, and are released on delete
    apiserver.restart()
    with httpx.Client(base_url=apiserver.url) as c2:
        assert c2.post(f"{NS}/services", json={"metadata": {"name": "b"}, "spec": {
            "clusterIP": "10.96.7.7", "ports": [{"port": 80}]}}).status_code == 422
        assert c2.delete(f"{NS}/services/a").status_code == 200
        r = c2.post(f"{NS}/services", json={"metadata": {"name": "b"}, "spec": {
            "clusterIP": "10.96.7.7", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}})
        assert r.status_code == 201, r.text
        # headless
        r = c2.post(f"{NS}/services", json={"metadata": {"name": "h"}, "spec": {"clusterIP": "None",
                                                                               "ports": [{"port": 80}]}})
        assert r.status_code == 201 and r.json()["spec"]["clusterIP"] == "None"


def test_graceful_pod_deletion_waits_for_the_node(c) -> None:
    assert c.post(f"{NS}/pods", json=pod("unscheduled")).status_code == 201
    assert c.delete(f"{NS}/pods/unscheduled").status_code == 200
    assert c.get(f"{NS}/pods/unscheduled").status_code == 404  # never ran anywhere: gone at once

    assert c.post(f"{NS}/pods", json=pod("p")).status_code == 201
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}
    assert c.post(f"{NS}/pods/p/binding", json=binding).status_code == 201
    got = c.get(f"{NS}/pods/p").json()
    assert got["spec"]["nodeName"] == "node-1"
    assert any(cd["type"] == "PodScheduled" and cd["status"] == "True" for cd in got["status"]["conditions"])
    r = c.request("DELETE", f"{NS}/pods/p", json={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 20})
    assert r.status_code in (200, 202)
    m = c.get(f"{NS}/pods/p").json()["metadata"]
    assert m["deletionTimestamp"] and m["deletionGracePeriodSeconds"] == 20
    # the agent confirms with grace 0
    assert c.delete(f"{NS}/pods/p", params={"gracePeriodSeconds": "0"}).status_code == 200
    assert c.get(f"{NS}/pods/p").status_code == 404


def test_finalizers_hold_deletion_until_removed(c) -> None:
    c.post(f"{NS}/configmaps", json={"metadata": {"name": "f", "finalizers": ["example.com/hold"]}})
    r = c.delete(f"{NS}/configmaps/f")
    assert r.status_code in (200, 202)
    held = c.get(f"{NS}/configmaps/f").json()
    assert held["metadata"]["deletionTimestamp"]
    r = c.patch(f"{NS}/configmaps/f", content=b'{"metadata":{"finalizers":null}}', headers=MERGE)
    assert r.status_code == 200
    assert c.get(f"{NS}/configmaps/f").status_code == 404


def test_propagation_policy_is_recorded_as_finalizer(c) -> None:
    c.post(f"{NS}/configmaps", json={"metadata": {"name": "o"}})
    c.request("DELETE", f"{NS}/configmaps/o", json={"propagationPolicy": "Orphan"})
    assert c.get(f"{NS}/configmaps/o").json()["metadata"]["finalizers"] == ["orphan"]
    c.post(f"{NS}/configmaps", json={"metadata": {"name": "fg"}})
    c.request("DELETE", f"{NS}/configmaps/fg", json={"propagationPolicy": "Foreground"})
    assert c.get(f"{NS}/configmaps/fg").json()["metadata"]["finalizers"] == ["foregroundDeletion"]


def test_status_subresource_and_generation(c) -> None:
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}},
                                 "spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    base = "/apis/apps/v1/namespaces/default/deployments"
    created = c.post(base, json={**dep, "status": {"replicas": 9}}).json()
    assert created["metadata"]["generation"] == 1 and created["status"] == {}  # status reset on create
    r = c.patch(f"{base}/d/status", content=b'{"status":{"replicas":1},"spec":{"replicas":5}}', headers=MERGE)
    assert r.status_code == 200 and r.json()["status"]["replicas"] == 1 and r.json()["spec"]["replicas"] == 1
    assert r.json()["metadata"]["generation"] == 1  # status writes do not bump generation
    r = c.patch(f"{base}/d", content=b'{"spec":{"replicas":2},"status":{"replicas":7}}', headers=MERGE)
    assert r.json()["spec"]["replicas"] == 2 and r.json()["status"]["replicas"] == 1
    assert r.json()["metadata"]["generation"] == 2
    scale = c.get(f"{base}/d/scale").json()
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2 and scale["status"]["selector"] == "a=b"
    r = c.put(f"{base}/d/scale", json={**scale, "spec": {"replicas": 4}})
    assert r.status_code == 200 and c.get(f"{base}/d").json()["spec"]["replicas"] == 4
    # a no-op update writes nothing
    cur = c.get(f"{base}/d").json()
    again = c.put(f"{base}/d", json=cur).json()
    assert again["metadata"]["resourceVersion"] == cur["metadata"]["resourceVersion"]


def test_generate_name_paging_and_selectors(c) -> None:
    names = set()
    for i in range(7):
        body = pod("", nodeName=f"n{i % 2}")
        body["metadata"] = {"generateName": "web-", "labels": {"app": "web", "i": str(i)}}
        r = c.post(f"{NS}/pods", json=body)
        assert r.status_code == 201
        names.add(r.json()["metadata"]["name"])
    assert len(names) == 7 and all(n.startswith("web-") and len(n) == 9 for n in names)
    seen, token, pages = [], "", 0
    while True:
        params = {"limit": "3", "labelSelector": "app=web"}
        if token:
            params["continue"] = token
        page = c.get(f"{NS}/pods", params=params).json()
        seen += [p["metadata"]["name"] for p in page["items"]]
        pages += 1
        token = page["metadata"].get("continue", "")
        if not token:
            break
    assert sorted(seen) == sorted(names) and pages == 3
    on_n1 = c.get(f"{NS}/pods", params={"fieldSelector": "spec.nodeName=n1"}).json()["items"]
    assert len(on_n1) == 3 and all(p["spec"]["nodeName"] == "n1" for p in on_n1)
    sel = c.get("/api/v1/pods", params={"labelSelector": "i in (1,2),app"}).json()["items"]
    assert sorted(p["metadata"]["labels"]["i"] for p in sel) == ["1", "2"]
    r = c.request("DELETE", f"{NS}/pods", params={"labelSelector": "i notin (0)", "gracePeriodSeconds": "0"})
    assert r.status_code == 200
    left = c.get(f"{NS}/pods").json()["items"]
    assert [p["metadata"]["labels"]["i"] for p in left] == ["0"]


def test_selector_watch_turns_leaving_objects_into_deleted(c, apiserver) -> None:
    rv = c.get(f"{NS}/configmaps").json()["metadata"]["resourceVersion"]
    events: list[tuple[str, str]] = []
    ready = threading.Event()

    def watch() -> None:
        params = {"watch": "1", "resourceVersion": rv, "labelSelector": "keep=yes", "timeoutSeconds": "10"}
        with httpx.stream("GET", apiserver.url + f"{NS}/configmaps", params=params, timeout=20) as r:
            ready.set()
            for line in r.iter_lines():
                if line:
                    ev = orjson.loads(line)
                    events.append((ev["type"], ev["object"]["metadata"]["name"]))
                    if len(events) == 3:
                        return

    t = threading.Thread(target=watch)
    t.start()
    ready.wait(5)
    c.post(f"{NS}/configmaps", json={"metadata": {"name": "w", "labels": {"keep": "no"}}})
    c.patch(f"{NS}/configmaps/w", content=b'{"metadata":{"labels":{"keep":"yes"}}}', headers=MERGE)
    c.patch(f"{NS}/configmaps/w", content=b'{"data":{"a":"b"}}', headers=MERGE)
    c.patch(f"{NS}/configmaps/w", content=b'{"metadata":{"labels":{"keep":"no"}}}', headers=MERGE)
    t.join(15)
    assert events == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


def test_bookmarks_on_idle_watch(apiserver_factory) -> None:
    srv = apiserver_factory("--bookmark-interval", "0.3")
    rv = httpx.get(srv.url + f"{NS}/configmaps").json()["metadata"]["resourceVersion"]
    params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "5"}
    with httpx.stream("GET", srv.url + f"{NS}/configmaps", params=params, timeout=10) as r:
        for line in r.iter_lines():
            if line:
                ev = orjson.loads(line)
                assert ev["type"] == "BOOKMARK"
                assert ev["object"]["kind"] == "ConfigMap" and ev["object"]["metadata"]["resourceVersion"] == rv
                break
        else:
            pytest.fail("no bookmark arrived")


def test_field_validation_modes_and_body_formats(c) -> None:
    body = {"metadata": {"name": "fv"}, "data": {"a": "b"}, "bogus": 1}
    r = c.post(f"{NS}/configmaps", json=body)  # default Warn: accepted, field dropped, warning sent
    assert r.status_code == 201 and "bogus" not in r.json()
    assert 'unknown field \\"bogus\\"' in r.headers["warning"]
    r = c.post(f"{NS}/configmaps", params={"fieldValidation": "Ignore"},
               json={**body, "metadata": {"name": "fv2"}})
    assert r.status_code == 201 and "warning" not in r.headers and "bogus" not in r.json()
    r = c.post(f"{NS}/configmaps", params={"fieldValidation": "Strict"}, json={**body, "metadata": {"name": "fv3"}})
    assert r.status_code == 400 and 'unknown field "bogus"' in r.json()["message"]
    # YAML, and no Content-Type at all (the official Python client sends none)
    yml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n"
    r = c.post(f"{NS}/configmaps", content=yml, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201 and r.json()["data"] == {"k": "v"}
    r = c.post(f"{NS}/configmaps", content=b'{"metadata":{"name":"no-ctype"}}', headers={"Content-Type": ""})
    assert r.status_code == 201
