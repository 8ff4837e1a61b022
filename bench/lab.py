"""The lab as a new user meets it (as root): `lab up` -> all nodes Ready, `lab demo` -> first ClusterIP answer.

    .venv/bin/python bench/lab.py [--nodes 2] [--runs 3]

Each run uses a temp state dir and a per-run prefix (klb<pid><run>), runs `scripts/lab up --nodes N`,
polls the Nodes through the lab's kubeconfig until all are Ready, then `scripts/lab demo`, which
prints how long after its start the first request to the ClusterIP succeeded; `scripts/lab down`
always runs at the end of each run (also on failure or Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._util import Figure, format_table, percentile, progress  # noqa: E402


def lab(state: str, prefix: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "scripts" / "lab"), "--state-dir", state, "--prefix", prefix, *args],
                          capture_output=True, text=True, timeout=timeout)


def ready_nodes(kubeconfig: str) -> int:
    res = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "nodes", "-o", "json"],
                         capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        return 0
    return sum(any(c.get("type") == "Ready" and c.get("status") == "True" for c in n["status"].get("conditions", []))
               for n in json.loads(res.stdout).get("items", []))


def one_run(run: int, nodes: int) -> tuple[float, float, float]:
    """(seconds up -> all Ready, seconds `lab up` itself took, seconds demo start -> first ClusterIP answer)."""
    state = tempfile.mkdtemp(prefix="kl-bench-lab-")
    prefix = f"klb{os.getpid() % 100000}{run}"
    try:
        t0 = time.monotonic()
        up = lab(state, prefix, "up", "--nodes", str(nodes), "--no-install", "--no-images", "--api-port", "0")
        t_up = time.monotonic() - t0
        if up.returncode != 0:
            raise SystemExit(f"bench/lab.py: lab up failed: {(up.stderr or up.stdout).strip()[-300:]}")
        kubeconfig = os.path.join(state, "kubeconfig")
        deadline = time.monotonic() + 120
        while ready_nodes(kubeconfig) < nodes:
            if time.monotonic() > deadline:
                raise SystemExit("bench/lab.py: nodes not Ready within 120 s after lab up")
            time.sleep(0.1)
        t_ready = time.monotonic() - t0
        progress(f"run {run}: lab up {t_up:.2f} s, all {nodes} nodes Ready {t_ready:.2f} s")
        demo = lab(state, prefix, "demo", "--requests", "2")
        m = re.search(r"first ClusterIP answer ([0-9.]+) s after demo start", demo.stdout)
        if demo.returncode != 0 or m is None:
            raise SystemExit(f"bench/lab.py: lab demo failed: {(demo.stderr or demo.stdout).strip()[-400:]}")
        t_first = float(m.group(1))
        progress(f"run {run}: demo: first ClusterIP answer {t_first:.2f} s after demo start")
        return t_ready, t_up, t_first
    finally:
        down = lab(state, prefix, "down")
        if down.returncode != 0:
            print(f"bench/lab.py: lab down failed: {down.stderr.strip()}", file=sys.stderr)
        shutil.rmtree(state, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/lab.py: run as root (the lab creates network namespaces)", file=sys.stderr)
        return 2
    for tool in ("kubectl", "docker"):
        if shutil.which(tool) is None:
            print(f"bench/lab.py: {tool} is not installed", file=sys.stderr)
            return 2
    results = [one_run(i, args.nodes) for i in range(1, args.runs + 1)]
    sec = f"lab ({args.nodes} workers, {args.runs} runs, median / max)"
    figs = []
    for i, name in enumerate(("lab up -> all nodes Ready", "lab up (command)", "lab demo start -> first ClusterIP answer")):
        vals = [r[i] for r in results]
        figs.append(Figure(sec, name, percentile(vals, 50), "s", note=f"max {max(vals):.2f} s"))
    print(format_table(figs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
