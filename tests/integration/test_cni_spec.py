"""CNI spec scenarios against the `kubeling-cni` executable (and the library), inside test namespaces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cni_fixtures import (
    REF_DIR,
    Namespaces,
    addrs,
    links,
    make_conf,
    needs_iptables,
    needs_root,
    netns,  # noqa: F401  (fixture)
    our_veths,
    path,
    reservations,
    run_plugin,
    sh,
)

pytestmark = [pytest.mark.root, pytest.mark.netns, needs_root]

SUBNET = "10.88.0.0/24"


@pytest.fixture
def node(netns: Namespaces) -> str:  # noqa: F811
    return netns.new("node")


def test_add_check_del(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    pod = netns.new("p")
    conf = make_conf("spec", SUBNET, str(tmp_path))
    rc, res, err = run_plugin("ADD", conf, node, cid="c1", pod=pod)
    assert rc == 0, (res, err)
    assert res is not None
    assert res["cniVersion"] == "1.1.0"
    names = [i["name"] for i in res["interfaces"]]
    assert names[0] == "kl0" and names[2] == "eth0"
    assert names[1].startswith("klv") and len(names[1]) == 15
    assert res["interfaces"][2]["sandbox"] == path(pod)
    assert res["ips"] == [{"address": "10.88.0.2/24", "gateway": "10.88.0.1", "interface": 2}]
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}]
    # state, read back with iproute2
    assert addrs(node, "kl0") == ["10.88.0.1/24"]
    assert addrs(pod, "eth0") == ["10.88.0.2/24"]
    assert "default via 10.88.0.1 dev eth0" in sh("ip", "-n", pod, "route").stdout
    assert "UP" in sh("ip", "-n", pod, "link", "show", "lo").stdout
    detail = sh("ip", "-n", node, "-d", "link", "show", names[1]).stdout
    assert "master kl0" in detail and "hairpin on" in detail
    assert sh("nsenter", f"--net={path(node)}", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert reservations(str(tmp_path), "spec") == ["10.88.0.2"]

    check_conf = dict(conf, prevResult=res)
    rc, out, err = run_plugin("CHECK", check_conf, node, cid="c1", pod=pod)
    assert rc == 0 and out is None, (out, err)

    # CHECK notices a broken attachment
    sh("ip", "-n", pod, "addr", "flush", "dev", "eth0")
    rc, out, _ = run_plugin("CHECK", check_conf, node, cid="c1", pod=pod)
    assert rc != 0 and out is not None and out["code"] == 103 and "10.88.0.2/24" in out["msg"]

    rc, out, err = run_plugin("DEL", conf, node, cid="c1", pod=pod)
    assert rc == 0 and out is None, (out, err)
    assert our_veths(node) == []
    assert "eth0" not in links(pod)
    assert reservations(str(tmp_path), "spec") == []


def test_check_needs_prev_result(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    pod = netns.new("p")
    conf = make_conf("spec", SUBNET, str(tmp_path))
    assert run_plugin("ADD", conf, node, cid="c1", pod=pod)[0] == 0
    rc, out, _ = run_plugin("CHECK", conf, node, cid="c1", pod=pod)
    assert rc != 0 and out is not None and out["code"] == 7 and "prevResult" in out["msg"]


def test_del_twice_and_missing_netns(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    pod = netns.new("p")
    conf = make_conf("spec", SUBNET, str(tmp_path))
    assert run_plugin("ADD", conf, node, cid="c1", pod=pod)[0] == 0
    assert run_plugin("DEL", conf, node, cid="c1", pod=pod)[0] == 0
    assert run_plugin("DEL", conf, node, cid="c1", pod=pod)[0] == 0
    # the sandbox is gone before DEL: still success, and everything is freed
    assert run_plugin("ADD", conf, node, cid="c2", pod=pod)[0] == 0
    netns.delete(pod)
    rc, out, err = run_plugin("DEL", conf, node, cid="c2", pod=pod)
    assert rc == 0, (out, err)
    assert our_veths(node) == [] and reservations(str(tmp_path), "spec") == []
    # DEL with no CNI_NETNS at all (allowed by the spec)
    assert run_plugin("DEL", conf, node, cid="c3", pod="")[0] == 0


def test_add_existing_ifname_fails_cleanly(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    pod = netns.new("p")
    conf = make_conf("spec", SUBNET, str(tmp_path))
    assert run_plugin("ADD", conf, node, cid="c1", pod=pod)[0] == 0
    # another container, same netns + ifname
    rc, out, _ = run_plugin("ADD", conf, node, cid="c2", pod=pod)
    assert rc != 0 and out is not None
    assert out["code"] == 102 and "eth0 already exists" in out["msg"]
    # the same attachment again
    rc, out, _ = run_plugin("ADD", conf, node, cid="c1", pod=pod)
    assert rc != 0 and out is not None and out["code"] == 105
    # nothing leaked, the first attachment intact
    assert reservations(str(tmp_path), "spec") == ["10.88.0.2"]
    assert len(our_veths(node)) == 1
    assert addrs(pod, "eth0") == ["10.88.0.2/24"]


def test_add_missing_netns(node: str, tmp_path: Path) -> None:
    conf = make_conf("spec", SUBNET, str(tmp_path))
    rc, out, _ = run_plugin("ADD", conf, node, cid="c1", pod="/var/run/netns/klt-does-not-exist")
    assert rc != 0 and out is not None and out["code"] == 3
    assert reservations(str(tmp_path), "spec") == []


def test_version(node: str) -> None:
    rc, out, _ = run_plugin("VERSION", {"cniVersion": "1.0.0"}, node)
    assert rc == 0 and out == {"cniVersion": "1.0.0",
                               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_gc_frees_exactly_the_others(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    conf = make_conf("spec", SUBNET, str(tmp_path))
    pods = [netns.new("p") for _ in range(4)]
    ips = {}
    for i, pod in enumerate(pods):
        rc, res, err = run_plugin("ADD", conf, node, cid=f"c{i}", pod=pod)
        assert rc == 0, err
        assert res is not None
        ips[f"c{i}"] = res["ips"][0]["address"].split("/")[0]
    # a stale veth with our prefix but no reservation, and a foreign link that must survive
    sh("ip", "-n", node, "link", "add", "klv000000000000", "type", "veth", "peer", "name", "klvpeer")
    sh("ip", "-n", node, "link", "add", "vethforeign", "type", "veth", "peer", "name", "vethforeign2")
    valid = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "eth0"}]
    rc, out, err = run_plugin("GC", dict(conf, **{"cni.dev/valid-attachments": valid}), node)
    assert rc == 0 and out is None, (out, err)
    assert reservations(str(tmp_path), "spec") == sorted([ips["c1"], ips["c3"]])
    from cni.api import host_veth_name
    left = links(node)
    assert sorted(our_veths(node)) == sorted(host_veth_name("spec", c, "eth0") for c in ("c1", "c3"))
    assert "vethforeign" in left and "klv000000000000" not in left and "klvpeer" not in left
    assert "eth0" not in links(pods[0]) and "eth0" not in links(pods[2])
    assert "eth0" in links(pods[1]) and "eth0" in links(pods[3])
    # GC needs the list
    rc, out, _ = run_plugin("GC", conf, node)
    assert rc != 0 and out is not None and out["code"] == 7


def test_status(node: str, tmp_path: Path) -> None:
    conf = make_conf("spec", "10.88.0.0/30", str(tmp_path))  # one usable pod address
    rc, out, err = run_plugin("STATUS", conf, node)
    assert rc == 0 and out is None, (out, err)
    Path(tmp_path, "spec").mkdir(exist_ok=True)
    Path(tmp_path, "spec", "10.88.0.2").write_text("cX\neth0\n")
    rc, out, _ = run_plugin("STATUS", conf, node)
    assert rc != 0 and out is not None and out["code"] == 51


def test_exhaustion_is_a_clear_error(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    conf = make_conf("spec", "10.88.0.0/30", str(tmp_path))
    p1, p2 = netns.new("p"), netns.new("p")
    assert run_plugin("ADD", conf, node, cid="c1", pod=p1)[0] == 0
    rc, out, _ = run_plugin("ADD", conf, node, cid="c2", pod=p2)
    assert rc != 0 and out is not None and out["code"] == 101
    assert "no free IP address in 10.88.0.0/30" in out["msg"]
    assert "eth0" not in links(p2) and len(our_veths(node)) == 1


def test_conflist_with_prev_result(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    """A runtime's conflist run: our result is the prevResult of the next plugin and of CHECK."""
    pod = netns.new("p")
    plugin = make_conf("chain", SUBNET, str(tmp_path))
    plugin.pop("cniVersion")
    plugin.pop("name")
    conflist = {"cniVersion": "1.0.0", "name": "chain", "plugins": [plugin]}
    # the conflist form directly on stdin
    rc, res, err = run_plugin("ADD", conflist, node, cid="c1", pod=pod)
    assert rc == 0, err
    assert res is not None and res["cniVersion"] == "1.0.0"
    # a previous plugin's result is kept and our interface indexes are shifted
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "dummy0", "mac": "00:11:22:33:44:55"}],
            "ips": [], "routes": [], "dns": {"nameservers": ["10.96.0.10"]}}
    pod2 = netns.new("p")
    conf2 = dict(plugin, cniVersion="1.0.0", name="chain", prevResult=prev)
    rc, res2, err = run_plugin("ADD", conf2, node, cid="c2", pod=pod2)
    assert rc == 0, err
    assert res2 is not None
    assert [i["name"] for i in res2["interfaces"]][0] == "dummy0"
    assert res2["ips"][0]["interface"] == 3
    assert res2["dns"] == {"nameservers": ["10.96.0.10"]}
    chk = dict(plugin, cniVersion="1.0.0", name="chain", prevResult=res2)
    rc, out, err = run_plugin("CHECK", chk, node, cid="c2", pod=pod2)
    assert rc == 0, (out, err)
    if os.path.exists(f"{REF_DIR}/tuning"):
        # hand our result to a real chained plugin (reference `tuning`), then CHECK with its output
        tuning = {"cniVersion": "1.0.0", "name": "chain", "type": "tuning",
                  "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}, "prevResult": res}
        rc, tres, err = run_plugin("ADD", tuning, node, cid="c1", pod=pod, plugin=f"{REF_DIR}/tuning")
        assert rc == 0, (tres, err)
        assert tres is not None
        chk = dict(plugin, cniVersion="1.0.0", name="chain", prevResult=tres)
        rc, out, err = run_plugin("CHECK", chk, node, cid="c1", pod=pod)
        assert rc == 0, (out, err)
    for cid, p in (("c1", pod), ("c2", pod2)):
        assert run_plugin("DEL", conflist, node, cid=cid, pod=p)[0] == 0
    assert reservations(str(tmp_path), "chain") == []


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_versions(netns: Namespaces, node: str, tmp_path: Path, version: str) -> None:  # noqa: F811
    pod = netns.new("p")
    conf = make_conf("spec", SUBNET, str(tmp_path), version=version)
    rc, res, err = run_plugin("ADD", conf, node, cid="c1", pod=pod)
    assert rc == 0, err
    assert res is not None and res["cniVersion"] == version
    if version == "0.4.0":
        assert res["ips"][0]["version"] == "4"
    else:
        assert "version" not in res["ips"][0]
    rc, out, err = run_plugin("CHECK", dict(conf, prevResult=res), node, cid="c1", pod=pod)
    assert rc == 0, (out, err)
    assert run_plugin("DEL", conf, node, cid="c1", pod=pod)[0] == 0


BAD = [
    (b"{not json", 6, "not valid JSON"),
    (b"[1, 2]", 6, "JSON object"),
    (json.dumps({"cniVersion": "1.1.0", "name": "x", "ipam": {"subnet": SUBNET}}).encode(), 7, "'type'"),
    (json.dumps({"cniVersion": "1.1.0", "type": "kubeling-cni", "ipam": {"subnet": SUBNET}}).encode(), 7,
     "'name'"),
    (json.dumps({"cniVersion": "1.1.0", "name": "x", "type": "kubeling-cni",
                 "ipam": {"subnet": "10.88.0.0/33"}}).encode(), 7, "not a valid subnet"),
    (json.dumps({"cniVersion": "1.1.0", "name": "x", "type": "kubeling-cni",
                 "ipam": {"subnet": "10.88.0.5/24"}}).encode(), 7, "not a valid subnet"),
    (json.dumps({"cniVersion": "9.9.9", "name": "x", "type": "kubeling-cni",
                 "ipam": {"subnet": SUBNET}}).encode(), 1, "not supported"),
    (json.dumps({"cniVersion": "1.1.0", "name": "x", "type": "kubeling-cni"}).encode(), 7, "'ipam'"),
    (json.dumps({"cniVersion": "1.1.0", "name": "x", "type": "kubeling-cni",
                 "ipam": {"type": "dhcp"}}).encode(), 2, "ipam type"),
]


@pytest.mark.parametrize("stdin,code,text", BAD)
def test_bad_config_creates_nothing(netns: Namespaces, node: str, tmp_path: Path,  # noqa: F811
                                    stdin: bytes, code: int, text: str) -> None:
    pod = netns.new("p")
    before = links(node)
    rc, out, err = run_plugin("ADD", stdin, node, cid="c1", pod=pod)
    assert rc != 0
    assert out is not None and out["code"] == code and text in out["msg"], out
    assert "Traceback" not in err
    assert links(node) == before and links(pod) == ["lo"]


def test_bad_env(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    pod = netns.new("p")
    conf = make_conf("spec", SUBNET, str(tmp_path))
    rc, out, _ = run_plugin("ADD", conf, node, cid="", pod=pod)
    assert rc != 0 and out is not None and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"]
    rc, out, _ = run_plugin("ADD", conf, node, cid="bad/id", pod=pod)
    assert rc != 0 and out is not None and out["code"] == 4
    rc, out, _ = run_plugin("ADD", conf, node, cid="c1", pod=pod, ifname="way-too-long-ifname")
    assert rc != 0 and out is not None and out["code"] == 4
    rc, out, _ = run_plugin("FROB", conf, node)
    assert rc != 0 and out is not None and out["code"] == 4
    assert our_veths(node) == [] and reservations(str(tmp_path), "spec") == []


def test_bridge_conflict(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    pod = netns.new("p")
    sh("ip", "-n", node, "link", "add", "kl0", "type", "veth", "peer", "name", "kl0peer")
    rc, out, _ = run_plugin("ADD", make_conf("spec", SUBNET, str(tmp_path)), node, cid="c1", pod=pod)
    assert rc != 0 and out is not None and out["code"] == 104 and "not a bridge" in out["msg"]
    assert reservations(str(tmp_path), "spec") == [] and links(pod) == ["lo"]


def test_existing_bridge_is_adopted(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    pod = netns.new("p")
    sh("ip", "-n", node, "link", "add", "kl0", "type", "bridge")
    rc, res, err = run_plugin("ADD", make_conf("spec", SUBNET, str(tmp_path)), node, cid="c1", pod=pod)
    assert rc == 0, err
    assert addrs(node, "kl0") == ["10.88.0.1/24"]
    # a bridge with an address of the subnet that is not the gateway is refused
    sh("ip", "-n", node, "addr", "del", "10.88.0.1/24", "dev", "kl0")
    sh("ip", "-n", node, "addr", "add", "10.88.0.254/24", "dev", "kl0")
    rc, out, _ = run_plugin("ADD", make_conf("spec", SUBNET, str(tmp_path)), node, cid="c2", pod=netns.new("p"))
    assert rc != 0 and out is not None and out["code"] == 104 and "10.88.0.254/24" in out["msg"]


@needs_iptables
def test_ipmasq_rule_is_ensured_once(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    conf = make_conf("masq", SUBNET, str(tmp_path), ipMasq=True)
    for i in range(3):
        assert run_plugin("ADD", conf, node, cid=f"c{i}", pod=netns.new("p"))[0] == 0
    save = sh("nsenter", f"--net={path(node)}", "iptables-legacy-save", "-t", "nat").stdout
    assert save.count("-A POSTROUTING -j KL-CNI-MASQ") == 1
    assert save.count(f"-A KL-CNI-MASQ -s {SUBNET} ! -d {SUBNET}") == 1


def test_library_rollback_leaves_nothing(netns: Namespaces, node: str, tmp_path: Path,  # noqa: F811
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure late in ADD (route setup) undoes the veth and the reservation."""
    from cni import api
    from cni.errors import CNIError
    from cni.netlink import Netlink

    pod = netns.new("p")
    conf = make_conf("rb", SUBNET, str(tmp_path))

    def boom(self: Netlink, *a: object, **k: object) -> bool:
        raise OSError(5, "injected failure")

    monkeypatch.setattr(Netlink, "route_add", boom)
    with pytest.raises(CNIError) as ei:
        api.add(conf, "c1", path(pod), "eth0", host_netns=node)
    assert "injected failure" in ei.value.msg
    assert our_veths(node) == [] and links(pod) == ["lo"]
    assert reservations(str(tmp_path), "rb") == []
    monkeypatch.undo()
    res = api.add(conf, "c1", path(pod), "eth0", host_netns=node)
    assert res["ips"][0]["address"] == "10.88.0.3/24"  # round-robin moved on; 10.88.0.2 was freed
    api.delete(conf, "c1", path(pod), "eth0", host_netns=node)
    assert our_veths(node) == [] and reservations(str(tmp_path), "rb") == []


def test_requested_ip_via_cni_args(netns: Namespaces, node: str, tmp_path: Path) -> None:  # noqa: F811
    conf = make_conf("spec", SUBNET, str(tmp_path))
    rc, res, err = run_plugin("ADD", conf, node, cid="c1", pod=netns.new("p"),
                              cni_args="IgnoreUnknown=1;K8S_POD_NAME=a;IP=10.88.0.77")
    assert rc == 0, err
    assert res is not None and res["ips"][0]["address"] == "10.88.0.77/24"
    rc, out, _ = run_plugin("ADD", conf, node, cid="c2", pod=netns.new("p"), cni_args="IP=10.88.0.77")
    assert rc != 0 and out is not None and out["code"] == 106
