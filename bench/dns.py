"""DNS benchmark: queries/s and p50/p99 latency of cached Service lookups over loopback UDP,
`kubeling dns` (fed by a real apiserver with SERVICES Services) side by side with a trivial
baseline (dnslib's own DNSServer answering one fixed A record, logging off). Each server runs in its own
process; the client sends one query at a time (closed loop) for SECONDS per server.

    .venv/bin/python bench/dns.py [--services 200] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
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
                                           "--listen", f"127.0.0.1:{kl_port}"], cwd=ROOT, start_new_session=True))
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
    print(format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
