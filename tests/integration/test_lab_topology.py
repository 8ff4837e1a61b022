"""The multi-node lab (`kubeling lab`): namespaces, underlay, forwarder, supervisor, teardown.

Each test uses its own lab dir (tmp) and a per-run namespace prefix, and always runs `lab down`.
Traffic goes only between the lab's namespaces (from inside them) or to 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.netns]
REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


@dataclass
class Lab:
    dir: Path
    prefix: str

    def run(self, *args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return sh(sys.executable, "-m", "kubeling.cli", "lab", "--state-dir", str(self.dir), "--prefix", self.prefix,
                  *args, check=check, timeout=timeout)

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("up", "--no-install", "--no-images", "--api-port", "0", "--timeout", "40", *extra)

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.dir / "state.json").read_text()))

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def in_ns(self, node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", f"--net=/var/run/netns/{self.ns(node)}", *argv, check=check)


def assert_nothing_new(before: dict[str, set[str]], lab: Lab) -> None:
    """Nothing the lab made is left: compare what appeared since `before` (other work on the
    machine may remove its own things meanwhile; that is not ours to check). Namespaces and their
    mounts are the lab's when they carry its prefix (concurrent tests make their own); any new link in
    the machine's own namespace is a leak whoever made it."""
    after = snapshot()
    new = {k: sorted(after[k] - before[k]) for k in after}
    new["netns"] = [n for n in new["netns"] if n.startswith(lab.prefix + "-")]
    new["mounts"] = [m for m in new["mounts"] if f"/{lab.prefix}-" in m]
    assert not any(new.values()), new


def snapshot() -> dict[str, set[str]]:
    """What the machine's own namespace holds: netns names, links, /run/netns mounts."""
    links = {line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link").stdout.splitlines()}
    mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if "/netns/" in line.split()[4]}
    return {"netns": {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()},
            "links": links, "mounts": mounts}


def lab_pids(lab: Lab) -> set[int]:
    """Live processes whose command line names this lab's dir or prefix."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(lab.dir) in cmd or f"/{lab.prefix}-" in cmd:
                found.add(int(entry))
    return found


def make_lab(tmp_path: Path, tag: str) -> Lab:
    return Lab(tmp_path / ".lab", f"klt{os.getpid() % 100000}{tag}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    the_lab = make_lab(tmp_path_factory.mktemp("lab"), "a")
    before = snapshot()
    try:
        the_lab.up("--nodes", "2")
        the_lab.before = before  # type: ignore[attr-defined]
        yield the_lab
    finally:
        the_lab.run("down", check=False)


def test_namespaces_and_underlay_exist(lab: Lab) -> None:
    names = snapshot()["netns"]
    for node in ("sw", "control", "node1", "node2"):
        assert lab.ns(node) in names
    assert "br0" in sh("ip", "-n", lab.ns("sw"), "-o", "link", "show", "type", "bridge").stdout
    assert "192.168.56.11/24" in sh("ip", "-n", lab.ns("node1"), "-o", "addr", "show", "dev", "eth1").stdout
    assert "192.168.56.10/24" in sh("ip", "-n", lab.ns("control"), "-o", "addr", "show", "dev", "eth1").stdout
    # Nothing new in the machine's own namespace: no link, no address.
    assert snapshot()["links"] == lab.before["links"]  # type: ignore[attr-defined]


def test_node1_reaches_node2_and_control_over_the_underlay(lab: Lab) -> None:
    for ip in ("192.168.56.12", "192.168.56.10"):
        lab.in_ns("node1", "ping", "-c", "1", "-W", "2", ip)


@pytest.mark.kubectl
def test_kubeconfig_works_from_the_root_shell(lab: Lab) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    kubeconfig = lab.dir / "kubeconfig"
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    out = sh("kubectl", "--kubeconfig", str(kubeconfig), "get", "ns", timeout=30).stdout
    assert "kube-system" in out and "default" in out
    assert f"127.0.0.1:{lab.state()['api_port']}" in kubeconfig.read_text()


def test_supervisor_restarts_a_crashed_forwarder(lab: Lab) -> None:
    status = json.loads((lab.dir / "supervisor.json").read_text())
    old = status["programs"]["forward"]["pid"]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        prog = json.loads((lab.dir / "supervisor.json").read_text())["programs"]["forward"]
        if prog["pid"] not in (0, old) and prog["restarts"] >= 1:
            break
        assert time.monotonic() < deadline, prog
        time.sleep(0.1)
    out = lab.run("status").stdout
    assert "ready" in out, out


@pytest.mark.skipif(not (REPO / "agent" / "main.py").exists(), reason="no node agent yet")
def test_kill_and_start_a_node(lab: Lab) -> None:
    assert "stopped" in lab.run("kill", "node1").stdout
    status = json.loads((lab.dir / "supervisor.json").read_text())["programs"]
    assert status["agent-node1"]["state"] == "stopped" and status["proxy-node1"]["state"] == "stopped"
    assert status["agent-node2"]["state"] == "running"
    assert "running" in lab.run("start", "node1").stdout


@needs_root
def test_down_leaves_nothing_and_twice_is_fine(tmp_path: Path) -> None:
    the_lab = make_lab(tmp_path, "d")
    before = snapshot()
    try:
        the_lab.up("--nodes", "1", "--no-agents")
        assert lab_pids(the_lab)
        assert the_lab.ns("node1") in snapshot()["netns"]
    finally:
        first = the_lab.run("down", check=False)
    assert first.returncode == 0, first.stderr
    assert_nothing_new(before, the_lab)
    assert not lab_pids(the_lab)
    assert not (the_lab.dir / "state.json").exists() and not (the_lab.dir / "state").exists()
    second = the_lab.run("down")
    assert "nothing" in second.stdout


@needs_root
def test_up_after_a_crash_cleans_leftovers_first(tmp_path: Path) -> None:
    the_lab = make_lab(tmp_path, "c")
    before = snapshot()
    try:
        the_lab.up("--nodes", "1", "--no-agents")
        os.kill(int(str(the_lab.state()["supervisor_pid"])), signal.SIGKILL)  # the crash; namespaces stay
        out = the_lab.up("--nodes", "1", "--no-agents").stdout
        assert "leftovers" in out
        assert "ready" in the_lab.run("status").stdout
        the_lab.in_ns("node1", "ping", "-c", "1", "-W", "2", "192.168.56.10")
    finally:
        the_lab.run("down", check=False)
    assert_nothing_new(before, the_lab)
    assert not lab_pids(the_lab)


def test_vagrantfile_validates() -> None:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant not installed (apt-get install -y --no-install-recommends vagrant)")
    env = dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1", KUBELING_WORKERS="3")
    res = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=REPO / "vagrant", env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_systemd_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    for unit in sorted((REPO / "vagrant" / "systemd").glob("*.service")):
        text = unit.read_text().replace("@VENV@", str(REPO / ".venv")).replace("@REPO@", str(REPO))
        (tmp_path / unit.name).write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(tmp_path.glob("*.service")))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_root
@pytest.mark.kubectl
def test_up_with_etcd_store_serves_kubectl_and_down_removes_it(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    if shutil.which("etcd") is None:
        pytest.skip("etcd not installed (apt-get install etcd-server)")
    the_lab = make_lab(tmp_path, "e")
    before = snapshot()
    try:
        the_lab.up("--nodes", "1", "--no-agents", "--store", "etcd")
        status = json.loads((the_lab.dir / "supervisor.json").read_text())["programs"]
        assert status["etcd"]["state"] == "running", status
        etcd_pid = int(status["etcd"]["pid"])
        # etcd runs in the control namespace, not the machine's own one
        ctl_ino = os.stat(f"/var/run/netns/{the_lab.ns('control')}").st_ino
        assert os.stat(f"/proc/{etcd_pid}/ns/net").st_ino == ctl_ino
        assert (the_lab.dir / "state" / "etcd" / "member").is_dir()
        server_argv = json.loads((the_lab.dir / "programs.json").read_text())["programs"]
        assert any("etcd://127.0.0.1:2379" in p["argv"] for p in server_argv if p["name"] == "server")
        kubectl = ["kubectl", "--kubeconfig", str(the_lab.dir / "kubeconfig")]
        sh(*kubectl, "create", "configmap", "etcd-cm", "--from-literal=k=from-etcd", timeout=30)
        got = json.loads(sh(*kubectl, "get", "configmap", "etcd-cm", "-o", "json", timeout=30).stdout)
        assert got["data"] == {"k": "from-etcd"}
        # the object is in etcd (read inside the control namespace, with etcd's own v3 API; etcd wants TLS
        # and a client certificate of its own CA, the apiserver's)
        etcd_pki = the_lab.dir / "state" / "pki" / "etcd"
        keys = the_lab.in_ns("control", "curl", "-s", "--cacert", str(etcd_pki / "ca.crt"),
                             "--cert", str(etcd_pki / "apiserver-etcd-client.crt"),
                             "--key", str(etcd_pki / "apiserver-etcd-client.key"),
                             "-X", "POST", "https://127.0.0.1:2379/v3/kv/range",
                             "-d", '{"key": "L3JlZ2lzdHJ5Lw==", "range_end": "L3JlZ2lzdHJ5MA==", "keys_only": true}')
        stored = {base64.b64decode(kv["key"]).decode() for kv in json.loads(keys.stdout).get("kvs", [])}
        assert "/registry/configmaps/default/etcd-cm" in stored, stored
    finally:
        down = the_lab.run("down", check=False)
    assert down.returncode == 0, down.stderr
    # only what carries this run's prefix: other work on the machine makes its own namespaces meanwhile
    after = snapshot()
    ours = {k: sorted(x for x in after[k] - before[k] if the_lab.prefix in x) for k in after}
    assert not any(ours.values()), ours
    assert not lab_pids(the_lab)
    with pytest.raises(ProcessLookupError):
        os.kill(etcd_pid, 0)
    assert not (the_lab.dir / "state").exists()
