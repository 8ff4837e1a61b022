"""Pure parts of the Endpoints/EndpointSlice controllers: port resolution, slice packing."""

from __future__ import annotations

from typing import Any

from controllers.endpoints import ResolvedPort, pod_counts, resolve_target_port
from controllers.endpointslice import plan_slices

POD: dict[str, Any] = {"spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080},
                                                          {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]}}


def test_target_port_resolution() -> None:
    assert resolve_target_port({"port": 80}, POD) == 80
    assert resolve_target_port({"port": 80, "targetPort": 9000}, POD) == 9000
    assert resolve_target_port({"port": 80, "targetPort": "web"}, POD) == 8080
    assert resolve_target_port({"port": 53, "targetPort": "dns", "protocol": "UDP"}, POD) == 53
    assert resolve_target_port({"port": 53, "targetPort": "dns"}, POD) is None  # TCP: no such port
    assert resolve_target_port({"port": 80, "targetPort": "nope"}, POD) is None


def test_pod_counts() -> None:
    running = {"metadata": {}, "status": {"phase": "Running", "podIP": "10.0.0.1"}}
    assert pod_counts(running, include_terminating=False)
    assert not pod_counts({"metadata": {}, "status": {"phase": "Pending"}}, True)
    assert not pod_counts({"metadata": {}, "status": {"phase": "Succeeded", "podIP": "10.0.0.1"}}, True)
    terminating = {**running, "metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}
    assert pod_counts(terminating, True) and not pod_counts(terminating, False)


def ep(i: int) -> dict[str, Any]:
    return {"addresses": [f"10.0.{i // 256}.{i % 256}"], "conditions": {"ready": True}}


def test_packing_caps_slices_and_keeps_endpoints_in_place() -> None:
    ports = (ResolvedPort("http", 8080, "TCP"),)
    desired = {ports: {e["addresses"][0]: e for e in map(ep, range(250))}}
    plans, delete = plan_slices(desired, [], 100)
    assert [len(p.endpoints) for p in plans] == [100, 100, 50] and not delete

    existing = [{"metadata": {"name": f"s{i}"}, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                 "endpoints": p.endpoints} for i, p in enumerate(plans)]
    # one endpoint leaves slice s0, one arrives: s0 takes it (room), s1 and s2 stay as they are
    gone = existing[0]["endpoints"][0]["addresses"][0]
    del desired[ports][gone]
    desired[ports]["10.9.9.9"] = {"addresses": ["10.9.9.9"], "conditions": {"ready": True}}
    plans, delete = plan_slices(desired, existing, 100)
    assert [p.existing["metadata"]["name"] for p in plans if p.existing] == ["s0", "s1", "s2"]
    assert plans[1].endpoints == existing[1]["endpoints"] and plans[2].endpoints == existing[2]["endpoints"]
    assert "10.9.9.9" in {e["addresses"][0] for e in plans[0].endpoints} and not delete


def test_no_endpoints_keeps_one_placeholder_and_drops_other_port_sets() -> None:
    old = {"metadata": {"name": "s0"}, "ports": [{"name": "", "port": 1, "protocol": "TCP"}], "endpoints": [ep(1)]}
    plans, delete = plan_slices({(): {}}, [old], 100)
    assert len(plans) == 1 and plans[0].existing is None and plans[0].endpoints == []
    assert delete == [old]
