# ruff: noqa: F811  (the `node` fixture is imported by name)
"""A real pod's /etc/resolv.conf and /etc/hosts (docker exec cat), written by the agent as the kubelet does."""

from __future__ import annotations

import os

import pytest
from agent_fixtures import POD_CIDR, Node, cstatus, needs_agent_env, node, pod_manifest, ready_pod  # noqa: F401
from polling import wait_for

from agent.agent import Agent
from agent.dnsconfig import PodFiles
from agent.main import _hooks, cni_conf_for
from agent.sandbox import SandboxManager

pytestmark = [needs_agent_env, pytest.mark.docker, pytest.mark.netns]


def start_agent_with_dns(node: Node, files: PodFiles) -> Agent:
    sandboxes = SandboxManager(node.runtime, node.name, node.root, node_netns=node.netns,
                               cni_conf=lambda: cni_conf_for(POD_CIDR, os.path.join(node.root, "cni")))
    hooks = _hooks(node.client, node.root, node.netns, dns=files)
    node.agent = Agent(node.client, node.name, node.runtime, sandboxes, hooks=hooks, host_ip="10.0.0.1",
                       relist_period=0.5)
    return node.agent.start()


def cat(node: Node, pod: dict, container: str, path: str) -> str:
    cid = cstatus(pod, container)["containerID"].removeprefix("docker://")
    code, out = node.runtime.exec(cid, ["cat", path], 5)
    assert code == 0, out
    return out


def test_pod_containers_share_the_agents_resolv_conf_and_hosts(node: Node) -> None:
    files = PodFiles(os.path.join(node.root, "pods"), ["10.96.0.10"], "cluster.local", resolv_conf="")
    start_agent_with_dns(node, files)
    sleeper = {"command": ["sh", "-c", "exec sleep 3600"]}
    manifest = pod_manifest(node, "dnsy", [{"name": "a", **sleeper}, {"name": "b", **sleeper}],
                            terminationGracePeriodSeconds=1,
                            dnsConfig={"searches": ["extra.example"], "options": [{"name": "ndots", "value": "2"}]},
                            hostAliases=[{"ip": "10.1.2.3", "hostnames": ["foo.remote"]}])
    node.client.create("pods", manifest, "default")
    pod = wait_for(lambda: ready_pod(node, "dnsy"), 20, "pod dnsy Ready")
    want = ("search default.svc.cluster.local svc.cluster.local cluster.local extra.example\n"
            "nameserver 10.96.0.10\noptions ndots:2\n")
    for c in ("a", "b"):
        assert cat(node, pod, c, "/etc/resolv.conf") == want
        hosts = cat(node, pod, c, "/etc/hosts")
        assert hosts.startswith("# Kubernetes-managed hosts file.\n")
        assert f"{pod['status']['podIP']}\tdnsy\n" in hosts and "10.1.2.3\tfoo.remote\n" in hosts
    resolv, etc_hosts = files.paths(pod["metadata"]["uid"])
    assert os.path.exists(resolv) and os.path.exists(etc_hosts)
    node.client.delete("pods", "dnsy", "default")
    # the pod's directory goes too: the files are removed before the volumes' teardown removes it
    wait_for(lambda: not os.path.exists(os.path.dirname(resolv)), 20, "the pod's DNS files and directory removed")


def test_without_cluster_dns_cluster_first_falls_back_with_an_event(node: Node) -> None:
    files = PodFiles(os.path.join(node.root, "pods"), [], "cluster.local", resolv_conf="")
    start_agent_with_dns(node, files)
    node.client.create("pods", pod_manifest(node, "nodns", [{"name": "a", "command": ["sleep", "3600"]}],
                                            terminationGracePeriodSeconds=1), "default")
    pod = wait_for(lambda: ready_pod(node, "nodns"), 20, "pod nodns Ready")
    assert cat(node, pod, "a", "/etc/resolv.conf") == "search .\nnameserver 127.0.0.1\n"
    wait_for(lambda: any(e["reason"] == "MissingClusterDNS" and e["type"] == "Warning"
                         for e in node.client.list("events", "default")["items"]
                         if e["involvedObject"]["name"] == "nodns"), 10, "the MissingClusterDNS event")
