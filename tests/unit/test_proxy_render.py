"""The proxy's renderer on reviewed snapshots, and the backends' behaviour on the in-memory fake.

Snapshots live in tests/unit/snapshots/proxy/<scenario>.rules: the nat and filter
payloads exactly as they would be piped to `iptables-restore --noflush`.  After a
deliberate change to the renderer, regenerate them with UPDATE_SNAPSHOTS=1 and review
the diff like code.  tests/integration/test_proxy_restore.py feeds the same files to
the kernel's own parser (`iptables-restore --test`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from proxy.iptables import FakeBackend, ProxyApplyError, detect_mode, parse_save
from proxy.model import Endpoint, NodeInfo, ServicePort
from proxy.render import (
    RenderConfig,
    Rendered,
    chain_names,
    diff,
    endpoint_chain,
    jump_rules,
    payload_head,
    render,
    service_chain,
)

SNAPSHOTS = Path(__file__).parent / "snapshots" / "proxy"
NODE = NodeInfo("node-a", addresses=(), pod_cidr="10.244.0.0/16")


def ep(ip: str, port: int = 8080, node: str = "node-a", **kw: bool) -> Endpoint:
    return Endpoint(ip, port, node_name=node, **kw)


def sp(name: str, ip: str, port: int = 80, eps: tuple[Endpoint, ...] = (), **kw: object) -> ServicePort:
    fields: dict[str, object] = {"namespace": "default", "name": name, "port_name": "", "protocol": "TCP",
                                 "cluster_ip": ip, "port": port, "endpoints": eps}
    fields.update(kw)
    return ServicePort(**fields)  # type: ignore[arg-type]


THREE = (ep("10.244.1.2"), ep("10.244.2.3", node="node-b"), ep("10.244.3.4", node="node-c"))


def scenarios() -> dict[str, Rendered]:
    """Every reviewed scenario, by snapshot name."""
    web = sp("web", "10.96.0.10", eps=THREE)
    out = {
        "clusterip_3_endpoints": render([web], NODE),
        "no_endpoints": render([sp("empty", "10.96.0.20", node_port=30020),
                                sp("dns", "10.96.0.21", 53, protocol="UDP")], NODE),
        "nodeport": render([sp("np", "10.96.0.30", eps=THREE[:2], node_port=30080)],
                           NodeInfo("node-a", addresses=("192.168.56.11",), pod_cidr="10.244.0.0/16")),
        "nodeport_no_localhost": render([sp("np", "10.96.0.30", eps=THREE[:2], node_port=30080)],
                                        NodeInfo("node-a", pod_cidr="10.244.0.0/16", localhost_nodeports=False)),
        "client_ip_affinity": render([sp("sticky", "10.96.0.40", eps=THREE[:2], session_affinity=True,
                                         affinity_timeout=600)], NODE),
        "external_local": render([sp("local", "10.96.0.50", eps=THREE, node_port=30050, external_local=True),
                                  sp("remote-only", "10.96.0.51", eps=THREE[1:], node_port=30051,
                                     external_local=True)], NODE),
        "internal_local": render([sp("itp", "10.96.0.55", eps=THREE, internal_local=True),
                                  sp("itp-none", "10.96.0.56", eps=THREE[1:], internal_local=True)], NODE),
        "named_multiport": render([sp("multi", "10.96.0.60", 80, port_name="http", eps=(ep("10.244.1.7", 8080),)),
                                   sp("multi", "10.96.0.60", 443, port_name="https",
                                      eps=(ep("10.244.1.7", 8443),)),
                                   sp("multi", "10.96.0.60", 53, port_name="dns", protocol="UDP",
                                      eps=(ep("10.244.1.7", 5353),))], NODE),
        "terminating_fallback": render([
            sp("rolling", "10.96.0.70", eps=(ep("10.244.1.8", ready=False, serving=True, terminating=True),
                                             ep("10.244.1.9", ready=False, serving=False, terminating=True))),
            sp("mixed", "10.96.0.71", eps=(ep("10.244.1.10"),
                                           ep("10.244.1.11", ready=False, serving=True, terminating=True)))],
            NODE),
        "masquerade_all": render([web], NodeInfo("node-a"), RenderConfig(masquerade_all=True)),
        "no_comments": render([web], NODE, RenderConfig(comments=False)),
    }
    before = render([web, sp("gone", "10.96.0.80", eps=THREE[:1])], NODE)
    out["stale_chains"] = render([web], NODE, existing_chains=chain_names(before))
    return out


def text(r: Rendered) -> str:
    return "".join(r.tables[t] for t in ("nat", "filter"))


@pytest.mark.parametrize("name", sorted(scenarios()))
def test_snapshot(name: str) -> None:
    got = text(scenarios()[name])
    path = SNAPSHOTS / f"{name}.rules"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not path.exists():
        if not os.environ.get("UPDATE_SNAPSHOTS") and os.environ.get("CI"):
            pytest.fail(f"snapshot {path} missing: run with UPDATE_SNAPSHOTS=1 and review it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert got == path.read_text(), f"{path} differs: review, then UPDATE_SNAPSHOTS=1 if intended"


def test_no_stray_snapshots() -> None:
    assert {p.stem for p in SNAPSHOTS.glob("*.rules")} <= set(scenarios())


# --- renderer properties -----------------------------------------------------------------------

def test_payload_shape() -> None:
    r = scenarios()["nodeport"]
    for table in ("nat", "filter"):
        lines = r.tables[table].splitlines()
        assert lines[0] == f"*{table}" and lines[-1] == "COMMIT"
        declared = [ln[1:].split()[0] for ln in lines if ln.startswith(":")]
        assert declared == list(r.chains[table])
        assert all(c.startswith(("KUBELING-", "KL-")) for c in declared), "never declare a built-in chain"
        for ln in lines:
            if ln.startswith("-A "):
                assert ln.split()[1] in declared


def many(n: int) -> list[ServicePort]:
    """n services, every third with a NodePort, every fifth without endpoints, duplicates of an
    endpoint and of a whole service port among them (what a dict of chains merges)."""
    out = [sp(f"s{i:04d}", f"10.96.{i // 250}.{i % 250 + 1}",
              eps=() if i % 5 == 0 else (ep(f"10.244.{i // 250}.{i % 250 + 1}"), ep("10.245.0.1", node="node-b"),
                                         ep("10.245.0.1", node="node-b")),
              node_port=30000 + i if i % 3 == 0 else 0)
           for i in range(n)]
    return out


@pytest.mark.parametrize(("ports", "pieces"), [(many(300), True), (many(300) + many(2), False)],
                         ids=["unique", "a-port-twice"])
def test_streamed_head_is_the_payload(ports: list[ServicePort], pieces: bool) -> None:
    """What a backend streams into the restore (made while it is sent) is payload_head()'s text,
    and leaves the same chains behind as a render that was never streamed."""
    for name, r in scenarios().items():
        streamed = scenarios()[name]
        assert "".join(streamed.head_chunks("nat")) + "".join(streamed.head_chunks("filter")) == \
            "".join(payload_head(t, r.chains[t]) for t in ("nat", "filter")), name
    streamed, whole = render(ports, NODE), render(ports, NODE)
    chunks = list(streamed.head_chunks("nat"))
    assert (len(chunks) > 3) == pieces, "made piece by piece, unless a port is there twice (made at once)"
    assert "".join(chunks) == payload_head("nat", whole.chains["nat"])
    assert streamed.chains == whole.chains and streamed.tables == whole.tables


def test_chain_names_are_stable_short_hashes() -> None:
    cfg = RenderConfig()
    s = sp("web", "10.96.0.10", eps=THREE)
    name = service_chain(s, "SVC", cfg)
    assert re.fullmatch(r"KL-SVC-[A-Z2-7]{16}", name) and len(name) <= 28
    assert name == service_chain(sp("web", "10.96.0.99", eps=()), "SVC", cfg), "hash of the key, not the IP"
    assert name != service_chain(sp("web", "10.96.0.10", protocol="UDP"), "SVC", cfg)
    assert endpoint_chain(s, THREE[0], cfg) != endpoint_chain(s, THREE[1], cfg)
    for r in scenarios().values():
        assert all(len(c) <= 28 for chains in r.chains.values() for c in chains)


def test_probabilities_spread_evenly() -> None:
    eps = tuple(ep(f"10.244.1.{i}") for i in range(1, 6))
    r = render([sp("five", "10.96.0.10", eps=eps)], NODE)
    svc = r.chains["nat"][service_chain(sp("five", ""), "SVC", RenderConfig())]
    probs = [float(m) for line in svc for m in re.findall(r"--probability (\S+)", line)]
    assert probs == pytest.approx([1 / 5, 1 / 4, 1 / 3, 1 / 2])
    assert svc[-1].endswith(endpoint_chain(sp("five", ""), eps[-1], RenderConfig())), "the last one catches all"


def test_order_does_not_matter() -> None:
    ports = [sp(f"s{i}", f"10.96.0.{i}", eps=THREE[: i % 3]) for i in range(10)]
    assert text(render(ports, NODE)) == text(render(list(reversed(ports)), NODE))


def test_nodeports_jump_is_last_and_no_endpoints_reject() -> None:
    r = scenarios()["no_endpoints"]
    services = r.chains["nat"]["KUBELING-SERVICES"]
    assert len(services) == 1 and "KUBELING-NODEPORTS" in services[-1]
    filt = r.tables["filter"]
    assert filt.count("REJECT --reject-with icmp-port-unreachable") == 3  # 2 ClusterIPs + 1 NodePort
    assert "-m udp -p udp -d 10.96.0.21/32 --dport 53" in filt


def test_external_local_uses_only_local_endpoints_without_masquerade() -> None:
    r = scenarios()["external_local"]
    s = sp("local", "")
    svl = r.chains["nat"][service_chain(s, "SVL", RenderConfig())]
    assert svl == (f"-A {service_chain(s, 'SVL', RenderConfig())} -m comment --comment "
                   f'"default/local -> 10.244.1.2:8080" -j {endpoint_chain(s, THREE[0], RenderConfig())}',)
    ext = r.chains["nat"][service_chain(s, "EXT", RenderConfig())]
    assert not any(line.endswith("-j KUBELING-MARK-MASQ") and "LOCAL" not in line for line in ext)
    # The service without a local endpoint: DROP external traffic, ClusterIP still works.
    assert '"default/remote-only has no local endpoints" -m addrtype --dst-type LOCAL' in r.tables["filter"]
    assert "10.96.0.51/32" in r.tables["nat"]


def test_terminating_fallback() -> None:
    nat = scenarios()["terminating_fallback"].tables["nat"]
    assert "10.244.1.8:8080" in nat, "serving terminating endpoint used when nothing is ready"
    assert "10.244.1.9:8080" not in nat, "not serving: never"
    assert "10.244.1.11:8080" not in nat, "ready endpoints win over terminating ones"


def test_memoized_render_equals_fresh() -> None:
    ports = [sp("web", "10.96.0.10", eps=THREE)]
    assert render(ports, NODE) == render(ports, NODE)


# --- diff (partial syncs) ----------------------------------------------------------------------

def test_diff_sends_only_changed_chains() -> None:
    ports = [sp(f"s{i}", f"10.96.1.{i}", eps=(ep(f"10.244.1.{i}"), ep(f"10.244.2.{i}"))) for i in range(50)]
    old = render(ports, NODE)
    ports[7] = sp("s7", "10.96.1.7", eps=(ep("10.244.1.7"), ep("10.244.9.9")))
    new = render(ports, NODE)
    part = diff(old, new)
    s7 = sp("s7", "")
    assert set(part.chains["nat"]) == {service_chain(s7, "SVC", RenderConfig()),
                                       endpoint_chain(s7, ep("10.244.9.9"), RenderConfig())}
    assert part.deleted == {"nat": (endpoint_chain(s7, ep("10.244.2.7"), RenderConfig()),)}
    assert part.chains["filter"] == {}
    assert diff(new, new).rule_count() == 0


# --- backends on the fake ----------------------------------------------------------------------

UNRELATED = "-s 192.0.2.1/32 -j ACCEPT"


def _fake_with_unrelated_rules() -> FakeBackend:
    b = FakeBackend()
    b.tables["nat"]["PREROUTING"].append(UNRELATED)
    b.tables["filter"]["INPUT"].append(UNRELATED)
    return b


def _ours(b: FakeBackend) -> dict[str, set[str]]:
    return {t: {c for c in chains if c.startswith(("KUBELING-", "KL-"))} for t, chains in b.tables.items()}


def test_fake_apply_reapply_cleanup() -> None:
    b = _fake_with_unrelated_rules()
    two = [sp("a", "10.96.0.1", eps=THREE), sp("b", "10.96.0.2", eps=THREE[:1])]
    r1 = render(two, NODE)
    b.apply(r1)
    assert b.our_chains() == chain_names(r1) == _ours(b)
    # Jumps exactly once, at the head; the unrelated rule kept behind them.
    for jr in jump_rules():
        assert b.tables[jr.table][jr.chain].count(jr.spec) == 1
    assert b.tables["nat"]["PREROUTING"] == [jump_rules()[0].spec, UNRELATED]

    r2 = render(two[:1], NODE)
    b.apply(r2)  # partial
    assert _ours(b) == chain_names(r2), "no stale chain of the removed service"
    b.apply(r2, full=True)
    assert _ours(b) == chain_names(r2)
    for jr in jump_rules():
        assert b.tables[jr.table][jr.chain].count(jr.spec) == 1

    b.cleanup()
    assert _ours(b) == {"nat": set(), "filter": set()}
    assert b.tables["nat"]["PREROUTING"] == [UNRELATED] and b.tables["filter"]["INPUT"] == [UNRELATED]
    assert all(rules == [] for t, chains in b.tables.items() for c, rules in chains.items()
               if (t, c) not in {("nat", "PREROUTING"), ("filter", "INPUT")})


def test_fake_new_backend_removes_stale_chains_it_did_not_apply() -> None:
    """A restarted proxy finds the old chains in the kernel (via save) and deletes them."""
    b = FakeBackend()
    b.apply(render([sp("a", "10.96.0.1", eps=THREE), sp("b", "10.96.0.2", eps=THREE)], NODE))
    fresh = FakeBackend()
    fresh.tables = b.tables
    r = render([sp("a", "10.96.0.1", eps=THREE)], NODE)
    fresh.apply(r)
    assert _ours(fresh) == chain_names(r)


def test_fake_partial_sync_is_small_and_correct() -> None:
    b = FakeBackend()
    ports = [sp(f"s{i}", f"10.96.1.{i}", eps=(ep(f"10.244.1.{i}"), ep(f"10.244.2.{i}"))) for i in range(100)]
    b.apply(render(ports, NODE))
    full_len = len(b.payloads[-1])
    ports[3] = sp("s3", "10.96.1.3", eps=(ep("10.244.1.3"),))
    r = render(ports, NODE)
    b.apply(r)
    assert len(b.payloads[-1]) < full_len / 20
    reference = FakeBackend()
    reference.apply(r)
    assert b.tables == reference.tables, "partial result equals a full apply"
    n = len(b.payloads)
    b.apply(r)
    assert len(b.payloads) == n, "nothing changed: no restore at all"


def test_fake_partial_failure_falls_back_to_full() -> None:
    b = FakeBackend()
    ports = [sp("a", "10.96.0.1", eps=THREE)]
    b.apply(render(ports, NODE))
    b.tables["nat"]["PREROUTING"].clear()  # someone removed our jump behind our back
    b.fail_next = "simulated failure"
    r = render([sp("a", "10.96.0.1", eps=THREE[:1])], NODE)
    b.apply(r)
    assert b.tables["nat"]["PREROUTING"] == [jump_rules()[0].spec], "full sync repaired the jump"
    assert _ours(b) == chain_names(r)


def test_fake_full_failure_raises_and_forgets() -> None:
    b = FakeBackend()
    b.fail_next = "iptables-restore: line 3 failed"
    with pytest.raises(ProxyApplyError, match="line 3"):
        b.apply(render([], NODE))
    b.apply(render([], NODE))  # recovers with a full sync
    assert _ours(b)["nat"] == {"KUBELING-SERVICES", "KUBELING-NODEPORTS", "KUBELING-POSTROUTING",
                               "KUBELING-MARK-MASQ"}


def test_fake_refuses_what_the_kernel_refuses() -> None:
    b = FakeBackend()
    with pytest.raises(ProxyApplyError, match="target"):
        b._restore("*nat\n-A PREROUTING -j KL-NOPE\nCOMMIT\n")
    b._restore("*nat\n:KL-X - [0:0]\n-A KL-X -j ACCEPT\nCOMMIT\n")
    with pytest.raises(ProxyApplyError, match="not empty"):
        b._restore("*nat\n-X KL-X\nCOMMIT\n")
    assert "KL-X" in b.tables["nat"], "a failed table commits nothing"


def test_fake_test_mode_commits_nothing() -> None:
    b = FakeBackend()
    b.test(render([sp("a", "10.96.0.1", eps=THREE)], NODE))
    assert _ours(b) == {"nat": set(), "filter": set()}


def test_parse_save_finds_only_ours() -> None:
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KL-SVC-AAAA - [0:0]\n"
            "-A PREROUTING -j KUBE-SERVICES\n-A PREROUTING -m comment --comment x -j KUBELING-SERVICES\n"
            "-A KL-SVC-AAAA -j KUBE-SERVICES\nCOMMIT\n*mangle\n:KL-ELSEWHERE - [0:0]\nCOMMIT\n")
    st = parse_save(text)
    assert st["nat"].ours == {"KL-SVC-AAAA"}
    assert st["nat"].jumps == {"PREROUTING": ["-m comment --comment x -j KUBELING-SERVICES"]}
    assert st["filter"].ours == set()


@pytest.mark.parametrize(("legacy", "nft", "want"), [(0, 0, "legacy"), (5, 0, "legacy"), (0, 3, "nft"),
                                                      (10, 3, "legacy")])
def test_detect_mode(monkeypatch: pytest.MonkeyPatch, legacy: int, nft: int, want: str) -> None:
    import subprocess

    import proxy.iptables as ipt

    def fake_run(argv: list[str], netns: str | None, **kw: object) -> subprocess.CompletedProcess[str]:
        assert netns == "klt-x"
        n = legacy if "legacy" in argv[0] else nft
        return subprocess.CompletedProcess(argv, 0, "*nat\n:PREROUTING ACCEPT [0:0]\n" + "-A X -j Y\n" * n, "")

    monkeypatch.setattr(ipt, "_run", fake_run)
    assert detect_mode("klt-x") == want


def test_comments_dropped_in_large_clusters() -> None:
    """Above LARGE_CLUSTER_ENDPOINTS endpoints, per-service comments go (256 bytes each in the kernel)."""
    from proxy.render import LARGE_CLUSTER_ENDPOINTS

    def ports(n: int) -> list[ServicePort]:
        return [sp(f"s{i}", f"10.96.{i // 250}.{i % 250 + 1}", eps=(ep(f"10.244.{i // 250}.{i % 250 + 1}"),))
                for i in range(n)]

    small = render(ports(LARGE_CLUSTER_ENDPOINTS), NODE).tables["nat"]
    large = render(ports(LARGE_CLUSTER_ENDPOINTS + 1), NODE).tables["nat"]
    assert '"default/s0 cluster IP"' in small
    assert "default/s0" not in large
    assert "default/s0" in render(ports(LARGE_CLUSTER_ENDPOINTS + 1), NODE,
                                  RenderConfig(comments=True)).tables["nat"]


def test_cni_masquerade_chain_is_not_ours() -> None:
    """The CNI plugin's KL-CNI-MASQ shares the KL- prefix: the proxy must never claim (and delete) it."""
    cfg = RenderConfig()
    assert not "KL-CNI-MASQ".startswith(cfg.prefixes)
    for name in ("KUBELING-SERVICES", "KL-SVC-ABC", "KL-SVL-ABC", "KL-EXT-ABC", "KL-SEP-ABC"):
        assert name.startswith(cfg.prefixes), name
