"""The RouteHost behaviour (agent/routes.py) shared by the FakeRoutes and IPRouteHost tests."""

from __future__ import annotations

import pytest

from agent.routes import RouteError, RouteHost


def behave(host: RouteHost) -> None:
    """What every RouteHost does: ensure is idempotent and replaces, delete of a missing one succeeds."""
    assert host.routes() == {}
    host.ensure_route("10.244.2.0/24", "192.168.77.12")
    host.ensure_route("10.244.2.0/24", "192.168.77.12")
    assert host.routes() == {"10.244.2.0/24": "192.168.77.12"}
    host.ensure_route("10.244.2.0/24", "192.168.77.13")
    host.ensure_route("10.244.3.0/24", "192.168.77.13")
    assert host.routes() == {"10.244.2.0/24": "192.168.77.13", "10.244.3.0/24": "192.168.77.13"}
    host.delete_route("10.244.2.0/24")
    host.delete_route("10.244.2.0/24")
    assert host.routes() == {"10.244.3.0/24": "192.168.77.13"}
    with pytest.raises(RouteError):
        host.ensure_route("10.250.0.0/24", "192.168.77.14")  # the behaviour's "foreign" route
