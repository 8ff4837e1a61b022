"""A node namespace with pods behind the kubeling-cni bridge, servers in the pods, and the proxy.

Everything networked lives in namespaces named klt-<pid>-px... made here (a "node" with
bridge kl0 and 10.244.1.0/24, pods attached with cni.api and host_netns=node) and removed
by name in finalizers, also when a test fails. Servers, clients and the proxy are
subprocesses tracked by PID; the proxy runs in the root namespace (it reaches the
apiserver on 127.0.0.1) and acts inside the node namespace through --netns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from apiserver_proc import free_port
from cni_fixtures import NETNS_DIR, Namespaces, make_conf, sh
from polling import wait_for as wait_until

REPO = Path(__file__).resolve().parents[2]
POD_CIDR = "10.244.1.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
NODE_NAME = "n1"
TOOLS = ("ip", "nsenter", "iptables-legacy-save", "iptables-legacy-restore", "conntrack")

needs_proxy_tools = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs root and {', '.join(TOOLS)} (apt-get install iproute2 util-linux iptables conntrack)")

# A pod's HTTP server: answers every GET with the pod's name, one connection per request.
HTTP_SERVER = r"""
import http.server, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = name.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True
S(("0.0.0.0", port), H).serve_forever()
"""

# A pod's UDP echo: answers each datagram with the pod's name.
UDP_SERVER = r"""
import socket, sys
name, port = sys.argv[1].encode(), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
while True:
    data, peer = s.recvfrom(2048); s.sendto(name, peer)
"""

# N sequential HTTP requests, each on a new connection; prints a JSON list of bodies or "ERR:<kind>".
HTTP_CLIENT = r"""
import json, socket, sys, time
host, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out = []
for _ in range(n):
    t0 = time.monotonic()
    try:
        c = socket.create_connection((host, port), timeout=timeout)
        c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        buf = b""
        while chunk := c.recv(4096):
            buf += chunk
        c.close()
        out.append(buf.split(b"\r\n\r\n", 1)[1].decode() if b" 200 " in buf.split(b"\r\n", 1)[0] else "ERR:status")
    except ConnectionRefusedError:
        out.append("ERR:refused:%.3f" % (time.monotonic() - t0))
    except OSError as e:
        out.append("ERR:%s:%.3f" % (type(e).__name__, time.monotonic() - t0))
print(json.dumps(out))
"""

# Steady load until a stop file appears: `rate` requests/s to each target, one thread per target.
LOAD = r"""
import json, os, socket, sys, threading, time
stop_file, rate, targets = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
res = {}
def run(target):
    host, port = target.rsplit(":", 1)
    ok = fail = 0; errors = []
    t_next = time.monotonic(); deadline = time.monotonic() + 300
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        try:
            c = socket.create_connection((host, int(port)), timeout=2)
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            buf = b""
            while chunk := c.recv(4096):
                buf += chunk
            c.close()
            if b" 200 " in buf.split(b"\r\n", 1)[0]:
                ok += 1
            else:
                fail += 1; errors.append("status")
        except OSError as e:
            fail += 1; errors.append("%s@%.1f" % (type(e).__name__, time.time()))
        t_next += 1.0 / rate
        time.sleep(max(0.0, t_next - time.monotonic()))
    res[target] = {"ok": ok, "fail": fail, "errors": errors[:20]}
ts = [threading.Thread(target=run, args=(t,)) for t in targets]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(res))
"""

# Sends a datagram every 50 ms from one source port (one conntrack flow) and logs "<unix time> <answer>".
UDP_CLIENT = r"""
import os, socket, sys, time
host, port, log, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0)); s.settimeout(0.05)
deadline = time.monotonic() + 120
with open(log, "a", buffering=1) as f:
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        try:
            s.sendto(b"ping", (host, port))
            data, _ = s.recvfrom(2048)
            f.write("%.3f %s\n" % (time.time(), data.decode()))
            time.sleep(0.05)
        except OSError:
            f.write("%.3f -\n" % time.time())
"""


def nspath(ns: str) -> str:
    return f"{NETNS_DIR}/{ns}"


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={nspath(ns)}", "--", *argv]


class Procs:
    """Background processes, stopped by recorded PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(self.procs):
            self.stop(p)


@dataclass
class Topology:
    node: str
    pods: dict[str, str] = field(default_factory=dict)  # pod name -> netns name
    ips: dict[str, str] = field(default_factory=dict)  # pod name -> IP
    node_ip: str = "10.244.1.1"


@contextlib.contextmanager
def topology(n_pods: int, workdir: str) -> Iterator[Topology]:
    """A node namespace with kl0 and n_pods pods attached through cni.api (host_netns=node)."""
    from cni import api

    spaces = Namespaces()
    try:
        node = spaces.new("pxnode")
        sh("ip", "-n", node, "link", "set", "lo", "up")
        topo = Topology(node)
        conf = make_conf("kltpx", POD_CIDR, os.path.join(workdir, "ipam"))
        for i in range(n_pods):
            name = f"p{i}"
            ns = spaces.new(f"px{name}-")
            res = api.add(conf, f"px{i}", nspath(ns), "eth0", host_netns=node)
            topo.pods[name] = ns
            topo.ips[name] = str(res["ips"][0]["address"].split("/")[0])
            topo.node_ip = str(res["ips"][0].get("gateway") or topo.node_ip)
        yield topo
    finally:
        spaces.cleanup()


def http_get(ns: str, host: str, port: int, n: int = 1, timeout: float = 2.0) -> list[str]:
    p = subprocess.run(in_ns(ns, sys.executable, "-c", HTTP_CLIENT, host, str(port), str(n), str(timeout)),
                       capture_output=True, text=True, timeout=30 + n * timeout)
    assert p.returncode == 0, p.stderr
    return list(json.loads(p.stdout))


def ipt_save(ns: str, table: str = "nat") -> str:
    return sh("nsenter", f"--net={nspath(ns)}", "iptables-legacy-save", "-t", table).stdout


class Proxy:
    """`kubeling proxy` as a subprocess acting in the node namespace."""

    def __init__(self, procs: Procs, kubeconfig: str, node_ns: str, log_path: str, *extra: str) -> None:
        self.procs, self.kubeconfig, self.node_ns, self.log_path = procs, kubeconfig, node_ns, log_path
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "kubeling.cli", "--log-level", "info", "proxy", "--node-name", NODE_NAME,
                "--kubeconfig", self.kubeconfig, "--netns", self.node_ns, "--min-sync-period", "0.2",
                "--cluster-cidr", CLUSTER_CIDR, "--metrics-address", f"127.0.0.1:{self.metrics_port}", *self.extra]

    def start(self, wait: bool = True) -> None:
        self.metrics_port = free_port()
        with open(self.log_path, "ab") as log:
            self.proc = self.procs.start(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        if wait:
            self.wait_synced()

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1).text
        except httpx.HTTPError:
            return out
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[k] = float(v)
        return out

    def wait_synced(self, timeout: float = 20.0) -> None:
        def synced() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the proxy exited with {self.proc.returncode}:\n{self.log()}")
            return self.metrics().get("kubeproxy_sync_proxy_rules_last_timestamp_seconds", 0) > 0
        wait_until(synced, timeout, "the proxy's first sync")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        p, self.proc = self.proc, None
        if p is None:
            return None
        self.procs.stop(p, sig)
        return p.returncode

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def root_state() -> dict[str, str]:
    """What the root namespace looks like, for the end-of-run safety check."""
    links = sorted(line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link").stdout.splitlines())
    fw = []
    for tool in ("iptables-legacy-save", "iptables-nft-save"):
        if shutil.which(tool):
            fw += [line for line in sh(tool, check=False).stdout.splitlines() if "KUBELING" in line or "KL-" in line]
    return {"links": "\n".join(links), "firewall": "\n".join(fw)}


def tmpdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="kubeling-proxy-test-")
