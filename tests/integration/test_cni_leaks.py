"""Leaks and crash safety: many cycles, SIGKILL at random points + GC, parallel ADDs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cni_fixtures import (
    PLUGIN,
    Namespaces,
    links,
    make_conf,
    needs_root,
    netns,  # noqa: F401  (fixture)
    our_veths,
    path,
    reservations,
    run_plugin,
)

pytestmark = [pytest.mark.root, pytest.mark.netns, needs_root]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_clean(netns: Namespaces, node: str, data_dir: Path, network: str) -> None:  # noqa: F811
    assert reservations(str(data_dir), network) == []
    assert our_veths(node) == []
    assert sorted(links(node)) == ["kl0", "lo"]
    assert netns.leftovers() == [node]
    assert [p.name for p in (data_dir / network).iterdir() if p.name.startswith(".tmp")] == []


@pytest.mark.slow
def test_500_library_cycles_leave_nothing(netns: Namespaces, tmp_path: Path) -> None:  # noqa: F811
    from cni import api
    node = netns.new("node")
    conf = make_conf("cyc", "10.92.0.0/24", str(tmp_path))
    api.add(conf, "warm", path(netns.new("p")), "eth0", host_netns=node)  # bridge made once
    api.delete(conf, "warm", None, "eth0", host_netns=node)
    for name in [n for n in netns.names if n != node]:
        netns.delete(name)
    fds = open_fds()
    seen = set()
    for i in range(500):
        pod = netns.new("p")
        res = api.add(conf, f"cycle{i}", path(pod), "eth0", host_netns=node)
        seen.add(res["ips"][0]["address"])
        api.delete(conf, f"cycle{i}", path(pod), "eth0", host_netns=node)
        netns.delete(pod)
    assert len(seen) == 253  # round-robin walked the whole range
    assert open_fds() == fds, "the library leaked file descriptors"
    assert_clean(netns, node, tmp_path, "cyc")


@pytest.mark.slow
def test_100_executable_cycles_leave_nothing(netns: Namespaces, tmp_path: Path) -> None:  # noqa: F811
    node = netns.new("node")
    conf = make_conf("cycx", "10.93.0.0/24", str(tmp_path))
    for i in range(100):
        pod = netns.new("p")
        rc, res, err = run_plugin("ADD", conf, node, cid=f"x{i}", pod=pod)
        assert rc == 0, (res, err)
        rc, res, err = run_plugin("DEL", conf, node, cid=f"x{i}", pod=pod)
        assert rc == 0, (res, err)
        netns.delete(pod)
    assert_clean(netns, node, tmp_path, "cycx")


def _env(cid: str, pod: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin"), "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid,
            "CNI_NETNS": path(pod), "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def test_sigkill_during_add_then_gc(netns: Namespaces, tmp_path: Path) -> None:  # noqa: F811
    """20 ADDs killed with SIGKILL at random points; GC with the live list leaves exactly them."""
    node = netns.new("node")
    conf = make_conf("kill", "10.94.0.0/24", str(tmp_path))
    data = json.dumps(conf).encode()
    # how long does an ADD take here?  Kill uniformly within that window.
    t = time.monotonic()
    rc, res, err = run_plugin("ADD", conf, node, cid="probe", pod=netns.new("p"))
    assert rc == 0, err
    window = time.monotonic() - t
    live = [("probe", "eth0")]
    pods = {}
    rnd = random.Random(1234)
    killed = 0
    for i in range(20):
        pod = netns.new("p")
        cid = f"k{i}"
        pods[cid] = pod
        p = subprocess.Popen(["nsenter", f"--net={path(node)}", PLUGIN], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(cid, pod))
        assert p.stdin is not None
        p.stdin.write(data)
        p.stdin.close()
        time.sleep(rnd.uniform(0.0, window * 1.1))
        p.send_signal(signal.SIGKILL)  # by recorded PID (nsenter execs the plugin in place)
        p.wait(timeout=30)
        assert p.stdout is not None
        out = p.stdout.read()
        if p.returncode == 0 and out:
            live.append((cid, "eth0"))  # finished before the kill: the runtime saw success
        else:
            killed += 1
    assert killed >= 5, "the kill window was too late to test anything"
    gc_conf = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in live]})
    rc, out2, err = run_plugin("GC", gc_conf, node)
    assert rc == 0, (out2, err)

    from cni.api import host_veth_name
    owners = []
    for ip in reservations(str(tmp_path), "kill"):
        owners.append(tuple((tmp_path / "kill" / ip).read_text().split()))
    assert sorted(owners) == sorted(live)
    assert sorted(our_veths(node)) == sorted(host_veth_name("kill", c, i) for c, i in live)
    for cid, pod in pods.items():
        if (cid, "eth0") not in live:
            assert "eth0" not in links(pod)
    assert [p.name for p in (tmp_path / "kill").iterdir() if p.name.startswith(".tmp")] == []
    # the network still works after the carnage (no wedged lock), and GC left the live ones intact
    rc, res, err = run_plugin("ADD", conf, node, cid="after", pod=netns.new("p"))
    assert rc == 0, err


def test_parallel_adds_get_distinct_ips(netns: Namespaces, tmp_path: Path) -> None:  # noqa: F811
    node = netns.new("node")
    conf = make_conf("par", "10.95.0.0/24", str(tmp_path))
    data = json.dumps(conf).encode()
    procs = []
    for i in range(10):
        pod = netns.new("p")
        p = subprocess.Popen(["nsenter", f"--net={path(node)}", PLUGIN], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(f"par{i}", pod))
        procs.append(p)
    outs = []
    for p in procs:
        o, e = p.communicate(data, timeout=60)
        assert p.returncode == 0, (o, e)
        outs.append(json.loads(o))
    ips = [o["ips"][0]["address"] for o in outs]
    assert len(set(ips)) == 10, ips
    assert len(reservations(str(tmp_path), "par")) == 10 and len(our_veths(node)) == 10


def test_parallel_library_threads_get_distinct_ips(netns: Namespaces, tmp_path: Path) -> None:  # noqa: F811
    from cni import api
    node = netns.new("node")
    conf = make_conf("thr", "10.96.0.0/24", str(tmp_path))
    pods = [netns.new("p") for _ in range(10)]
    results: list[Any] = [None] * 10

    def work(i: int) -> None:
        try:
            results[i] = api.add(conf, f"t{i}", path(pods[i]), "eth0", host_netns=node)
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(isinstance(r, dict) for r in results), results
    assert len({r["ips"][0]["address"] for r in results}) == 10
    for i in range(10):
        api.delete(conf, f"t{i}", path(pods[i]), "eth0", host_netns=node)
    assert reservations(str(tmp_path), "thr") == [] and our_veths(node) == []
