"""IPRouteHost in a namespace of this test's own (root): the same behaviour as FakeRoutes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from routes_behaviour import behave

from agent.routes import IPRouteHost

pytestmark = [pytest.mark.root, pytest.mark.netns]


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"klt-{os.getpid()}-routes"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")  # no dummy module here
        ip("-n", name, "addr", "add", "192.168.77.1/24", "dev", "d0")
        ip("-n", name, "link", "set", "d0", "up")
        ip("-n", name, "route", "add", "10.250.0.0/24", "via", "192.168.77.2")  # not ours (proto boot)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def test_iproute_host_behaves(netns: str) -> None:
    behave(IPRouteHost(netns))
    out = subprocess.run(["ip", "-n", netns, "route"], capture_output=True, text=True, check=True).stdout
    assert "10.250.0.0/24 via 192.168.77.2" in out and "10.244.3.0/24 via 192.168.77.13 dev d0 proto 212" in out
