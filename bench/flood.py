#!/usr/bin/env python3
"""The flood benchmark (issue 9, acceptance 4): one client floods, another keeps its latency.

Starts `kubeling apiserver` (plain HTTP, default request limits) on a free 127.0.0.1 port and
measures, against one ConfigMap GET:

1. baseline: a light client alone, paced at --light-rate (20/s), for --seconds;
2. flood: the same light client while a flooder, in a process of its own, sends --flood-rate
   (2,000/s) paced over --connections (8) keep-alive connections: how many of the flooder's requests
   got 429, how many were served, and the light client's p50/p99 against the baseline;
3. the same flood on an apiserver started with --max-requests-per-client-qps 0 (no limit), for
   comparison (--no-unlimited skips it).

Without credentials the server tells clients apart by source address: the flooder binds
127.0.0.2, the light client 127.0.0.3 (all of 127/8 is local; nothing is added to the machine).
Both use a minimal asyncio HTTP/1.1 client (pre-encoded request, status line + Content-Length
parsing) so the client's own CPU stays small next to the server's; latencies are send -> full
response. The machine has two cores for the server, the flooder and the light client together.

    .venv/bin/python bench/flood.py [--seconds 10] [--flood-rate 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "bench")]

import httpx  # noqa: E402
from _util import percentile, progress  # noqa: E402
from apiserver_proc import ApiServer  # noqa: E402

PATH = "/api/v1/namespaces/default/configmaps/flood-target"
FLOODER, LIGHT = "127.0.0.2", "127.0.0.3"


@dataclass
class Stats:
    codes: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, of 200 answers
    errors: int = 0
    late: int = 0  # sends that left more than one interval after their slot (the client fell behind)

    def add(self, code: int, seconds: float) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        if code == 200:
            self.latencies.append(seconds)

    @property
    def sent(self) -> int:
        return sum(self.codes.values()) + self.errors


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, connection closes) of one response, body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, close, chunked = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and b"close" in value.lower():
            close = True
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def _paced_connection(port: int, source: str, path: str, rate: float, offset: float, start: float,
                            end: float, stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n".encode()
    interval = 1.0 / rate
    slot = start + offset
    reader = writer = None
    while slot < end:
        now = loop.time()
        if slot > now:
            await asyncio.sleep(slot - now)
        elif now - slot > interval:
            stats.late += 1
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            assert reader is not None
            t0 = loop.time()
            writer.write(request)
            status, close = await asyncio.wait_for(_read_response(reader), 10)
            stats.add(status, loop.time() - t0)
            if close:
                writer.close()
                writer = None
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            stats.errors += 1
            if writer is not None:
                writer.close()
            writer = None
        slot += interval
    if writer is not None:
        writer.close()


async def _run_clients(port: int, source: str, path: str, rate: float, connections: int, start_wall: float,
                       seconds: float) -> Stats:
    loop = asyncio.get_running_loop()
    start = loop.time() + max(0.0, start_wall - time.time())
    stats = Stats()
    per = rate / connections
    await asyncio.gather(*(_paced_connection(port, source, path, per, i / rate, start, start + seconds, stats)
                           for i in range(connections)))
    return stats


def _flooder(port: int, path: str, rate: float, connections: int, start_wall: float, seconds: float,
             out: Any) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    stats = asyncio.run(_run_clients(port, FLOODER, path, rate, connections, start_wall, seconds))
    out.put((stats.codes, stats.errors, stats.late, len(stats.latencies)))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def light_run(port: int, rate: float, seconds: float, start_wall: float) -> Stats:
    return asyncio.run(_run_clients(port, LIGHT, PATH, rate, 1, start_wall, seconds))


def phase(srv: ApiServer, args: argparse.Namespace, flood: bool) -> dict[str, Any]:
    assert srv.proc is not None
    start_wall = time.time() + 0.5
    q: Any = mp.Queue()
    proc = None
    if flood:
        proc = mp.Process(target=_flooder, args=(srv.port, args.flood_path, args.flood_rate, args.connections, start_wall,
                                                 args.seconds, q), daemon=True)
        proc.start()
    cpu0 = cpu_seconds(srv.proc.pid)
    light = light_run(srv.port, args.light_rate, args.seconds, start_wall)
    out: dict[str, Any] = {
        "light_sent": light.sent, "light_codes": light.codes, "light_errors": light.errors,
        "light_p50_ms": percentile(light.latencies, 50) * 1000, "light_p99_ms": percentile(light.latencies, 99) * 1000,
        "light_max_ms": max(light.latencies, default=float("nan")) * 1000,
    }
    if proc is not None:
        codes, errors, late, _ = q.get(timeout=args.seconds + 30)
        proc.join(10)
        sent = sum(codes.values()) + errors
        out.update(flood_sent=sent, flood_rate=sent / args.seconds, flood_codes=codes, flood_errors=errors,
                   flood_late=late, flood_429=codes.get(429, 0), flood_served=codes.get(200, 0))
    out["server_cpu_s_per_s"] = (cpu_seconds(srv.proc.pid) - cpu0) / (args.seconds + 0.5)
    return out


def start_server(d: str, *extra: str) -> ApiServer:
    srv = ApiServer(d, args=extra)
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for i in range(100):
            c.post("/api/v1/namespaces/default/configmaps",
                   json={"metadata": {"name": "flood-target" if i == 0 else f"cm-{i}"}, "data": {"a": "b" * 200}})
    return srv


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/flood.py", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default %(default)s)")
    p.add_argument("--flood-rate", type=float, default=2000.0, help="the flooder's requests/s (default %(default)s)")
    p.add_argument("--flood-path", default=PATH,
                   help="what the flooder GETs (default: the same ConfigMap as the light client; e.g. "
                        "/api/v1/namespaces/default/configmaps for a list of 100)")
    p.add_argument("--connections", type=int, default=8, help="the flooder's connections (default %(default)s)")
    p.add_argument("--light-rate", type=float, default=20.0, help="the light client's requests/s (default %(default)s)")
    p.add_argument("--no-unlimited", action="store_true", help="skip the comparison without a rate limit")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("server_args", nargs="*", help="extra `kubeling apiserver` flags (after --)")
    args = p.parse_args()
    results: dict[str, Any] = {"args": vars(args), "loadavg": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="kubeling-flood-") as d:
        srv = start_server(os.path.join(d, "limited"), *args.server_args)
        try:
            progress("baseline: the light client alone")
            results["baseline"] = phase(srv, args, flood=False)
            progress("flood: the flooder and the light client")
            results["flood"] = phase(srv, args, flood=True)
        finally:
            srv.stop()
        if not args.no_unlimited:
            srv = start_server(os.path.join(d, "unlimited"), "--max-requests-per-client-qps", "0", *args.server_args)
            try:
                progress("flood without a rate limit (--max-requests-per-client-qps 0)")
                results["unlimited_baseline"] = phase(srv, args, flood=False)
                results["unlimited"] = phase(srv, args, flood=True)
            finally:
                srv.stop()
    print_report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


def print_report(r: dict[str, Any]) -> None:
    a, b, f = r["args"], r["baseline"], r["flood"]
    print(f"kubeling apiserver flood benchmark: flooder {a['flood_rate']:.0f}/s on {a['connections']} connections "
          f"from {FLOODER} (GET {a['flood_path']}), light client {a['light_rate']:.0f}/s from {LIGHT}, {a['seconds']:.0f} s per phase, "
          f"load average {r['loadavg'][0]:.1f}")
    print(f"flooder: sent {f['flood_sent']} ({f['flood_rate']:.0f}/s, {f['flood_late']} late), "
          f"429: {f['flood_429']} ({100 * f['flood_429'] / max(1, f['flood_sent']):.1f}%), served: {f['flood_served']}, "
          f"other: {f['flood_sent'] - f['flood_429'] - f['flood_served']}")
    rows = [("baseline (alone)", b), ("during the flood", f)]
    if "unlimited" in r:
        rows += [("no limit: alone", r["unlimited_baseline"]), ("no limit: during the flood", r["unlimited"])]
    print(f"{'light client':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'ok/sent':>9} {'server cpu':>10}")
    for name, x in rows:
        ok = x["light_codes"].get(200, 0)
        print(f"{name:28} {x['light_p50_ms']:8.2f} {x['light_p99_ms']:8.2f} {x['light_max_ms']:8.2f} "
              f"{ok:>4}/{x['light_sent']:<4} {x['server_cpu_s_per_s'] * 100:9.0f}%")
    print(f"ratio flood/baseline: p50 {f['light_p50_ms'] / b['light_p50_ms']:.2f}, "
          f"p99 {f['light_p99_ms'] / b['light_p99_ms']:.2f}")
    if "unlimited" in r:
        u, ub = r["unlimited"], r["unlimited_baseline"]
        print(f"without the limit: flooder served {u['flood_served']} of {u['flood_sent']}, ratio p50 "
              f"{u['light_p50_ms'] / ub['light_p50_ms']:.2f}, p99 {u['light_p99_ms'] / ub['light_p99_ms']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
