"""kube.client against a real apiserver process: CRUD, conflicts, subresources, watch expiry,
and the informer across a crash and restart of the apiserver."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver_proc import ApiServer, apiserver, fresh_apiserver, start_apiserver  # noqa: F401
from polling import wait_for as wait_until

from kube.client import ApiError, AsyncClient, Client, Informer, WorkQueue, load_kubeconfig

Obj = dict[str, Any]


@pytest.fixture
def client(apiserver: ApiServer) -> Iterator[Client]:  # noqa: F811
    c = Client.from_kubeconfig(apiserver.kubeconfig)
    yield c
    c.close()


@pytest.fixture
def ns(client: Client) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.create("namespaces", {"metadata": {"name": name}})
    return name


def cm(name: str, value: str = "1", **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels},
            "data": {"v": value}}


def test_kubeconfig_written_by_the_apiserver(apiserver: ApiServer) -> None:  # noqa: F811
    cfg = load_kubeconfig(apiserver.kubeconfig)
    assert cfg.server == apiserver.url and cfg.namespace == "default"


def test_crud_roundtrip(client: Client, ns: str) -> None:
    made = client.create("configmaps", cm("a", app="web"), ns)
    assert made["metadata"]["namespace"] == ns and made["metadata"]["uid"]
    with pytest.raises(ApiError) as ei:
        client.create("configmaps", cm("a"), ns)
    assert ei.value.is_already_exists() and ei.value.code == 409

    got = client.get("configmaps", "a", ns)
    assert got["data"] == {"v": "1"} and got["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]

    for n in ("b", "c"):
        client.create("cm", cm(n, app="web"), ns)
    client.create("cm", cm("other", app="db"), ns)
    web = client.list("configmaps", ns, label_selector={"app": "web"})
    assert [o["metadata"]["name"] for o in web["items"]] == ["a", "b", "c"]
    assert web["metadata"]["resourceVersion"]
    page = client.list("configmaps", ns, label_selector="app=web", limit=2)
    assert len(page["items"]) == 2 and page["metadata"].get("continue")
    rest = client.list("configmaps", ns, label_selector="app=web", limit=2, continue_=page["metadata"]["continue"])
    assert [o["metadata"]["name"] for o in rest["items"]] == ["c"]
    every = client.list_all("configmaps", ns, page_size=1)
    assert sorted(o["metadata"]["name"] for o in every["items"]) == ["a", "b", "c", "other"]
    by_field = client.list("configmaps", ns, field_selector="metadata.name=b")
    assert [o["metadata"]["name"] for o in by_field["items"]] == ["b"]

    got["data"]["v"] = "2"
    updated = client.update("configmaps", got)
    assert updated["data"] == {"v": "2"}
    assert int(updated["metadata"]["resourceVersion"]) > int(got["metadata"]["resourceVersion"])
    merged = client.patch("configmaps", "a", {"data": {"w": "x"}}, ns)
    assert merged["data"] == {"v": "2", "w": "x"}
    jsoned = client.patch("configmaps", "a", [{"op": "remove", "path": "/data/v"}], ns, patch_type="json")
    assert jsoned["data"] == {"w": "x"}
    strategic = client.patch("configmaps", "a", {"metadata": {"labels": {"tier": "fe"}}}, ns,
                             patch_type="strategic")
    assert strategic["metadata"]["labels"] == {"app": "web", "tier": "fe"}

    client.delete("configmaps", "a", ns)
    with pytest.raises(ApiError) as ei:
        client.get("configmaps", "a", ns)
    assert ei.value.is_not_found() and ei.value.reason == "NotFound"
    with pytest.raises(ApiError) as ei:
        client.delete("configmaps", "a", ns)
    assert ei.value.is_not_found()

    gone = client.delete_collection("configmaps", ns, label_selector="app=web")
    assert sorted(o["metadata"]["name"] for o in gone["items"]) == ["b", "c"]
    left = client.list("configmaps", ns)
    assert [o["metadata"]["name"] for o in left["items"]] == ["other"]


def test_stale_update_conflicts(client: Client, ns: str) -> None:
    first = client.create("configmaps", cm("a"), ns)
    fresh = client.get("configmaps", "a", ns)
    fresh["data"]["v"] = "fresh"
    client.update("configmaps", fresh)
    first["data"]["v"] = "stale"
    with pytest.raises(ApiError) as ei:
        client.update("configmaps", first)
    e = ei.value
    assert e.code == 409 and e.is_conflict() and not e.is_already_exists()
    assert client.get("configmaps", "a", ns)["data"]["v"] == "fresh"
    with pytest.raises(ApiError) as ei:
        client.delete("configmaps", "a", ns, preconditions={"resourceVersion": first["metadata"]["resourceVersion"]})
    assert ei.value.is_conflict()


def test_pod_status_bind_and_scale(client: Client, ns: str) -> None:
    pod = client.create("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                 "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, ns)
    client.bind(pod, "node-1")
    bound = client.get("pods", "p", ns)
    assert bound["spec"]["nodeName"] == "node-1"
    with pytest.raises(ApiError) as ei:
        client.bind(pod, "node-2")
    assert ei.value.is_conflict()
    bound["status"] = {**bound.get("status", {}), "phase": "Running"}
    after = client.update_status("pods", bound)
    assert after["status"]["phase"] == "Running"
    patched = client.patch("pods", "p", {"status": {"podIP": "10.244.0.5"}}, ns, subresource="status")
    assert patched["status"]["podIP"] == "10.244.0.5" and patched["status"]["phase"] == "Running"

    labels = {"app": "d"}
    client.create("deployments.apps", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}, ns)
    scale = client.scale("deployments", "d", 3, ns)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3
    assert client.get_scale("deployments", "d", ns)["spec"]["replicas"] == 3
    assert client.get("deployments", "d", ns)["spec"]["replicas"] == 3


def test_watch_streams_events_and_close_from_another_thread(client: Client, ns: str) -> None:
    start = client.list("configmaps", ns)["metadata"]["resourceVersion"]
    w = client.watch("configmaps", ns, resource_version=start, timeout_seconds=60)
    client.create("configmaps", cm("a"), ns)
    client.patch("configmaps", "a", {"data": {"v": "2"}}, ns)
    client.delete("configmaps", "a", ns)
    seen: list[tuple[str, str]] = []
    for typ, obj in w:
        seen.append((typ, obj["data"]["v"]))
        if len(seen) == 3:
            break
    assert seen == [("ADDED", "1"), ("MODIFIED", "2"), ("DELETED", "2")]
    w.close()

    idle = client.watch("configmaps", ns, resource_version=w.resource_version, timeout_seconds=60)
    done = threading.Event()

    def consume() -> None:
        for _ in idle:
            pass
        done.set()

    t = threading.Thread(target=consume)
    t.start()
    wait_until(lambda: idle._resp is not None, what="the watch to open")
    idle.close()  # from this thread, while the other is blocked reading
    assert done.wait(5), "close() must end a blocked watch promptly"
    t.join(5)


@pytest.fixture(scope="module")
def compacting_apiserver() -> Iterator[ApiServer]:
    yield from start_apiserver("--compact-interval", "0.2", "--compact-keep", "1")


def test_watch_from_a_compacted_revision_is_gone(compacting_apiserver: ApiServer) -> None:
    c = Client(compacting_apiserver.url)
    old = c.list("configmaps", "default")["metadata"]["resourceVersion"]
    for i in range(3):
        c.create("configmaps", cm(f"x{i}"), "default")

    def expired() -> bool:
        try:
            for _ in c.watch("configmaps", "default", resource_version=old, timeout_seconds=1):
                pass  # not compacted yet: events until the 1 s timeout
        except ApiError as e:
            assert e.is_gone() and e.code == 410
            return True
        return False

    wait_until(expired, timeout=15, what="a 410 for a compacted resourceVersion")


def test_informer_relists_after_410_on_rewatch(compacting_apiserver: ApiServer) -> None:
    """Short watches (1 s) end normally; the informer re-watches from its last resourceVersion, which
    writes elsewhere have meanwhile compacted away: it gets a 410, relists and stays right."""
    c = Client(compacting_apiserver.url)
    ns = f"t-{uuid.uuid4().hex[:8]}"
    c.create("namespaces", {"metadata": {"name": ns}})
    c.create("configmaps", cm("a"), ns)
    inf = Informer(c, "configmaps", namespace=ns, watch_timeout=(1, 1), backoff=(0.05, 0.2))
    inf.start()
    try:
        assert inf.wait_for_sync(10)
        i = 0

        def relisted() -> bool:
            nonlocal i
            i += 1
            c.create("secrets", {"metadata": {"name": f"s{i}"}}, ns)  # advance and compact the revision
            return inf.relists >= 2

        wait_until(relisted, timeout=15, what="a relist after 410")
        c.patch("configmaps", "a", {"data": {"v": "after"}}, ns)
        wait_until(lambda: (inf.get(f"{ns}/a") or {}).get("data", {}).get("v") == "after",
                   what="the informer to follow the update after the relist")
    finally:
        inf.stop()
        c.close()


class Events:
    """Handler recorder, safe to read from the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, str]] = []

    def add(self, o: Obj) -> None:
        with self.lock:
            self.seen.append(("add", o["metadata"]["name"], o["data"]["v"]))

    def update(self, old: Obj, new: Obj) -> None:
        with self.lock:
            self.seen.append(("update", new["metadata"]["name"], new["data"]["v"]))

    def delete(self, o: Obj) -> None:
        with self.lock:
            self.seen.append(("delete", o["metadata"]["name"], o["data"]["v"]))

    def snapshot(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return list(self.seen)


def test_informer_syncs_then_sees_changes_in_order(client: Client, ns: str) -> None:
    client.create("configmaps", cm("pre", app="web"), ns)
    client.create("configmaps", cm("ignored", app="db"), ns)
    ev, q = Events(), WorkQueue[str]()
    inf = Informer(client, "configmaps", namespace=ns, label_selector="app=web", queue=q,
                   on_add=ev.add, on_update=ev.update, on_delete=ev.delete)
    inf.start()
    try:
        assert inf.wait_for_sync(10)
        assert inf.keys() == [f"{ns}/pre"]
        assert ev.snapshot() == [("add", "pre", "1")]
        client.create("configmaps", cm("a", app="web"), ns)
        client.patch("configmaps", "a", {"data": {"v": "2"}}, ns)
        client.delete("configmaps", "pre", ns)
        client.patch("configmaps", "ignored", {"data": {"v": "2"}}, ns)  # filtered out
        wait_until(lambda: len(ev.snapshot()) >= 4, what="informer events")
        assert ev.snapshot() == [("add", "pre", "1"), ("add", "a", "1"), ("update", "a", "2"),
                                 ("delete", "pre", "1")]
        cached = inf.get(f"{ns}/a")
        assert cached is not None and cached["data"]["v"] == "2"
        assert inf.get(f"{ns}/pre") is None
        keys = set()
        while (k := q.get(timeout=0)) is not None:
            keys.add(k)
            q.done(k)
        assert keys == {f"{ns}/pre", f"{ns}/a"}
    finally:
        inf.stop()


def test_informer_converges_after_the_apiserver_restarts(fresh_apiserver: ApiServer) -> None:  # noqa: F811
    srv = fresh_apiserver
    client = Client.from_kubeconfig(srv.kubeconfig)
    for n in ("keep", "change", "drop"):
        client.create("configmaps", cm(n, app="r"), "default")
    ev = Events()
    inf = Informer(client, "configmaps", namespace="default", label_selector="app=r", on_add=ev.add,
                   on_update=ev.update, on_delete=ev.delete, backoff=(0.05, 0.5))
    inf.start()
    try:
        assert inf.wait_for_sync(10)
        client.patch("configmaps", "change", {"data": {"v": "2"}}, "default")  # just before the crash
        srv.restart()  # SIGKILL, then the same port and data dir
        # Changes right after the restart: the informer may not be watching again yet.
        client.patch("configmaps", "change", {"data": {"v": "3"}}, "default")
        client.delete("configmaps", "drop", "default")
        client.create("configmaps", cm("new", app="r"), "default")

        def converged() -> bool:
            want = {o["metadata"]["name"]: o["metadata"]["resourceVersion"]
                    for o in client.list("configmaps", "default", label_selector="app=r")["items"]}
            have = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in inf.list()}
            return want == have

        wait_until(converged, timeout=20, what="the informer to converge after the restart")
        assert inf.relists >= 2, "a broken watch must lead to a relist"
        changed = inf.get("default/change")
        assert changed is not None and changed["data"]["v"] == "3"
        seen = ev.snapshot()
        assert ("update", "change", "3") in seen, seen
        assert ("delete", "drop", "1") in seen and ("add", "new", "1") in seen
        assert ("add", "keep", "1") in seen and seen.count(("add", "keep", "1")) == 1

        # and it keeps watching on the new server
        client.patch("configmaps", "keep", {"data": {"v": "9"}}, "default")
        wait_until(lambda: ("update", "keep", "9") in ev.snapshot(), what="an update after the restart")
    finally:
        inf.stop()
        client.close()


def test_async_client_roundtrip(apiserver: ApiServer, ns: str) -> None:  # noqa: F811
    async def main() -> list[tuple[str, str]]:
        async with AsyncClient.from_kubeconfig(apiserver.kubeconfig) as c:
            made = await c.create("configmaps", cm("a"), ns)
            rv = made["metadata"]["resourceVersion"]
            await c.patch("configmaps", "a", {"data": {"v": "2"}}, ns)
            stale = dict(made)
            with pytest.raises(ApiError) as ei:
                await c.update("configmaps", stale)
            assert ei.value.is_conflict()
            await c.delete("configmaps", "a", ns)
            with pytest.raises(ApiError) as ei:
                await c.get("configmaps", "a", ns)
            assert ei.value.is_not_found()
            seen = []
            async for typ, obj in c.watch("configmaps", ns, resource_version=rv, timeout_seconds=30):
                seen.append((typ, obj["data"]["v"]))
                if len(seen) == 2:
                    break
            return seen

    assert asyncio.run(main()) == [("MODIFIED", "2"), ("DELETED", "2")]
