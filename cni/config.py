"""Network configuration: decode, validate, default (pure; no side effects).

Accepts the single-plugin form and the conflist form ({"plugins": [...]}),
in which case the entry whose "type" is ours is used, with the list's "name"
and "cniVersion" injected the way a runtime does.  The "ipam" section uses
the reference host-local plugin's schema ("ranges" or the flat "subnet"
form, "routes", "dataDir"), so one config serves both.
"""

from __future__ import annotations

import ipaddress

from cni import cjson
from cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    UNSUPPORTED_FIELD,
    CNIError,
)

PLUGIN_TYPE = "kubeling-cni"
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
LATEST_VERSION = "1.1.0"
DEFAULT_BRIDGE = "kl0"
DEFAULT_DATA_DIR = "/var/lib/kubeling/cni/networks"
IPAM_TYPES = ("host-local", "kubeling-cni", "kubeling")
IPTABLES_BACKENDS = ("legacy", "nft")

# names are checked with str methods, not re: the exec path does not import re (~2 ms with enum)
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")


def _valid_name(s: str) -> bool:
    """[a-zA-Z0-9][a-zA-Z0-9_.-]*"""
    return bool(s) and s[0] in _ALNUM and all(c in _NAME_CHARS for c in s)


def _bad_ifname_char(s: str) -> bool:
    """Has '/', ':' or whitespace."""
    return any(c in "/:" or c.isspace() for c in s)

TYPE_CHECKING = False  # typing costs ~2.5 ms to import in an exec'd plugin; mypy reads this block
if TYPE_CHECKING:
    from typing import Any

# IPv4 only for now (IPv6 subnets are refused with code 2)
IPNetwork = ipaddress.IPv4Network
IPAddr = ipaddress.IPv4Address


class Range:
    """One IPAM range: the assignable addresses start..end of subnet, minus the gateway.

    Plain classes with __slots__ here and in ipam/netlink, not typing.NamedTuple:
    the exec'd plugin does not import typing at all (see cni/README.md, Start-up).
    """

    __slots__ = ("subnet", "start", "end", "gateway")

    def __init__(self, subnet: IPNetwork, start: IPAddr, end: IPAddr, gateway: IPAddr) -> None:
        self.subnet, self.start, self.end, self.gateway = subnet, start, end, gateway

    def __repr__(self) -> str:
        return f"Range({self.subnet}, {self.start}-{self.end}, gateway={self.gateway})"

    def contains(self, ip: IPAddr) -> bool:
        return ip.version == self.start.version and self.start <= ip <= self.end and ip != self.gateway


class Route:
    __slots__ = ("dst", "gw")

    def __init__(self, dst: IPNetwork, gw: IPAddr | None = None) -> None:
        self.dst, self.gw = dst, gw

    def __repr__(self) -> str:
        return f"Route({self.dst}, gw={self.gw})"


class NetConf:
    """A validated network config (a plain class: dataclasses cost ~5 ms to import)."""

    def __init__(self, cni_version: str, name: str, type: str, raw: dict[str, Any]) -> None:
        self.cni_version = cni_version
        self.name = name
        self.type = type
        self.raw = raw
        self.bridge = DEFAULT_BRIDGE
        self.mtu = 1500
        self.is_gateway = True
        self.is_default_gateway = True
        self.ip_masq = False
        self.ip_masq_exclude = ""  # "" = the pod subnet (traffic to it is never masqueraded)
        self.hairpin_mode = True
        self.promisc_mode = False
        self.iptables_backend = "legacy"
        self.range_sets: list[list[Range]] = []
        self.routes: list[Route] = []
        self.data_dir = DEFAULT_DATA_DIR
        self.dns: dict[str, Any] = {}
        self.prev_result: dict[str, Any] | None = None
        self.valid_attachments: list[tuple[str, str]] | None = None

    @property
    def network_dir(self) -> str:
        return f"{self.data_dir.rstrip('/')}/{self.name}"


def version_tuple(v: str) -> tuple[int, int, int]:
    parts = v.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid cniVersion {v!r}", "expected a version like 1.1.0")
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def decode(data: bytes | str) -> dict[str, Any]:
    """Decode stdin bytes into a JSON object, or raise code 6."""
    try:
        obj = cjson.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(DECODE_FAILURE, "network configuration on stdin is not valid JSON", str(e)) from None
    if not isinstance(obj, dict):
        raise CNIError(DECODE_FAILURE, "network configuration on stdin must be a JSON object",
                       f"got {type(obj).__name__}")
    return obj


def _select_plugin(raw: dict[str, Any], plugin_type: str) -> dict[str, Any]:
    plugins = raw.get("plugins")
    if plugins is None:
        return raw
    if not isinstance(plugins, list) or not plugins:
        raise CNIError(INVALID_CONFIG, "conflist 'plugins' must be a non-empty list")
    for p in plugins:
        if isinstance(p, dict) and p.get("type") == plugin_type:
            conf = dict(p)
            for key in ("name", "cniVersion", "cni.dev/valid-attachments", "cni.dev/attachments"):
                if key in raw and key not in conf:
                    conf[key] = raw[key]
            return conf
    raise CNIError(INVALID_CONFIG, f"conflist {raw.get('name')!r} has no plugin of type {plugin_type!r}",
                   "add an entry with \"type\": \"kubeling-cni\" to 'plugins'")


def _str(d: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or not v:
        if key not in d and default is None:
            raise CNIError(INVALID_CONFIG, f"{where}: missing required field {key!r}")
        raise CNIError(INVALID_CONFIG, f"{where}: field {key!r} must be a non-empty string, got {v!r}")
    return v


def _bool(d: dict[str, Any], key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise CNIError(INVALID_CONFIG, f"field {key!r} must be true or false, got {v!r}")
    return v


def _ip(value: Any, where: str) -> IPAddr:
    try:
        ip = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise CNIError(INVALID_CONFIG, f"{where}: {value!r} is not an IP address") from None
    if not isinstance(ip, ipaddress.IPv4Address):
        raise CNIError(UNSUPPORTED_FIELD, f"{where}: IPv6 address {ip} is not supported yet",
                       "kubeling-cni handles IPv4 pod networks only")
    return ip


def _net(value: Any, where: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except (ValueError, TypeError) as e:
        raise CNIError(INVALID_CONFIG, f"{where}: {value!r} is not a valid subnet", str(e)) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise CNIError(UNSUPPORTED_FIELD, f"{where}: IPv6 subnet {net} is not supported yet",
                       "kubeling-cni handles IPv4 pod networks only")
    return net


def parse_range(r: Any, where: str) -> Range:
    if not isinstance(r, dict):
        raise CNIError(INVALID_CONFIG, f"{where}: a range must be an object with a 'subnet'")
    if "subnet" not in r:
        raise CNIError(INVALID_CONFIG, f"{where}: missing required field 'subnet'")
    subnet = _net(r["subnet"], f"{where}.subnet")
    if subnet.prefixlen > 30:
        raise CNIError(INVALID_CONFIG, f"{where}: subnet {subnet} is too small",
                       "use a /30 or larger so a gateway and a pod fit")
    first, last = subnet.network_address + 1, subnet.broadcast_address - 1
    gateway = _ip(r["gateway"], f"{where}.gateway") if "gateway" in r else first
    start = _ip(r["rangeStart"], f"{where}.rangeStart") if "rangeStart" in r else first
    end = _ip(r["rangeEnd"], f"{where}.rangeEnd") if "rangeEnd" in r else last
    for label, ip in (("gateway", gateway), ("rangeStart", start), ("rangeEnd", end)):
        if ip not in subnet or not first <= ip <= last:
            raise CNIError(INVALID_CONFIG, f"{where}: {label} {ip} is not a usable address of {subnet}")
    if start > end:
        raise CNIError(INVALID_CONFIG, f"{where}: rangeStart {start} is after rangeEnd {end}")
    return Range(subnet=subnet, start=start, end=end, gateway=gateway)


def _parse_ipam(ipam: Any, conf: NetConf) -> None:
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_CONFIG, "missing required section 'ipam'",
                       'add "ipam": {"type": "host-local", "ranges": [[{"subnet": "<podCIDR>"}]]}')
    ipam_type = ipam.get("type", "host-local")
    if ipam_type not in IPAM_TYPES:
        raise CNIError(UNSUPPORTED_FIELD, f"ipam type {ipam_type!r} is not supported",
                       "kubeling-cni has a built-in host-local IPAM; use \"type\": \"host-local\"")
    if "ranges" in ipam:
        sets = ipam["ranges"]
        if not isinstance(sets, list) or not sets:
            raise CNIError(INVALID_CONFIG, "ipam.ranges must be a non-empty list of range sets")
        for i, rs in enumerate(sets):
            if not isinstance(rs, list) or not rs:
                raise CNIError(INVALID_CONFIG, f"ipam.ranges[{i}] must be a non-empty list of ranges")
            conf.range_sets.append([parse_range(r, f"ipam.ranges[{i}][{j}]") for j, r in enumerate(rs)])
    elif "subnet" in ipam:
        conf.range_sets.append([parse_range(ipam, "ipam")])
    else:
        raise CNIError(INVALID_CONFIG, "ipam has neither 'ranges' nor 'subnet'",
                       "set ipam.ranges to [[{\"subnet\": \"<podCIDR>\"}]]")
    if len(conf.range_sets) > 1:
        raise CNIError(UNSUPPORTED_FIELD, "only one IPv4 range set is supported",
                       "remove the extra entries from ipam.ranges")
    routes = ipam.get("routes", [])
    if not isinstance(routes, list):
        raise CNIError(INVALID_CONFIG, "ipam.routes must be a list")
    for i, r in enumerate(routes):
        if not isinstance(r, dict) or "dst" not in r:
            raise CNIError(INVALID_CONFIG, f"ipam.routes[{i}] must be an object with 'dst'")
        dst = _net(r["dst"], f"ipam.routes[{i}].dst")
        gw = _ip(r["gw"], f"ipam.routes[{i}].gw") if r.get("gw") else None
        conf.routes.append(Route(dst=dst, gw=gw))
    data_dir = ipam.get("dataDir", DEFAULT_DATA_DIR)
    if not isinstance(data_dir, str) or not data_dir.startswith("/"):
        raise CNIError(INVALID_CONFIG, f"ipam.dataDir must be an absolute path, got {data_dir!r}")
    conf.data_dir = data_dir


def parse(raw: dict[str, Any], plugin_type: str = PLUGIN_TYPE, need_ipam: bool = True) -> NetConf:
    """Validate a decoded network config and return it with defaults applied."""
    p = _select_plugin(raw, plugin_type)
    version = _str(p, "cniVersion", "network config")
    version_tuple(version)
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    name = _str(p, "name", "network config")
    if not _valid_name(name):
        raise CNIError(INVALID_CONFIG, f"network name {name!r} is invalid",
                       "use letters, digits, '_', '.', '-', starting with a letter or digit")
    ptype = _str(p, "type", "network config")
    conf = NetConf(cni_version=version, name=name, type=ptype, raw=p)
    conf.bridge = _str(p, "bridge", "network config", DEFAULT_BRIDGE)
    if len(conf.bridge) > 15 or _bad_ifname_char(conf.bridge):
        raise CNIError(INVALID_CONFIG, f"bridge name {conf.bridge!r} is not a valid interface name",
                       "use at most 15 characters without '/', ':' or spaces")
    mtu = p.get("mtu", 1500)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 576 <= mtu <= 65535:
        raise CNIError(INVALID_CONFIG, f"mtu must be an integer between 576 and 65535, got {mtu!r}")
    conf.mtu = mtu
    conf.is_gateway = _bool(p, "isGateway", True)
    conf.is_default_gateway = _bool(p, "isDefaultGateway", True)
    if conf.is_default_gateway:
        conf.is_gateway = True
    conf.ip_masq = _bool(p, "ipMasq", False)
    if p.get("ipMasqExclude") not in (None, ""):
        # Traffic to this range keeps its pod source address: the cluster CIDR when other nodes route
        # pod subnets to each other (host-gw), as flannel masquerades only what leaves the cluster.
        conf.ip_masq_exclude = str(_net(p["ipMasqExclude"], "ipMasqExclude"))
    conf.hairpin_mode = _bool(p, "hairpinMode", True)
    conf.promisc_mode = _bool(p, "promiscMode", False)
    backend = p.get("iptablesBackend", "legacy")
    if backend not in IPTABLES_BACKENDS:
        raise CNIError(INVALID_CONFIG, f"iptablesBackend must be one of {IPTABLES_BACKENDS}, got {backend!r}")
    conf.iptables_backend = backend
    dns = p.get("dns", {})
    if not isinstance(dns, dict):
        raise CNIError(INVALID_CONFIG, "dns must be an object")
    conf.dns = dns
    prev = p.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CNIError(INVALID_CONFIG, "prevResult must be an object")
    conf.prev_result = prev
    va = p.get("cni.dev/valid-attachments", p.get("cni.dev/attachments"))
    if va is not None:
        if not isinstance(va, list):
            raise CNIError(INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
        pairs: list[tuple[str, str]] = []
        for i, a in enumerate(va):
            if not isinstance(a, dict) or not isinstance(a.get("containerID"), str) \
                    or not isinstance(a.get("ifname"), str):
                raise CNIError(INVALID_CONFIG, f"cni.dev/valid-attachments[{i}] needs string "
                               "'containerID' and 'ifname'")
            pairs.append((a["containerID"], a["ifname"]))
        conf.valid_attachments = pairs
    if need_ipam or "ipam" in p:
        _parse_ipam(p.get("ipam"), conf)
    return conf


def validate_container_id(cid: str) -> None:
    if not _valid_name(cid):
        raise CNIError(INVALID_ENV, f"container ID {cid!r} is invalid",
                       "CNI_CONTAINERID must be non-empty, alphanumeric plus '_', '.', '-'")


def validate_ifname(ifname: str) -> None:
    if not ifname or len(ifname) > 15 or ifname in (".", "..") or _bad_ifname_char(ifname):
        raise CNIError(INVALID_ENV, f"interface name {ifname!r} is invalid",
                       "CNI_IFNAME must be 1-15 characters without '/', ':' or spaces")


def parse_cni_args(args: str | None) -> dict[str, str]:
    """Parse CNI_ARGS 'K1=V1;K2=V2' into a dict (code 4 on a malformed pair)."""
    out: dict[str, str] = {}
    if not args:
        return out
    for pair in args.split(";"):
        if not pair:
            continue
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise CNIError(INVALID_ENV, f"CNI_ARGS entry {pair!r} is not KEY=VALUE", f"CNI_ARGS={args!r}")
        out[k] = v
    return out
