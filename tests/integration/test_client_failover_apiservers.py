"""Client failover against real apiserver processes on 127.0.0.1: a dead server listed first is skipped
by the client and by an informer, and an informer follows its apiserver when it is killed and comes
back on another port listed second (the same data dir: one store), without losing an update."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver_proc import ApiServer, free_port
from polling import wait_for

from kube.client import Client, Informer, load_kubeconfig

Obj = dict[str, Any]


def cm(name: str, value: str) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}}


def value(inf: Informer, key: str) -> str | None:
    obj = inf.get(key)
    return None if obj is None else str(obj["data"]["v"])


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ApiServer]]:
    made: list[ApiServer] = []
    yield made
    for srv in made:
        srv.kill()


def start(made: list[ApiServer], data_dir: Path, port: int) -> ApiServer:
    srv = ApiServer(data_dir, port)
    made.append(srv)
    srv.start()
    return srv


def test_dead_server_first_is_skipped_and_stays_skipped(tmp_path: Path, servers: list[ApiServer]) -> None:
    srv = start(servers, tmp_path / "data", free_port())
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    client = Client(load_kubeconfig(srv.kubeconfig), servers=[dead, srv.url], connect_timeout=2)
    ns = f"t-{uuid.uuid4().hex[:8]}"
    client.create("namespaces", {"metadata": {"name": ns}})
    assert client.server == srv.url
    inf = Informer(client, "configmaps", namespace=ns, backoff=(0.05, 0.5)).start()
    try:
        assert inf.wait_for_sync(10)
        client.create("configmaps", cm("a", "1"), ns)
        wait_for(lambda: value(inf, f"{ns}/a") == "1", what="the informer to see the create")
        for v in ("2", "3"):
            client.patch("configmaps", "a", {"data": {"v": v}}, ns)
        wait_for(lambda: value(inf, f"{ns}/a") == "3", what="the informer to see the updates")
        assert client.server == srv.url and inf.relists == 1  # it stuck to the live one
    finally:
        inf.stop()
        client.close()


def test_informer_follows_the_apiserver_to_its_new_port(tmp_path: Path, servers: list[ApiServer]) -> None:
    data = tmp_path / "data"
    first_port, second_port = free_port(), free_port()
    first = start(servers, data, first_port)
    cfg = load_kubeconfig(first.kubeconfig)
    urls = [first.url, f"http://127.0.0.1:{second_port}"]
    client = Client(cfg, servers=urls, connect_timeout=2)
    ns = f"t-{uuid.uuid4().hex[:8]}"
    client.create("namespaces", {"metadata": {"name": ns}})
    client.create("configmaps", cm("a", "1"), ns)
    inf = Informer(client, "configmaps", namespace=ns, backoff=(0.05, 0.5)).start()
    try:
        assert inf.wait_for_sync(10) and value(inf, f"{ns}/a") == "1"
        first.kill()  # a crash: the informer's watch breaks
        second = start(servers, data, second_port)  # the same store, on the second listed port
        # Writes from someone else, while the informer may still be reconnecting:
        with Client(cfg, servers=[second.url]) as other:
            other.patch("configmaps", "a", {"data": {"v": "2"}}, ns)
            other.create("configmaps", cm("b", "1"), ns)
        wait_for(lambda: value(inf, f"{ns}/a") == "2" and value(inf, f"{ns}/b") == "1", timeout=15,
                 what="the informer to converge on the second apiserver")
        assert client.server == second.url
        # And it keeps watching there: a later update arrives as an event.
        client.patch("configmaps", "b", {"data": {"v": "2"}}, ns)
        wait_for(lambda: value(inf, f"{ns}/b") == "2", what="a later update")
    finally:
        inf.stop()
        client.close()
