"""The pod resolv.conf / hosts builder (agent/dnsconfig.py), and the worker binding the files into containers."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from agent import runtime as rt
from agent.dnsconfig import (
    DnsConfig,
    PodFiles,
    parse_cluster_dns,
    parse_resolv_conf,
    pod_dns_config,
    render_hosts,
    render_resolv_conf,
)
from agent.events import EventRecorder
from agent.sandbox import FakeSandboxes
from agent.worker import Hooks, PodWorkers

CLUSTER = ["10.96.0.10"]
D = "cluster.local"
HOST = DnsConfig(["192.168.1.1"], ["corp.example", "lab.example"], ["edns0", "ndots:2"])


def pod(ns: str = "web", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p1", "namespace": ns, "uid": "uid-1"},
            "spec": {"containers": [{"name": "c", "image": "kubeling/test:1"}], **spec}}


def test_cluster_first_is_the_default_policy() -> None:
    cfg, notes = pod_dns_config(pod(), CLUSTER, D, HOST)
    assert cfg == DnsConfig(["10.96.0.10"], ["web.svc.cluster.local", "svc.cluster.local", "cluster.local",
                                             "corp.example", "lab.example"], ["ndots:5"])
    assert notes == []
    assert render_resolv_conf(cfg) == ("search web.svc.cluster.local svc.cluster.local cluster.local corp.example "
                                       "lab.example\nnameserver 10.96.0.10\noptions ndots:5\n")


def test_cluster_first_without_host_resolv_conf_has_only_the_cluster_search_path() -> None:
    cfg, _ = pod_dns_config(pod("default", dnsPolicy="ClusterFirst"), CLUSTER, D, None)
    assert render_resolv_conf(cfg) == ("search default.svc.cluster.local svc.cluster.local cluster.local\n"
                                       "nameserver 10.96.0.10\noptions ndots:5\n")


def test_cluster_first_without_cluster_dns_falls_back_to_default_with_a_warning() -> None:
    cfg, notes = pod_dns_config(pod(), [], D, HOST)
    assert cfg == HOST
    assert [r for r, _ in notes] == ["MissingClusterDNS"]
    assert 'cannot create Pod using "ClusterFirst" policy. Falling back to "Default" policy.' in notes[0][1]
    assert 'pod: "p1_web(uid-1)"' in notes[0][1]


def test_default_is_the_node_resolv_conf_and_empty_resolv_conf_means_localhost() -> None:
    assert pod_dns_config(pod(dnsPolicy="Default"), CLUSTER, D, HOST)[0] == HOST
    cfg, notes = pod_dns_config(pod(dnsPolicy="Default"), CLUSTER, D, None)
    assert cfg == DnsConfig(["127.0.0.1"], ["."], []) and notes == []


def test_host_network_cluster_first_is_default_but_cluster_first_with_host_net_is_cluster() -> None:
    assert pod_dns_config(pod(hostNetwork=True, dnsPolicy="ClusterFirst"), CLUSTER, D, HOST)[0] == HOST
    cfg, _ = pod_dns_config(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), CLUSTER, D, HOST)
    assert cfg.servers == CLUSTER and cfg.searches[0] == "web.svc.cluster.local"
    cfg, _ = pod_dns_config(pod(dnsPolicy="ClusterFirstWithHostNet"), CLUSTER, D, HOST)
    assert cfg.servers == CLUSTER


def test_none_uses_only_dns_config() -> None:
    spec: dict[str, Any] = {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["a.example"],
                                               "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}
    cfg, _ = pod_dns_config(pod(**spec), CLUSTER, D, HOST)
    assert render_resolv_conf(cfg) == "search a.example\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"
    assert render_resolv_conf(pod_dns_config(pod(dnsPolicy="None"), CLUSTER, D, HOST)[0]) == ""


def test_dns_config_is_appended_without_duplicates_and_options_override_by_name() -> None:
    spec: dict[str, Any] = {"dnsConfig": {"nameservers": ["10.96.0.10", "8.8.8.8"], "searches": ["svc.cluster.local", "x.example"],
                          "options": [{"name": "ndots", "value": "1"}, {"name": "timeout", "value": "3"},
                                      {"name": "single-request"}]}}
    cfg, notes = pod_dns_config(pod(**spec), CLUSTER, D, None)
    assert cfg.servers == ["10.96.0.10", "8.8.8.8"]
    assert cfg.searches == ["web.svc.cluster.local", "svc.cluster.local", "cluster.local", "x.example"]
    assert cfg.options == ["ndots:1", "timeout:3", "single-request"]
    assert notes == []


def test_more_than_three_nameservers_are_cut_with_upstreams_warning() -> None:
    spec: dict[str, Any] = {"dnsConfig": {"nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3"]}}
    cfg, notes = pod_dns_config(pod(**spec), CLUSTER, D, HOST)
    assert cfg.servers == ["10.96.0.10", "1.1.1.1", "2.2.2.2"]
    assert notes == [("DNSConfigForming", "Nameserver limits were exceeded, some nameservers have been omitted, "
                                          "the applied nameserver line is: 10.96.0.10 1.1.1.1 2.2.2.2")]


def test_search_path_limits_count_length_and_line_characters() -> None:
    many = [f"d{i}.example" for i in range(40)]
    cfg, notes = pod_dns_config(pod(dnsPolicy="None", dnsConfig={"searches": many}), CLUSTER, D, HOST)
    assert cfg.searches == many[:32]
    assert notes[0][0] == "DNSConfigForming" and notes[0][1].startswith("Search Line limits were exceeded")
    assert notes[0][1].endswith("the applied search line is: " + " ".join(many[:32]))

    too_long = "a" * 254
    cfg, notes = pod_dns_config(pod(dnsPolicy="None", dnsConfig={"searches": ["ok.example", too_long]}),
                                CLUSTER, D, HOST)
    assert cfg.searches == ["ok.example"] and len(notes) == 1

    wide = [("x" * 60) + f".d{i:02d}" for i in range(32)]  # 32 x 64 chars + spaces > 2048
    cfg, _ = pod_dns_config(pod(dnsPolicy="None", dnsConfig={"searches": wide}), CLUSTER, D, HOST)
    assert len(" ".join(cfg.searches)) <= 2048 and cfg.searches == wide[:len(cfg.searches)]
    assert len(cfg.searches) == 31


def test_parse_resolv_conf_like_the_kubelet() -> None:
    text = ("# comment\nnameserver 10.0.0.2\nsearch old.example\nnameserver 10.0.0.3\n"
            "search a.example. b.example\noptions timeout:1\noptions ndots:3 rotate\nnameserver\n")
    assert parse_resolv_conf(text) == DnsConfig(["10.0.0.2", "10.0.0.3"], ["a.example", "b.example"],
                                                ["ndots:3", "rotate"])


def test_cluster_dns_flag_values() -> None:
    assert parse_cluster_dns(["10.96.0.10,10.96.0.11", "10.96.0.10", " "]) == ["10.96.0.10", "10.96.0.11"]
    with pytest.raises(ValueError, match="'nope' is not an IP address"):
        parse_cluster_dns(["10.96.0.10,nope"])


def test_hosts_file_has_the_pod_ip_hostname_subdomain_and_host_aliases() -> None:
    plain = render_hosts(pod(), ["10.244.1.5"], D)
    assert plain.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n")
    assert plain.endswith("fe00::2\tip6-allrouters\n10.244.1.5\tp1\n")
    p = pod(hostname="db-0", subdomain="db", hostAliases=[{"ip": "10.1.2.3", "hostnames": ["foo.remote", "bar"]}])
    text = render_hosts(p, ["10.244.1.5"], D)
    assert "10.244.1.5\tdb-0.db.web.svc.cluster.local\tdb-0\n" in text
    assert text.endswith("\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo.remote\tbar\n")


# -- PodFiles and the worker ------------------------------------------------------------------------


def test_pod_files_write_and_bind_and_respect_own_mounts(tmp_path: Path) -> None:
    files = PodFiles(str(tmp_path / "pods"), CLUSTER, D, resolv_conf="")
    c = {"name": "c"}
    binds, notes = files.binds(pod(), c, "10.244.1.5")
    resolv, hosts = files.paths("uid-1")
    assert binds == [f"{resolv}:/etc/resolv.conf:rw", f"{hosts}:/etc/hosts:rw"] and notes == []
    assert Path(resolv).read_text().startswith("search web.svc.cluster.local ")
    assert "10.244.1.5\tp1\n" in Path(hosts).read_text()
    inode = os.stat(resolv).st_ino
    ro = {"name": "c", "securityContext": {"readOnlyRootFilesystem": True},
          "volumeMounts": [{"name": "h", "mountPath": "/etc/hosts"}]}
    p = pod(dnsConfig={"searches": ["more.example"]})
    assert files.binds(p, ro, "10.244.1.5")[0] == [f"{resolv}:/etc/resolv.conf:ro"]
    assert Path(resolv).read_text().startswith("search web.svc.cluster.local svc.cluster.local cluster.local "
                                               "more.example\n")
    assert os.stat(resolv).st_ino == inode, "rewritten in place: running containers see the change"
    files.teardown("uid-1")
    assert not os.path.exists(os.path.dirname(resolv)), "the files and the pod's directory are gone"
    files.teardown("uid-1")  # again: nothing to do, no error


def test_pod_files_unreadable_node_resolv_conf_is_a_warning(tmp_path: Path) -> None:
    files = PodFiles(str(tmp_path / "pods"), [], D, resolv_conf=str(tmp_path / "missing"))
    _, notes = files.binds(pod(dnsPolicy="Default"), {"name": "c"}, "10.244.1.5")
    assert [r for r, _ in notes] == ["DNSConfigForming"] and "cannot read the node's resolv.conf" in notes[0][1]


def test_worker_binds_the_files_into_every_container_and_removes_them_on_kill(tmp_path: Path) -> None:
    runtime = rt.FakeRuntime()
    sandboxes = FakeSandboxes(runtime, "node1")
    dns = PodFiles(str(tmp_path / "pods"), [], D, resolv_conf="")
    events = EventRecorder(None, "node1")

    class Client:
        def patch(self, *a: Any, **kw: Any) -> None: ...
        def delete(self, *a: Any, **kw: Any) -> None: ...

    workers = PodWorkers(Client(), "node1", runtime, sandboxes, hooks=Hooks(dns=dns), events=events)
    p = pod()
    p["spec"]["containers"] = [{"name": "a", "image": "kubeling/test:1"}, {"name": "b", "image": "kubeling/test:1"}]
    workers.sync("uid-1", copy.deepcopy(p), None)
    resolv, hosts = dns.paths("uid-1")
    apps = [s for s in runtime.specs.values() if s.labels.get(rt.L_KIND) == "app"]
    assert len(apps) == 2
    for spec in apps:
        assert f"{resolv}:/etc/resolv.conf:rw" in spec.binds and f"{hosts}:/etc/hosts:rw" in spec.binds
    ip = sandboxes.get("uid-1").ip  # type: ignore[union-attr]
    assert f"{ip}\tp1\n" in Path(hosts).read_text()
    # no --cluster-dns: ClusterFirst falls back to Default (--resolv-conf "": localhost), with one event
    assert Path(resolv).read_text() == "search .\nnameserver 127.0.0.1\n"
    assert [e["reason"] for e in events.sent].count("MissingClusterDNS") == 1
    p["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    workers.sync("uid-1", copy.deepcopy(p), None)
    assert not os.path.exists(resolv) and not os.path.exists(hosts)
