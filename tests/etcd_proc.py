"""A throwaway etcd on free 127.0.0.1 ports with a temp data dir, for tests and benchmarks.

    from etcd_proc import EtcdServer, ETCD_BINARY

    with EtcdServer() as etcd:
        url = etcd.store_url  # etcd://127.0.0.1:PORT

It is stopped by its recorded PID (never by name) and its data dir removed at the end;
restart() brings it back on the same ports and data, as after a crash.

    with EtcdCluster(3) as cluster:      # three members on loopback, one --initial-cluster
        url = cluster.store_url          # etcd://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
        cluster.members[cluster.leader_index()].stop(signal.SIGKILL)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx
from procs import stop_process

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    def __init__(self, name: str = "test", *, peer_port: int | None = None, initial_cluster: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        """Alone by default; a member of a cluster when given initial_cluster ("n1=URL,n2=URL,...")
        and the peer_port that cluster string names for it."""
        self.dir = tempfile.mkdtemp(prefix="kubeling-etcd-")
        self.name = name
        self.client_port = _free_port()
        self.peer_port = peer_port or _free_port()
        self.initial_cluster = initial_cluster
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def store_url(self) -> str:
        return f"etcd://{self.endpoint}"

    def start(self, timeout: float = 15.0) -> None:
        self.spawn()
        self.wait_healthy(timeout)

    def spawn(self) -> None:
        """Start the process without waiting: a cluster member is healthy only once a quorum is up."""
        client = f"http://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        with open(os.path.join(self.dir, "etcd.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [ETCD_BINARY, "--name", self.name, "--data-dir", os.path.join(self.dir, "data"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
                 "--initial-cluster-state", "new", "--listen-metrics-urls", "",
                 "--log-level", "warn", "--logger", "zap", *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 15.0) -> None:
        client = f"http://{self.endpoint}"
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{client}/health", timeout=1).json().get("health") == "true":
                    return
            except (httpx.HTTPError, ValueError):  # not up yet
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, sig, timeout)

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()

    def log(self) -> str:
        try:
            return Path(self.dir, "etcd.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.cleanup()


class EtcdCluster:
    """`size` etcd members on loopback ports, bootstrapped together with one --initial-cluster;
    fast elections (heartbeat 50 ms, election timeout 500 ms) so failover tests stay short."""

    def __init__(self, size: int = 3) -> None:
        peers = [_free_port() for _ in range(size)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(peers))
        self.members = [EtcdServer(f"m{i}", peer_port=p, initial_cluster=initial,
                                   extra_args=("--initial-cluster-token", "kubeling-test",
                                               "--heartbeat-interval", "50", "--election-timeout", "500"))
                        for i, p in enumerate(peers)]

    @property
    def store_url(self) -> str:
        return "etcd://" + ",".join(m.endpoint for m in self.members)

    def start(self, timeout: float = 20.0) -> None:
        for m in self.members:
            m.spawn()
        for m in self.members:
            m.wait_healthy(timeout)

    def leader_index(self) -> int:
        """The member that leads now (asked through the v3 JSON gateway of a live member)."""
        ids: dict[str, int] = {}
        leader = ""
        for i, m in enumerate(self.members):
            if m.proc is None or m.proc.poll() is not None:
                continue
            try:
                st = httpx.post(f"http://{m.endpoint}/v3/maintenance/status", json={}, timeout=2).json()
            except (httpx.HTTPError, ValueError):
                continue
            ids[str(st["header"]["member_id"])] = i
            leader = str(st.get("leader") or leader)
        if leader not in ids:
            raise RuntimeError(f"no live member reports a known leader (leader={leader!r}, members={ids})")
        return ids[leader]

    def cleanup(self) -> None:
        for m in self.members:
            m.cleanup()

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.cleanup()
