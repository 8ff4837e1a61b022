"""Pod startup latency through the agent vs. the bare steps by hand (as root, real dockerd).

Agent: pod created via the API -> all containers started and Ready observed via a watch;
30 pods one by one, then a burst of 10.  Baseline: pause container + netns bind + veth via
cni.api + app container via docker-py, done directly.  Also the agent's RSS with 20 pods.
Everything lives in a node namespace of its own (klb-<pid>-...) and is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from apiserver_proc import ApiServer  # noqa: E402

from agent import runtime as rt  # noqa: E402
from agent.images import PAUSE_IMAGE, TEST_IMAGE, ensure_images  # noqa: E402
from agent.main import cni_conf_for  # noqa: E402
from agent.sandbox import bind_netns, unbind_netns  # noqa: E402
from bench._util import percentile, progress  # noqa: E402
from kube.client import Client  # noqa: E402

CIDR = "10.244.9.0/24"
APP = {"name": "app", "image": TEST_IMAGE, "command": ["sleep", "3600"]}


def pod(node: str, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [dict(APP)], "terminationGracePeriodSeconds": 0}}


def ready(p: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (p.get("status") or {}).get(
        "conditions") or [])


class Watcher:
    def __init__(self, client: Client) -> None:
        self.ready_at: dict[str, float] = {}
        self.client = client
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        for _typ, obj in self.client.watch("pods", "default"):
            if ready(obj):
                self.ready_at.setdefault(obj["metadata"]["name"], time.monotonic())

    def wait(self, name: str, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while name not in self.ready_at:
            if time.monotonic() > deadline:
                raise TimeoutError(name)
            time.sleep(0.002)
        return self.ready_at[name]


def baseline(node: str, netns: str, root: str, n: int) -> list[float]:
    import docker

    from cni import api
    api_c = docker.APIClient(version="1.41")
    conf = dict(cni_conf_for(CIDR.replace(".9.", ".10."), os.path.join(root, "cni-base")), name="base", bridge="kl1")
    out = []
    labels = {rt.L_POD_UID: "bench", rt.L_NODE: f"{node}-base"}  # not the agent's node: it would reap them
    for i in range(n):
        t0 = time.monotonic()
        hc = api_c.create_host_config(network_mode="none", ipc_mode="shareable")
        p = api_c.create_container(PAUSE_IMAGE, labels=labels, host_config=hc, hostname=f"b{i}")["Id"]
        api_c.start(p)
        pid = api_c.inspect_container(p)["State"]["Pid"]
        name = f"{node}-base{i}"
        bind_netns(pid, name)
        api.add(conf, p, f"/var/run/netns/{name}", "eth0", host_netns=netns)
        hc2 = api_c.create_host_config(network_mode=f"container:{p}")
        a = api_c.create_container(TEST_IMAGE, command=["sleep", "3600"], labels=labels, host_config=hc2)["Id"]
        api_c.start(a)
        out.append(time.monotonic() - t0)
    return out


def main() -> int:
    import psutil
    ensure_images()
    tag = f"klb-{os.getpid()}"
    node, netns = f"{tag}-n", f"{tag}-node"
    root = tempfile.mkdtemp(prefix=f"{tag}-")
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
    srv = ApiServer(os.path.join(root, "api"))
    agent = None
    runtime = rt.DockerRuntime()
    try:
        srv.start()
        client = Client.from_kubeconfig(srv.kubeconfig)
        w = Watcher(client)
        log = open(os.path.join(root, "agent.log"), "wb")
        agent = subprocess.Popen([sys.executable, "-m", "agent.main", "--node-name", node, "--kubeconfig",
                                  srv.kubeconfig, "--node-netns", netns, "--pod-cidr", CIDR, "--root-dir",
                                  os.path.join(root, "agent"), "--listen", "127.0.0.1:0", "--log-level", "warning"],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
        time.sleep(1.0)  # let the agent start (bench only; tests poll)
        seq: list[float] = []
        for i in range(30):
            t0 = time.monotonic()
            client.create("pods", pod(node, f"s{i}"), "default")
            seq.append(w.wait(f"s{i}") - t0)
        progress(f"sequential done p50={percentile(seq, 50):.3f}")
        t0 = time.monotonic()
        for i in range(10):
            client.create("pods", pod(node, f"b{i}"), "default")
        burst = [w.wait(f"b{i}") - t0 for i in range(10)]
        # RSS with 20 pods: delete down to 20
        for i in range(20, 30):
            client.delete("pods", f"s{i}", "default")
        for i in range(10):
            client.delete("pods", f"b{i}", "default")
        deadline = time.monotonic() + 60
        while len(runtime.list_ids({rt.L_NODE: node})) > 40 and time.monotonic() < deadline:
            time.sleep(0.2)
        rss = psutil.Process(agent.pid).memory_info().rss / 2**20
        base = baseline(node, netns, root, 30)
        b50, s50, s99 = percentile(base, 50), percentile(seq, 50), percentile(seq, 99)
        print(f"{'figure':40} {'p50 s':>8} {'p99 s':>8} target")
        print(f"{'agent, 30 pods one by one':40} {s50:8.3f} {s99:8.3f} p50<=1.0 p99<=2.0")
        print(f"{'agent, burst of 10 (from burst start)':40} {percentile(burst, 50):8.3f} {percentile(burst, 99):8.3f}")
        print(f"{'bare baseline (pause+netns+cni+app)':40} {b50:8.3f} {percentile(base, 99):8.3f}")
        print(f"{'ratio agent/baseline (p50)':40} {s50 / b50:8.2f} {'':>8} <=1.5")
        print(f"{'agent RSS with 20 pods (MiB)':40} {rss:8.1f} {'':>8} <=80")
        return 0
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(10)
        srv.stop()
        for lb in (node, f"{node}-base"):
            for cid in runtime.list_ids({rt.L_NODE: lb}):
                runtime.remove(cid)
        for n in os.listdir("/var/run/netns"):
            if n.startswith(node + "-"):
                unbind_netns(n)
        subprocess.run(["ip", "netns", "del", netns], timeout=10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
