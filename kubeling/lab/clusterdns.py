"""Cluster DNS in the lab: `kubeling dns` in the control-plane namespace behind the kube-dns Service.

Where it runs, and why there: one supervised `kubeling dns` in the control namespace, listening on
0.0.0.0:53 (UDP and TCP) and :9153 (metrics), and a selector-less Service kube-system/kube-dns
with the well-known ClusterIP 10.96.0.10 whose Endpoints and EndpointSlice the lab writes
itself, pointing at the control plane's underlay address 192.168.56.10. A pod's query to
10.96.0.10:53 is DNATed by its node's kube-proxy rules to 192.168.56.10:53 and leaves through the
node's eth1 over the switch. The reply goes to the query's source: the node's address when
kubeling-cni's masquerade rule caught the query, else the pod's own 10.244.N.x, for which the
control namespace has a route via that pod's node (lab/routes.py, the agents' host-gw routes
for a host that is not a Node); on the node, conntrack undoes the DNAT. Both ways were seen in
the lab (`conntrack -L -p udp --dport 53` on a node). DNS as pods would need Python in a pod
image (ours is busybox), and one server per node would only add processes for the same answers.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from .state import LabError

KUBE_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
DNS_PORT = 53
METRICS_PORT = 9153
NAMESPACE = "kube-system"
NAME = "kube-dns"
MANAGED_BY = "lab.kubeling.io"
PORTS = [("dns", DNS_PORT, "UDP"), ("dns-tcp", DNS_PORT, "TCP"), ("metrics", METRICS_PORT, "TCP")]


def service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NAME, "namespace": NAMESPACE,
                         "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
            "spec": {"clusterIP": KUBE_DNS_IP,
                     "ports": [{"name": n, "port": p, "targetPort": p, "protocol": proto} for n, p, proto in PORTS]}}


def endpoints(ip: str, name: str = NAME, namespace: str = NAMESPACE,
              ports: list[tuple[str, int, str]] = PORTS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": ip}],
                         "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}]}


def endpoint_slice(ip: str, name: str = NAME, namespace: str = NAMESPACE,
                   ports: list[tuple[str, int, str]] = PORTS) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-lab", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False}}],
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}


def ensure_objects(client: Any, ip: str) -> None:
    """Create (or bring back to ours) the kube-dns Service, Endpoints and EndpointSlice; re-runnable."""
    from kube.client import ApiError

    try:
        client.create("services", service(), NAMESPACE)
    except ApiError as e:
        if not e.is_already_exists():
            raise LabError(f"cannot create Service {NAMESPACE}/{NAME} with ClusterIP {KUBE_DNS_IP}: {e}") from None
        got = client.get("services", NAME, NAMESPACE)
    else:
        got = None
    if got is not None and (got.get("spec") or {}).get("clusterIP") != KUBE_DNS_IP:
        raise LabError(f"Service {NAMESPACE}/{NAME} exists with ClusterIP {got['spec'].get('clusterIP')}, "
                       f"not {KUBE_DNS_IP}: delete it and run `lab up` again")
    ensure_endpoints(client, NAMESPACE, endpoints(ip), endpoint_slice(ip))


def ensure_kubernetes_endpoints(client: Any, ip: str, port: int) -> None:
    """Endpoints and an EndpointSlice for the selector-less default/kubernetes Service (10.96.0.1:443,
    port "https"), pointing at the apiserver, as upstream's apiserver keeps them for its advertise
    address: so a pod's request to 10.96.0.1:443 is DNATed by its node's proxy to ip:port."""
    ports = [("https", port, "TCP")]
    ensure_endpoints(client, "default", endpoints(ip, "kubernetes", "default", ports),
                     endpoint_slice(ip, "kubernetes", "default", ports))


def ensure_endpoints(client: Any, namespace: str, *objs: dict[str, Any]) -> None:
    """Create each Endpoints/EndpointSlice, or bring an existing one back to ours."""
    from kube.client import ApiError

    for obj in objs:
        resource = "endpoints" if obj["kind"] == "Endpoints" else "endpointslices"
        try:
            client.create(resource, obj, namespace)
        except ApiError as e:
            if not e.is_already_exists():
                raise LabError(f"cannot create {resource} {namespace}/{obj['metadata']['name']}: {e}") from None
            cur = client.get(resource, obj["metadata"]["name"], namespace)
            client.update(resource, {**obj, "metadata": {**obj["metadata"],
                                                         "resourceVersion": cur["metadata"]["resourceVersion"]}},
                          namespace=namespace)


# Runs inside a network namespace (a short-lived child: the lab never setns() itself): N UDP
# queries for NAME to SERVER:PORT, one at a time; prints "<rcode> <answers> <seconds>" per query.
QUERY = r"""
import socket, struct, sys, time
server, port, name, qtype, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0" + struct.pack("!HH", qtype, 1)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(1.0)
    for i in range(n):
        t0 = time.perf_counter()
        try:
            s.sendto(struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0) + q, (server, port))
            data = s.recv(4096)
            print(data[3] & 15, struct.unpack("!H", data[6:8])[0], f"{time.perf_counter() - t0:.6f}", flush=True)
        except OSError as e:
            print("ERR", type(e).__name__, f"{time.perf_counter() - t0:.6f}", flush=True)
"""


def query_from(netns_path: str, server: str, name: str, qtype: int = 1, n: int = 1,
               port: int = DNS_PORT) -> list[tuple[str, str, float]]:
    """(rcode or "ERR", answer count or error, seconds) for each of n queries made inside netns_path."""
    argv = ["nsenter", f"--net={netns_path}", "--", sys.executable, "-I", "-c", QUERY, server, str(port), name,
            str(qtype), str(n)]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10 + n * 1.5)
    except subprocess.TimeoutExpired:
        return [("ERR", "timeout", 0.0)]
    out = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], parts[1], float(parts[2])))
    return out or [("ERR", (res.stderr.strip().splitlines() or ["no output"])[-1][:120], 0.0)]
