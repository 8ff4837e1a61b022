"""The plugin as a library: add / delete / check / gc / status / version.

The executable (cni.main) is a thin shell over these functions, so a runtime
that execs `kubeling-cni` and the agent that calls this module in-process get
the same semantics.  Every failure raises CNIError(code, msg, details).

`host_netns` names the namespace that plays the node (None = the current
one): a name under /var/run/netns or a path.  Nothing here calls setns():
sockets in other namespaces come from cni.nsfd's fork-a-child helper (unless
the executable, single-threaded, called nsfd.allow_setns()).

All operations on one network hold its IPAM lock for their whole duration,
so ADD, DEL, CHECK and GC of one network never interleave (parallel ADDs are
serialised; each takes a few milliseconds).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack

from cni import config as cfg
from cni import errors as E
from cni import trace
from cni.config import NetConf, Range
from cni.errors import CNIError
from cni.ipam import Store
from cni.netlink import Link, Netlink, NetlinkError
from cni.result import convert, is_v1, merge

TYPE_CHECKING = False  # typing costs ~2.5 ms to import in an exec'd plugin; mypy reads this block
if TYPE_CHECKING:
    from typing import Any

VETH_PREFIX = "klv"
ALIAS_PREFIX = "kubeling-cni"


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """Predictable host-side veth name: 'klv' + 12 hex digits (15 characters)."""
    try:
        from _sha256 import sha256  # the builtin module: no OpenSSL load (~2 ms) in the executable
    except ImportError:  # pragma: no cover
        from hashlib import sha256
    digest = sha256(f"{network}/{container_id}/{ifname}".encode()).hexdigest()
    return VETH_PREFIX + digest[:12]


def is_host_veth_name(name: str) -> bool:
    """Shaped like host_veth_name(): 'klv' + 12 lowercase hex digits (no re: see config.py)."""
    return len(name) == 15 and name.startswith(VETH_PREFIX) and all(c in "0123456789abcdef" for c in name[3:])


def _alias(network: str, container_id: str, ifname: str) -> str:
    return f"{ALIAS_PREFIX}:{network}:{ifname}:{container_id}"


@contextlib.contextmanager
def _step(what: str, code: int = E.INTERNAL) -> Iterator[None]:
    """Turn an OS/netlink failure into a CNIError that says what was being done."""
    try:
        yield
    except CNIError:
        raise
    except OSError as e:
        raise CNIError(code, f"{what} failed: {e.strerror or e}",
                       f"errno {e.errno}" if e.errno else "") from None


def _conf(config: dict[str, Any] | NetConf, need_ipam: bool = True) -> NetConf:
    if isinstance(config, NetConf):
        return config
    if not isinstance(config, dict):
        raise CNIError(E.DECODE_FAILURE, "network configuration must be a JSON object")
    return cfg.parse(config, need_ipam=need_ipam)


def _args(args: str | dict[str, str] | None) -> dict[str, str]:
    if args is None:
        return {}
    if isinstance(args, dict):
        return args
    return cfg.parse_cni_args(args)


def _requested_ip(conf: NetConf, args: dict[str, str]) -> ipaddress.IPv4Address | None:
    want: Any = args.get("IP")
    cni_args = conf.raw.get("args", {}).get("cni", {}) if isinstance(conf.raw.get("args"), dict) else {}
    if not want and isinstance(cni_args, dict) and cni_args.get("ips"):
        want = cni_args["ips"][0]
    if not want:
        return None
    try:
        return ipaddress.IPv4Address(str(want).split("/")[0])
    except ValueError:
        raise CNIError(E.INVALID_ENV, f"requested IP {want!r} is not an IPv4 address") from None


def _pod_netns(netns: str, code: int = E.UNKNOWN_CONTAINER) -> str:
    if not netns:
        raise CNIError(E.INVALID_ENV, "CNI_NETNS is empty", "give the path of the pod's network namespace")
    if not os.path.exists(netns):
        raise CNIError(code, f"network namespace {netns} does not exist",
                       "the sandbox is gone or CNI_NETNS is wrong")
    return netns


def _undo(fn: Any, *a: Any) -> None:
    """Run one rollback step; a failure here must not hide the original error."""
    try:
        fn(*a)
    except Exception as e:  # noqa: BLE001 - GC reclaims whatever a failed rollback leaves
        print(f"kubeling-cni: rollback step {getattr(fn, '__name__', fn)} failed: {e}", file=sys.stderr)


# -- bridge -------------------------------------------------------------------------------------
def ensure_bridge(node: Netlink, conf: NetConf) -> Link:
    """The node bridge exists, is a bridge, is up and carries the gateway address(es)."""
    with _step(f"looking up bridge {conf.bridge}"):
        link = node.link_get(conf.bridge)
    if link is None:
        with _step(f"creating bridge {conf.bridge}"):
            try:
                node.bridge_add(conf.bridge, conf.mtu)
            except NetlinkError as e:
                if e.errno != errno.EEXIST:
                    raise
            link = node.link_get(conf.bridge)
        if link is None:
            raise CNIError(E.INTERNAL, f"bridge {conf.bridge} vanished right after it was created")
    if link.kind != "bridge":
        raise CNIError(E.BRIDGE_CONFLICT, f"link {conf.bridge} exists but is a {link.kind or 'device'}, not a bridge",
                       "set \"bridge\" in the network config to another name or delete that link")
    if conf.is_gateway:
        with _step(f"reading addresses of {conf.bridge}"):
            addrs = node.addrs(link.index)
        for rs in conf.range_sets:
            for r in rs:
                want = ipaddress.IPv4Interface(f"{r.gateway}/{r.subnet.prefixlen}")
                have = [ipaddress.IPv4Interface(f"{a.address}/{a.prefixlen}") for a in addrs]
                if want in have:
                    continue
                clash = [h for h in have if h.network.overlaps(r.subnet)]
                if clash:
                    raise CNIError(E.BRIDGE_CONFLICT,
                                   f"bridge {conf.bridge} has address {clash[0]}, expected gateway {want}",
                                   "another network config uses this bridge with a different subnet; "
                                   "fix the config or remove the address")
                with _step(f"adding gateway {want} to {conf.bridge}"):
                    node.addr_add(link.index, str(want.ip), want.network.prefixlen,
                                  str(want.network.broadcast_address))
    if not link.up or (conf.promisc_mode and not link.promisc):
        with _step(f"setting {conf.bridge} up"):
            node.link_set(link.index, up=True, promisc=True if conf.promisc_mode else None)
    return link


def _ensure_node(node: Netlink, conf: NetConf, host_netns: str | None, res: ExitStack) -> tuple[Link, list[Any]]:
    """Bridge + ip_forward now; the ipMasq checks are started and finished by the caller."""
    from cni import host
    checks: list[Any] = []
    if conf.ip_masq:
        for rs in conf.range_sets:
            for r in rs:
                chk = host.MasqueradeCheck(conf.name, str(r.subnet), conf.iptables_backend, host_netns,
                                            conf.ip_masq_exclude).start()
                res.callback(chk.cancel)
                checks.append(chk)
    br = ensure_bridge(node, conf)
    host.ensure_ip_forward(host_netns)
    return br, checks


def _primary(conf: NetConf) -> Range:
    if not conf.range_sets:
        raise CNIError(E.INVALID_CONFIG, "no IPAM range configured")
    return conf.range_sets[0][0]


def _range_of(conf: NetConf, ip: ipaddress.IPv4Address) -> Range:
    for r in conf.range_sets[0]:
        if ip in r.subnet:
            return r
    return _primary(conf)


def _routes(conf: NetConf, gateway: str) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = []
    for rt in conf.routes:
        d: dict[str, Any] = {"dst": str(rt.dst)}
        if rt.gw is not None:
            d["gw"] = str(rt.gw)
        routes.append(d)
    if conf.is_default_gateway and not any(r["dst"] == "0.0.0.0/0" for r in routes):
        routes.append({"dst": "0.0.0.0/0", "gw": gateway})
    return routes


# -- ADD ----------------------------------------------------------------------------------------
def add(config: dict[str, Any] | NetConf, container_id: str, netns: str, ifname: str,
        args: str | dict[str, str] | None = None, host_netns: str | None = None) -> dict[str, Any]:
    """Attach a pod: bridge, veth pair, IP, routes.  Returns the CNI result dict.

    A failure leaves nothing behind that this call created (no veth, no reservation).
    """
    conf = _conf(config)
    cfg.validate_container_id(container_id)
    cfg.validate_ifname(ifname)
    pod_path = _pod_netns(netns)
    requested = _requested_ip(conf, _args(args))
    hname = host_veth_name(conf.name, container_id, ifname)

    with ExitStack() as res:
        store = res.enter_context(Store(conf.network_dir))
        with _step("opening netlink in the node namespace", E.IO_FAILURE):
            node = res.enter_context(Netlink(host_netns))
        trace.mark("add: IPAM lock, node netlink")
        if store.find(container_id, ifname):
            raise CNIError(E.ATTACHMENT_EXISTS,
                           f"container {container_id} already has interface {ifname} on network {conf.name}",
                           "DEL the attachment before adding it again")
        br, masq_checks = _ensure_node(node, conf, host_netns, res)
        trace.mark("add: bridge, ip_forward (ipMasq check started)")
        with _step(f"opening netlink in {pod_path}", E.UNKNOWN_CONTAINER):
            pod = res.enter_context(Netlink(pod_path))
        with _step(f"looking up {ifname} in {pod_path}"):
            if pod.link_get(ifname) is not None:
                raise CNIError(E.INTERFACE_EXISTS, f"interface {ifname} already exists in {pod_path}",
                               "choose another CNI_IFNAME or DEL the attachment that owns it")
        trace.mark("add: pod netlink")

        with ExitStack() as undo:
            ip = store.allocate(container_id, ifname, conf.range_sets[0], 0, requested)
            undo.callback(_undo, store.release_ip, ip)
            trace.mark("add: IP reserved")
            rng = _range_of(conf, ip)
            prefix = rng.subnet.prefixlen
            gateway = str(rng.gateway)

            with _step(f"creating veth {hname}"):
                stale = node.link_get(hname)
                if stale is not None:  # left by an ADD that died; this attachment has no reservation
                    node.link_del(stale.index)
                fd = os.open(pod_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    try:
                        node.veth_add(hname, ifname, fd, conf.mtu)
                    except NetlinkError as e:
                        if e.errno == errno.EEXIST:
                            raise CNIError(E.INTERFACE_EXISTS,
                                           f"interface {ifname} already exists in {pod_path}") from None
                        raise
                finally:
                    os.close(fd)
            undo.callback(_undo, node.link_del_by_name, hname)
            trace.mark("add: veth created")

            with _step(f"attaching {hname} to {conf.bridge}"):
                hlink = node.link_get(hname)
                if hlink is None:
                    raise CNIError(E.INTERNAL, f"veth {hname} vanished right after it was created")
                node.link_set(hlink.index, master=br.index, up=True,
                              alias=_alias(conf.name, container_id, ifname))
                if conf.hairpin_mode:
                    node.bridge_port_set_hairpin(hlink.index, True)

            with _step(f"configuring {ifname} in {pod_path}"):
                lo = pod.link_get("lo")
                if lo is not None and not lo.up:
                    pod.link_set(lo.index, up=True)
                plink = pod.link_get(ifname)
                if plink is None:
                    raise CNIError(E.INTERNAL, f"{ifname} is missing in {pod_path} right after veth creation")
                pod.addr_add(plink.index, str(ip), prefix, str(rng.subnet.broadcast_address))
                pod.link_set(plink.index, up=True)
                routes = _routes(conf, gateway)
                for rt in routes:
                    gw = rt.get("gw", gateway if conf.is_gateway else None)
                    dst = ipaddress.IPv4Network(rt["dst"])
                    pod.route_add(str(dst.network_address), dst.prefixlen, gw, plink.index)

            trace.mark("add: veth attached, pod end configured")
            interfaces = [
                {"name": conf.bridge, "mac": br.mac},
                {"name": hname, "mac": hlink.mac},
                {"name": ifname, "mac": plink.mac, "sandbox": netns},
            ]
            ip_entry: dict[str, Any] = {"address": f"{ip}/{prefix}", "interface": 2}
            if conf.is_gateway:
                ip_entry["gateway"] = gateway
            result = merge(conf.prev_result, interfaces, [ip_entry], routes, conf.dns, conf.cni_version)
            for chk in masq_checks:
                chk.finish()
            trace.mark("add: ipMasq check finished")
            undo.pop_all()
            return result
    raise AssertionError("unreachable")  # pragma: no cover


# -- DEL ----------------------------------------------------------------------------------------
def delete(config: dict[str, Any] | NetConf, container_id: str, netns: str | None, ifname: str,
           args: str | dict[str, str] | None = None, host_netns: str | None = None) -> None:
    """Detach a pod.  Idempotent: a missing netns, veth or reservation is success."""
    conf = _conf(config)
    cfg.validate_container_id(container_id)
    cfg.validate_ifname(ifname)
    _args(args)
    hname = host_veth_name(conf.name, container_id, ifname)
    with Store(conf.network_dir) as store:
        with _step("opening netlink in the node namespace", E.IO_FAILURE):
            node = Netlink(host_netns)
        try:
            with _step(f"deleting veth {hname}"):
                node.link_del_by_name(hname)  # the pod end goes with it
        finally:
            node.close()
        store.release(container_id, ifname)


del_ = delete


# -- CHECK --------------------------------------------------------------------------------------
def check(config: dict[str, Any] | NetConf, container_id: str, netns: str, ifname: str,
          args: str | dict[str, str] | None = None, host_netns: str | None = None) -> None:
    """Verify the attachment still matches prevResult; raise CNIError(103, what differs)."""
    conf = _conf(config)
    if not is_v1(conf.cni_version) and cfg.version_tuple(conf.cni_version) < (0, 4, 0):
        raise CNIError(E.INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {conf.cni_version}",
                       "use cniVersion 0.4.0 or later")
    cfg.validate_container_id(container_id)
    cfg.validate_ifname(ifname)
    _args(args)
    if conf.prev_result is None:
        raise CNIError(E.INVALID_CONFIG, "CHECK needs prevResult in the network config",
                       "pass the result of ADD as prevResult")
    prev = convert(conf.prev_result, "1.1.0")
    pod_path = _pod_netns(netns)
    hname = host_veth_name(conf.name, container_id, ifname)

    def fail(msg: str, details: str = "") -> CNIError:
        return CNIError(E.CHECK_FAILED, msg, details)

    with ExitStack() as res:
        store = res.enter_context(Store(conf.network_dir))
        reserved = {str(r.ip) for r in store.find(container_id, ifname)}
        if not reserved:
            raise fail(f"no IP reservation for container {container_id} interface {ifname}")
        idx = next((i for i, itf in enumerate(prev["interfaces"])
                    if itf.get("name") == ifname and itf.get("sandbox")), None)
        if idx is None:
            raise fail(f"prevResult has no interface {ifname} in a sandbox")
        want_ips = [ip for ip in prev["ips"] if ip.get("interface") == idx]
        for ip in want_ips:
            if ip["address"].split("/")[0] not in reserved:
                raise fail(f"IP {ip['address']} of prevResult is not reserved for this attachment",
                           f"reserved: {sorted(reserved)}")
        with _step("opening netlink in the node namespace", E.IO_FAILURE):
            node = res.enter_context(Netlink(host_netns))
        br = node.link_get(conf.bridge)
        if br is None or br.kind != "bridge":
            raise fail(f"bridge {conf.bridge} is missing")
        if not br.up:
            raise fail(f"bridge {conf.bridge} is down")
        hlink = node.link_get(hname)
        if hlink is None:
            raise fail(f"host veth {hname} is missing")
        if hlink.master != br.index:
            raise fail(f"host veth {hname} is not attached to {conf.bridge}")
        if not hlink.up:
            raise fail(f"host veth {hname} is down")
        with _step(f"opening netlink in {pod_path}", E.UNKNOWN_CONTAINER):
            pod = res.enter_context(Netlink(pod_path))
        plink = pod.link_get(ifname)
        if plink is None:
            raise fail(f"interface {ifname} is missing in {pod_path}")
        if not plink.up:
            raise fail(f"interface {ifname} in {pod_path} is down")
        want_mac = prev["interfaces"][idx].get("mac")
        if want_mac and want_mac.lower() != plink.mac.lower():
            raise fail(f"interface {ifname} has MAC {plink.mac}, prevResult says {want_mac}")
        have = {f"{a.address}/{a.prefixlen}" for a in pod.addrs(plink.index)}
        for ip in want_ips:
            if ip["address"] not in have:
                raise fail(f"address {ip['address']} is missing on {ifname}", f"found: {sorted(have)}")
        routes = pod.routes()
        for rt in prev.get("routes", []):
            dst = str(ipaddress.ip_network(rt["dst"], strict=False))
            if ipaddress.ip_network(dst).version != 4:
                continue
            if not any(r.dst == dst and (not rt.get("gw") or r.gw == rt["gw"]) for r in routes):
                raise fail(f"route {dst} via {rt.get('gw', '-')} is missing in {pod_path}")


# -- GC -----------------------------------------------------------------------------------------
def gc(config: dict[str, Any] | NetConf, valid_attachments: list[dict[str, str]] | None = None,
       host_netns: str | None = None) -> dict[str, Any]:
    """Free every reservation and host veth of this network not in the valid attachments.

    `valid_attachments` ([{"containerID", "ifname"}]) defaults to the config's
    "cni.dev/valid-attachments".  Returns what was freed (the executable prints nothing).
    """
    conf = _conf(config)
    if cfg.version_tuple(conf.cni_version) < (1, 1, 0):
        raise CNIError(E.INCOMPATIBLE_VERSION, f"GC is not defined for cniVersion {conf.cni_version}",
                       "use cniVersion 1.1.0")
    if valid_attachments is not None:
        valid = {(a["containerID"], a["ifname"]) for a in valid_attachments}
    elif conf.valid_attachments is not None:
        valid = set(conf.valid_attachments)
    else:
        raise CNIError(E.INVALID_CONFIG, "GC needs cni.dev/valid-attachments",
                       "pass the list of live attachments (an empty list frees everything)")
    keep = {host_veth_name(conf.name, c, i) for c, i in valid}
    mine = f"{ALIAS_PREFIX}:{conf.name}:"
    removed_links: list[str] = []
    with Store(conf.network_dir) as store:
        freed = store.gc(valid)
        with _step("opening netlink in the node namespace", E.IO_FAILURE):
            node = Netlink(host_netns)
        try:
            with _step("listing links"):
                links = node.links()
                br = next((ln for ln in links if ln.name == conf.bridge), None)
                for ln in links:
                    if ln.kind != "veth" or not is_host_veth_name(ln.name) or ln.name in keep:
                        continue
                    ours = (ln.alias or "").startswith(mine) or (
                        not ln.alias and (ln.master is None or (br is not None and ln.master == br.index)))
                    if ours and node.link_del(ln.index):
                        removed_links.append(ln.name)
        finally:
            node.close()
    return {"releasedIPs": [str(r.ip) for r in freed], "removedLinks": removed_links}


# -- STATUS / VERSION -----------------------------------------------------------------------------
def status(config: dict[str, Any] | NetConf, host_netns: str | None = None) -> None:
    """Ready to ADD?  Raises 50 (not available) or 51 (no free IP)."""
    conf = _conf(config)
    if cfg.version_tuple(conf.cni_version) < (1, 1, 0):
        raise CNIError(E.INCOMPATIBLE_VERSION, f"STATUS is not defined for cniVersion {conf.cni_version}",
                       "use cniVersion 1.1.0")
    try:
        with Store(conf.network_dir, lock_timeout=5) as store:
            free = store.free_count(conf.range_sets[0])
    except CNIError as e:
        raise CNIError(E.NOT_AVAILABLE, f"plugin not available: {e.msg}", e.details) from None
    if free <= 0:
        raise CNIError(E.LIMITED_RESOURCES, f"no free IP address left in network {conf.name}",
                       "delete pods or run GC to free leaked reservations")
    if conf.ip_masq:
        import shutil
        if shutil.which(f"iptables-{conf.iptables_backend}") is None:
            raise CNIError(E.NOT_AVAILABLE, f"iptables-{conf.iptables_backend} not found (needed for ipMasq)",
                           "install iptables or set ipMasq false")
    if host_netns is not None and not os.path.exists(host_netns if "/" in host_netns else
                                                     f"/var/run/netns/{host_netns}"):
        raise CNIError(E.NOT_AVAILABLE, f"node network namespace {host_netns} does not exist")


def version(cni_version: str | None = None) -> dict[str, Any]:
    return {"cniVersion": cni_version or cfg.LATEST_VERSION, "supportedVersions": list(cfg.SUPPORTED_VERSIONS)}
