"""The lab end to end, as a new user runs it: up, demo, kubectl, a node failure, recovery, down.

One lab (temp state dir, per-run prefix) for the whole module; the tests run in order and share it.
Short node-monitor grace (15 s, lease every 10 s) and tolerationSeconds (3 s) keep it to ~2 minutes.
Traffic goes only between the lab's namespaces; `lab down` must leave nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.netns, pytest.mark.docker, pytest.mark.kubectl]
REPO = Path(__file__).resolve().parents[2]
GRACE = "15"
TOLERATION = "3"


def sh(*argv: str, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None,
       ) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def eventually(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s: {what} (last: {last!r})")


@dataclass
class Lab:
    dir: Path
    prefix: str
    nodes: tuple[str, ...] = ("node1", "node2")
    before: dict[str, set[str]] = field(default_factory=dict)
    demo_out: str = ""
    uids: set[str] = field(default_factory=set)  # every pod UID this lab's cluster had: its containers

    def lab(self, *args: str, check: bool = True, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        return sh(str(REPO / "scripts" / "lab"), "--state-dir", str(self.dir), "--prefix", self.prefix, *args,
                  check=check, timeout=timeout)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("kubectl", "--kubeconfig", str(self.dir / "kubeconfig"), *args, check=check, timeout=30)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def netns(self, node: str) -> str:
        return f"/var/run/netns/{self.prefix}-{node}"


def remember_pods(lab: Lab) -> None:
    lab.uids |= {p["metadata"]["uid"] for p in lab.json("get", "pods", "-A")["items"]}


def snapshot(lab: Lab) -> dict[str, set[str]]:
    """This lab's netns and /run/netns mounts, the root namespace's links, this lab's containers (its
    node labels and its cluster's pod UIDs: other tests may run pods on nodes also named node1) and
    processes. Other sessions' namespaces and containers are left out on purpose."""
    links = {line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link").stdout.splitlines()}
    mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if f"/netns/{lab.prefix}-" in line.split()[4]}
    containers: set[str] = set()
    fmt = '{{.ID}} {{.Label "io.kubeling.pod-uid"}}'
    for node in lab.nodes:
        out = sh("docker", "ps", "-a", "--filter", f"label=io.kubeling.node={node}", "--format", fmt).stdout
        containers |= {line.split()[0] for line in out.splitlines() if line.split()[1:2] and line.split()[1] in lab.uids}
    procs = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(lab.dir) in cmd or f"/{lab.prefix}-" in cmd:
                procs.add(entry)
    netns = {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()}
    # the pods' own namespaces, bind-mounted by the agents as <node>-<hash of the pod uid>
    from agent.sandbox import netns_name
    pod_netns = {n for n in (netns_name(node, uid) for node in lab.nodes for uid in lab.uids) if n in netns}
    return {"netns": {n for n in netns if n.startswith(f"{lab.prefix}-")} | pod_netns,
            "links": links, "mounts": mounts, "containers": containers, "procs": procs}


def pod_container_netns(lab: Lab, uid: str) -> str:
    ids = sh("docker", "ps", "-q", "--filter", f"label=io.kubeling.pod-uid={uid}").stdout.split()
    for cid in ids:
        pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
        if pid.isdigit() and int(pid) > 0:
            return f"/proc/{pid}/ns/net"
    raise AssertionError(f"no running container for pod {uid}")


GET = ("import socket,sys\n"
       "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
       "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); d=b''\n"
       "while (c:=s.recv(65536)): d+=c\n"
       "h,_,b=d.partition(b'\\r\\n\\r\\n'); print(h.split()[1].decode(), b.decode().strip())\n")
PEER = ("import socket,sys\n"
        "l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('0.0.0.0',9099))\n"
        "l.listen(1); l.settimeout(20); c,a=l.accept(); print(a[0], flush=True)\n")


def get(netns: str, host: str, port: int) -> tuple[str, str]:
    res = sh("nsenter", f"--net={netns}", "--", sys.executable, "-I", "-c", GET, host, str(port), check=False)
    parts = res.stdout.split(" ", 1)
    return (parts[0], parts[1].strip()) if len(parts) == 2 else ("ERR", res.stderr.strip()[-200:])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in ("docker", "kubectl", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if sh("docker", "info", check=False, timeout=20).returncode != 0:
        pytest.skip("no Docker engine running")
    if sh("docker", "image", "inspect", "kubeling/test:1", check=False).returncode != 0:
        pytest.skip("image kubeling/test:1 missing (scripts/images)")
    the_lab = Lab(tmp_path_factory.mktemp("e2e") / "lab", f"kle{os.getpid() % 100000}")
    the_lab.before = snapshot(the_lab)
    try:
        yield the_lab
    finally:
        the_lab.lab("down", check=False)


def test_up_and_demo(lab: Lab) -> None:
    t0 = time.monotonic()
    out = lab.lab("up", "--nodes", "2", "--no-install", "--no-images", "--api-port", "0",
                  "--node-monitor-grace-period", GRACE, "--node-monitor-period", "1").stdout
    assert "up. Summary" in out
    res = lab.lab("demo", "--requests", "13", "--toleration-seconds", TOLERATION,
                  "--json", str(lab.dir / "demo.json"), check=False)
    lab.demo_out = res.stdout
    remember_pods(lab)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    result = json.loads((lab.dir / "demo.json").read_text())
    # 2 nodes + 1 pod to the ClusterIP, control to 2 NodePorts: 5 sources x 13 requests
    assert result["total"] == 65 and result["failed"] == 0, result
    assert set(result["answered"]) <= set(result["pods"]) and len(result["answered"]) >= 2, result
    lines = [line for line in res.stdout.splitlines() if line.startswith("  ") and "->" in line]
    assert len(lines) == 65 and all(" 200 demo-" in line for line in lines), lines
    print(f"up + demo: {time.monotonic() - t0:.1f} s")


def test_kubectl_shows_two_ready_nodes(lab: Lab) -> None:
    rows = [line.split() for line in lab.kubectl("get", "nodes", "--no-headers").stdout.splitlines()]
    assert sorted((r[0], r[1]) for r in rows) == [("node1", "Ready"), ("node2", "Ready")], rows


def test_kubectl_logs_reaches_the_agents(lab: Lab) -> None:
    """pods/log goes apiserver (control namespace) -> agent API on the node's underlay address."""
    for pod in demo_pods(lab):
        res = lab.kubectl("logs", pod["metadata"]["name"], check=False)
        assert res.returncode == 0, res.stderr


def test_cross_node_pod_ip_clusterip_and_source_address(lab: Lab) -> None:
    """A pod on node1 reaches a pod on node2 by pod IP, with its own source address (no masquerade),
    and through a ClusterIP whose only endpoint is on node2."""
    manifest = {"apiVersion": "v1", "kind": "List", "items": [
        *({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"e2e-{n}", "labels": {"e2e": n}},
           "spec": {"nodeName": n, "terminationGracePeriodSeconds": 1, "containers": [{
               "name": "web", "image": "kubeling/test:1", "imagePullPolicy": "Never",
               "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]}]}}
          for n in ("node1", "node2")),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "e2e-only-node2"},
         "spec": {"selector": {"e2e": "node2"}, "ports": [{"port": 80, "targetPort": 8080}]}}]}
    path = lab.dir / "e2e.json"
    path.write_text(json.dumps(manifest))
    lab.kubectl("apply", "--validate=false", "-f", str(path))

    def running() -> dict[str, Any] | None:
        pods = {p["metadata"]["name"]: p for p in lab.json("get", "pods", "-l", "e2e")["items"]}
        ok = len(pods) == 2 and all(p["status"].get("phase") == "Running" and p["status"].get("podIP")
                                    for p in pods.values())
        return pods if ok else None
    pods = eventually("both e2e pods running", running, 60)
    a, b = pods["e2e-node1"], pods["e2e-node2"]
    assert a["status"]["podIP"].startswith("10.244.") and a["status"]["podIP"] != b["status"]["podIP"]
    a_ns, b_ns = pod_container_netns(lab, a["metadata"]["uid"]), pod_container_netns(lab, b["metadata"]["uid"])

    by_ip = eventually("pod IP answer", lambda: (r := get(a_ns, b["status"]["podIP"], 8080))[0] == "200" and r, 20)
    assert by_ip == ("200", "e2e-node2")

    listener = subprocess.Popen(["nsenter", f"--net={b_ns}", "--", sys.executable, "-I", "-c", PEER],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        sh("nsenter", f"--net={a_ns}", "--", sys.executable, "-I", "-c",
           "import socket,time; socket.create_connection((__import__('sys').argv[1], 9099), timeout=5); time.sleep(.2)",
           b["status"]["podIP"])
        peer = listener.communicate(timeout=20)[0].strip()
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
    assert peer == a["status"]["podIP"], f"pod-to-pod traffic across nodes was masqueraded: peer {peer}"

    svc_ip = lab.json("get", "service", "e2e-only-node2")["spec"]["clusterIP"]
    remember_pods(lab)
    answer = eventually("ClusterIP answer", lambda: (r := get(a_ns, svc_ip, 80))[0] == "200" and r, 30)
    assert answer == ("200", "e2e-node2")
    lab.kubectl("delete", "-f", str(path), "--wait=false")


WEB = {"apiVersion": "v1", "kind": "List", "items": [
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
     "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
              "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                  "terminationGracePeriodSeconds": 1,
                  "containers": [{"name": "web", "image": "kubeling/test:1", "imagePullPolicy": "Never",
                                  "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && "
                                                          "exec httpd -f -p 8080 -h /www"],
                                  "ports": [{"containerPort": 8080, "name": "http"}],
                                  "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
     "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-headless"},
     "spec": {"clusterIP": "None", "selector": {"app": "web"},
              "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}]}


def in_pod(lab: Lab, pod: dict[str, Any], *cmd: str) -> str:
    """Run cmd in the pod's (first) app container with docker exec; its output."""
    ids = sh("docker", "ps", "-q", "--filter", f"label=io.kubeling.pod-uid={pod['metadata']['uid']}",
             "--filter", "label=io.kubeling.kind=app").stdout.split()
    assert ids, f"no running app container of {pod['metadata']['name']}"
    return sh("docker", "exec", ids[0], *cmd, check=False, timeout=20).stdout


def ready_web_pods(lab: Lab) -> list[dict[str, Any]] | None:
    pods = [p for p in lab.json("get", "pods", "-l", "app=web")["items"] if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
    return pods if len(pods) == 2 else None


def test_cluster_dns_from_a_pod(lab: Lab) -> None:
    """A pod's resolv.conf points at kube-dns 10.96.0.10; through its node's kube-proxy DNAT it resolves a
    Service to its ClusterIP, a short name through the search path, a headless Service to each ready pod,
    an SRV name to the named port, and an unknown name to a fast NXDOMAIN."""
    path = lab.dir / "web.json"
    path.write_text(json.dumps(WEB))
    lab.kubectl("apply", "--validate=false", "-f", str(path))
    pods = eventually("2 ready web pods", lambda: ready_web_pods(lab), 60)
    remember_pods(lab)
    client = pods[0]
    svc_ip = lab.json("get", "service", "web")["spec"]["clusterIP"]
    assert lab.json("get", "service", "kube-dns", "-n", "kube-system")["spec"]["clusterIP"] == "10.96.0.10"

    assert in_pod(lab, client, "cat", "/etc/resolv.conf") == (
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n")
    hosts = in_pod(lab, client, "cat", "/etc/hosts")
    assert f"{client['status']['podIP']}\t{client['metadata']['name']}\n" in hosts, hosts

    out = eventually("web's A record from the pod", lambda: (o := in_pod(
        lab, client, "nslookup", "web.default.svc.cluster.local")) and svc_ip in o and o, 20)
    assert "10.96.0.10" in out  # the server that answered: the kube-dns ClusterIP

    names = {p["metadata"]["name"] for p in pods}
    body = eventually("wget http://web (search path)", lambda: in_pod(lab, client, "wget", "-qO-", "http://web").strip()
                      in names and in_pod(lab, client, "wget", "-qO-", "http://web").strip(), 20)
    assert body in names

    pod_ips = sorted(p["status"]["podIP"] for p in pods)

    def headless() -> list[str] | None:
        text = in_pod(lab, client, "nslookup", "web-headless.default.svc.cluster.local")
        got = sorted(line.split()[-1] for line in text.split("Name:", 1)[-1].splitlines() if line.startswith("Address"))
        return got if got == pod_ips else None
    assert eventually("the headless Service's A set", headless, 20) == pod_ips

    srv = in_pod(lab, client, "nslookup", "-type=SRV", "_http._tcp.web.default.svc.cluster.local")
    assert "80 web.default.svc.cluster.local" in srv, srv

    def control_routes() -> bool:  # the replies' way back to pods whose queries were not masqueraded
        routes = sh("ip", "-n", f"{lab.prefix}-control", "route", "show", "proto", "212").stdout
        nodes = lab.json("get", "nodes")["items"]
        return all(f"{n['spec']['podCIDR']} via {a['address']} " in routes for n in nodes
                   for a in n["status"]["addresses"] if a["type"] == "InternalIP")
    eventually("routes to every podCIDR in the control namespace", control_routes, 20)

    from kubeling.lab.clusterdns import query_from
    netns = pod_container_netns(lab, client["metadata"]["uid"])
    got = query_from(netns, "10.96.0.10", "nope-not-here.default.svc.cluster.local", n=6)
    assert [r for r, _, _ in got] == ["3"] * 6, got  # NXDOMAIN
    times = sorted(t for _, _, t in got[1:])
    print(f"NXDOMAIN from a pod through 10.96.0.10: {', '.join(f'{t * 1000:.2f}' for t in times)} ms")
    assert times[len(times) // 2] < 0.05, times


def test_lab_status_shows_component_metrics(lab: Lab) -> None:
    out = lab.lab("status").stdout
    lines = {line.split()[0] + (" " + line.split()[1] if line.split()[0] in ("agent", "proxy") else ""): line
             for line in out.split("metrics:", 1)[1].splitlines() if line.strip()}
    for want in ("apiserver", "scheduler", "dns", "agent node1", "agent node2", "proxy node1", "proxy node2"):
        assert want in lines and "no /metrics answer" not in lines[want], (want, out)
    assert "requests 0 " not in lines["dns"] and "running pods 0," not in lines["agent node1"], out
    assert "syncs 0," not in lines["proxy node1"], out


def demo_pods(lab: Lab) -> list[dict[str, Any]]:
    return [p for p in lab.json("get", "pods", "-l", "app=demo")["items"]]


def ready_on(lab: Lab, node: str) -> list[str]:
    out = []
    for p in demo_pods(lab):
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        if p["spec"].get("nodeName") == node and not p["metadata"].get("deletionTimestamp") and conds.get("Ready") == "True":
            out.append(p["metadata"]["name"])
    return out


def node_ready(lab: Lab, node: str) -> str:
    conds = {c["type"]: c["status"] for c in lab.json("get", "node", node)["status"]["conditions"]}
    return str(conds.get("Ready"))


def test_a_failed_node_goes_notready_and_its_pods_move(lab: Lab) -> None:
    svc_ip = lab.json("get", "service", "demo")["spec"]["clusterIP"]
    assert "stopped" in lab.lab("kill", "node2").stdout
    t0 = time.monotonic()
    eventually("node2 NotReady", lambda: node_ready(lab, "node2") != "True", 45)
    print(f"node2 not ready after {time.monotonic() - t0:.1f} s")
    eventually("3 ready demo pods on node1", lambda: len(ready_on(lab, "node1")) >= 3, 60)
    print(f"pods recreated on node1 after {time.monotonic() - t0:.1f} s")
    remember_pods(lab)
    names = {p["metadata"]["name"] for p in demo_pods(lab)}
    answers = [get(lab.netns("node1"), svc_ip, 80) for _ in range(10)]
    assert all(code == "200" and body in names for code, body in answers), answers


def test_a_restarted_node_comes_back_ready(lab: Lab) -> None:
    assert "running" in lab.lab("start", "node2").stdout
    eventually("node2 Ready", lambda: node_ready(lab, "node2") == "True", 45)
    assert "node2   Ready" in lab.kubectl("get", "nodes").stdout


def test_down_leaves_nothing(lab: Lab) -> None:
    remember_pods(lab)
    during = snapshot(lab)
    assert during["containers"], "the lab's pods have containers"
    assert during["procs"] and f"{lab.prefix}-node1" in during["netns"]
    assert any(not n.startswith(f"{lab.prefix}-") for n in during["netns"]), "pod namespaces are counted"
    out = lab.lab("down").stdout
    assert "nothing of the lab is left" in out
    after = snapshot(lab)
    assert after == lab.before, {k: after[k] ^ lab.before[k] for k in after}
    assert not after["netns"] and not after["containers"] and not after["procs"]
    assert all(ln in ("lo", "eth0", "docker0") or ln.startswith("ifb") for ln in after["links"]), after["links"]
