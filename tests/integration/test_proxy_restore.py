"""The rendered rulesets against the kernel's own iptables, legacy and nft.

Everything runs inside network namespaces this test creates (klt-<pid>-proxy<n>) and
removes in a finalizer, also on failure; legacy and nft each get their OWN namespace,
since their nat tables must never meet in one.  No traffic is sent: the proxy's
traffic tests live elsewhere.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.iptables import RestoreBackend, detect_mode
from proxy.model import Endpoint, NodeInfo, ServicePort
from proxy.render import chain_names, jump_rules, render

SNAPSHOTS = Path(__file__).resolve().parents[1] / "unit" / "snapshots" / "proxy"
MODES = ("legacy", "nft")
UNRELATED = {"nat": ("PREROUTING", "-s 192.0.2.1/32 -j RETURN"), "filter": ("INPUT", "-s 192.0.2.1/32 -j ACCEPT")}

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nsenter") or not shutil.which("iptables-legacy")
                       or not shutil.which("iptables-nft"),
                       reason="needs root, nsenter and iptables (legacy and nft); creates network namespaces"),
]

_counter = itertools.count()


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=check)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("nsenter", f"--net=/var/run/netns/{ns}", *argv, check=check)


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """A list to which `new_ns` adds namespaces; all are deleted at the end."""
    made: list[str] = []
    try:
        yield made
    finally:
        for name in made:
            sh("ip", "netns", "del", name, check=False)


def new_ns(made: list[str]) -> str:
    name = f"klt-{os.getpid()}-proxy{next(_counter)}"
    sh("ip", "netns", "add", name)
    made.append(name)
    return name


def root_ns_count(mode: str) -> int:
    """Our rules in the machine's own namespace (read only): must always be 0."""
    out = sh(f"iptables-{mode}-save", check=False).stdout
    return sum(1 for line in out.splitlines() if "KUBELING" in line or "KL-" in line)


@pytest.mark.parametrize("mode", MODES)
def test_restore_test_accepts_every_snapshot(netns: list[str], mode: str) -> None:
    ns = new_ns(netns)
    backend = RestoreBackend(mode, ns)  # type: ignore[arg-type]
    files = sorted(SNAPSHOTS.glob("*.rules"))
    assert len(files) >= 8
    for path in files:
        text = path.read_text()
        if "\n-X " in text:
            # The chains to delete must exist for the parser: create them (empty) first.
            doomed = [ln.split()[1] for ln in text.splitlines() if ln.startswith("-X ")]
            backend._restore("*nat\n" + "".join(f":{c} - [0:0]\n" for c in doomed) + "COMMIT\n")
        backend._restore(text, test=True)
    assert root_ns_count(mode) == 0


def _ports(n: int) -> list[ServicePort]:
    eps = (Endpoint("10.244.1.2", 8080, node_name="node-a"), Endpoint("10.244.2.3", 8080, node_name="node-b"))
    return [ServicePort("default", f"s{i}", "", "TCP", f"10.96.0.{10 + i}", 80, node_port=30000 + i if i % 2 else 0,
                        session_affinity=i == 2, external_local=i == 3, endpoints=eps if i != 4 else ())
            for i in range(n)]


@pytest.mark.parametrize("mode", MODES)
def test_apply_reapply_cleanup(netns: list[str], mode: str) -> None:
    ns = new_ns(netns)
    for table, (chain, spec) in UNRELATED.items():
        in_ns(ns, f"iptables-{mode}", "-t", table, "-A", chain, *spec.split())
    node = NodeInfo("node-a", pod_cidr="10.244.0.0/16")
    backend = RestoreBackend(mode, ns)  # type: ignore[arg-type]

    r1 = render(_ports(6), node)
    backend.apply(r1)
    assert backend.our_chains() == chain_names(r1)
    assert detect_mode(ns) == mode

    def check_jumps_and_unrelated() -> None:
        save = in_ns(ns, f"iptables-{mode}-save").stdout
        for jr in jump_rules():
            assert save.count(f"-A {jr.chain} {jr.spec}\n") == 1, jr
        st = backend.state()
        for jr in jump_rules():
            assert st[jr.table].jumps[jr.chain].count(jr.spec) == 1, jr
        for table, (chain, spec) in UNRELATED.items():
            in_ns(ns, f"iptables-{mode}", "-t", table, "-C", chain, *spec.split())  # still there

    check_jumps_and_unrelated()

    # Remove a service: the partial sync leaves no stale chain of it.
    r2 = render(_ports(5), node)
    backend.apply(r2)
    assert backend.our_chains() == chain_names(r2)
    # A restarted proxy (fresh backend, full sync) after another removal: same.
    r3 = render(_ports(3), node)
    fresh = RestoreBackend(mode, ns)  # type: ignore[arg-type]
    fresh.apply(r3)
    assert fresh.our_chains() == chain_names(r3)
    fresh.apply(r3, full=True)  # re-applying changes nothing, jumps stay single
    check_jumps_and_unrelated()

    fresh.cleanup()
    save = in_ns(ns, f"iptables-{mode}-save").stdout
    assert "KUBELING" not in save and "KL-" not in save
    for table, (chain, spec) in UNRELATED.items():
        in_ns(ns, f"iptables-{mode}", "-t", table, "-C", chain, *spec.split())
    fresh.cleanup()  # idempotent
    assert root_ns_count(mode) == 0


@pytest.mark.parametrize("mode", MODES)
def test_failed_apply_raises_with_stderr_and_commits_nothing(netns: list[str], mode: str) -> None:
    from proxy.iptables import ProxyApplyError
    from proxy.render import Rendered

    backend = RestoreBackend(mode, new_ns(netns))  # type: ignore[arg-type]
    with pytest.raises(ProxyApplyError, match="line 2"):
        backend._restore("*nat\n-A KUBELING-NOPE -j ACCEPT\nCOMMIT\n")
    good = render(_ports(3), NodeInfo("node-a"))
    bad = Rendered(chains={"nat": {**good.chains["nat"], "KL-BAD": ("-A KL-BAD -j KL-NOWHERE",)},
                           "filter": good.chains["filter"]})
    with pytest.raises(ProxyApplyError, match="KL-NOWHERE.*\n*.*Error occurred at line"):
        backend.apply(bad)  # the full (streamed) path
    assert backend.our_chains() == {"nat": set(), "filter": set()}, "a failed table commits nothing"
    backend.apply(good)
    assert backend.our_chains() == chain_names(good)
    backend.cleanup()


def _our_lines(save: str) -> list[str]:
    return [ln for ln in save.splitlines() if "KUBELING" in ln or "KL-" in ln]


def test_libiptc_backend_builds_what_restore_builds(netns: list[str]) -> None:
    pytest.importorskip("iptc", reason="python-iptables missing: pip install python-iptables")
    from proxy.iptables import LibiptcBackend

    ns = new_ns(netns)
    in_ns(ns, "iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-s", "192.0.2.1/32", "-j", "RETURN")
    node = NodeInfo("node-a", pod_cidr="10.244.0.0/16")
    r1, r2 = render(_ports(6), node), render(_ports(4), node)

    lib = LibiptcBackend(ns)
    lib.apply(r1)
    lib.apply(r2)  # partial: removes two services
    via_lib = in_ns(ns, "iptables-legacy-save").stdout
    assert lib.our_chains() == chain_names(r2)
    lib.cleanup()
    assert _our_lines(in_ns(ns, "iptables-legacy-save").stdout) == []

    rb = RestoreBackend("legacy", ns)
    rb.apply(r2)
    assert _our_lines(in_ns(ns, "iptables-legacy-save").stdout) == _our_lines(via_lib)
    rb.cleanup()
    in_ns(ns, "iptables-legacy", "-t", "nat", "-C", "PREROUTING", "-s", "192.0.2.1/32", "-j", "RETURN")
    assert root_ns_count("legacy") == 0
