"""A real `kubeling apiserver` process on a free 127.0.0.1 port, for integration tests.

    from apiserver_proc import ApiServer, apiserver, fresh_apiserver  # noqa: F401  (fixtures)

(tests/conftest.py also offers the function-scoped `apiserver` and
`apiserver_factory` fixtures built on the same class.)

    def test_x(apiserver: ApiServer) -> None:
        client = Client.from_kubeconfig(apiserver.kubeconfig)

The process is stopped by its recorded PID (never by name); restart() brings it back on the
same port and data dir, as after a crash.

By default the server runs with --insecure-serving (plain HTTP, every request an admin), as the
tests written before authentication expect. ApiServer(..., secure=True) runs it as shipped: HTTPS
with the PKI it makes in DATA_DIR/pki; `url` is https, `kubeconfig` carries the CA and the admin
client certificate, and `http()` / `client()` / `kubectl_env()` use them.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from procs import stop_process

from kube.client import Client


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServer:
    def __init__(self, data_dir: str | Path, port: int | None = None, args: tuple[str, ...] = (),
                 command: str = "apiserver", secure: bool = False) -> None:
        self.command = command  # "server": the whole control plane in one process
        self.data_dir = str(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self.port = port or free_port()
        self.secure = secure
        self.args = args if secure else ("--insecure-serving", *args)
        self.url = f"{'https' if secure else 'http'}://127.0.0.1:{self.port}"
        self.pki_dir = os.path.join(self.data_dir, "pki")
        self.kubeconfig = os.path.join(data_dir, "admin.kubeconfig")
        self.log_path = os.path.join(data_dir, "apiserver.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubeling.cli", "--log-level", "info", self.command, "--listen", f"127.0.0.1:{self.port}",
                 "--data-dir", self.data_dir, *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the apiserver exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if os.path.exists(self.kubeconfig):
                    with self.http(timeout=1) as c:
                        if c.get("/readyz").status_code == 200:
                            return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the apiserver did not become ready in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, sig, timeout)

    def kill(self) -> None:
        """Crash it: SIGKILL, no graceful shutdown."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.kill()
        self.start()

    def http(self, timeout: float = 10) -> httpx.Client:
        """An httpx client for raw requests (base_url set); as the admin when secure."""
        if not self.secure:
            return httpx.Client(base_url=self.url, timeout=timeout)
        ctx = ssl.create_default_context(cafile=os.path.join(self.pki_dir, "ca.crt"))
        ctx.load_cert_chain(os.path.join(self.pki_dir, "admin.crt"), os.path.join(self.pki_dir, "admin.key"))
        return httpx.Client(base_url=self.url, timeout=timeout, verify=ctx)

    def client(self) -> Client:
        """A kube Client from the admin kubeconfig (close it when done)."""
        return Client.from_kubeconfig(self.kubeconfig)

    def kubectl_env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def start_apiserver(*args: str) -> Iterator[ApiServer]:
    with tempfile.TemporaryDirectory(prefix="kubeling-client-test-") as d:
        srv = ApiServer(d, args=args)
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def apiserver() -> Iterator[ApiServer]:
    """One apiserver shared by a test module: give each test its own namespace."""
    yield from start_apiserver()


@pytest.fixture
def fresh_apiserver() -> Iterator[ApiServer]:
    """An apiserver of the test's own, which it may kill and restart."""
    yield from start_apiserver()
