"""agent/server.py: the agent API on a free 127.0.0.1 port with fake callables."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from polling import wait_for

from agent.server import AgentServer, BadParameter, log_options


class Logs:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.feed: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()

    def __call__(self, namespace: str, pod: str, container: str, **kw: Any) -> Iterator[bytes]:
        self.calls.append({"key": (namespace, pod, container), **kw})
        if pod == "missing":
            raise KeyError(f'pod "{namespace}/{pod}" is not on this node')
        return self._gen(container, kw["follow"])

    def _gen(self, container: str, follow: bool) -> Iterator[bytes]:
        try:
            if container == "waiting":
                raise ValueError(f'container "{container}" is waiting to start: ContainerCreating')
            if container == "ghost":
                raise LookupError(f'container "{container}" not found')
            yield b"hello\n"
            yield b"world\n"
            while follow:
                item = self.feed.get(timeout=10)
                if item is None:
                    return
                yield item
        finally:
            self.closed.set()


@pytest.fixture
def srv() -> Iterator[tuple[AgentServer, Logs]]:
    logs = Logs()
    state = {"healthy": True}
    s = AgentServer("127.0.0.1:0", pods=lambda: [{"metadata": {"name": "p1"}}], logs=logs,
                    healthy=lambda: state["healthy"]).start()
    s.state = state  # type: ignore[attr-defined]
    try:
        yield s, logs
    finally:
        logs.feed.put(None)
        s.stop()


def url(s: AgentServer, path: str) -> str:
    return f"http://{s.endpoint}{path}"


def test_healthz_and_pods(srv: tuple[AgentServer, Logs]) -> None:
    s, _ = srv
    assert s.port > 0 and s.endpoint == f"127.0.0.1:{s.port}"
    r = httpx.get(url(s, "/healthz"))
    assert (r.status_code, r.text) == (200, "ok\n")
    s.state["healthy"] = False  # type: ignore[attr-defined]
    assert httpx.get(url(s, "/healthz")).status_code == 500
    body = httpx.get(url(s, "/pods")).json()
    assert body["kind"] == "PodList" and body["apiVersion"] == "v1" and body["items"][0]["metadata"]["name"] == "p1"
    assert httpx.get(url(s, "/nope")).status_code == 404
    assert httpx.post(url(s, "/pods")).status_code == 405


def test_logs_parameters_passed(srv: tuple[AgentServer, Logs]) -> None:
    s, logs = srv
    r = httpx.get(url(s, "/containerLogs/ns1/p1/c1"), params={"tailLines": "5", "timestamps": "true",
                                                             "previous": "1", "sinceSeconds": "60"})
    assert (r.status_code, r.text) == (200, "hello\nworld\n")
    assert r.headers["content-type"].startswith("text/plain")
    assert logs.calls[-1] == {"key": ("ns1", "p1", "c1"), "follow": False, "tail_lines": 5, "timestamps": True,
                              "previous": True, "since_seconds": 60, "limit_bytes": None}
    r = httpx.get(url(s, "/containerLogs/ns1/p1/c1"), params={"limitBytes": "8"})
    assert r.text == "hello\nwo"


@pytest.mark.parametrize(("params", "word"), [({"tailLines": "x"}, "tailLines"), ({"sinceSeconds": "0"}, "sinceSeconds"),
                                              ({"follow": "maybe"}, "follow"), ({"limitBytes": "-1"}, "limitBytes")])
def test_logs_bad_parameters(srv: tuple[AgentServer, Logs], params: dict[str, str], word: str) -> None:
    s, logs = srv
    r = httpx.get(url(s, "/containerLogs/ns1/p1/c1"), params=params)
    assert r.status_code == 400 and word in r.text
    assert not logs.calls


def test_logs_unknown_and_waiting(srv: tuple[AgentServer, Logs]) -> None:
    s, _ = srv
    r = httpx.get(url(s, "/containerLogs/ns1/missing/c1"))
    assert (r.status_code, r.text) == (404, 'pod "ns1/missing" is not on this node\n')
    r = httpx.get(url(s, "/containerLogs/ns1/p1/ghost"))  # raised from the first next()
    assert (r.status_code, r.text) == (404, 'container "ghost" not found\n')
    r = httpx.get(url(s, "/containerLogs/ns1/p1/waiting"))
    assert r.status_code == 400 and "waiting to start" in r.text
    assert httpx.get(url(s, "/containerLogs/ns1/p1")).status_code == 404


def test_logs_follow_streams_chunks_and_closes_on_disconnect(srv: tuple[AgentServer, Logs]) -> None:
    s, logs = srv
    with httpx.stream("GET", url(s, "/containerLogs/ns1/p1/c1"), params={"follow": "true"}, timeout=10) as r:
        assert r.headers["transfer-encoding"] == "chunked"
        it = r.iter_raw()
        got = b""
        while got.count(b"\n") < 2:
            got += next(it)
        assert got == b"hello\nworld\n"
        logs.feed.put(b"live 1\n")
        assert next(it) == b"live 1\n"
    # TCP takes a write or two to notice the peer is gone; then the server closes the stream
    def closed() -> bool:
        logs.feed.put(b"after the client left\n")
        return logs.closed.wait(0.05)
    wait_for(closed, what="the stream closed")


def test_log_options_defaults() -> None:
    assert log_options({}) == {"follow": False, "tail_lines": None, "timestamps": False, "previous": False,
                               "since_seconds": None, "limit_bytes": None}
    assert log_options({"follow": ""})["follow"] is True
    with pytest.raises(BadParameter):
        log_options({"previous": "nah"})
