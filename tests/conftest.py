"""Shared fixtures: a real `kubeling apiserver` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServer:
    """One apiserver process; restartable on the same data dir and port."""

    def __init__(self, data_dir: Path, port: int, extra: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"
        self.kubeconfig = str(data_dir / "admin.kubeconfig")
        self.log = data_dir.parent / f"apiserver-{port}.log"

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None
        cmd = [sys.executable, "-m", "kubeling.cli", "--log-level", "info", "apiserver",
               "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir), *self.extra]
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"apiserver exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"apiserver did not become ready in {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def apiserver_factory(tmp_path: Path) -> Iterator[object]:
    made: list[ApiServer] = []

    def make(*extra: str, start: bool = True) -> ApiServer:
        srv = ApiServer(tmp_path / f"data{len(made)}", free_port(), list(extra))
        made.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for srv in made:
        srv.kill()


@pytest.fixture
def apiserver(apiserver_factory: object) -> ApiServer:
    return apiserver_factory()  # type: ignore[operator, no-any-return]
