"""The secure-by-default lab and Vagrant provisioning, checked by `scripts/cis-check`; a pod's service
account token against the apiserver from inside the pod.

A lab per store (sqlite, etcd) with a per-run prefix and a temp state dir, `lab down` at the end; the
Vagrant provisioning is rendered into temp dirs (`--render`), nothing installed or started.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for

from kubeling.lab import cis as cis_module

REPO = Path(__file__).resolve().parents[2]
PROVISION = ("provision-common.sh", "provision-control", "provision-node", "cis-check", "lab")


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def cis(*args: str) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """scripts/cis-check --json ARGS: (exit code, items by CIS id)."""
    res = sh(str(REPO / "scripts" / "cis-check"), "--json", *args, check=False)
    assert res.returncode in (0, 1), res.stderr
    by_id: dict[str, list[dict[str, Any]]] = {}
    for item in json.loads(res.stdout):
        by_id.setdefault(item["id"], []).append(item)
    return res.returncode, by_id


def statuses(items: dict[str, list[dict[str, Any]]], cid: str) -> set[str]:
    return {i["status"] for i in items[cid]}


def evidence(items: dict[str, list[dict[str, Any]]], cid: str) -> str:
    return " | ".join(i["evidence"] for i in items[cid])


@dataclass
class Lab:
    dir: Path
    prefix: str
    store: str

    def lab(self, *args: str, check: bool = True, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        return sh(str(REPO / "scripts" / "lab"), "--state-dir", str(self.dir), "--prefix", self.prefix, *args,
                  check=check, timeout=timeout)

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["kubectl", "--kubeconfig", str(self.dir / "kubeconfig"), *args], input=stdin,
                             capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {args} -> {res.returncode}: {res.stderr}")
        return res


def needs_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in ("docker", "kubectl", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if sh("docker", "image", "inspect", "kubeling/test:1", check=False).returncode != 0:
        pytest.skip("image kubeling/test:1 missing (scripts/images)")


@pytest.fixture(scope="module", params=["sqlite", "etcd"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    needs_lab()
    store = str(request.param)
    if store == "etcd" and shutil.which("etcd") is None:
        pytest.skip("etcd not installed (apt-get install etcd-server)")
    the_lab = Lab(tmp_path_factory.mktemp(f"cis-{store}") / "lab", f"klc{store[0]}{os.getpid() % 100000}", store)
    try:
        the_lab.lab("up", "--nodes", "2", "--store", store, "--no-install", "--no-images", "--api-port", "0")
        yield the_lab
    finally:
        the_lab.lab("down", check=False)


ROLE = """
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: satest}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: reader, namespace: satest}}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: Role
  metadata: {name: pod-reader, namespace: satest}
  rules: [{apiGroups: [""], resources: [pods], verbs: [get, list]}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: RoleBinding
  metadata: {name: reader, namespace: satest}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
  subjects: [{kind: ServiceAccount, name: reader, namespace: satest}]
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: satest}
  spec:
    serviceAccountName: reader
    terminationGracePeriodSeconds: 1
    containers: [{name: c, image: "kubeling/test:1", imagePullPolicy: Never, command: [sleep, "3600"]}]
"""

# Runs in the pod's network namespace with the pod's own token and CA (read through /proc/PID/root):
# GET each path from https://10.96.0.1:443 (the kubernetes Service), print "path status" lines.
IN_POD = r"""
import http.client, os, ssl, sys
sa = sys.argv[1]
token = open(os.path.join(sa, "token")).read().strip()
ctx = ssl.create_default_context(cafile=os.path.join(sa, "ca.crt"))  # verifies the apiserver as 10.96.0.1
for path in sys.argv[2:]:
    c = http.client.HTTPSConnection("10.96.0.1", 443, context=ctx, timeout=5)
    try:
        c.request("GET", path, headers={"Authorization": "Bearer " + token})
        print(path, c.getresponse().status, flush=True)
    except OSError as e:
        print(path, "ERR", e, flush=True)
"""


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.netns
@pytest.mark.docker
@pytest.mark.kubectl
@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)  # the default lab
def test_a_pods_service_account_token_can_do_what_its_role_allows_and_nothing_else(lab: Lab) -> None:
    """From inside the pod: its network namespace (pod IP -> 10.96.0.1:443, DNATed by its node's proxy to
    the apiserver) and its projected token and ca.crt. busybox wget can't be the client: its TLS client
    and the apiserver (ECDHE+AEAD, OpenSSL security level 1) share no handshake."""
    eps = json.loads(lab.kubectl("get", "endpoints", "kubernetes", "-o", "json").stdout)
    assert eps["subsets"][0]["addresses"][0]["ip"] == "192.168.56.10"
    assert eps["subsets"][0]["ports"][0]["port"] == 6443
    lab.kubectl("apply", "--validate=false", "-f", "-", stdin=ROLE)

    def running() -> str:
        pod = json.loads(lab.kubectl("-n", "satest", "get", "pod", "client", "-o", "json").stdout)
        return str(pod["metadata"]["uid"]) if pod["status"].get("phase") == "Running" else ""
    uid = wait_for(running, 90, "the client pod running", interval=0.5)
    ids = sh("docker", "ps", "-q", "--filter", f"label=io.kubeling.pod-uid={uid}", "--filter",
             "label=io.kubeling.kind=app").stdout.split()
    assert ids, "the pod's app container"
    pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", ids[0]).stdout.strip()
    sa = f"/proc/{pid}/root/var/run/secrets/kubernetes.io/serviceaccount"
    assert {"ca.crt", "namespace", "token"} <= set(os.listdir(sa))
    env = sh("docker", "exec", ids[0], "env").stdout
    assert "KUBERNETES_SERVICE_HOST=10.96.0.1" in env and "KUBERNETES_SERVICE_PORT=443" in env
    paths = ["/api/v1/namespaces/satest/pods", "/api/v1/namespaces/satest/pods/client",
             "/api/v1/namespaces/satest/secrets", "/api/v1/namespaces/default/pods", "/api/v1/nodes"]

    def answers() -> dict[str, str] | None:
        res = sh("nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-I", "-c", IN_POD, sa, *paths,
                 check=False, timeout=40)
        got = dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line)
        return got if all(v[:3].isdigit() for v in got.values()) and len(got) == len(paths) else None
    got = wait_for(answers, 60, "answers through 10.96.0.1", interval=0.5)
    assert got == {paths[0]: "200", paths[1]: "200", paths[2]: "403", paths[3]: "403", paths[4]: "403"}, got
    # the pod stays: the CIS test after this one checks its container's PIDs limit


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.netns
@pytest.mark.docker
@pytest.mark.kubectl
def test_the_lab_passes_every_applicable_cis_item(lab: Lab) -> None:
    code, items = cis("--lab-dir", str(lab.dir))
    failed = {cid: evidence(items, cid) for cid in items if "FAIL" in statuses(items, cid)}
    assert code == 0 and not failed, failed
    for cid in ("1.1.1", "1.1.13", "1.1.15", "1.1.17", "1.1.19", "1.1.20", "1.1.21", "1.2.1", "1.2.4", "1.2.5",
                "1.2.6", "1.2.7", "1.2.8", "1.2.14", "1.2.15", "1.2.16", "1.2.17", "1.2.18", "1.2.19", "1.2.22",
                "1.2.24", "1.2.25", "1.2.29", "1.3.7", "1.4.2", "4.1.3", "4.1.5", "4.2.1", "4.2.2", "4.2.3", "4.2.4",
                "4.2.9", "4.2.12", "4.2.13", "4.3.1"):
        assert statuses(items, cid) == {"PASS"}, (cid, items.get(cid))
    # the live probes, not only the flags
    assert "without credentials -> 401" in evidence(items, "1.2.1")
    assert "PATCH of Node node2 -> 403" in evidence(items, "1.2.14")
    assert "/debug/pprof/ -> 404" in evidence(items, "1.2.15")
    assert "TLS 1.1 refused" in evidence(items, "1.2.29") and "CBC" in evidence(items, "1.2.29")
    assert "listens only on 192.168.56.10:6443" in evidence(items, "1.3.7")
    assert evidence(items, "4.2.4").count("port 10255 closed") == 2  # both agents
    assert "GET /pods -> 403" in evidence(items, "4.2.2")
    assert "listens on 127.0.0.1:10249" in evidence(items, "4.3.1")
    assert len(items["4.2.1"]) == 2 and {i["scope"] for i in items["4.2.1"]} == {"node1", "node2"}
    if lab.store == "sqlite":  # the service-account test's pod runs: its containers' PIDs limit is the flag's
        assert "PidsLimit: 4096" in evidence(items, "4.2.13")
    if lab.store == "etcd":
        for cid in ("1.1.7", "1.1.11", "1.2.23", "1.2.26", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7"):
            assert statuses(items, cid) == {"PASS"}, (cid, items.get(cid))
        assert "without a client certificate -> refused" in evidence(items, "2.2")
        assert "with the apiserver's --etcd-certfile -> 200" in evidence(items, "2.2")
    else:
        assert statuses(items, "2") == {"N/A"} and statuses(items, "1.2.23") == {"N/A"}


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.netns
@pytest.mark.docker
@pytest.mark.kubectl
@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)  # the default lab
def test_a_weakened_file_mode_fails_the_check(lab: Lab) -> None:
    kubeconfig = lab.dir / "state" / "pki" / "scheduler.kubeconfig"
    kubeconfig.chmod(0o644)
    try:
        code, items = cis("--lab-dir", str(lab.dir))
    finally:
        kubeconfig.chmod(0o600)
    assert code == 1 and statuses(items, "1.1.15") == {"FAIL"}, items["1.1.15"]
    assert "is 644" in evidence(items, "1.1.15")


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.netns
@pytest.mark.docker
@pytest.mark.kubectl
@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)  # the default lab
def test_the_admin_kubeconfig_is_https_with_a_client_certificate(lab: Lab) -> None:
    text = (lab.dir / "kubeconfig").read_text()
    assert "server: https://127.0.0.1:" in text and "client-certificate-data" in text
    assert stat.S_IMODE((lab.dir / "kubeconfig").stat().st_mode) == 0o600
    assert stat.S_IMODE((lab.dir / "state").stat().st_mode) == 0o700
    who = json.loads(lab.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert who["username"] == "kubeling-admin" and "system:masters" in who["groups"]
    # the same server, verified with the lab CA, without the client certificate: no anonymous access
    import http.client
    import ssl

    port = json.loads((lab.dir / "state.json").read_text())["api_port"]
    ctx = ssl.create_default_context(cafile=str(lab.dir / "state" / "pki" / "ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/api/v1/namespaces")
        resp = conn.getresponse()
        assert resp.status == 401 and json.loads(resp.read())["reason"] == "Unauthorized"
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- Vagrant

def render(tmp: Path, store: str = "sqlite") -> dict[str, Path]:
    share = tmp / "share"
    roots = {"control": tmp / "control", "node1": tmp / "node1"}
    sh(str(REPO / "scripts" / "provision-control"), "--render", str(roots["control"]), "--store", store,
       "--workers", "node1=192.168.56.11,node2=192.168.56.12", "--share", str(share))
    sh(str(REPO / "scripts" / "provision-node"), "--render", str(roots["node1"]), "--node-name", "node1",
       "--node-ip", "192.168.56.11", "--control-ip", "192.168.56.10", "--share", str(share))
    return {**roots, "share": share}


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.netns
@pytest.mark.docker
@pytest.mark.kubectl
@pytest.mark.parametrize("lab", ["sqlite"], indirect=True)
def test_the_checker_finds_the_labs_processes_on_the_machine(lab: Lab) -> None:
    """Without --lab-dir (a VM) the checker scans /proc: it finds this lab's programs among all (only
    discovery here: probing other sessions' processes is not ours to do)."""
    status = json.loads((lab.dir / "supervisor.json").read_text())["programs"]
    found = {p.pid: p for p in cis_module.from_host().procs}
    server, agent = found[status["server"]["pid"]], found[status["agent-node1"]["pid"]]
    assert server.kind == "server" and server.get("--anonymous-auth") == "false"
    assert agent.kind == "agent" and agent.node == "node1" and agent.get("--read-only-port") == "0"
    assert server.spec_file == ""  # no systemd unit here; on a VM: /etc/systemd/system/kubeling-server.service


@pytest.mark.parametrize("store", ["sqlite", "etcd"])
def test_the_vagrant_provisioning_passes_the_cis_check(tmp_path: Path, store: str) -> None:
    roots = render(tmp_path, store)
    code, control = cis("--root", str(roots["control"]))
    assert code == 0, {k: v for k, v in control.items() if "FAIL" in statuses(control, k)}
    assert statuses(control, "1.2.1") == {"PASS"} and "--anonymous-auth=false" in evidence(control, "1.2.1")
    assert statuses(control, "1.2.24") == {"PASS"} and statuses(control, "1.1.21") == {"PASS"}
    if store == "etcd":
        assert all(statuses(control, f"2.{i}") == {"PASS"} for i in range(1, 8))
        assert "User=etcd" in evidence(control, "1.1.12")
    code, node = cis("--root", str(roots["node1"]))
    assert code == 0, {k: v for k, v in node.items() if "FAIL" in statuses(node, k)}
    assert {"4.1.1", "4.1.5", "4.2.3", "4.2.4", "4.2.9", "4.2.13", "4.3.1"} <= set(node)
    assert all(statuses(node, c) == {"PASS"} for c in ("4.1.1", "4.1.5", "4.2.3", "4.2.4", "4.2.9", "4.2.13"))
    # the node took its credentials out of the share; node2's wait there for node2
    assert not (roots["share"] / "node1").exists() and (roots["share"] / "node2" / "ready").exists()
    pki = roots["node1"] / "var" / "lib" / "kubeling" / "pki"
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in pki.iterdir()} == {
        "ca.crt": 0o644, "serving.crt": 0o644, "serving.key": 0o600, "node.kubeconfig": 0o600,
        "proxy.kubeconfig": 0o600}
    unit = (roots["node1"] / "etc" / "systemd" / "system" / "kubeling-agent.service").read_text()
    assert "--read-only-port 0" in unit and "--listen ${NODE_IP}:10250" in unit


def test_a_weakened_unit_fails_the_check(tmp_path: Path) -> None:
    roots = render(tmp_path)
    unit = roots["control"] / "etc" / "systemd" / "system" / "kubeling-server.service"
    unit.write_text(unit.read_text().replace("--anonymous-auth=false", "--anonymous-auth=true")
                    .replace("--profiling=false", ""))
    code, items = cis("--root", str(roots["control"]))
    assert code == 1
    assert statuses(items, "1.2.1") == {"FAIL"} and statuses(items, "1.2.15") == {"FAIL"}
    assert statuses(items, "1.3.2") == {"FAIL"} and statuses(items, "1.4.1") == {"FAIL"}  # in-process: same flag


def test_the_provisioning_scripts_are_shell_clean() -> None:
    for name in PROVISION:
        path = REPO / "scripts" / name
        for shell in ("sh", "bash"):
            res = sh(shell, "-n", str(path), check=False)
            assert res.returncode == 0, (shell, name, res.stderr)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck; scripts/test installs it)")
    res = sh("shellcheck", "-x", *(str(REPO / "scripts" / n) for n in PROVISION), check=False)
    assert res.returncode == 0, res.stdout
