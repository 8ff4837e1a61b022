"""CNI ADD/DEL latency: kubeling-cni (executable and in-process library) vs the reference plugins.

    sudo .venv/bin/python bench/cni.py [--n 100] [--no-masq]

Runs the same 100 attachments (same container IDs, same pod namespaces, the
same network config apart from "type") through:

    exec  `nsenter --net=<node> .venv/bin/kubeling-cni`   (the console script, like a runtime execs it)
    inst  the launcher `python -m cni.install` puts in a CNI bin dir (python -I -S; no site/.pth)
    lib   cni.api.add/delete(..., host_netns=<node>)      (the agent's in-process fast path)
    ref   `nsenter --net=<node> /usr/lib/cni/bridge`      (reference bridge + host-local)

Each plugin gets its own node namespace; everything lives in namespaces named
klb-<pid>-* that are removed at the end.  Prints p50/p99 and the ratios.
Targets: exec ADD p50 <= 2x ref, lib ADD p50 <= 20 ms.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PLUGIN = str(Path(sys.executable).parent / "kubeling-cni")
REF = "/usr/lib/cni/bridge"
PREFIX = f"klb-{os.getpid()}-"
INSTALLED = ""


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=30)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def conf_for(plugin_type: str, data_dir: str, masq: bool) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "bench", "type": plugin_type, "bridge": "kl0",
            "isGateway": True, "isDefaultGateway": True, "ipMasq": masq, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": data_dir}}


def exec_plugin(exe: str, command: str, node: str, cid: str, pod: str, data: bytes) -> float:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni"}
    t = time.perf_counter()
    p = subprocess.run(["nsenter", f"--net=/var/run/netns/{node}", exe], input=data, env=env,
                       capture_output=True, timeout=60)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{exe} {command} {cid} failed: {p.stdout.decode()} {p.stderr.decode()}")
    return dt * 1000


def run_mode(mode: str, node: str, pods: list[str], conf: dict[str, Any]) -> tuple[list[float], list[float]]:
    adds, dels = [], []
    data = json.dumps(conf).encode()
    if mode == "lib":
        from cni import api
        for i, pod in enumerate(pods):
            t = time.perf_counter()
            api.add(conf, f"bench{i}", f"/var/run/netns/{pod}", "eth0", host_netns=node)
            adds.append((time.perf_counter() - t) * 1000)
        for i, pod in enumerate(pods):
            t = time.perf_counter()
            api.delete(conf, f"bench{i}", f"/var/run/netns/{pod}", "eth0", host_netns=node)
            dels.append((time.perf_counter() - t) * 1000)
        return adds, dels
    exe = {"exec": PLUGIN, "inst": INSTALLED, "ref": REF}[mode]
    for i, pod in enumerate(pods):
        adds.append(exec_plugin(exe, "ADD", node, f"bench{i}", pod, data))
    for i, pod in enumerate(pods):
        dels.append(exec_plugin(exe, "DEL", node, f"bench{i}", pod, data))
    return adds, dels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="attachments per plugin (default 100)")
    ap.add_argument("--no-masq", action="store_true", help="ipMasq false (no iptables work in ADD)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/cni.py needs root (it creates network namespaces)")
    # the executable's start-up depends on cached bytecode; PYTHONDONTWRITEBYTECODE may be set here
    compileall.compile_dir(str(REPO / "cni"), quiet=1)
    global INSTALLED
    modes = ["exec", "inst", "lib"] + (["ref"] if os.path.exists(REF) else [])
    created: list[str] = []
    results: dict[str, tuple[list[float], list[float]]] = {}
    tmp = tempfile.mkdtemp(prefix="klb-ipam-")
    from cni.install import install_plugin
    INSTALLED = str(install_plugin(f"{tmp}/bin"))
    try:
        pods = []
        for i in range(args.n):
            name = f"{PREFIX}p{i}"
            sh("ip", "netns", "add", name)
            created.append(name)
            pods.append(name)
        for mode in modes:
            node = f"{PREFIX}{mode}"
            sh("ip", "netns", "add", node)
            created.append(node)
            conf = conf_for("bridge" if mode == "ref" else "kubeling-cni", f"{tmp}/{mode}", not args.no_masq)
            run_mode(mode, node, pods[:1], conf)  # warm-up: bridge, iptables chains, page cache
            results[mode] = run_mode(mode, node, pods, conf)
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run(["rm", "-rf", tmp], timeout=30)

    print(f"CNI ADD/DEL latency over {args.n} attachments, ipMasq={'off' if args.no_masq else 'on'} "
          f"(ms; exec and ref include nsenter + process start)")
    print(f"{'plugin':<30}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}")
    labels = {"exec": "kubeling-cni (console script)", "inst": "kubeling-cni (installed)",
              "lib": "kubeling-cni (library)", "ref": "reference bridge+host-local"}
    for mode in modes:
        a, d = results[mode]
        print(f"{labels[mode]:<30}{statistics.median(a):9.1f}{pct(a, 0.99):9.1f}"
              f"{statistics.median(d):9.1f}{pct(d, 0.99):9.1f}")
    if "ref" in results:
        ra, rd = (statistics.median(x) for x in results["ref"])
        for mode in ("exec", "inst", "lib"):
            a, d = (statistics.median(x) for x in results[mode])
            print(f"ratio {mode}/ref: ADD {a / ra:.2f}x  DEL {d / rd:.2f}x")
        for mode in ("exec", "inst"):
            ea = statistics.median(results[mode][0])
            print(f"target {mode} ADD p50 <= 2x ref: {'met' if ea <= 2 * ra else 'NOT met'} "
                  f"({ea:.1f} vs {2 * ra:.1f} ms)")
    la = statistics.median(results["lib"][0])
    print(f"target lib ADD p50 <= 20 ms: {'met' if la <= 20 else 'NOT met'} ({la:.1f} ms)")


if __name__ == "__main__":
    main()
