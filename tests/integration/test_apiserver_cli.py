"""`kubeling apiserver` start-up: fast, writes a private kubeconfig, and refuses
bad settings with one line and a non-zero exit."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
from apiserver_proc import free_port


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubeling.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_starts_fast_and_writes_kubeconfig(apiserver_factory, tmp_path: Path) -> None:
    srv = apiserver_factory(start=False)
    t0 = time.monotonic()
    srv.start()
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"apiserver took {elapsed:.2f}s to serve"
    mode = stat.S_IMODE(os.stat(srv.kubeconfig).st_mode)
    assert mode == 0o600
    text = Path(srv.kubeconfig).read_text()
    assert f"server: http://127.0.0.1:{srv.port}" in text
    assert httpx.get(srv.url + "/version").json()["minor"] == "32"


def test_port_in_use_is_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        p = run_cli("apiserver", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"))
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0], p.stderr


def test_unusable_data_dir_is_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    p = run_cli("apiserver", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(blocker / "sub"))
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "data dir" in lines[0], p.stderr


def test_corrupt_store_is_one_line_error(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "state.db").write_bytes(b"this is not sqlite" * 100)
    p = run_cli("apiserver", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(d))
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "state.db" in lines[0], p.stderr
    assert (d / "state.db").read_bytes().startswith(b"this is not sqlite"), "a bad store must not be overwritten"


def test_help_lists_the_commands() -> None:
    p = run_cli("--help")
    assert p.returncode == 0 and "apiserver" in p.stdout and "server" in p.stdout
    p = run_cli("apiserver", "--help")
    assert p.returncode == 0 and "--data-dir" in p.stdout and "--listen" in p.stdout


def test_sigterm_stops_cleanly(apiserver) -> None:
    proc = apiserver.proc
    assert proc is not None
    proc.terminate()
    assert proc.wait(10) == 0
    assert "apiserver stopped" in apiserver.log()
    apiserver.proc = None
