"""agent.probes against real targets: a server in a test network namespace and a real container.

The http/tcp target is a small python server on 127.0.0.1 *inside* a network
namespace made by this test (lo up, nothing else); the probes connect from that
namespace through node_netns, never touching the machine's own.  The exec
probe runs `docker exec` in a container of a tiny image imported from
/usr/bin/busybox.  Everything is named with a per-run prefix and removed in
finalizers, also on failure.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from polling import wait_for

from agent.probes import ProbeManager, ProbeResult, run_probe

RUN = f"klprobe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
NETNS_DIR = "/var/run/netns"
BUSYBOX = "/usr/bin/busybox"

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None,
                                reason="needs root, iproute2 and nsenter (creates network namespaces)")

SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 503)
        self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def no_exec(cmd: list[str], timeout: float) -> tuple[int, str]:
    raise AssertionError("exec_fn not expected")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"{RUN}-ns"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield f"{NETNS_DIR}/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], timeout=10)


@pytest.fixture
def http_target(netns: str) -> Iterator[tuple[str, int]]:
    port = 18080
    proc = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", SERVER, str(port)])
    try:
        tcp = {"tcpSocket": {"port": port}, "timeoutSeconds": 1}
        wait_for(lambda: run_probe(tcp, pod_ip="127.0.0.1", node_netns=netns, exec_fn=no_exec).success, 10,
                 "the probe target in the test namespace")
        yield netns, port
    finally:
        proc.kill()
        proc.wait(timeout=10)


@needs_root
@pytest.mark.netns
def test_http_and_tcp_from_a_namespace(http_target: tuple[str, int]) -> None:
    netns, port = http_target

    def run(p: dict[str, Any]) -> ProbeResult:
        return run_probe({"timeoutSeconds": 1, **p}, pod_ip="127.0.0.1", node_netns=netns, exec_fn=no_exec)
    assert run({"httpGet": {"path": "/healthz", "port": port}}) == ProbeResult(True, "ok")
    bad = run({"httpGet": {"path": "/other", "port": port}})
    assert bad == ProbeResult(False, "HTTP probe failed with statuscode: 503")
    assert run({"tcpSocket": {"port": port}}).success
    refused = run({"tcpSocket": {"port": port + 1}})
    assert not refused.success and "connection refused" in refused.message
    refused_http = run({"httpGet": {"path": "/healthz", "port": port + 1}})
    assert not refused_http.success and "connection refused" in refused_http.message


@needs_root
@pytest.mark.netns
def test_manager_counts_http_failures(http_target: tuple[str, int]) -> None:
    netns, port = http_target
    changes: list[tuple[str, str, str, bool]] = []
    calls: list[tuple[str, bool]] = []

    def counting(probe: dict[str, Any], **kw: Any) -> ProbeResult:
        r = run_probe(probe, **kw)
        calls.append((probe["httpGet"]["path"], r.success))
        return r
    pm = ProbeManager(run=counting, on_change=lambda *a: changes.append(a))
    try:
        common = {"periodSeconds": 0.05, "timeoutSeconds": 1, "successThreshold": 1}
        pm.add("pod-a", "c", "readiness", {**common, "httpGet": {"path": "/healthz", "port": port},
                                          "failureThreshold": 3},
               pod_ip="127.0.0.1", node_netns=netns, exec_fn=no_exec, started_at=time.time())
        wait_for(lambda: pm.result("pod-a", "c", "readiness"), 10, "readiness True")
        pm.remove("pod-a")
        pm.add("pod-a", "c", "liveness", {**common, "httpGet": {"path": "/broken", "port": port},
                                         "failureThreshold": 3},
               pod_ip="127.0.0.1", node_netns=netns, exec_fn=no_exec, started_at=time.time())
        wait_for(lambda: ("pod-a", "c", "liveness", False) in changes, 10, "liveness False")
        assert [ok for path, ok in calls if path == "/broken"] == [False, False, False]  # then it holds
        assert changes == [("pod-a", "c", "readiness", True), ("pod-a", "c", "liveness", False)]
    finally:
        pm.close()


@pytest.fixture
def container() -> Iterator[Any]:
    docker = pytest.importorskip("docker")
    if not os.path.exists(BUSYBOX):
        pytest.skip("needs /usr/bin/busybox (apt-get install busybox-static)")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as e:
        pytest.skip(f"no Docker engine: {e}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        for tool in ("sh", "test", "touch", "rm", "sleep"):
            link = tarfile.TarInfo(f"bin/{tool}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
    image = f"{RUN}-img:1"
    client.api.import_image_from_data(buf.getvalue(), repository=image.split(":")[0], tag="1")
    made = None
    try:
        made = client.containers.create(image, ["/bin/busybox", "sleep", "300"], name=f"{RUN}-ctr",
                                        network_mode="none",
                                        labels={"io.kubeling.pod-uid": f"{RUN}-uid", "io.kubeling.node": RUN})
        made.start()
        yield made
    finally:
        if made is not None:
            made.remove(force=True)
        client.images.remove(image, force=True)
        client.close()


@pytest.mark.docker
def test_exec_probe_in_a_real_container(container: Any) -> None:
    def exec_fn(cmd: list[str], timeout: float) -> tuple[int, str]:
        code, out = container.exec_run(cmd)
        return int(code), out.decode(errors="replace")
    changes: list[tuple[str, str, str, bool]] = []
    calls: list[bool] = []

    def counting(probe: dict[str, Any], **kw: Any) -> ProbeResult:
        r = run_probe(probe, **kw)
        calls.append(r.success)
        return r
    uid = f"{RUN}-uid"
    pm = ProbeManager(run=counting, on_change=lambda *a: changes.append(a))
    try:
        probe = {"exec": {"command": ["/bin/sh", "-c", "test -f /tmp/ready"]}, "periodSeconds": 0.1,
                 "timeoutSeconds": 5, "successThreshold": 2, "failureThreshold": 2}
        pm.add(uid, "c", "readiness", probe, pod_ip="", node_netns=None, exec_fn=exec_fn, started_at=time.time())
        wait_for(lambda: len(calls) >= 3, 15, "a few failing runs")
        assert pm.result(uid, "c", "readiness") is False and changes == []
        assert exec_fn(["/bin/touch", "/tmp/ready"], 5)[0] == 0
        wait_for(lambda: changes, 15, "readiness True")
        first_ok = calls.index(True)
        assert calls[first_ok:first_ok + 2] == [True, True]  # successThreshold 2: two successes before the flip
        assert changes == [(uid, "c", "readiness", True)]
        assert exec_fn(["/bin/rm", "/tmp/ready"], 5)[0] == 0
        wait_for(lambda: len(changes) == 2, 15, "readiness False")
        assert changes[1] == (uid, "c", "readiness", False)
        assert calls[-2:] == [False, False]
    finally:
        pm.close()
