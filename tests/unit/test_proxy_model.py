"""Services + EndpointSlices -> ServicePorts."""

from __future__ import annotations

from proxy.model import Endpoint, service_ports


def svc(name: str, ports: list[dict], **spec: object) -> dict:
    return {"metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": "10.96.0.10", "ports": ports, **spec}}


def eps(service: str, ports: list[dict], endpoints: list[dict], name: str = "") -> dict:
    return {"metadata": {"namespace": "default", "name": name or f"{service}-abc",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints}


def test_ports_resolve_endpoints_by_port_name_across_slices() -> None:
    s = svc("web", [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    slices = [
        eps("web", [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353}],
            [{"addresses": ["10.244.1.2"], "conditions": {"ready": True}, "nodeName": "n1"}], "a"),
        eps("web", [{"name": "http", "port": 8080}],
            [{"addresses": ["10.244.2.3"], "conditions": {"ready": False, "serving": True, "terminating": True}}], "b"),
        eps("other", [{"name": "http", "port": 1}], [{"addresses": ["10.0.0.1"]}]),
    ]
    got = {p.key: p for p in service_ports([s], slices)}
    assert set(got) == {"default/web:http", "default/web:dns"}
    http = got["default/web:http"]
    assert http.session_affinity and http.affinity_timeout == 60
    assert http.endpoints == (Endpoint("10.244.1.2", 8080, node_name="n1"),
                              Endpoint("10.244.2.3", 8080, ready=False, serving=True, terminating=True))
    assert http.usable_endpoints() == (Endpoint("10.244.1.2", 8080, node_name="n1"),)
    assert got["default/web:dns"].protocol == "UDP" and got["default/web:dns"].endpoints[0].port == 5353


def test_terminating_fallback_and_skipped_services() -> None:
    s = svc("t", [{"port": 80}])
    slices = [eps("t", [{"port": 80}], [{"addresses": ["10.244.1.9"],
                                         "conditions": {"ready": False, "serving": True, "terminating": True}}])]
    (p,) = service_ports([s], slices)
    assert p.key == "default/t:" and p.usable_endpoints() == p.endpoints
    headless = svc("h", [{"port": 80}], clusterIP="None")
    external = svc("x", [{"port": 80}], type="ExternalName", clusterIP="")
    assert service_ports([headless, external], []) == []
