"""DNS benchmark: queries/s and p50/p99 latency of cached Service lookups, one client, closed loop (UDP).

Loopback mode (default): `kubeling dns` fed by a real apiserver with SERVICES Services, against a
trivial baseline (dnslib's own DNSServer answering one fixed A record, logging off), each in its
own process, queried over 127.0.0.1.

    .venv/bin/python bench/dns.py [--services 200] [--seconds 3]

From-pod mode (root): the figure of the lab. A client pod on node1 queries kube-dns at
10.96.0.10:53, so every query goes pod -> its node's kube-proxy DNAT -> the underlay -> `kubeling
dns` in the control namespace (and back through conntrack); the baseline is the same client and
the same server, queried over 127.0.0.1 inside the control namespace. The clients are short-lived
`nsenter --net=...` children (this process never enters a namespace). Side by side, with the ratio.
It brings up its own lab (unique prefix, temp state dir; `lab down` at the end, also on failure) or
uses a running one with --lab-state-dir (then it removes only the pod and Services it made).

    sudo .venv/bin/python bench/dns.py --from-pod [--lab-state-dir .lab] [--services 200] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "bench")]

from _util import Figure, format_table, percentile, progress  # noqa: E402
from apiserver_proc import ApiServer, free_port  # noqa: E402
from dnslib import RCODE, DNSRecord  # noqa: E402

from kube.client import Client  # noqa: E402

BASELINE = """
import sys, time
from dnslib import RR, QTYPE, A
from dnslib.server import DNSServer, BaseResolver, DNSLogger
class Fixed(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=5, rdata=A("10.96.0.1")))
        return reply
quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data")  # logging would slow it
DNSServer(Fixed(), address="127.0.0.1", port=int(sys.argv[1]), logger=quiet).start_thread()
while True:
    time.sleep(3600)
"""

# The from-pod client, run inside a network namespace: names on stdin, one A query at a time to
# SERVER:PORT for WARMUP then SECONDS seconds; prints {"qps", "lat" (seconds), "errors", "rcodes"}.
CLIENT = r"""
import json, socket, struct, sys, time
server, port, warmup, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
names = sys.stdin.read().split()
def packet(i, name):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
    return struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + q
packets = [packet(0, n) for n in names]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect((server, port))
def run(duration):
    lat, errors, rcodes, i = [], 0, {}, 0
    start = time.perf_counter()
    end = start + duration
    while time.perf_counter() < end:
        pkt = bytearray(packets[i % len(packets)])
        struct.pack_into("!H", pkt, 0, i & 0xFFFF)
        t0 = time.perf_counter()
        try:
            s.send(pkt)
            while True:  # skip a late answer to an earlier (timed-out) query
                reply = s.recv(4096)
                if reply[:2] == pkt[:2]:
                    break
            lat.append(time.perf_counter() - t0)
            rc = reply[3] & 15
            rcodes[rc] = rcodes.get(rc, 0) + 1
        except OSError:
            errors += 1
        i += 1
    return {"qps": len(lat) / (time.perf_counter() - start), "lat": lat, "errors": errors, "rcodes": rcodes}
run(warmup)
print(json.dumps(run(seconds)))
"""

KUBE_DNS = "10.96.0.10"
BENCH_NS = "default"
CLIENT_POD = "dns-bench-client"


def measure(port: int, names: list[str], seconds: float) -> tuple[float, list[float]]:
    """Closed loop over UDP: (queries per second, latencies in seconds)."""
    packets = [DNSRecord.question(n, "A").pack() for n in names]
    lat: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
        end = time.perf_counter() + seconds
        i = 0
        start = time.perf_counter()
        while time.perf_counter() < end:
            pkt = bytearray(packets[i % len(packets)])
            struct.pack_into("!H", pkt, 0, i & 0xFFFF)
            t0 = time.perf_counter()
            s.send(pkt)
            reply = s.recv(4096)
            lat.append(time.perf_counter() - t0)
            if i == 0:
                rc = DNSRecord.parse(reply).header.rcode
                if rc != RCODE.NOERROR:
                    raise SystemExit(f"the server answered {RCODE[rc]} for {names[0]}")
            i += 1
        return i / (time.perf_counter() - start), lat


def wait_answer(port: int, name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", port, timeout=0.5))
            if r.rr:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"no answer for {name} on port {port} in {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def loopback(args: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="kubeling-bench-dns-") as d:
        api = ApiServer(d)
        api.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            client = Client.from_kubeconfig(api.kubeconfig)
            progress(f"creating {args.services} services")
            for i in range(args.services):
                client.create("services", {"metadata": {"name": f"svc{i}"},
                                           "spec": {"ports": [{"name": "http", "port": 80}]}}, "default")
            client.close()
            names = [f"svc{i}.default.svc.cluster.local" for i in range(args.services)]
            random.Random(1).shuffle(names)
            kl_port, base_port = free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "kubeling.cli", "dns", "--kubeconfig", api.kubeconfig,
                                           "--listen", f"127.0.0.1:{kl_port}", "--metrics-address", ""],
                                          cwd=ROOT, start_new_session=True))
            procs.append(subprocess.Popen([sys.executable, "-c", BASELINE, str(base_port)], start_new_session=True))
            wait_answer(kl_port, names[-1])
            wait_answer(base_port, names[0])
            for label, port in (("kubeling dns", kl_port), ("baseline dnslib", base_port)):
                measure(port, names, 0.3)  # warm up
                progress(f"measuring {label} for {args.seconds}s")
                qps, lat = measure(port, names, args.seconds)
                figures += [Figure(label, "queries/s (1 client, UDP)", qps, "q/s"),
                            Figure(label, "p50 latency", percentile(lat, 50) * 1000, "ms"),
                            Figure(label, "p99 latency", percentile(lat, 99) * 1000, "ms")]
        finally:
            for p in procs:
                stop(p)
            api.stop()
    return figures


# ---------------------------------------------------------------------------------------------- from a pod

def lab_cmd(state_dir: str, prefix: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.path.join(ROOT, "scripts", "lab"), "--state-dir", state_dir, "--prefix", prefix, *args],
                          capture_output=True, text=True, timeout=timeout)


def query_in(netns: str, server: str, names: list[str], warmup: float, seconds: float) -> dict[str, Any]:
    argv = ["nsenter", f"--net={netns}", "--", sys.executable, "-I", "-c", CLIENT, server, "53", str(warmup),
            str(seconds)]
    res = subprocess.run(argv, input=" ".join(names), capture_output=True, text=True, timeout=warmup + seconds + 30)
    if res.returncode != 0:
        raise SystemExit(f"bench/dns.py: the client in {netns} failed: {res.stderr.strip()[-300:]}")
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def wait_pod_running(client: Client, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = client.get("pods", name, BENCH_NS)
        if (pod.get("status") or {}).get("phase") == "Running":
            return dict(pod)
        time.sleep(0.2)
    raise SystemExit(f"bench/dns.py: pod {name} not Running after {timeout:.0f} s")


def pod_netns(uid: str) -> str:
    res = subprocess.run(["docker", "ps", "-q", "--filter", f"label=io.kubeling.pod-uid={uid}"],
                         capture_output=True, text=True, timeout=20)
    for cid in res.stdout.split():
        pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", cid], capture_output=True, text=True,
                             timeout=20).stdout.strip()
        if pid.isdigit() and int(pid) > 0:
            return f"/proc/{pid}/ns/net"
    raise SystemExit(f"bench/dns.py: no running container of pod {uid}")


def from_pod(args: argparse.Namespace) -> list[Figure]:
    if os.geteuid() != 0:
        raise SystemExit("bench/dns.py --from-pod creates network namespaces (a lab): run it as root")
    own_lab = not args.lab_state_dir
    state_dir = os.path.abspath(args.lab_state_dir or tempfile.mkdtemp(prefix="kl-bench-dns-"))
    prefix = f"kld{os.getpid() % 100000}"
    made: list[tuple[str, str]] = []
    client: Client | None = None
    try:
        if own_lab:
            progress(f"lab up (prefix {prefix}, state {state_dir})")
            up = lab_cmd(state_dir, prefix, "up", "--nodes", "1", "--no-install", "--no-images", "--api-port", "0")
            if up.returncode != 0:
                raise SystemExit(f"bench/dns.py: lab up failed: {(up.stderr or up.stdout).strip()[-400:]}")
        with open(os.path.join(state_dir, "state.json")) as f:
            state = json.load(f)
        node, control_netns = state["nodes"][0], f"/var/run/netns/{state['prefix']}-control"
        client = Client.from_kubeconfig(os.path.join(state_dir, "kubeconfig"))
        tag = f"b{os.getpid() % 100000}"
        progress(f"creating {args.services} services")
        for i in range(args.services):
            name = f"dnsbench-{tag}-{i}"
            client.create("services", {"metadata": {"name": name},
                                       "spec": {"ports": [{"name": "http", "port": 80}]}}, BENCH_NS)
            made.append(("services", name))
        pod_name = f"{CLIENT_POD}-{tag}"
        client.create("pods", {"metadata": {"name": pod_name}, "spec": {
            "nodeName": node, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "sleep", "image": "kubeling/test:1", "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"]}]}}, BENCH_NS)
        made.append(("pods", pod_name))
        pod = wait_pod_running(client, pod_name)
        netns = pod_netns(pod["metadata"]["uid"])
        names = [f"dnsbench-{tag}-{i}.{BENCH_NS}.svc.cluster.local" for i in range(args.services)]
        random.Random(1).shuffle(names)
        deadline = time.monotonic() + 60
        while query_in(netns, KUBE_DNS, names[-1:], 0, 0.2)["rcodes"].get("0", 0) == 0:  # synced, proxied
            if time.monotonic() > deadline:
                raise SystemExit("bench/dns.py: kube-dns does not answer from the pod")
        figures: list[Figure] = []
        modes = (("from a pod via 10.96.0.10", netns, KUBE_DNS),
                 ("control ns, 127.0.0.1 (baseline)", control_netns, "127.0.0.1"))
        # alternate the two, round by round, so that a change in the machine's load hits both
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in modes}
        for i in range(args.rounds):
            for label, where, server in modes:
                progress(f"round {i + 1}/{args.rounds}: {label}, {args.seconds}s")
                r = query_in(where, server, names, 0.3, args.seconds)
                if r["rcodes"].keys() - {"0"}:
                    raise SystemExit(f"bench/dns.py: {label}: answers other than NOERROR: {r['rcodes']}")
                runs[label].append(r)
        results: dict[str, dict[str, Any]] = {}
        for label, rs in runs.items():
            lat = [x for r in rs for x in r["lat"]]
            errors = sum(r["errors"] for r in rs)
            r = results[label] = {"qps": percentile([r["qps"] for r in rs], 50), "lat": lat}
            figures += [Figure(label, "queries/s (1 client, UDP; median of rounds)", r["qps"], "q/s"),
                        Figure(label, "p50 latency", percentile(lat, 50) * 1000, "ms"),
                        Figure(label, "p99 latency", percentile(lat, 99) * 1000, "ms",
                               note=f"{errors} timeouts" if errors else "")]
        pod_r, base_r = results.values()
        figures += [Figure("ratio pod / baseline", "queries/s", pod_r["qps"] / base_r["qps"], "x"),
                    Figure("ratio pod / baseline", "p50 latency",
                           percentile(pod_r["lat"], 50) / percentile(base_r["lat"], 50), "x"),
                    Figure("ratio pod / baseline", "p99 latency",
                           percentile(pod_r["lat"], 99) / percentile(base_r["lat"], 99), "x")]
        return figures
    finally:
        if own_lab:
            if client is not None:
                client.close()
            progress("lab down")
            lab_cmd(state_dir, prefix, "down")
            shutil.rmtree(state_dir, ignore_errors=True)
        elif client is not None:
            for resource, name in reversed(made):
                try:
                    client.delete(resource, name, BENCH_NS)
                except Exception as e:  # best effort: say what is left
                    print(f"bench/dns.py: could not delete {resource}/{name}: {e}", file=sys.stderr)
            client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--services", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--from-pod", action="store_true", help="the lab figure: from a pod through 10.96.0.10 (root)")
    ap.add_argument("--rounds", type=int, default=3, help="with --from-pod: alternating rounds per mode")
    ap.add_argument("--lab-state-dir", default="", metavar="DIR",
                    help="with --from-pod: use this running lab instead of bringing one up")
    args = ap.parse_args()
    if args.services < 1 or args.seconds <= 0 or args.rounds < 1:
        ap.error("--services and --rounds must be >= 1, --seconds > 0")
    if args.lab_state_dir and not args.from_pod:
        ap.error("--lab-state-dir goes with --from-pod")
    print("load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(format_table(from_pod(args) if args.from_pod else loopback(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
