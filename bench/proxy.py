"""Service proxy sync cost: render + apply of N services, per backend, against the bare restore.

    sudo .venv/bin/python bench/proxy.py            # 1,000 / 5,000 / 10,000 services
    sudo .venv/bin/python bench/proxy.py --quick    # 500 / 2,000
    sudo .venv/bin/python bench/proxy.py --json out.json

Synthetic ServicePorts: N ClusterIP services with 2 endpoints each (every 10th also a
NodePort).  For each size it prints

    render        cold (empty memo) and warm (the same ports again) render time, all rules made;
                  and the render() call alone (lazy: the full sync streams the rest)
    full sync     render + apply into an empty namespace: restore-legacy, restore-nft, libiptc
    bare          `iptables-legacy-restore --noflush < file` of the very same payload, in an
                  empty namespace of its own, run alternately with ours (median of 3)
    ratio         ours / bare (the adapter's overhead: save, payload, jump fix-ups, nsenter)
    incremental   one endpoint changed at the largest size: render + partial apply
    resync        the periodic full=True sync of a running proxy (warm render, kernel populated)
    comments      bare restore of the payload with `-m comment` on every rule (what they cost)

Everything runs in namespaces named klb-<pid>-proxy<n>, created here and removed at the
end, also on error or SIGTERM.  nft and libiptc runs are skipped when the previous size
predicts more than --budget seconds (nft restore is ~15x slower than legacy here).
Targets (2-core VM): full sync of 10k <= 2 s with the best backend, ours/bare <= 1.3,
one-endpoint change at 10k <= 300 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._util import Figure, format_table, progress  # noqa: E402
from proxy import render as render_mod  # noqa: E402
from proxy.iptables import LibiptcBackend, RestoreBackend, _Applier  # noqa: E402
from proxy.model import Endpoint, NodeInfo, ServicePort  # noqa: E402
from proxy.render import RenderConfig, Rendered, render  # noqa: E402

PREFIX = f"klb-{os.getpid()}-proxy"
NODE = NodeInfo("node-a", pod_cidr="10.244.0.0/16")
_made: list[str] = []


def sh(*argv: str, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=True)


def new_ns() -> str:
    name = f"{PREFIX}{len(_made)}"
    sh("ip", "netns", "add", name)
    _made.append(name)
    return name


def del_ns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60, check=False)
    if name in _made:
        _made.remove(name)


def synthetic(n: int, changed: int = -1) -> list[ServicePort]:
    """n services with 2 endpoints each; service `changed` gets one endpoint moved."""
    out = []
    for i in range(n):
        a, b = divmod(i, 250)
        eps = (Endpoint(f"10.244.{a}.{b + 1}", 8080, node_name="node-a"),
               Endpoint(f"10.245.{a}.{b + 1}" if i != changed else "10.246.0.1", 8080, node_name="node-b"))
        out.append(ServicePort("bench", f"svc-{i}", "", "TCP", f"10.96.{a}.{b + 1}", 80,
                               node_port=30000 + i if i % 10 == 0 and i < 2700 else 0, endpoints=eps))
    return out


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bare_restore(path: str, mode: str = "legacy") -> float:
    """The kernel baseline: the restore tool alone on a file, in an empty namespace."""
    ns = new_ns()
    try:
        with open(path) as f:
            t = time.perf_counter()
            subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", f"iptables-{mode}-restore", "--noflush"],
                           stdin=f, capture_output=True, timeout=600, check=True)
            return time.perf_counter() - t
    finally:
        del_ns(ns)


def cold_render(ports: list[ServicePort], cfg: RenderConfig = RenderConfig(), *,
                whole: bool = True) -> tuple[Rendered, float]:
    """render() with an empty memo, all its rules made; whole=False: only the render() call,
    whose rules a full sync makes while it streams them into the restore."""
    render_mod._service.cache_clear()
    t = time.perf_counter()
    r = render(ports, NODE, cfg)
    if whole:
        r.chains  # noqa: B018 - every rule made
    return r, time.perf_counter() - t


def full_sync(make: Callable[[str], _Applier], ports: list[ServicePort]) -> tuple[float, float, str]:
    """Cold render + apply into an empty namespace: (total s, apply s, payload applied)."""
    ns = new_ns()
    try:
        backend = make(ns)
        t = time.perf_counter()
        r, t_render = cold_render(ports, whole=False)
        backend.apply(r)  # streams the rest of the render into the restore
        total = time.perf_counter() - t
        return total, total - t_render, backend.last_payload
    finally:
        del_ns(ns)


def incremental(make: Callable[[str], _Applier], n: int, rounds: int = 3) -> tuple[float, float, int]:
    """Full sync of n services, then one endpoint changed, `rounds` times (a different service
    each time): medians of (render+apply s, render s), and the partial payload's bytes."""
    ns = new_ns()
    try:
        backend = make(ns)
        backend.apply(render(synthetic(n), NODE))
        totals, renders = [], []
        for k in range(rounds):
            ports = synthetic(n, changed=n // 2 + k)
            t = time.perf_counter()
            r = render(ports, NODE)
            r.chains  # noqa: B018 - the whole render, as diff() needs it
            renders.append(time.perf_counter() - t)
            backend.apply(r)
            totals.append(time.perf_counter() - t)
        return statistics.median(totals), statistics.median(renders), len(backend.last_payload)
    finally:
        del_ns(ns)


def resync(n: int, rounds: int = 3) -> tuple[float, float]:
    """The periodic full resync of a running proxy: warm render + apply(full=True) over a
    populated namespace, against the bare restore of the same payload over the same state.
    Medians of (ours s, bare s)."""
    ns = new_ns()
    try:
        backend = RestoreBackend("legacy", ns)
        ports = synthetic(n)
        backend.apply(render(ports, NODE))
        ours, bare = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            backend.apply(render(ports, NODE), full=True)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "iptables-legacy-restore", "--noflush"],
                           input=backend.last_payload, text=True, capture_output=True, timeout=600, check=True)
            bare.append(time.perf_counter() - t)
        return statistics.median(ours), statistics.median(bare)
    finally:
        del_ns(ns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 and 2,000 services")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 1000,5000")
    ap.add_argument("--budget", type=float, default=30.0, help="skip a run predicted to take longer (s)")
    ap.add_argument("--no-libiptc", action="store_true")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/proxy.py needs root (it creates network namespaces)")
    sizes = args.sizes or ([500, 2000] if args.quick else [1000, 5000, 10000])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"# load average {os.getloadavg()[0]:.2f}, sizes {sizes}", flush=True)

    figs: list[Figure] = []
    backends: dict[str, Callable[[str], _Applier]] = {
        "restore-legacy": lambda ns: RestoreBackend("legacy", ns),
        "restore-nft": lambda ns: RestoreBackend("nft", ns),
    }
    if not args.no_libiptc:
        backends["libiptc"] = lambda ns: LibiptcBackend(ns)
    last: dict[str, tuple[int, float]] = {}
    growth: dict[str, float] = {}  # per backend: exponent of time vs size, from its last two runs
    tmp = tempfile.mkdtemp(prefix="klb-proxy-")
    try:
        for n in sizes:
            sec = f"{n} svc"
            big = n == max(sizes)
            ports = synthetic(n)
            t_names = statistics.median(cold_render(ports, whole=False)[1] for _ in range(3))
            cold = [cold_render(ports) for _ in range(3)]
            r, t_cold = cold[0][0], statistics.median(t for _, t in cold)
            t_warm = statistics.median(timed(lambda ports=ports: render(ports, NODE).chains)  # type: ignore[misc]
                                       for _ in range(3))
            figs.append(Figure(sec, "render (cold)", t_cold * 1000, "ms", note=f"{r.rule_count():,} rules, "
                               f"{sum(len(c) for c in r.chains.values()):,} chains, median of 3"))
            figs.append(Figure(sec, "render() call (cold, lazy)", t_names * 1000, "ms",
                               note="sort only: a full sync makes the rest while the restore parses it"))
            figs.append(Figure(sec, "render (warm memo)", t_warm * 1000, "ms"))
            progress(f"{n}: render {t_cold:.3f}s cold ({t_names:.3f}s in the call), {t_warm:.3f}s warm")
            for name, make in backends.items():
                if name in last:
                    n0, t0 = last[name]
                    # nft grows about n^2 here, libiptc about n: extrapolate from the last two runs.
                    predicted = t0 * (n / n0) ** growth.get(name, 1.5)
                    if predicted > args.budget:
                        figs.append(Figure(sec, f"full sync {name}", float("nan"), "s",
                                           note=f"skipped: predicted {predicted:.0f}s > budget {args.budget:.0f}s"))
                        progress(f"{n}: {name} skipped (predicted {predicted:.0f}s)")
                        continue
                target = 2.0 if big and n >= 10000 and name == "restore-legacy" else None
                if name != "restore-legacy":
                    t, _, _ = full_sync(make, ports)
                    figs.append(Figure(sec, f"full sync {name}", t, "s"))
                    if name in last:
                        n0, t0 = last[name]
                        growth[name] = max(1.0, math.log(t / t0) / math.log(n / n0))
                    last[name] = (n, t)
                    progress(f"{n}: {name} {t:.2f}s")
                    continue
                ours: list[float] = []
                applies: list[float] = []
                bare: list[float] = []
                for _ in range(3):  # alternate ours and bare so load drifts hit both
                    t, t_apply, text = full_sync(make, ports)
                    path = os.path.join(tmp, f"{n}.rules")
                    Path(path).write_text(text)
                    ours.append(t)
                    applies.append(t_apply)
                    bare.append(bare_restore(path))
                t_ours, t_bare = statistics.median(ours), statistics.median(bare)
                t_apply = statistics.median(applies)
                last[name] = (n, t_ours)
                figs.append(Figure(sec, f"full sync {name}", t_ours, "s", "<=" if target else "", target,
                                   note="cold render + save + restore, median of 3"))
                figs.append(Figure(sec, "bare iptables-legacy-restore", t_bare, "s", note="same payload"))
                figs.append(Figure(sec, "ours / bare", t_ours / t_bare, "x", "<=", 1.3,
                                   note="full sync incl. cold render"))
                figs.append(Figure(sec, "ours / bare, apply only", t_apply / t_bare, "x",
                                   note="save + restore with the render streamed in, minus the render() call"))
                progress(f"{n}: legacy ours {t_ours:.3f}s bare {t_bare:.3f}s")
            if big:
                for name in ("restore-legacy", "restore-nft"):
                    if name in last and last[name][0] == n:
                        t, t_r, size = incremental(backends[name], n)
                        tgt = 0.3 if name == "restore-legacy" else None
                        figs.append(Figure(sec, f"one endpoint change {name}", t * 1000, "ms",
                                           "<=" if tgt else "", tgt * 1000 if tgt else None,
                                           note=f"render {t_r * 1000:.0f} ms, partial payload {size:,} B"))
                        progress(f"{n}: incremental {name} {t:.3f}s")
                t_rs, t_rs_bare = resync(n)
                figs.append(Figure(sec, "periodic full resync restore-legacy", t_rs, "s",
                                   note="warm render + save + restore over the populated table"))
                figs.append(Figure(sec, "bare restore over the populated table", t_rs_bare, "s"))
                figs.append(Figure(sec, "resync ours / bare", t_rs / t_rs_bare, "x"))
                progress(f"{n}: resync {t_rs:.3f}s vs bare {t_rs_bare:.3f}s")
                commented, _ = cold_render(ports, RenderConfig(comments=True))
                path = os.path.join(tmp, f"{n}-comments.rules")
                Path(path).write_text("".join(commented.tables.values()))
                t_comm = statistics.median(bare_restore(path) for _ in range(3))
                figs.append(Figure(sec, "bare restore, with comments", t_comm, "s",
                                   note=f"payload {os.path.getsize(path):,} B (default drops them above "
                                        f"{render_mod.LARGE_CLUSTER_ENDPOINTS} endpoints)"))
    finally:
        for name in list(_made):
            del_ns(name)
        for p in Path(tmp).glob("*"):
            p.unlink()
        os.rmdir(tmp)
    print(format_table(figs))
    if args.json:
        Path(args.json).write_text(json.dumps([f.as_dict() for f in figs], indent=1))


if __name__ == "__main__":
    main()
