"""Datapath cost of the proxy's rules: a pod reached directly vs through its ClusterIP.

    sudo .venv/bin/python bench/datapath.py [--services 100,10000] [--requests 2000]

Builds (in namespaces of its own, klt-<pid>-pxb..., removed at the end) a node namespace
with bridge kl0 and two pods via cni.api: p0 serves a fixed HTTP answer on 8080, p1 is the
client. For each service count N the proxy's renderer and restore backend program N
services into the node namespace: the measured one (ClusterIP 10.96.0.10:80 -> p0:8080)
plus N-1 synthetic ones whose endpoints are unused IPs. The measured service sorts last
in KUBELING-SERVICES, the worst case of iptables' linear match. The client then sends
sequential requests, each on a new connection (every one goes through the nat table),
alternating blocks to p0:8080 and 10.96.0.10:80 so both see the same noise, and a
throughput run with 4 concurrent client processes per target. Prints a table.

The same server process in p0 listens on 8080 (direct) and 8081 (the service's target
port): were both the same port, a connection through the DNAT could reuse the 4-tuple
of a recent direct one (the kernel picks the client port per destination), clash in
conntrack and be dropped (a 1 s SYN retry), which measures the benchmark, not the rules.

Root only. Nothing is done in the machine's own network namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds cni.py and proxy.py benchmarks: keep them from shadowing the packages of those names.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from cni import api  # noqa: E402
from proxy.iptables import RestoreBackend  # noqa: E402
from proxy.model import Endpoint, NodeInfo, ServicePort  # noqa: E402
from proxy.render import RenderConfig, render  # noqa: E402

NETNS_DIR = "/var/run/netns"
CLUSTER_IP = "10.96.0.10"

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(512)
s2 = socket.socket(); s2.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s2.bind(("0.0.0.0", int(sys.argv[2]))); s2.listen(512)
resp = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
import selectors
sel = selectors.DefaultSelector(); sel.register(s, selectors.EVENT_READ); sel.register(s2, selectors.EVENT_READ)
while True:
  for key, _ in sel.select():
    c, _ = key.fileobj.accept()
    try:
        c.recv(4096); c.sendall(resp)
    except OSError:
        pass
    c.close()
"""
DIRECT_PORT, SERVICE_PORT = 8080, 8081

# mode "lat": alternating blocks of `block` requests to each target, latencies in ms.
# mode "tput": requests to one target for `seconds`, prints the count.
CLIENT = r"""
import json, socket, sys, time
mode = sys.argv[1]
def one(host, port):
    t0 = time.perf_counter()
    c = socket.create_connection((host, port), timeout=5)
    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    while c.recv(4096):
        pass
    c.close()
    return (time.perf_counter() - t0) * 1000
if mode == "lat":
    n, block, targets = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    out = {t: [] for t in targets}
    for t in targets:  # warm up
        h, p = t.rsplit(":", 1)
        for _ in range(20):
            one(h, int(p))
    while min(len(v) for v in out.values()) < n:
        for t in targets:
            h, p = t.rsplit(":", 1)
            out[t].extend(one(h, int(p)) for _ in range(block))
    print(json.dumps(out))
else:
    target, seconds = sys.argv[2], float(sys.argv[3])
    h, p = target.rsplit(":", 1)
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        one(h, int(p)); n += 1
    print(n)
"""


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={NETNS_DIR}/{ns}", "--", *argv]


def synthetic(n: int) -> list[ServicePort]:
    """n-1 services in namespace "bulk" (endpoints on unused IPs) + the measured one, sorted last."""
    ports = []
    for i in range(n - 1):
        ip = f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        eps = tuple(Endpoint(f"10.250.{(2 * i // 250) % 250}.{(2 * i) % 250 + j + 1}", 8080) for j in range(2))
        ports.append(ServicePort("bulk", f"svc-{i:05d}", "http", "TCP", ip, 80, endpoints=eps))
    return ports


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", default="100,10000", help="comma-separated service counts (default %(default)s)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per target for latency (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput run (default %(default)s)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients in the throughput run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/datapath.py: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.services.split(",") if x.strip()]

    prefix = f"klt-{os.getpid()}-pxb"
    made: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="kubeling-bench-") as work:
        try:
            for name in ("node", "p0", "p1"):
                sh("ip", "netns", "add", f"{prefix}{name}")
                made.append(f"{prefix}{name}")
            node, p0, p1 = made
            conf = {"cniVersion": "1.1.0", "name": "klbench", "type": "kubeling-cni", "bridge": "kl0",
                    "isGateway": True, "isDefaultGateway": True, "hairpinMode": True,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                             "dataDir": os.path.join(work, "ipam")}}
            ips = {}
            for i, pod in enumerate((p0, p1)):
                res = api.add(conf, f"b{i}", f"{NETNS_DIR}/{pod}", "eth0", host_netns=node)
                ips[pod] = res["ips"][0]["address"].split("/")[0]
            procs.append(subprocess.Popen(in_ns(p0, sys.executable, "-c", SERVER, str(DIRECT_PORT), str(SERVICE_PORT)),
                                          stdin=subprocess.DEVNULL, start_new_session=True))
            # as the proxy does when it routes the service range via kl0 (proxy/routes.py)
            for conf_name in ("all", "kl0"):
                sh(*in_ns(node, "sysctl", "-q", "-w", f"net.ipv4.conf.{conf_name}.send_redirects=0"))
            backend = RestoreBackend("legacy", netns=node)
            target = ServicePort("zz-bench", "target", "http", "TCP", CLUSTER_IP, 80,
                                 endpoints=(Endpoint(ips[p0], SERVICE_PORT),))
            direct, via = f"{ips[p0]}:{DIRECT_PORT}", f"{CLUSTER_IP}:80"
            for n in counts:
                ports = synthetic(n) + [target]
                t0 = time.perf_counter()
                rendered = render(ports, NodeInfo("bench", ("10.244.1.1",)), RenderConfig(cluster_cidr="10.244.0.0/16"))
                t_render = time.perf_counter() - t0
                t0 = time.perf_counter()
                backend.apply(rendered, full=True)
                t_apply = time.perf_counter() - t0
                deadline = time.monotonic() + 10
                while True:  # the server is up and the service answers
                    p = subprocess.run(in_ns(p1, sys.executable, "-c", CLIENT, "tput", via, "0.05"),
                                       capture_output=True, text=True, timeout=30)
                    if p.returncode == 0 and int(p.stdout or 0) > 0:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the ClusterIP does not answer: {p.stderr[-500:]}")
                p = subprocess.run(in_ns(p1, sys.executable, "-c", CLIENT, "lat", str(args.requests), "100", direct, via),
                                   capture_output=True, text=True, timeout=600, check=True)
                lat = json.loads(p.stdout)
                tput = {}
                for tgt in (direct, via):
                    clients = [subprocess.Popen(in_ns(p1, sys.executable, "-c", CLIENT, "tput", tgt, str(args.seconds)),
                                                stdout=subprocess.PIPE, text=True) for _ in range(args.clients)]
                    tput[tgt] = sum(int(c.communicate(timeout=60)[0]) for c in clients) / args.seconds
                rules = rendered.rule_count()
                for label, tgt in (("direct pod", direct), ("ClusterIP", via)):
                    xs = lat[tgt]
                    rows.append((n, rules, label, statistics.median(xs), percentile(xs, 0.99),
                                 1000 / statistics.mean(xs), tput[tgt], t_render, t_apply))
                d, c = rows[-2], rows[-1]
                rows.append((n, rules, "ratio CIP/direct", c[3] / d[3], c[4] / d[4], c[5] / d[5], c[6] / d[6],
                             t_render, t_apply))
        finally:
            for pr in procs:
                pr.kill()
                pr.wait(10)
            for ns in made:
                sh("ip", "netns", "del", ns, check=False)

    print(f"\n{args.requests} sequential requests per target (new connection each), client pod -> server pod; "
          f"throughput: {args.clients} concurrent clients for {args.seconds:.0f}s\n")
    print(f"| services | rules | target | p50 ms | p99 ms | req/s (1 client) | req/s ({args.clients} clients) "
          "| render s | restore s |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, rules, label, p50, p99, rps1, rpsn, tr, ta in rows:
        if label.startswith("ratio"):
            print(f"| {n} | {rules} | **{label}** | **{p50:.2f}x** | {p99:.2f}x | {rps1:.2f}x | {rpsn:.2f}x | | |")
        else:
            print(f"| {n} | {rules} | {label} | {p50:.3f} | {p99:.3f} | {rps1:.0f} | {rpsn:.0f} | {tr:.2f} | {ta:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
