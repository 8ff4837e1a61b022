"""The proxier's sync loop, conntrack decisions and CLI input checks, against fakes (no root, no kernel)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import generate_latest

from kubeling.cli import main as cli_main
from proxy.conntrack import FakeConntrack, Flush, stale_flushes
from proxy.main import UsageError, parse_address, parse_cidr, parse_duration
from proxy.metrics import Metrics
from proxy.model import Endpoint, ServicePort
from proxy.proxier import TRIGGER_TIME_ANNOTATION, Proxier, ProxierConfig, node_addresses, trigger_time
from proxy.render import RenderConfig, render
from proxy.routes import Addr, FakeHost

Obj = dict[str, Any]


class FakeSource:
    """An informer stand-in: a dict cache, handlers, and a switchable 'synced'."""

    def __init__(self, synced: bool = True) -> None:
        self.objs: dict[str, Obj] = {}
        self.handlers: list[tuple[Any, Any, Any]] = []
        self.synced = synced

    def add_handlers(self, on_add: Any = None, on_update: Any = None, on_delete: Any = None) -> None:
        self.handlers.append((on_add, on_update, on_delete))

    def start(self) -> FakeSource:
        return self

    def stop(self, timeout: float = 5.0) -> None:
        pass

    def has_synced(self) -> bool:
        return self.synced

    def list(self) -> list[Obj]:
        return list(self.objs.values())

    def get(self, key: str) -> Obj | None:
        return self.objs.get(key)

    @staticmethod
    def key(obj: Obj) -> str:
        m = obj["metadata"]
        return f"{m['namespace']}/{m['name']}" if m.get("namespace") else str(m["name"])

    def put(self, obj: Obj) -> None:
        k = self.key(obj)
        old = self.objs.get(k)
        self.objs[k] = obj
        for add, upd, _ in self.handlers:
            if old is None and add:
                add(obj)
            elif old is not None and upd:
                upd(old, obj)

    def remove(self, obj: Obj) -> None:
        self.objs.pop(self.key(obj), None)
        for _, _, dele in self.handlers:
            if dele:
                dele(obj)


class RecordingBackend:
    def __init__(self, events: list[str] | None = None) -> None:
        self.applied: list[Any] = []
        self.fulls: list[bool] = []
        self.fail = 0  # fail this many applies
        self.cleaned = False
        self.events = events if events is not None else []
        self.lock = threading.Lock()

    def apply(self, rendered: Any, *, full: bool = False) -> None:
        with self.lock:
            self.fulls.append(full)
            if self.fail > 0:
                self.fail -= 1
                raise RuntimeError("iptables-restore: fake failure")
            self.applied.append(rendered)
            self.events.append("apply")

    def our_chains(self) -> dict[str, set[str]]:
        with self.lock:
            if not self.applied:
                return {}
            return {t: set(c) for t, c in self.applied[-1].chains.items()}

    def cleanup(self) -> None:
        self.cleaned = True

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.applied)


class OrderedConntrack(FakeConntrack):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def flush(self, f: Flush) -> None:
        super().flush(f)
        self.events.append("conntrack")


def svc(name: str, ip: str, port: int = 80, proto: str = "TCP", node_port: int = 0, ns: str = "default") -> Obj:
    p: Obj = {"name": "p", "port": port, "protocol": proto, "targetPort": port}
    if node_port:
        p["nodePort"] = node_port
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "type": "NodePort" if node_port else "ClusterIP", "ports": [p]}}


def eps(name: str, ips: list[str], port: int = 8080, proto: str = "TCP", ns: str = "default",
        annotations: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": f"{name}-x", "namespace": ns, "labels": {"kubernetes.io/service-name": name}}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
            "ports": [{"name": "p", "port": port, "protocol": proto}]}


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class Rig:
    def __init__(self, *, synced: bool = True, min_sync: float = 0.05, sync_period: float = 30.0,
                 host: FakeHost | None = None) -> None:
        self.events: list[str] = []
        self.services, self.slices, self.nodes = FakeSource(synced), FakeSource(synced), FakeSource(synced)
        self.backend = RecordingBackend(self.events)
        self.conntrack = OrderedConntrack(self.events)
        self.metrics = Metrics()
        self.host = host or FakeHost([Addr("kl0", "10.244.1.1")])
        self.proxier = Proxier(None, ProxierConfig(node_name="n1", min_sync_period=min_sync, sync_period=sync_period,
                                                   first_backoff=0.05, max_backoff=0.2),
                               self.backend, host=self.host, conntrack=self.conntrack, metrics=self.metrics,
                               render_fn=render, render_cfg=RenderConfig(),
                               sources=(self.services, self.slices, self.nodes))

    def nat(self, n: int = -1) -> str:
        return str(self.backend.applied[n].tables["nat"])

    def rules(self, n: int = -1) -> str:
        return "".join(self.backend.applied[n].tables.values())

    def metric(self, name: str) -> float:
        for line in generate_latest(self.metrics.registry).decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


@pytest.fixture
def rig() -> Any:
    made: list[Rig] = []

    def make(**kw: Any) -> Rig:
        r = Rig(**kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.proxier.stop()


def test_nothing_happens_until_every_source_synced(rig: Any) -> None:
    r = rig(synced=False)
    r.services.put(svc("web", "10.96.0.10"))
    r.slices.put(eps("web", ["10.244.1.2"]))
    r.proxier.start()
    time.sleep(0.2)
    assert r.backend.count == 0
    r.services.synced = r.slices.synced = True
    time.sleep(0.2)
    assert r.backend.count == 0, "the node source has not synced yet"
    r.nodes.synced = True
    wait_for(lambda: r.backend.count == 1)
    assert "10.96.0.10/32" in r.nat() and "10.244.1.2:8080" in r.nat()


def test_changes_are_coalesced_and_applied(rig: Any) -> None:
    r = rig(min_sync=0.3)
    r.proxier.start()
    wait_for(lambda: r.backend.count == 1)
    for i in range(20):
        r.services.put(svc(f"s{i}", f"10.96.0.{i + 1}"))
    wait_for(lambda: "10.96.0.20/32" in r.rules(), timeout=3)
    assert r.backend.count <= 3, "20 changes inside one min-sync period must coalesce"


def test_periodic_resync_without_changes(rig: Any) -> None:
    r = rig(sync_period=0.1)
    r.proxier.start()
    wait_for(lambda: r.backend.count >= 4, timeout=3)
    assert all(r.backend.fulls), "a periodic resync rewrites everything (heals foreign changes)"


def test_change_syncs_are_partial(rig: Any) -> None:
    r = rig()
    r.proxier.start()
    wait_for(lambda: r.backend.count == 1)
    r.services.put(svc("web", "10.96.0.10"))
    wait_for(lambda: r.backend.count == 2)
    assert r.backend.fulls == [True, False]


def test_failed_sync_is_retried_with_backoff_and_counted(rig: Any) -> None:
    r = rig()
    r.backend.fail = 3
    r.services.put(svc("web", "10.96.0.10"))
    r.proxier.start()
    wait_for(lambda: r.backend.count == 1, timeout=5)
    assert r.proxier.failures == 3
    assert r.metric('kubeproxy_sync_proxy_rules_errors_total{stage="apply"}') == 3
    assert r.metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0
    assert "10.96.0.10/32" in r.rules()


def test_render_error_does_not_kill_the_loop(rig: Any) -> None:
    r = rig()
    calls = {"n": 0}

    def flaky(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom")
        return render(*a, **kw)

    r.proxier.render_fn = flaky
    r.proxier.start()
    wait_for(lambda: r.backend.count == 1)
    assert r.metric('kubeproxy_sync_proxy_rules_errors_total{stage="render"}') == 1


def test_stop_leaves_rules_alone(rig: Any) -> None:
    r = rig()
    r.proxier.start()
    wait_for(lambda: r.backend.count == 1)
    r.proxier.stop()
    assert not r.backend.cleaned


def test_node_internal_ip_wins_over_interface_addresses(rig: Any) -> None:
    r = rig()
    assert r.proxier.node_info().addresses == ("10.244.1.1",)
    r.nodes.put({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"},
                 "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                          {"type": "InternalIP", "address": "192.168.56.11"}]}})
    info = r.proxier.node_info()
    assert info.addresses == ("192.168.56.11",) and info.pod_cidr == "10.244.1.0/24"
    assert node_addresses(None) == []


def test_service_route_is_ensured_only_without_default_route(rig: Any) -> None:
    r = rig()
    assert r.proxier.sync()
    assert r.host.routes == ["10.96.0.0/12"]
    r2 = rig(host=FakeHost([Addr("eth0", "192.168.1.5")], default_route=True))
    assert r2.proxier.sync()
    assert r2.host.routes == []


def test_udp_endpoint_removal_clears_conntrack_after_apply(rig: Any) -> None:
    r = rig()
    r.services.put(svc("dns", "10.96.0.53", 53, "UDP"))
    r.slices.put(eps("dns", ["10.244.1.2", "10.244.1.3"], 53, "UDP"))
    assert r.proxier.sync()
    r.conntrack.flushed.clear()
    r.events.clear()
    r.slices.put(eps("dns", ["10.244.1.3"], 53, "UDP"))
    assert r.proxier.sync()
    assert r.conntrack.flushed == [Flush("udp", "10.96.0.53", 53, "10.244.1.2")]
    assert r.events == ["apply", "conntrack"], "conntrack is cleared only after the rules are in"


def test_conntrack_failure_is_not_a_sync_failure(rig: Any) -> None:
    r = rig()
    r.proxier.conntrack = FakeConntrack(fail=True)
    r.services.put(svc("dns", "10.96.0.53", 53, "UDP"))
    r.slices.put(eps("dns", ["10.244.1.2"], 53, "UDP"))
    assert r.proxier.sync()
    assert r.metric('kubeproxy_sync_proxy_rules_errors_total{stage="conntrack"}') == 1


def test_network_programming_latency_uses_trigger_time(rig: Any) -> None:
    r = rig()
    r.proxier.start()
    wait_for(lambda: r.backend.count == 1)
    past = time.time() - 2.0
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(past)) + "Z"
    r.slices.put(eps("web", ["10.244.1.2"], annotations={TRIGGER_TIME_ANNOTATION: stamp}))
    wait_for(lambda: r.metric("kubeproxy_network_programming_duration_seconds_count") == 1)
    assert r.metric("kubeproxy_network_programming_duration_seconds_sum") >= 1.0
    r.services.put(svc("web", "10.96.0.10"))  # no annotation: the time the change was observed
    wait_for(lambda: r.metric("kubeproxy_network_programming_duration_seconds_count") == 2)
    assert r.metric("kubeproxy_network_programming_duration_seconds_sum") < 4.0


def test_trigger_time_parsing() -> None:
    assert trigger_time({"metadata": {}}) is None
    assert trigger_time({"metadata": {"annotations": {TRIGGER_TIME_ANNOTATION: "junk"}}}) is None
    t = trigger_time({"metadata": {"annotations": {TRIGGER_TIME_ANNOTATION: "2024-01-02T03:04:05Z"}}})
    assert t == 1704164645.0


# -- stale conntrack decisions (pure) --

def sp(ips: list[str], proto: str = "UDP", node_port: int = 0, name: str = "dns") -> ServicePort:
    return ServicePort("default", name, "", proto, "10.96.0.53", 53, node_port=node_port,
                       endpoints=tuple(Endpoint(ip, 5353) for ip in ips))


def test_stale_flushes() -> None:
    assert stale_flushes([sp(["10.0.0.1"])], [sp(["10.0.0.1"])]) == []
    assert stale_flushes([sp(["10.0.0.1", "10.0.0.2"])], [sp(["10.0.0.2"])]) == \
        [Flush("udp", "10.96.0.53", 53, "10.0.0.1")]
    # 0 -> N: everything to the service (and its NodePort) was made without NAT
    assert stale_flushes([sp([], node_port=30053)], [sp(["10.0.0.1"], node_port=30053)]) == \
        [Flush("udp", "", 30053), Flush("udp", "10.96.0.53", 53)]
    # removal with a NodePort: both the ClusterIP and the NodePort entries to that endpoint
    assert stale_flushes([sp(["10.0.0.1", "10.0.0.2"], node_port=30053)], [sp(["10.0.0.2"], node_port=30053)]) == \
        [Flush("udp", "", 30053, "10.0.0.1"), Flush("udp", "10.96.0.53", 53, "10.0.0.1")]
    # TCP never: its connections end by themselves
    assert stale_flushes([sp(["10.0.0.1"], "TCP")], [sp([], "TCP")]) == []
    # a UDP service that vanished
    assert stale_flushes([sp(["10.0.0.1"])], []) == [Flush("udp", "10.96.0.53", 53, "10.0.0.1")]
    # first sync: a UDP service with endpoints counts as newly active
    assert stale_flushes(None, [sp(["10.0.0.1"])]) == [Flush("udp", "10.96.0.53", 53)]
    assert Flush("udp", "10.96.0.53", 53, "10.0.0.1").argv() == \
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.53", "--dport", "53", "--reply-src", "10.0.0.1"]


# -- command-line input --

def test_parsers() -> None:
    assert parse_duration("1s", "x") == 1.0
    assert parse_duration("200ms", "x") == pytest.approx(0.2)
    assert parse_duration("0.2", "x") == pytest.approx(0.2)
    assert parse_duration("5m", "x") == 300.0
    for bad in ("", "fast", "1d", "-1s"):
        with pytest.raises(UsageError):
            parse_duration(bad, "x")
    assert parse_cidr("10.96.0.1/12", "x") == "10.96.0.0/12"
    with pytest.raises(UsageError):
        parse_cidr("10.96.0.0/40", "x")
    assert parse_address("") == ""
    assert parse_address("127.0.0.1:10249") == "127.0.0.1:10249"
    for bad in ("10249", "127.0.0.1:0", "host:80", "127.0.0.1:99999"):
        with pytest.raises(UsageError):
            parse_address(bad)


@pytest.mark.parametrize("argv, needle", [
    (["--min-sync-period", "soon"], "--min-sync-period"),
    (["--service-cidr", "nope"], "--service-cidr"),
    (["--metrics-address", "10249"], "--metrics-address"),
    (["--netns", "klt-does-not-exist-px"], "no network namespace"),
])
def test_cli_bad_input_is_one_line_and_nonzero(argv: list[str], needle: str, capsys: Any) -> None:
    rc = cli_main(["proxy", "--node-name", "n1", "--apiserver", "http://127.0.0.1:1", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and len(err.splitlines()) == 1, err


def test_with_the_fake_kernel_backend(rig: Any) -> None:
    """The same loop over proxy.iptables.FakeBackend (an in-memory kernel that interprets the payloads)."""
    from proxy.iptables import FakeBackend

    r = rig()
    fake = FakeBackend()
    r.proxier.backend = fake
    r.services.put(svc("web", "10.96.0.10", node_port=30080))
    r.slices.put(eps("web", ["10.244.1.2", "10.244.1.3"]))
    assert r.proxier.sync(full=True)
    nat = fake.tables["nat"]
    assert any("10.96.0.10/32" in rule for rule in nat["KUBELING-SERVICES"])
    assert any("KUBELING-SERVICES" in rule for rule in nat["OUTPUT"])
    r.slices.put(eps("web", []))
    assert r.proxier.sync()
    assert not any("10.96.0.10/32" in rule for rule in fake.tables["nat"]["KUBELING-SERVICES"])
    assert not any(c.startswith("KL-SEP-") for c in fake.tables["nat"]), "stale endpoint chains are deleted"


def test_conntrack_list_parsing_and_matching() -> None:
    from proxy.conntrack import Entry, parse_list

    text = ("udp      17 29 src=10.244.1.1 dst=10.96.0.5 sport=41234 dport=53 src=10.244.1.2 dst=10.244.1.1 "
            "sport=5353 dport=41234 mark=0 use=1\n"
            "udp      17 20 src=10.244.1.1 dst=10.96.0.6 sport=1 dport=53 [UNREPLIED] src=10.96.0.6 "
            "dst=10.244.1.1 sport=53 dport=1 mark=0 use=1\n"
            "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n")
    entries = parse_list(text)
    assert entries == [Entry("udp", "10.96.0.5", 53, "10.244.1.2"), Entry("udp", "10.96.0.6", 53, "10.96.0.6")]
    assert Flush("udp", "10.96.0.5", 53, "10.244.1.2").matches(entries[0])
    assert not Flush("udp", "10.96.0.5", 53, "10.244.1.3").matches(entries[0])
    assert Flush("udp", "10.96.0.6", 53).matches(entries[1])
    assert Flush("udp", "", 53).matches(entries[1]) and not Flush("udp", "", 30053).matches(entries[1])
