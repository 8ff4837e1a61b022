"""`kubeling apiserver --store etcd://...`: two apiserver processes on one etcd serve
the same state (a watch on one sees a write made through the other); an
unreachable etcd is a one-line start-up error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from apiserver_proc import ApiServer, free_port
from etcd_proc import ETCD_BINARY, EtcdServer

CM = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    if not os.path.exists(ETCD_BINARY):
        pytest.skip(f"etcd binary {ETCD_BINARY} is missing (apt-get install etcd-server)")
    with EtcdServer() as server:
        yield server


def test_two_apiservers_share_one_etcd(etcd: EtcdServer, tmp_path: Path) -> None:
    url = f"{etcd.store_url}?prefix=/kl-test"
    a = ApiServer(tmp_path / "a", args=("--store", url))
    b = ApiServer(tmp_path / "b", args=("--store", url))
    try:
        a.start()
        b.start()
        rv = httpx.get(b.url + CM, timeout=10).json()["metadata"]["resourceVersion"]
        params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "15"}
        with httpx.stream("GET", b.url + CM, params=params, timeout=20) as stream:
            assert stream.status_code == 200
            made = httpx.post(a.url + CM, json={"metadata": {"name": "shared"}, "data": {"k": "v"}}, timeout=10)
            assert made.status_code == 201, made.text
            made_rv = made.json()["metadata"]["resourceVersion"]
            for line in stream.iter_lines():
                if line:
                    ev = orjson.loads(line)
                    break
        assert ev["type"] == "ADDED"
        assert ev["object"]["metadata"]["name"] == "shared"
        assert ev["object"]["metadata"]["resourceVersion"] == made_rv
        got = httpx.get(f"{b.url}{CM}/shared", timeout=10).json()
        assert got["data"] == {"k": "v"} and got["metadata"]["resourceVersion"] == made_rv
        # a compare-and-swap through b on a's write: the stale resourceVersion loses
        stale = dict(got, data={"k": "w"})
        assert httpx.put(f"{b.url}{CM}/shared", json=stale, timeout=10).status_code == 200
        assert httpx.put(f"{a.url}{CM}/shared", json=stale, timeout=10).status_code == 409
    finally:
        a.kill()
        b.kill()


def test_unreachable_etcd_is_one_line_error(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "kubeling.cli", "apiserver", "--listen", f"127.0.0.1:{free_port()}",
                        "--data-dir", str(tmp_path), "--store", f"etcd://127.0.0.1:{free_port()}?timeout=1"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach etcd" in lines[0], p.stderr
