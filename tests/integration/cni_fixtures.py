"""Shared helpers for the CNI integration tests.

Everything networked lives in namespaces named klt-<pid>-<n> made here and
removed by the fixture's finalizer, also when a test fails.  The plugin runs
inside a "node" namespace of the test (executable: `nsenter --net=...`;
library: host_netns=<name>), never in the machine's own namespace.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = str(Path(sys.executable).parent / "kubeling-cni")
REF_DIR = "/usr/lib/cni"
NETNS_DIR = "/var/run/netns"
TIMEOUT = 30

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None,
                                reason="needs root, iproute2 and nsenter (creates network namespaces)")
needs_ref = pytest.mark.skipif(not os.path.exists(f"{REF_DIR}/bridge") or not os.path.exists(f"{REF_DIR}/host-local"),
                               reason="reference plugins missing: apt-get install containernetworking-plugins")
needs_iptables = pytest.mark.skipif(shutil.which("iptables-legacy") is None,
                                    reason="iptables-legacy missing: apt-get install iptables")


def sh(*argv: str, check: bool = True, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


class Namespaces:
    """Creates per-run network namespaces and removes every one of them at the end."""

    _counter = itertools.count()

    def __init__(self) -> None:
        self.prefix = f"klt-{os.getpid()}-"
        self.names: list[str] = []

    def new(self, tag: str = "ns") -> str:
        name = f"{self.prefix}{tag}{next(self._counter)}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        return name

    def delete(self, name: str) -> None:
        sh("ip", "netns", "del", name, check=False)
        if name in self.names:
            self.names.remove(name)

    def cleanup(self) -> None:
        for name in list(self.names):
            self.delete(name)

    def leftovers(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(self.prefix))
        except FileNotFoundError:
            return []


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.cleanup()


def path(ns: str) -> str:
    return f"{NETNS_DIR}/{ns}"


def make_conf(name: str, subnet: str, data_dir: str, *, version: str = "1.1.0", plugin: str = "kubeling-cni",
              bridge: str = "kl0", **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "cniVersion": version, "name": name, "type": plugin, "bridge": bridge,
        "isGateway": True, "isDefaultGateway": True, "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
    }
    conf.update(extra)
    return conf


def run_plugin(command: str, conf: dict[str, Any] | str | bytes, node: str, *, cid: str = "", pod: str = "",
               ifname: str = "eth0", plugin: str = PLUGIN, cni_args: str = "",
               timeout: float = TIMEOUT) -> tuple[int, dict[str, Any] | None, str]:
    """Exec a CNI plugin inside the node namespace the way a runtime does."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_PATH": REF_DIR}
    if cid:
        env["CNI_CONTAINERID"] = cid
    if pod:
        env["CNI_NETNS"] = pod if pod.startswith("/") else path(pod)
    if ifname and command in ("ADD", "DEL", "CHECK"):
        env["CNI_IFNAME"] = ifname
    if cni_args:
        env["CNI_ARGS"] = cni_args
    data = conf if isinstance(conf, (str, bytes)) else json.dumps(conf)
    if isinstance(data, str):
        data = data.encode()
    p = subprocess.run(["nsenter", f"--net={path(node)}", plugin], input=data, env=env,
                       capture_output=True, timeout=timeout)
    out = p.stdout.decode().strip()
    return p.returncode, (json.loads(out) if out else None), p.stderr.decode()


def links(ns: str) -> list[str]:
    """Link names in a namespace, read with iproute2 (independent of the plugin)."""
    p = sh("ip", "-n", ns, "-o", "link", "show")
    return [line.split(":")[1].strip().split("@")[0] for line in p.stdout.splitlines()]


def our_veths(ns: str) -> list[str]:
    return [n for n in links(ns) if n.startswith("klv")]


def addrs(ns: str, dev: str) -> list[str]:
    p = sh("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", dev, check=False)
    return [line.split()[3] for line in p.stdout.splitlines()]


def ping(ns: str, ip: str, count: int = 1) -> bool:
    """Ping from inside `ns` an address that lives in a namespace of the test."""
    p = sh("nsenter", f"--net={path(ns)}", "ping", "-c", str(count), "-W", "2", "-i", "0.2", ip, check=False)
    return p.returncode == 0


def reservations(data_dir: str, network: str) -> list[str]:
    d = Path(data_dir) / network
    if not d.exists():
        return []
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit())
