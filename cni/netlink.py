"""The one adapter through which the plugin touches links, addresses and routes.

A small synchronous rtnetlink client: just the messages the plugin needs
(links, veth pairs, bridge ports, IPv4 addresses and routes), encoded with
struct.  A socket inside another network namespace comes from a forked child
that enters the namespace and hands the socket back over SCM_RIGHTS
(cni.nsfd), so this process never calls setns() and the module is safe in a
long-lived multi-threaded agent.  (The executable, a short-lived single-threaded
process, lets cni.nsfd enter the namespace itself instead: one fork less.)

Why not pyroute2 here: it works, but in a fresh process `import pyroute2`
costs ~90 ms (asyncio and every pyroute2 module), the message classes alone
~17 ms and its netns socket helper ~10 ms more, while the whole executable has
a budget of about 17 ms (2x the reference plugin with ipMasq off).  The tests read the
resulting state back with pyroute2's IPRoute, an independent implementation.
See cni/README.md for the measurements.
"""

from __future__ import annotations

import _socket  # the C module itself: socket.py builds IntEnums at import, ~3 ms of an exec
import _thread  # threading costs ~1 ms more to import and we need only a lock
import errno
import os
import struct

NETNS_RUN_DIR = "/var/run/netns"

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_ACK = 0x1, 0x4
F_DUMP = 0x300
F_EXCL, F_CREATE = 0x200, 0x400
NLA_F_NESTED = 0x8000
IFF_UP, IFF_PROMISC = 0x1, 0x100

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD, IFLA_EXT_MASK = 18, 20, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_NLA = struct.Struct("=HH")


class NetlinkError(OSError):
    pass


class Link:
    __slots__ = ("index", "name", "kind", "master", "mtu", "up", "promisc", "mac", "alias", "hairpin")

    def __init__(self, index: int, name: str, kind: str | None, master: int | None, mtu: int, up: bool,
                 promisc: bool, mac: str, alias: str | None, hairpin: bool | None) -> None:
        self.index, self.name, self.kind, self.master, self.mtu = index, name, kind, master, mtu
        self.up, self.promisc, self.mac, self.alias, self.hairpin = up, promisc, mac, alias, hairpin

    def __repr__(self) -> str:
        return f"Link({self.index}, {self.name!r}, kind={self.kind}, master={self.master})"


class Addr:
    __slots__ = ("index", "address", "prefixlen")

    def __init__(self, index: int, address: str, prefixlen: int) -> None:
        self.index, self.address, self.prefixlen = index, address, prefixlen

    def __repr__(self) -> str:
        return f"Addr({self.index}, {self.address}/{self.prefixlen})"


class RouteEntry:
    __slots__ = ("dst", "gw", "oif")

    def __init__(self, dst: str, gw: str | None, oif: int | None) -> None:
        self.dst, self.gw, self.oif = dst, gw, oif  # dst in "0.0.0.0/0" style

    def __repr__(self) -> str:
        return f"RouteEntry({self.dst}, gw={self.gw}, oif={self.oif})"


def netns_path(netns: str) -> str:
    """A netns name (under /var/run/netns) or a path -> a path."""
    return netns if "/" in netns else f"{NETNS_RUN_DIR}/{netns}"


# -- attribute encoding ---------------------------------------------------------------
def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def _u32(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("=I", v))


def _u8(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("=B", v))


def _str(kind: int, v: str) -> bytes:
    return _attr(kind, v.encode() + b"\0")


def _nest(kind: int, *parts: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _ip4(kind: int, ip: str) -> bytes:
    return _attr(kind, _socket.inet_aton(ip))


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        n, kind = _NLA.unpack_from(buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + n]
        off += (n + 3) & ~3
    return out


def _cstr(b: bytes | None) -> str | None:
    return b.split(b"\0", 1)[0].decode(errors="replace") if b is not None else None


def _u32v(b: bytes | None) -> int | None:
    return struct.unpack_from("=I", b)[0] if b is not None and len(b) >= 4 else None


def _parse_link(buf: bytes) -> Link:
    _fam, _type, index, flags, _change = _IFINFO.unpack_from(buf, 16)
    a = _attrs(buf, 16 + _IFINFO.size, len(buf))
    kind = None
    hairpin = None
    li = a.get(IFLA_LINKINFO)
    if li is not None:
        info = _attrs(li, 0, len(li))
        kind = _cstr(info.get(IFLA_INFO_KIND))
        sd = info.get(IFLA_INFO_SLAVE_DATA)
        if sd is not None:
            mode = _attrs(sd, 0, len(sd)).get(IFLA_BRPORT_MODE)
            hairpin = bool(mode[0]) if mode else None
    mac = a.get(IFLA_ADDRESS, b"")
    return Link(index=index, name=_cstr(a.get(IFLA_IFNAME)) or "", kind=kind,
                master=_u32v(a.get(IFLA_MASTER)), mtu=_u32v(a.get(IFLA_MTU)) or 0,
                up=bool(flags & IFF_UP), promisc=bool(flags & IFF_PROMISC),
                mac=":".join(f"{x:02x}" for x in mac), alias=_cstr(a.get(IFLA_IFALIAS)), hairpin=hairpin)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(0, 0, index, flags, change)


class Netlink:
    """rtnetlink in one network namespace (None = the one this process is in).

    A handle may be shared by threads: requests are serialised by a lock.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        if netns is None:
            sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _socket.NETLINK_ROUTE)
        else:
            from cni.nsfd import netns_socket
            sock = netns_socket(netns_path(netns), _socket.AF_NETLINK, _socket.SOCK_RAW, _socket.NETLINK_ROUTE)
        sock.bind((0, 0))
        self.sock = sock
        self._seq = 0
        self._lock = _thread.allocate_lock()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- core ----------------------------------------------------------------
    def _request(self, mtype: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return the raw reply messages (header included)."""
        dump = flags & F_DUMP == F_DUMP
        with self._lock:
            self._seq += 1
            seq = self._seq
            self.sock.send(_HDR.pack(16 + len(body), mtype, F_REQUEST | flags | (0 if dump else F_ACK),
                                     seq, 0) + body)
            out: list[bytes] = []
            while True:
                buf = self.sock.recv(1 << 16)
                off = 0
                while off + 16 <= len(buf):
                    length, ty, _fl, sq, _pid = _HDR.unpack_from(buf, off)
                    if length < 16:
                        break
                    if sq == seq:
                        if ty == NLMSG_ERROR or ty == NLMSG_DONE:
                            code = struct.unpack_from("=i", buf, off + 16)[0] if length >= 20 else 0
                            if code < 0:
                                raise NetlinkError(-code, os.strerror(-code))
                            return out
                        out.append(buf[off:off + length])
                    off += (length + 3) & ~3

    # -- links ---------------------------------------------------------------
    def link_get(self, name: str) -> Link | None:
        try:
            res = self._request(RTM_GETLINK, 0, _ifinfo() + _str(IFLA_IFNAME, name)
                                + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return _parse_link(res[0]) if res else None

    def links(self) -> list[Link]:
        res = self._request(RTM_GETLINK, F_DUMP, _ifinfo() + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))
        return [_parse_link(m) for m in res]

    def bridge_add(self, name: str, mtu: int) -> None:
        self._request(RTM_NEWLINK, F_CREATE | F_EXCL, _ifinfo() + _str(IFLA_IFNAME, name) + _u32(IFLA_MTU, mtu)
                      + _nest(IFLA_LINKINFO, _str(IFLA_INFO_KIND, "bridge")))

    def veth_add(self, name: str, peer: str, peer_netns_fd: int, mtu: int) -> None:
        """Create a veth pair whose peer end is born inside another namespace."""
        peer_msg = _ifinfo() + _str(IFLA_IFNAME, peer) + _u32(IFLA_MTU, mtu) + _u32(IFLA_NET_NS_FD, peer_netns_fd)
        body = (_ifinfo() + _str(IFLA_IFNAME, name) + _u32(IFLA_MTU, mtu)
                + _nest(IFLA_LINKINFO, _str(IFLA_INFO_KIND, "veth"),
                        _nest(IFLA_INFO_DATA, _nest(VETH_INFO_PEER, peer_msg))))
        self._request(RTM_NEWLINK, F_CREATE | F_EXCL, body)

    def link_set(self, index: int, *, up: bool | None = None, promisc: bool | None = None,
                 master: int | None = None, mtu: int | None = None, alias: str | None = None) -> None:
        flags = change = 0
        if up is not None:
            change |= IFF_UP
            flags |= IFF_UP if up else 0
        if promisc is not None:
            change |= IFF_PROMISC
            flags |= IFF_PROMISC if promisc else 0
        body = _ifinfo(index, flags, change)
        if master is not None:
            body += _u32(IFLA_MASTER, master)
        if mtu is not None:
            body += _u32(IFLA_MTU, mtu)
        if alias is not None:
            body += _attr(IFLA_IFALIAS, alias.encode())
        self._request(RTM_NEWLINK, 0, body)

    def bridge_port_set_hairpin(self, index: int, on: bool) -> None:
        body = _ifinfo(index) + _nest(IFLA_LINKINFO, _str(IFLA_INFO_SLAVE_KIND, "bridge"),
                                      _nest(IFLA_INFO_SLAVE_DATA, _u8(IFLA_BRPORT_MODE, 1 if on else 0)))
        self._request(RTM_NEWLINK, 0, body)

    def _del(self, body: bytes) -> bool:
        try:
            self._request(RTM_DELLINK, 0, body)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def link_del(self, index: int) -> bool:
        """Delete a link; False if it was already gone."""
        return self._del(_ifinfo(index))

    def link_del_by_name(self, name: str) -> bool:
        return self._del(_ifinfo() + _str(IFLA_IFNAME, name))

    # -- addresses -------------------------------------------------------------
    def addr_add(self, index: int, ip: str, prefixlen: int, broadcast: str | None = None) -> bool:
        """Add an IPv4 address; False if it was already there."""
        body = _IFADDR.pack(_socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _ip4(IFA_LOCAL, ip) + _ip4(IFA_ADDRESS, ip)
        if broadcast:
            body += _ip4(IFA_BROADCAST, broadcast)
        try:
            self._request(RTM_NEWADDR, F_CREATE | F_EXCL, body)
        except NetlinkError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        return True

    def addrs(self, index: int | None = None) -> list[Addr]:
        out = []
        for m in self._request(RTM_GETADDR, F_DUMP, _IFADDR.pack(_socket.AF_INET, 0, 0, 0, 0)):
            fam, plen, _f, _s, idx = _IFADDR.unpack_from(m, 16)
            if fam != _socket.AF_INET or (index is not None and idx != index):
                continue
            a = _attrs(m, 16 + _IFADDR.size, len(m))
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if raw:
                out.append(Addr(index=idx, address=_socket.inet_ntoa(raw), prefixlen=plen))
        return out

    # -- routes ------------------------------------------------------------------
    def route_add(self, dst: str, dst_len: int, gw: str | None, oif: int) -> bool:
        """Add a main-table IPv4 route; False if it was already there."""
        body = _RTMSG.pack(_socket.AF_INET, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                           RT_SCOPE_UNIVERSE if gw else RT_SCOPE_LINK, RTN_UNICAST, 0)
        body += _u32(RTA_OIF, oif)
        if dst_len:
            body += _ip4(RTA_DST, dst)
        if gw:
            body += _ip4(RTA_GATEWAY, gw)
        try:
            self._request(RTM_NEWROUTE, F_CREATE | F_EXCL, body)
        except NetlinkError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        return True

    def routes(self) -> list[RouteEntry]:
        out = []
        for m in self._request(RTM_GETROUTE, F_DUMP, _RTMSG.pack(_socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
            fam, dst_len, _sl, _tos, table, _p, _sc, rtype, _fl = _RTMSG.unpack_from(m, 16)
            a = _attrs(m, 16 + _RTMSG.size, len(m))
            table = _u32v(a.get(RTA_TABLE)) or table
            if fam != _socket.AF_INET or table != RT_TABLE_MAIN or rtype != RTN_UNICAST:
                continue
            dst = _socket.inet_ntoa(a[RTA_DST]) if RTA_DST in a else "0.0.0.0"
            gw = _socket.inet_ntoa(a[RTA_GATEWAY]) if RTA_GATEWAY in a else None
            out.append(RouteEntry(dst=f"{dst}/{dst_len}", gw=gw, oif=_u32v(a.get(RTA_OIF))))
        return out
