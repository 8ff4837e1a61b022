"""Pure parts of the CNI plugin: config validation, CNI_ARGS, result shapes."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from cni import config as cfg
from cni import errors as E
from cni.errors import CNIError
from cni.result import convert, merge


def base(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"cniVersion": "1.1.0", "name": "net", "type": "kubeling-cni",
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}}
    d.update(kw)
    return d


def code_of(raw: dict[str, Any]) -> int:
    with pytest.raises(CNIError) as ei:
        cfg.parse(raw)
    return ei.value.code


def test_defaults() -> None:
    c = cfg.parse(base())
    assert c.bridge == "kl0" and c.mtu == 1500 and c.is_gateway and c.is_default_gateway
    assert not c.ip_masq and c.hairpin_mode and c.iptables_backend == "legacy"
    r = c.range_sets[0][0]
    assert str(r.gateway) == "10.1.0.1" and str(r.start) == "10.1.0.1" and str(r.end) == "10.1.0.254"
    assert c.network_dir == "/var/lib/kubeling/cni/networks/net"


def test_flat_subnet_form_and_range_limits() -> None:
    c = cfg.parse(base(ipam={"subnet": "10.2.0.0/16", "rangeStart": "10.2.1.10", "rangeEnd": "10.2.1.20",
                             "gateway": "10.2.0.1", "dataDir": "/tmp/x",
                             "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.2.0.9"}]}))
    r = c.range_sets[0][0]
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.2.1.10", "10.2.1.20", "10.2.0.1")
    assert [str(x.dst) for x in c.routes] == ["0.0.0.0/0", "192.168.0.0/16"]
    assert c.data_dir == "/tmp/x"


@pytest.mark.parametrize("raw,code", [
    (base(cniVersion="9.9.9"), E.INCOMPATIBLE_VERSION),
    (base(cniVersion="banana"), E.INCOMPATIBLE_VERSION),
    ({k: v for k, v in base().items() if k != "type"}, E.INVALID_CONFIG),
    ({k: v for k, v in base().items() if k != "name"}, E.INVALID_CONFIG),
    ({k: v for k, v in base().items() if k != "cniVersion"}, E.INVALID_CONFIG),
    (base(name="bad name"), E.INVALID_CONFIG),
    (base(bridge="a-very-long-bridge-name"), E.INVALID_CONFIG),
    (base(mtu=10), E.INVALID_CONFIG),
    (base(ipMasq="yes"), E.INVALID_CONFIG),
    (base(iptablesBackend="ebpf"), E.INVALID_CONFIG),
    (base(ipam={"subnet": "10.1.0.0/33"}), E.INVALID_CONFIG),
    (base(ipam={"subnet": "10.1.0.1/24"}), E.INVALID_CONFIG),
    (base(ipam={"subnet": "10.1.0.0/24", "gateway": "10.1.0.255"}), E.INVALID_CONFIG),
    (base(ipam={"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.50", "rangeEnd": "10.1.0.40"}), E.INVALID_CONFIG),
    (base(ipam={"subnet": "fd00::/64"}), E.UNSUPPORTED_FIELD),
    (base(ipam={"type": "dhcp"}), E.UNSUPPORTED_FIELD),
    (base(ipam={}), E.INVALID_CONFIG),
    (base(ipam={"subnet": "10.1.0.0/24", "dataDir": "relative"}), E.INVALID_CONFIG),
    ({k: v for k, v in base().items() if k != "ipam"}, E.INVALID_CONFIG),
])
def test_bad_configs(raw: dict[str, Any], code: int) -> None:
    assert code_of(raw) == code


def test_decode_errors() -> None:
    for data in (b"{", b"[]", b"\xff\xfe"):
        with pytest.raises(CNIError) as ei:
            cfg.decode(data)
        assert ei.value.code == E.DECODE_FAILURE


def test_conflist_selects_our_plugin() -> None:
    raw = {"cniVersion": "1.0.0", "name": "list", "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
           "plugins": [{"type": "kubeling-cni", "ipam": {"subnet": "10.1.0.0/24"}}, {"type": "portmap"}]}
    c = cfg.parse(raw)
    assert c.name == "list" and c.cni_version == "1.0.0" and c.valid_attachments == [("a", "eth0")]
    with pytest.raises(CNIError) as ei:
        cfg.parse({"cniVersion": "1.0.0", "name": "list", "plugins": [{"type": "bridge"}]})
    assert ei.value.code == E.INVALID_CONFIG and "no plugin of type" in ei.value.msg


def test_cni_args_and_env_validation() -> None:
    assert cfg.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.1.0.9") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "x", "IP": "10.1.0.9"}
    for bad in ("novalue", "=x"):
        with pytest.raises(CNIError) as ei:
            cfg.parse_cni_args(bad)
        assert ei.value.code == E.INVALID_ENV
    for cid in ("", "-x", "a/b"):
        with pytest.raises(CNIError):
            cfg.validate_container_id(cid)
    for ifn in ("", "x" * 16, "a:b", "a b", "..", "a/b"):
        with pytest.raises(CNIError):
            cfg.validate_ifname(ifn)
    cfg.validate_container_id("abc_1.2-3")
    cfg.validate_ifname("eth0")


def test_result_versions_and_merge() -> None:
    r = {"cniVersion": "1.1.0", "interfaces": [{"name": "a"}], "ips": [{"address": "10.1.0.2/24", "interface": 0}],
         "routes": [], "dns": {}}
    old = convert(r, "0.4.0")
    assert old["cniVersion"] == "0.4.0" and old["ips"][0]["version"] == "4"
    assert "version" not in convert(old, "1.0.0")["ips"][0]
    m = merge(r, [{"name": "b"}, {"name": "c", "sandbox": "/x"}], [{"address": "10.2.0.2/24", "interface": 1}],
              [{"dst": "0.0.0.0/0", "gw": "10.2.0.1"}], {"search": ["x"]}, "1.0.0")
    assert [i["name"] for i in m["interfaces"]] == ["a", "b", "c"]
    assert m["ips"][1]["interface"] == 2 and m["dns"] == {"search": ["x"]}


def test_error_json() -> None:
    e = CNIError(E.TRY_AGAIN, "busy", "retry")
    assert e.to_dict("1.1.0") == {"cniVersion": "1.1.0", "code": 11, "msg": "busy", "details": "retry"}
    assert ipaddress.ip_address("10.0.0.1")  # keep ipaddress import honest


def test_ipmasq_exclude_widens_what_is_not_masqueraded() -> None:
    from cni.host import masq_rule

    assert cfg.parse(base(ipMasq=True)).ip_masq_exclude == ""
    assert masq_rule("net", "10.1.0.0/24")[:5] == ["-s", "10.1.0.0/24", "!", "-d", "10.1.0.0/24"]
    c = cfg.parse(base(ipMasq=True, ipMasqExclude="10.0.0.0/8"))
    assert c.ip_masq_exclude == "10.0.0.0/8"
    assert masq_rule("net", "10.1.0.0/24", c.ip_masq_exclude)[:5] == ["-s", "10.1.0.0/24", "!", "-d", "10.0.0.0/8"]
    assert code_of(base(ipMasqExclude="10.0.0.1/8")) == E.INVALID_CONFIG
