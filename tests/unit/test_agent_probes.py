"""agent.probes: one-shot probes against loopback servers and fakes; the manager's upstream counting."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from polling import wait_for

from agent.errors import ProbeError
from agent.probes import ProbeManager, ProbeResult, ProbeState, resolve_named_ports, run_probe


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        code = {"/ok": 200, "/redirect": 302, "/bad": 500}.get(self.path, 404)
        if self.path == "/header":
            code = 200 if self.headers.get("X-Probe") == "yes" and self.headers.get("Host") == "example" else 400
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def no_exec(cmd: list[str], timeout: float) -> tuple[int, str]:
    raise AssertionError("exec_fn not expected")


def probe(**handler: Any) -> dict[str, Any]:
    return {"timeoutSeconds": 1, **handler}


def test_http_probe(server: int) -> None:
    def run(path: str, **extra: Any) -> ProbeResult:
        return run_probe(probe(httpGet={"path": path, "port": server, **extra}), pod_ip="127.0.0.1",
                         node_netns=None, exec_fn=no_exec)
    assert run("/ok") == ProbeResult(True, "hi")
    assert run("/redirect").success
    assert run("/bad") == ProbeResult(False, "HTTP probe failed with statuscode: 500")
    assert not run("/header").success
    assert run("/header", httpHeaders=[{"name": "X-Probe", "value": "yes"}, {"name": "Host", "value": "example"}]).success
    assert run("/ok", port=str(server)).success  # a numeric string port
    assert "must be a number" in run("/ok", port="http").message
    refused = run("/ok", port=closed_port())
    assert not refused.success and "connection refused" in refused.message and refused.message.startswith('Get "http://')


def test_tcp_exec_grpc(server: int) -> None:
    assert run_probe(probe(tcpSocket={"port": server}), pod_ip="127.0.0.1", node_netns=None, exec_fn=no_exec).success
    r = run_probe(probe(tcpSocket={"port": closed_port(), "host": "127.0.0.1"}), pod_ip="192.0.2.1",
                  node_netns=None, exec_fn=no_exec)
    assert not r.success and "connection refused" in r.message
    calls: list[tuple[list[str], float]] = []

    def fake_exec(cmd: list[str], timeout: float) -> tuple[int, str]:
        calls.append((cmd, timeout))
        if cmd[0] == "slow":
            raise TimeoutError
        return (0, "fine") if cmd[0] == "true" else (1, "")
    run = lambda cmd: run_probe({"exec": {"command": cmd}, "timeoutSeconds": 3}, pod_ip="", node_netns=None,  # noqa: E731
                                exec_fn=fake_exec)
    assert run(["true"]) == ProbeResult(True, "fine")
    assert run(["false"]) == ProbeResult(False, "command exited with 1")
    assert "timed out" in run(["slow"]).message
    assert calls[0] == (["true"], 3.0)
    g = run_probe(probe(grpc={"port": 1}), pod_ip="", node_netns=None, exec_fn=no_exec)
    assert not g.success and "not supported" in g.message


def test_resolve_named_ports() -> None:
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
    assert resolve_named_ports({"httpGet": {"port": "http"}}, container)["httpGet"]["port"] == 8080
    with pytest.raises(ProbeError, match="couldn't find port: nope"):
        resolve_named_ports({"tcpSocket": {"port": "nope"}}, container)


def test_state_counts_like_upstream() -> None:
    s = ProbeState("readiness", success_threshold=2, failure_threshold=3)
    assert s.result is False
    assert [s.record(x) for x in (True, False, True, True, True, False, False, False)] == \
        [None, None, None, True, None, None, None, False]
    live = ProbeState("liveness", failure_threshold=2)
    assert live.result is True
    assert [live.record(x) for x in (False, True, False, False)] == [None, None, None, False]
    assert live.on_hold and live.done
    start = ProbeState("startup", failure_threshold=2)
    assert start.result is None and start.record(True) is True and start.done


class Scripted:
    """A fake runner: each (pod, container, kind) probe answers from a script, then repeats the last answer."""

    def __init__(self, scripts: dict[str, list[bool]]) -> None:
        self.scripts = scripts
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, probe: dict[str, Any], **_: Any) -> ProbeResult:
        name = probe["name"]
        with self.lock:
            n = self.calls.get(name, 0)
            self.calls[name] = n + 1
        script = self.scripts[name]
        return ProbeResult(script[min(n, len(script) - 1)], f"call {n}")

    def count(self, name: str) -> int:
        with self.lock:
            return self.calls.get(name, 0)


@pytest.fixture
def changes() -> list[tuple[str, str, str, bool]]:
    return []


def manager(runner: Scripted, changes: list[tuple[str, str, str, bool]]) -> ProbeManager:
    return ProbeManager(run=runner, on_change=lambda *a: changes.append(a))


def spec(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "periodSeconds": 0.01, "successThreshold": 1, "failureThreshold": 3, **kw}


def add(pm: ProbeManager, kind: str, p: dict[str, Any], container: str = "c", started_at: float = 0.0) -> None:
    import time
    pm.add("pod", container, kind, p, pod_ip="10.0.0.1", node_netns=None, exec_fn=no_exec,
           started_at=started_at or time.time())


def test_manager_thresholds_and_on_change(changes: list[tuple[str, str, str, bool]]) -> None:
    runner = Scripted({"ready": [False, True, True, False, False, True, False], "live": [True, False, False, False]})
    pm = manager(runner, changes)
    try:
        add(pm, "readiness", spec("ready", successThreshold=2, failureThreshold=2))
        add(pm, "liveness", spec("live"))
        assert pm.result("pod", "c", "readiness") is False and pm.result("pod", "c", "liveness") is True
        wait_for(lambda: ("pod", "c", "liveness", False) in changes, 5, "liveness failure")
        wait_for(lambda: runner.count("ready") >= 8, 5, "readiness runs")
        ready_changes = [c[3] for c in changes if c[2] == "readiness"]
        assert ready_changes == [True, False]  # 2 successes -> True, 2 failures -> False, 1 success: no flip
        held = runner.count("live")
        assert held == 4  # T, F, F, F: the third failure flips it; then it holds
        wait_for(lambda: runner.count("ready") >= 12, 5, "more readiness runs")
        assert runner.count("live") == held
        assert pm.result("pod", "c", "liveness") is False and pm.message("pod", "c", "liveness") == "call 3"
        pm.remove("pod", "c")
        assert pm.result("pod", "c", "readiness") is None
        # a restart: re-added probes start over
        add(pm, "liveness", spec("live"))
        assert pm.result("pod", "c", "liveness") is True
    finally:
        pm.close()


def test_startup_gates_and_initial_delay(changes: list[tuple[str, str, str, bool]]) -> None:
    import time
    runner = Scripted({"start": [False, False, True], "live": [True], "ready": [True], "late": [True]})
    pm = manager(runner, changes)
    try:
        add(pm, "startup", spec("start", failureThreshold=5))
        add(pm, "liveness", spec("live"))
        add(pm, "readiness", spec("ready"))
        add(pm, "readiness", spec("late", initialDelaySeconds=30), container="other")
        wait_for(lambda: ("pod", "c", "readiness", True) in changes, 5, "readiness after startup")
        assert changes[0] == ("pod", "c", "startup", True)
        assert runner.count("start") == 3  # not run again once started
        wait_for(lambda: runner.count("ready") >= 3, 5, "readiness keeps running")
        assert runner.count("start") == 3 and runner.count("late") == 0  # initialDelaySeconds not over yet
        assert pm.result("pod", "other", "readiness") is False
        add(pm, "readiness", spec("late", initialDelaySeconds=30), container="other", started_at=time.time() - 31)
        wait_for(lambda: pm.result("pod", "other", "readiness"), 5, "delayed readiness")
    finally:
        pm.close()


def test_startup_failure_reported_once(changes: list[tuple[str, str, str, bool]]) -> None:
    runner = Scripted({"start": [False], "live": [True]})
    pm = manager(runner, changes)
    try:
        add(pm, "startup", spec("start", failureThreshold=2))
        add(pm, "liveness", spec("live"))
        wait_for(lambda: ("pod", "c", "startup", False) in changes, 5, "startup failure")
        assert runner.count("start") == 2 and runner.count("live") == 0
        assert pm.result("pod", "c", "startup") is False and pm.result("pod", "c", "liveness") is True
    finally:
        pm.close()


def test_runner_exception_counts_as_failure(changes: list[tuple[str, str, str, bool]]) -> None:
    def boom(probe: dict[str, Any], **_: Any) -> ProbeResult:
        raise RuntimeError("kaput")
    pm = ProbeManager(run=boom, on_change=lambda *a: changes.append(a))
    try:
        add(pm, "liveness", spec("x", failureThreshold=1))
        wait_for(lambda: changes, 5, "liveness failure")
        assert "kaput" in pm.message("pod", "c", "liveness")
    finally:
        pm.close()
