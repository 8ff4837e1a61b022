"""`kubeling lab demo`: a Deployment behind a ClusterIP and a NodePort Service, and requests to both.

Deploys `demo` (3 replicas of busybox httpd answering its pod name on :8080, image kubeling/test:1),
the Service `demo` (ClusterIP, port 80) and `demo-nodeport` (NodePort), waits for the rollout and
for the Services to answer, then sends requests

    - to the ClusterIP from every worker node's namespace,
    - to the ClusterIP from inside a pod of the deployment (its network namespace),
    - to the NodePort on every worker's underlay address, from the control-plane namespace,

and prints which pod (and node) answered each one. Every request is a new TCP connection made by a
short-lived `nsenter --net=... python` child, so the proxy picks an endpoint for each. Exit status 1
if any request failed. Brings the lab up first if it is not up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from .state import LabError, LabState, alive

NAMESPACE = "default"
APP = "demo"
PORT = 8080
SERVICE_PORT = 80
IMAGE = "kubeling/test:1"
FIELD_MANAGER = "kubeling-lab-demo"

# Runs inside a namespace: N fresh connections to HOST:PORT, one line per request: "<status> <body>".
GETTER = r"""
import socket, sys
host, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(n):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        code = parts[1].decode() if len(parts) > 1 else "000"
        print(code, body.decode(errors="replace").strip().replace(" ", "_") or "-", flush=True)
    except OSError as e:
        print("ERR", type(e).__name__, flush=True)
"""


def say(msg: str) -> None:
    print(f"lab demo: {msg}", flush=True)


def manifests(replicas: int, toleration_seconds: int | None) -> list[tuple[str, dict[str, Any]]]:
    labels = {"app": APP}
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 2,
        "containers": [{
            "name": "web", "image": IMAGE, "imagePullPolicy": "Never",
            "command": ["sh", "-c", f"mkdir -p /www && hostname > /www/index.html && exec httpd -f -p {PORT} -h /www"],
            "ports": [{"containerPort": PORT, "name": "http"}],
            "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 2},
        }],
    }
    if toleration_seconds is not None:  # how soon pods leave a node that stopped answering
        pod_spec["tolerations"] = [
            {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": toleration_seconds}
            for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")]
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": APP, "labels": labels},
              "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                       "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": APP, "labels": labels},
           "spec": {"type": "ClusterIP", "selector": labels,
                    "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": PORT}]}}
    nodeport = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{APP}-nodeport", "labels": labels},
                "spec": {"type": "NodePort", "selector": labels,
                         "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": PORT}]}}
    return [("deployments", deploy), ("services", svc), ("services", nodeport)]


def apply(client: Any, resource: str, obj: dict[str, Any]) -> str:
    """Create, or bring an existing object's spec to ours (merge patch); returns what was done."""
    from kube.client import ApiError

    name = obj["metadata"]["name"]
    try:
        client.create(resource, obj, NAMESPACE)
        return "created"
    except ApiError as e:
        if not e.is_already_exists() and not e.is_conflict():
            raise
    client.patch(resource, name, {"spec": obj["spec"]}, NAMESPACE, patch_type="merge")
    return "configured"


def wait(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # the apiserver restarting, a watch in flux: keep trying until the deadline
            last = None
            err = e
        else:
            err = None
        if last:
            return last
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({err})" if err else ""))


def ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def pod_ready(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def get_many(netns_path: str, host: str, port: int, n: int, timeout: float = 3.0) -> list[tuple[str, str]]:
    argv = ["nsenter", f"--net={netns_path}", "--", sys.executable, "-I", "-c", GETTER, host, str(port), str(n),
            str(timeout)]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=n * (timeout + 1) + 10)
    except subprocess.TimeoutExpired:
        return [("ERR", "timeout")] * n
    lines = [tuple(line.split(" ", 1)) for line in res.stdout.splitlines() if " " in line]
    out = [(a, b) for a, b in lines]
    return out + [("ERR", (res.stderr.strip().splitlines() or ["no answer"])[-1][:80])] * (n - len(out))


def pod_netns(pod_uid: str, node: str) -> str:
    """/proc/PID/ns/net of the pod's sandbox container (only a container of this lab node)."""
    res = subprocess.run(["docker", "ps", "-q", "--filter", f"label=io.kubeling.pod-uid={pod_uid}",
                          "--filter", f"label=io.kubeling.node={node}"], capture_output=True, text=True, timeout=20)
    for cid in res.stdout.split():
        pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", cid], capture_output=True, text=True,
                             timeout=20).stdout.strip()
        if pid.isdigit() and int(pid) > 0:
            return f"/proc/{pid}/ns/net"
    raise LabError(f"no running container of pod {pod_uid} on {node}")


def cmd_demo(args: argparse.Namespace) -> int:
    from kube.client import Client

    from . import lab as L
    from . import topology

    t0 = time.monotonic()
    paths = L.Paths(args.state_dir)
    state = LabState.load(paths.state_json)
    if state is None or state.phase != "up" or not alive(state.supervisor_pid, state.supervisor_start):
        say("the lab is not up: bringing it up first")
        L.cmd_up(args)
        state = LabState.load(paths.state_json)
    assert state is not None
    topo = topology.plan(state.prefix, len(state.nodes))
    if not topo.workers:
        raise LabError("the lab has no workers; `scripts/lab down` and `scripts/lab up --nodes 2`")
    client = Client.from_kubeconfig(paths.kubeconfig)
    try:
        names = [n.name for n in topo.workers]
        say(f"waiting for nodes {', '.join(names)} to be Ready")
        wait("Ready nodes", lambda: all(ready(client.get("nodes", n)) for n in names), args.timeout)

        for resource, obj in manifests(args.replicas, args.toleration_seconds):
            say(f"{resource[:-1]} {NAMESPACE}/{obj['metadata']['name']} {apply(client, resource, obj)}")

        def rolled_out() -> list[dict[str, Any]]:
            pods = [p for p in client.list("pods", NAMESPACE, label_selector=f"app={APP}")["items"] if pod_ready(p)]
            return pods if len(pods) >= args.replicas else []
        say(f"waiting for {args.replicas} ready pods of deployment {APP}")
        pods = wait("the rollout", rolled_out, args.timeout)
        where = {p["metadata"]["name"]: p["spec"].get("nodeName", "?") for p in pods}
        for p in pods:
            say(f"pod {p['metadata']['name']} on {where[p['metadata']['name']]} ip {p['status'].get('podIP')}")
        svc = client.get("services", APP, NAMESPACE)
        cluster_ip = svc["spec"]["clusterIP"]
        node_port = int(client.get("services", f"{APP}-nodeport", NAMESPACE)["spec"]["ports"][0]["nodePort"])
        say(f"service {APP}: ClusterIP {cluster_ip}:{SERVICE_PORT}; {APP}-nodeport: NodePort {node_port}")

        first = topo.workers[0]

        def first_answer() -> bool:
            return get_many(first.netns_path, cluster_ip, SERVICE_PORT, 1, 1.0)[0][0] == "200"
        wait(f"the ClusterIP to answer from {first.name}", first_answer, args.timeout, 0.2)
        say(f"first ClusterIP answer {time.monotonic() - t0:.2f} s after demo start")

        source_pod = pods[0]
        sources: list[tuple[str, str, str, int]] = [
            (f"{n.name}", n.netns_path, cluster_ip, SERVICE_PORT) for n in topo.workers]
        sources.append((f"pod/{source_pod['metadata']['name']}",
                        pod_netns(source_pod["metadata"]["uid"], source_pod["spec"]["nodeName"]),
                        cluster_ip, SERVICE_PORT))
        sources += [(topo.control.name, topo.control.netns_path, n.ip, node_port) for n in topo.workers]

        for label, netns_path, host, port in sources:  # every proxy has programmed the Services
            wait(f"{host}:{port} to answer from {label}",
                 lambda n=netns_path, h=host, p=port: get_many(n, h, p, 1, 1.0)[0][0] == "200",  # type: ignore[misc]
                 args.timeout, 0.2)
        say(f"all {len(sources)} sources answered {time.monotonic() - t0:.2f} s after demo start")

        total = failed = 0
        answered: dict[str, int] = {}
        for label, netns_path, host, port in sources:
            for code, body in get_many(netns_path, host, port, args.requests):
                total += 1
                ok = code == "200" and body in where
                if ok:
                    answered[body] = answered.get(body, 0) + 1
                else:
                    failed += 1
                who = f"{body} (on {where[body]})" if body in where else body
                print(f"  {label:<22} -> {host}:{port:<6} {code} {who}{'' if ok else '  FAILED'}", flush=True)
        by = ", ".join(f"{k} x{v}" for k, v in sorted(answered.items()))
        say(f"summary: {total} requests, {total - failed} answered by a pod of {APP}, {failed} failed; "
            f"{len(answered)} distinct pods: {by}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"total": total, "failed": failed, "answered": answered, "pods": where,
                           "cluster_ip": cluster_ip, "node_port": node_port}, f, indent=2)
        return 1 if failed else 0
    finally:
        client.close()


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=3, help="pods of the demo deployment (default %(default)s)")
    p.add_argument("--requests", type=int, default=10, metavar="N",
                   help="requests from each source (default %(default)s)")
    p.add_argument("--toleration-seconds", type=int, default=30, metavar="SECONDS",
                   help="how long the demo pods stay on a node that is not ready/unreachable (default %(default)s)")
    p.add_argument("--json", default="", metavar="FILE", help="also write the results as JSON to FILE")
