"""agent/routes.py: desired host-gw routes from Node objects, and the reconcile over a RouteHost.

The RouteHost behaviour test runs here against FakeRoutes and, as root in a namespace of its own,
against IPRouteHost (tests/integration/test_agent_routes_netns.py); both use tests/routes_behaviour.py.
"""

from __future__ import annotations

from typing import Any

from routes_behaviour import behave

from agent.routes import FakeRoutes, desired_routes, reconcile


def node(name: str, cidr: str | None, ip: str | None) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"podCIDR": cidr} if cidr else {},
            "status": {"addresses": ([{"type": "Hostname", "address": name}]
                                     + ([{"type": "InternalIP", "address": ip}] if ip else []))}}


NODES = [node("node1", "10.244.1.0/24", "192.168.56.11"), node("node2", "10.244.2.0/24", "192.168.56.12"),
         node("node3", "10.244.3.0/24", "192.168.56.13")]


def test_desired_routes_are_the_other_nodes_with_cidr_and_internal_ip() -> None:
    nodes = [*NODES, node("new", None, "192.168.56.20"), node("noip", "10.244.9.0/24", None),
             node("bad", "banana", "192.168.56.21"), node("v6", "fd00::/64", "fd00::1"),
             node("overlap", "10.244.1.0/25", "192.168.56.22")]
    assert desired_routes(nodes, "node1") == {"10.244.2.0/24": "192.168.56.12", "10.244.3.0/24": "192.168.56.13"}


def test_reconcile_adds_changes_and_removes_only_what_differs() -> None:
    host = FakeRoutes()
    assert reconcile(host, NODES, "node1") == ["add 10.244.2.0/24 via 192.168.56.12",
                                                "add 10.244.3.0/24 via 192.168.56.13"]
    assert reconcile(host, NODES, "node1") == []  # level-triggered and idempotent
    moved = [NODES[0], node("node2", "10.244.2.0/24", "192.168.56.32")]  # node2 moved, node3 gone
    assert reconcile(host, moved, "node1") == ["add 10.244.2.0/24 via 192.168.56.32", "del 10.244.3.0/24"]
    assert host.routes() == {"10.244.2.0/24": "192.168.56.32"}


def test_a_route_that_is_not_ours_is_left_alone() -> None:
    host = FakeRoutes(foreign={"10.244.2.0/24"})
    assert reconcile(host, NODES, "node1") == ["add 10.244.3.0/24 via 192.168.56.13"]
    assert "10.244.2.0/24" in host.foreign


def test_fake_routes_behave() -> None:
    behave(FakeRoutes(foreign={"10.250.0.0/24"}))
