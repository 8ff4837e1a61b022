"""Informer against a scripted fake apiserver (httpx.MockTransport): sync, event order, relist
and reconcile after a 410 or a broken stream, resume from bookmarks, handler isolation."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from kube.client import Client, Informer, WorkQueue

Obj = dict[str, Any]


def cm(name: str, rv: int, value: str = "") -> Obj:
    return {"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "x", "resourceVersion": str(rv)}, "data": {"v": value}}


def line(typ: str, obj: Obj) -> bytes:
    return json.dumps({"type": typ, "object": obj}).encode() + b"\n"


def bookmark(rv: int) -> bytes:
    return line("BOOKMARK", {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}})


GONE = line("ERROR", {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                      "message": "too old resource version"})


class Broken(httpx.SyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


WatchScript = Callable[["FakeApi"], httpx.Response]


class FakeApi:
    """Serves a list of its current objects, and scripted watch responses; once the scripts run out a
    watch waits (as an idle server would) until released."""

    def __init__(self, objects: list[Obj], rv: int) -> None:
        self.objects = {o["metadata"]["name"]: o for o in objects}
        self.rv = rv
        self.scripts: list[WatchScript] = []
        self.watch_params: list[dict[str, str]] = []
        self.list_count = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.idle = threading.Event()  # a watch is parked, waiting for release

    def __call__(self, req: httpx.Request) -> httpx.Response:
        params = dict(req.url.params)
        if params.get("watch"):
            with self.lock:
                self.watch_params.append(params)
                script = self.scripts.pop(0) if self.scripts else None
            if script is not None:
                return script(self)
            self.idle.set()
            self.release.wait(10)
            return httpx.Response(200, content=b"")
        with self.lock:
            self.list_count += 1
            items = [json.loads(json.dumps(o)) for o in self.objects.values()]
            for o in items:  # as in a real List: items carry no kind/apiVersion
                o.pop("kind", None)
                o.pop("apiVersion", None)
            return httpx.Response(200, json={"kind": "ConfigMapList", "apiVersion": "v1",
                                             "metadata": {"resourceVersion": str(self.rv)}, "items": items})


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []  # (what, name, value)

    def add(self, o: Obj) -> None:
        self.events.append(("add", o["metadata"]["name"], o["data"]["v"]))

    def update(self, old: Obj, new: Obj) -> None:
        self.events.append(("update", new["metadata"]["name"], f"{old['data']['v']}->{new['data']['v']}"))

    def delete(self, o: Obj) -> None:
        self.events.append(("delete", o["metadata"]["name"], o["data"]["v"]))


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@pytest.fixture
def run() -> Iterator[Callable[[FakeApi, Informer], Informer]]:
    started: list[tuple[FakeApi, Informer]] = []

    def start(api: FakeApi, inf: Informer) -> Informer:
        started.append((api, inf))
        return inf.start()

    yield start
    for api, inf in started:
        api.release.set()
        inf.stop()


def make(api: FakeApi, rec: Recorder, **kw: Any) -> Informer:
    client = Client("http://api.test", transport=httpx.MockTransport(api))
    return Informer(client, "configmaps", namespace="x", on_add=rec.add, on_update=rec.update,
                    on_delete=rec.delete, backoff=(0.01, 0.05), **kw)


def test_sync_then_events_in_order_and_keys_queued(run: Callable[[FakeApi, Informer], Informer]) -> None:
    api = FakeApi([cm("a", 1, "1"), cm("b", 2, "1")], rv=2)
    api.scripts.append(lambda _: httpx.Response(200, content=(
        line("ADDED", cm("c", 3, "1")) + line("MODIFIED", cm("a", 4, "2")) + line("DELETED", cm("b", 5, "1")))))
    rec, q = Recorder(), WorkQueue[str]()
    inf = run(api, make(api, rec, queue=q))
    assert inf.wait_for_sync(5)
    wait_until(api.idle.is_set)
    assert rec.events == [("add", "a", "1"), ("add", "b", "1"), ("add", "c", "1"), ("update", "a", "1->2"),
                          ("delete", "b", "1")]
    assert sorted(inf.keys()) == ["x/a", "x/c"]
    got = inf.get("x/a")
    assert got is not None and got["data"]["v"] == "2" and got["kind"] == "ConfigMap"
    assert inf.get_by_name("c", "x") is not None
    assert [q.get(0) for _ in range(3)] == ["x/a", "x/b", "x/c"]  # deduplicated keys
    assert api.watch_params[0]["resourceVersion"] == "2"
    assert api.watch_params[0]["allowWatchBookmarks"] == "true"
    assert inf.resource_version == "5"


def test_410_relists_and_reconciles(run: Callable[[FakeApi, Informer], Informer]) -> None:
    api = FakeApi([cm("a", 1, "1"), cm("b", 2, "1")], rv=2)

    def expired(fake: FakeApi) -> httpx.Response:
        # meanwhile, on the server: a changed twice, b deleted, c created; the watch history is gone
        with fake.lock:
            fake.objects = {"a": cm("a", 4, "3"), "c": cm("c", 5, "1")}
            fake.rv = 5
        return httpx.Response(200, content=line("MODIFIED", cm("a", 3, "2")) + GONE)

    api.scripts.append(expired)
    api.scripts.append(lambda _: httpx.Response(200, content=bookmark(9)))  # then the stream just ends
    rec = Recorder()
    inf = run(api, make(api, rec))
    wait_until(api.idle.is_set)
    assert rec.events == [
        ("add", "a", "1"), ("add", "b", "1"),  # first list
        ("update", "a", "1->2"),  # watch
        ("update", "a", "2->3"), ("add", "c", "1"), ("delete", "b", "1"),  # relist after 410: synthesized
    ]
    assert sorted(inf.keys()) == ["x/a", "x/c"]
    assert api.list_count == 2 and inf.relists == 2
    # after the relist the watch starts from the new list; after a bookmark and a plain end, from the bookmark
    assert [p["resourceVersion"] for p in api.watch_params] == ["2", "5", "9"]


def test_broken_stream_relists(run: Callable[[FakeApi, Informer], Informer]) -> None:
    api = FakeApi([cm("a", 1, "1")], rv=1)

    def broken(fake: FakeApi) -> httpx.Response:
        with fake.lock:
            fake.objects = {"a": cm("a", 3, "3")}
            fake.rv = 3
        return httpx.Response(200, stream=Broken(line("MODIFIED", cm("a", 2, "2"))))

    api.scripts.append(broken)
    rec = Recorder()
    inf = run(api, make(api, rec))
    wait_until(api.idle.is_set)
    assert rec.events == [("add", "a", "1"), ("update", "a", "1->2"), ("update", "a", "2->3")]
    assert inf.relists == 2
    assert api.watch_params[-1]["resourceVersion"] == "3"


def test_failing_list_is_retried_and_handler_errors_do_not_stop_it(
        run: Callable[[FakeApi, Informer], Informer]) -> None:
    api = FakeApi([cm("a", 1, "1"), cm("b", 2, "1")], rv=2)
    calls = {"n": 0}

    def handler(req: httpx.Request) -> httpx.Response:
        if not req.url.params.get("watch"):
            calls["n"] += 1
            if calls["n"] <= 2:
                return httpx.Response(503, json={"kind": "Status", "code": 503, "reason": "ServiceUnavailable",
                                                 "message": "store unavailable"})
        return api(req)

    seen: list[str] = []

    def bad_add(o: Obj) -> None:
        seen.append(o["metadata"]["name"])
        raise RuntimeError("handler bug")

    client = Client("http://api.test", transport=httpx.MockTransport(handler))
    inf = Informer(client, "configmaps", namespace="x", on_add=bad_add, backoff=(0.01, 0.05))
    assert not inf.has_synced()
    run(api, inf)
    assert inf.wait_for_sync(5)
    wait_until(api.idle.is_set)
    assert seen == ["a", "b"]
    assert calls["n"] == 3


def test_selectors_are_sent_and_stop_is_prompt(run: Callable[[FakeApi, Informer], Informer]) -> None:
    api = FakeApi([], rv=7)
    rec = Recorder()
    inf = run(api, make(api, rec, label_selector={"app": "web"}, field_selector="metadata.name=a"))
    assert inf.wait_for_sync(5)
    wait_until(api.idle.is_set)
    p = api.watch_params[0]
    assert p["labelSelector"] == "app=web" and p["fieldSelector"] == "metadata.name=a"
    assert 300 <= int(p["timeoutSeconds"]) <= 600
    api.release.set()
    t0 = time.monotonic()
    inf.stop()
    assert time.monotonic() - t0 < 2
    assert inf.stopped


def test_handlers_only_before_start() -> None:
    api = FakeApi([], rv=1)
    inf = make(api, Recorder())
    inf.start()
    try:
        with pytest.raises(RuntimeError):
            inf.add_handlers(on_add=lambda o: None)
    finally:
        api.release.set()
        inf.stop()
