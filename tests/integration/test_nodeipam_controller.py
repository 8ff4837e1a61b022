"""Node IPAM against a real apiserver: distinct blocks, stable across restarts, reused after deletion."""

from __future__ import annotations

from typing import Any, TypeVar

from polling import wait_for as eventually

from controllers.nodeipam import NodeIpamController
from kube.client import Client

T = TypeVar("T")


def cidrs(client: Client) -> dict[str, str]:
    return {n["metadata"]["name"]: n["spec"].get("podCIDR", "") for n in client.list("nodes")["items"]}


def add_node(client: Client, name: str, **spec: Any) -> None:
    client.create("nodes", {"metadata": {"name": name}, "spec": spec})


def test_distinct_blocks_survive_restart_and_are_reused(apiserver: Any) -> None:
    client = Client.from_kubeconfig(apiserver.kubeconfig)
    # a node that comes with a podCIDR keeps it, and nobody else gets that block
    add_node(client, "n0", podCIDR="10.244.0.0/24", podCIDRs=["10.244.0.0/24"])
    ipam = NodeIpamController(client, cluster_cidr="10.244.0.0/16", node_cidr_mask_size=24)
    try:
        assert ipam.start(20)
        for n in ("n1", "n2", "n3"):
            add_node(client, n)
        got = eventually(lambda: (c := cidrs(client)) and all(c.values()) and len(c) == 4 and c, 5, "4 podCIDRs")
        assert got["n0"] == "10.244.0.0/24"
        assert len(set(got.values())) == 4
        assert all(c.startswith("10.244.") and c.endswith("/24") for c in got.values())
        node = client.get("nodes", "n1")
        assert node["spec"]["podCIDRs"] == [node["spec"]["podCIDR"]]
    finally:
        ipam.stop()

    # a new controller (a restart) rebuilds the used set first: the next node gets a fresh block
    ipam = NodeIpamController(client, cluster_cidr="10.244.0.0/16", node_cidr_mask_size=24)
    try:
        assert ipam.start(20)
        add_node(client, "n4")
        after = eventually(lambda: (c := cidrs(client)) and c.get("n4") and c, 5, "n4 podCIDR")
        assert {k: v for k, v in after.items() if k != "n4"} == got
        assert after["n4"] not in got.values()

        # a deleted node's block goes to the next node
        freed = after["n2"]
        client.delete("nodes", "n2")
        eventually(lambda: "n2" not in cidrs(client), 5, "n2 gone")
        add_node(client, "n5")
        assert eventually(lambda: cidrs(client).get("n5"), 5, "n5 podCIDR") == freed
    finally:
        ipam.stop()
        client.close()
