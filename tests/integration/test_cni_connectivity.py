"""Connectivity through the plugin's bridge, and side by side with the reference bridge + host-local."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_fixtures import (
    REF_DIR,
    Namespaces,
    make_conf,
    needs_iptables,
    needs_ref,
    needs_root,
    netns,  # noqa: F401  (fixture)
    our_veths,
    path,
    ping,
    run_plugin,
    sh,
)

pytestmark = [pytest.mark.root, pytest.mark.netns, needs_root]

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
while True:
    c, peer = s.accept()
    c.sendall(("hello " + peer[0]).encode()); c.close()
"""

CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(c.recv(100).decode())
except OSError as e:
    print("ERR", e); sys.exit(1)
"""


def ip_of(res: dict[str, Any]) -> str:
    return str(res["ips"][0]["address"].split("/")[0])


def attach(conf: dict[str, Any], node: str, pods: list[str], plugin: str | None = None) -> list[dict[str, Any]]:
    out = []
    for i, pod in enumerate(pods):
        kw: dict[str, Any] = {"plugin": plugin} if plugin else {}
        rc, res, err = run_plugin("ADD", conf, node, cid=f"c{i}", pod=pod, **kw)
        assert rc == 0, (res, err)
        assert res is not None
        out.append(res)
    return out


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:  # stop by recorded PID
            p.kill()
            p.wait(timeout=10)


def serve(procs: list[subprocess.Popen[bytes]], ns: str, port: int) -> None:
    procs.append(subprocess.Popen(["nsenter", f"--net={path(ns)}", sys.executable, "-c", SERVER, str(port)]))


def fetch(ns: str, ip: str, port: int, timeout: float = 2.0, tries: int = 20) -> str:
    out = ""
    for _ in range(tries):
        p = sh("nsenter", f"--net={path(ns)}", sys.executable, "-c", CLIENT, ip, str(port), str(timeout),
               check=False)
        out = p.stdout.strip()
        if p.returncode == 0:
            return out
        if "timed out" in out:
            return out
        time.sleep(0.1)  # server not listening yet
    return out


def test_three_pods_reach_each_other_and_the_gateway(netns: Namespaces, tmp_path: Path) -> None:  # noqa: F811
    node = netns.new("node")
    pods = [netns.new("p") for _ in range(3)]
    results = attach(make_conf("conn", "10.89.0.0/24", str(tmp_path)), node, pods)
    ips = [ip_of(r) for r in results]
    for i, pod in enumerate(pods):
        assert ping(pod, "10.89.0.1"), f"pod {i} cannot reach the gateway"
        for j, ip in enumerate(ips):
            assert ping(pod, ip), f"pod {i} cannot reach pod {j} at {ip}"


@needs_iptables
@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpin_through_dnat(netns: Namespaces, tmp_path: Path, servers: list[subprocess.Popen[bytes]],  # noqa: F811
                              hairpin: bool) -> None:
    """A pod reaches itself through a ClusterIP-like DNAT (kube-proxy style, with the hairpin MASQUERADE)."""
    node = netns.new("node")
    pod, other = netns.new("p"), netns.new("p")
    conf = make_conf("hp", "10.90.0.0/24", str(tmp_path), hairpinMode=hairpin, ipMasq=True)
    res = attach(conf, node, [pod, other])
    pod_ip = ip_of(res[0])
    vip = "10.96.0.10"
    ipt = ["nsenter", f"--net={path(node)}", "iptables-legacy", "-w", "5", "-t", "nat"]
    sh(*ipt, "-A", "PREROUTING", "-d", vip, "-p", "tcp", "--dport", "80", "-j", "DNAT",
       "--to-destination", f"{pod_ip}:8080")
    sh(*ipt, "-A", "POSTROUTING", "-s", pod_ip, "-d", pod_ip, "-j", "MASQUERADE")
    serve(servers, pod, 8080)
    assert fetch(other, pod_ip, 8080).startswith("hello"), "server not reachable directly"
    assert fetch(other, vip, 80).startswith("hello"), "DNAT from another pod does not work"
    got = fetch(pod, vip, 80, timeout=1.5)
    if hairpin:
        assert got == "hello 10.90.0.1", got  # masqueraded to the gateway, back through the same port
    else:
        assert not got.startswith("hello"), "without hairpin mode the bridge should not reflect the frame"


@needs_ref
def test_same_shape_and_connectivity_as_reference(netns: Namespaces, tmp_path: Path) -> None:  # noqa: F811
    results: dict[str, list[dict[str, Any]]] = {}
    for label, plugin_type, exe in (("ref", "bridge", f"{REF_DIR}/bridge"), ("kl", "kubeling-cni", None)):
        node = netns.new("node")
        pods = [netns.new("p") for _ in range(3)]
        conf = make_conf("side", "10.91.0.0/24", str(tmp_path / label), version="1.0.0", plugin=plugin_type,
                         ipMasq=True)
        res = attach(conf, node, pods, plugin=exe)
        results[label] = res
        ips = [ip_of(r) for r in res]
        for i, pod in enumerate(pods):
            assert ping(pod, "10.91.0.1"), f"{label}: gateway unreachable"
            for j, ip in enumerate(ips):
                if i != j:  # the reference leaves lo down (a runtime runs the loopback plugin for that)
                    assert ping(pod, ip), f"{label}: {ip} unreachable"
        for i, pod in enumerate(pods):
            kw: dict[str, Any] = {"plugin": exe} if exe else {}
            rc, out, err = run_plugin("DEL", conf, node, cid=f"c{i}", pod=pod, **kw)
            assert rc == 0, (out, err)
        remaining = [ln for ln in sh("ip", "-n", node, "-o", "link").stdout.splitlines() if "veth" in ln]
        assert remaining == [] and our_veths(node) == []

    for ref, kl in zip(results["ref"], results["kl"], strict=True):
        assert set(ref) == set(kl)
        assert ref["cniVersion"] == kl["cniVersion"] == "1.0.0"
        assert [set(i) for i in ref["interfaces"]] == [set(i) for i in kl["interfaces"]]
        assert ref["interfaces"][0]["name"] == kl["interfaces"][0]["name"] == "kl0"
        assert ref["interfaces"][2]["name"] == kl["interfaces"][2]["name"] == "eth0"
        assert [set(i) for i in ref["ips"]] == [set(i) for i in kl["ips"]]
        assert ref["ips"][0]["gateway"] == kl["ips"][0]["gateway"] == "10.91.0.1"
        assert ref["ips"][0]["interface"] == kl["ips"][0]["interface"] == 2
        assert ref["ips"][0]["address"] == kl["ips"][0]["address"]  # same allocation order too
        assert ref["routes"] == kl["routes"]
        assert ref["dns"] == kl["dns"]
