"""The DNS server: UDP + TCP on one address, answers from a Zone, forwards the rest.

- ClusterZone keeps informer caches of Services, EndpointSlices and Pods and rebuilds the
  (pure) Zone lazily: a change marks it dirty, the next query rebuilds it. Until every
  informer has synced, names in the domain get SERVFAIL (house rule 8).
- Names outside the domain go to the --upstream servers in turn (UDP for UDP clients, TCP for
  TCP clients); with no upstream they get SERVFAIL at once.
- Over UDP a reply larger than 512 bytes (or the client's EDNS size) is cut to its header
  and question with the TC bit set, so the client retries over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from dnslib import CNAME as DCNAME
from dnslib import QTYPE, RCODE, RR, DNSHeader, DNSRecord
from dnslib import SOA as DSOA
from dnslib import SRV as DSRV
from dnslib import TXT as DTXT
from dnslib import A as DA

from . import records
from .records import Answer, Record, Srv, Zone

log = logging.getLogger("kubeling.dns")

UDP_LIMIT = 512
ZoneFn = Callable[[], Zone | None]  # None: not ready (informers not synced)


class ClusterZone:
    """Informers of Services, EndpointSlices, Pods -> the current Zone (None until synced)."""

    def __init__(self, client: Any, domain: str = "cluster.local") -> None:
        from kube.client import Informer

        self.domain = domain
        self._dirty = threading.Event()
        self._dirty.set()
        self._lock = threading.Lock()
        self._zone: Zone | None = None
        self.rebuilds = 0
        mark = self._mark
        self.informers = [
            Informer(client, "services", on_add=mark, on_update=lambda o, n: mark(n), on_delete=mark),
            Informer(client, "endpointslices", label_selector=records.SERVICE_NAME_LABEL, on_add=mark,
                     on_update=lambda o, n: mark(n), on_delete=mark),
            Informer(client, "pods", on_add=mark, on_update=lambda o, n: mark(n), on_delete=mark),
        ]

    def _mark(self, _obj: Any = None) -> None:
        self._dirty.set()

    def start(self) -> ClusterZone:
        for inf in self.informers:
            inf.start()
        return self

    def stop(self) -> None:
        for inf in self.informers:
            inf.stop()

    def synced(self) -> bool:
        return all(inf.has_synced() for inf in self.informers)

    def __call__(self) -> Zone | None:
        if not self.synced():
            return None
        with self._lock:
            if self._dirty.is_set() or self._zone is None:
                self._dirty.clear()  # before reading the caches: a change during the build re-marks it
                services, slices, pods = (inf.list() for inf in self.informers)
                self._zone = records.build_zone(services, slices, pods, self.domain)
                self.rebuilds += 1
            return self._zone


def _to_rr(rec: Record, ttl: int) -> RR:
    data: Any
    if rec.rtype == records.A:
        data = DA(str(rec.data))
    elif rec.rtype == records.CNAME:
        data = DCNAME(str(rec.data) + ".")
    elif rec.rtype == records.TXT:
        data = DTXT(str(rec.data))
    elif isinstance(rec.data, Srv):
        data = DSRV(rec.data.priority, rec.data.weight, rec.data.port, rec.data.target + ".")
    else:
        raise ValueError(f"unsupported record type {rec.rtype}")
    return RR(rec.name + ".", rec.rtype, ttl=ttl, rdata=data)


class Resolver:
    """Bytes in, bytes out: the part of the server without sockets (tests call it directly)."""

    def __init__(self, zone: ZoneFn, domain: str = "cluster.local", ttl: int = 5,
                 upstreams: list[tuple[str, int]] | None = None, forward_timeout: float = 2.0) -> None:
        self.zone = zone
        self.domain = records.normalize(domain)
        self.ttl = ttl
        self.upstreams = upstreams or []
        self.forward_timeout = forward_timeout
        self.on_forward: Callable[[str], None] | None = None  # called with "HOST:PORT" per upstream tried

    def soa(self) -> RR:
        d = self.domain
        serial = int(time.time())
        return RR(d + ".", QTYPE.SOA, ttl=self.ttl,
                  rdata=DSOA(f"ns.dns.{d}.", f"hostmaster.{d}.", (serial, 7200, 1800, 86400, self.ttl)))

    def in_domain(self, name: str) -> bool:
        n = records.normalize(name)
        return n == self.domain or n.endswith("." + self.domain)

    def local(self, req: DNSRecord) -> DNSRecord | None:
        """The reply for a query we answer ourselves, or None when it must be forwarded."""
        reply = req.reply()  # qr, aa, rd copied, ra set
        if req.header.opcode != 0 or len(req.questions) != 1:
            reply.header.rcode = RCODE.NOTIMP if req.header.opcode != 0 else RCODE.FORMERR
            return reply
        q = req.questions[0]
        qname = str(q.qname)
        if not self.in_domain(qname):
            if self.upstreams:
                return None
            reply.header.aa = 0
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        zone = self.zone()
        if zone is None:
            reply.header.rcode = RCODE.SERVFAIL  # not synced yet: no answers from partial knowledge
            return reply
        ans: Answer = zone.lookup(qname, q.qtype)
        reply.header.rcode = ans.rcode
        if records.normalize(qname) == self.domain and q.qtype in (records.SOA, records.ANY):
            reply.add_answer(self.soa())
            return reply
        for r in ans.answers:
            reply.add_answer(_to_rr(r, self.ttl))
        for r in ans.additional:
            reply.add_ar(_to_rr(r, self.ttl))
        if ans.soa:
            reply.add_auth(self.soa())
        return reply

    def forward(self, data: bytes, tcp: bool) -> bytes | None:
        """Blocking: ask each upstream in turn; None when none answered."""
        for host, port in self.upstreams:
            if self.on_forward is not None:
                self.on_forward(f"{host}:{port}")
            try:
                if tcp:
                    with socket.create_connection((host, port), timeout=self.forward_timeout) as s:
                        s.sendall(struct.pack("!H", len(data)) + data)
                        return _read_tcp_message(s)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(self.forward_timeout)
                    s.sendto(data, (host, port))
                    got, _ = s.recvfrom(65535)
                    return got
            except (OSError, ValueError) as e:
                log.info("upstream %s:%d failed: %s", host, port, e)
        return None


def _read_tcp_message(s: socket.socket) -> bytes:
    head = _recv_exact(s, 2)
    return _recv_exact(s, struct.unpack("!H", head)[0])


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ValueError("connection closed mid-message")
        buf += chunk
    return buf


def _udp_limit(req: DNSRecord) -> int:
    for rr in req.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_LIMIT, int(rr.rclass))
    return UDP_LIMIT


def _servfail(data: bytes) -> bytes | None:
    if len(data) < 12:
        return None
    qid = struct.unpack("!H", data[:2])[0]
    return DNSRecord(DNSHeader(id=qid, qr=1, ra=1, rcode=RCODE.SERVFAIL)).pack()


def _truncated(reply: DNSRecord) -> bytes:
    h = reply.header
    cut = DNSRecord(DNSHeader(id=h.id, bitmap=h.bitmap, tc=1), q=reply.q)
    return bytes(cut.pack())


class DnsServer:
    """UDP and TCP on one host:port (port 0: a free one, see .port), in its own event-loop thread."""

    def __init__(self, resolver: Resolver, host: str = "127.0.0.1", port: int = 53, metrics: Any = None) -> None:
        self.resolver = resolver
        self.host = host
        self.port = port
        self.queries = 0
        self.metrics = metrics  # dns.metrics.Metrics, or None
        self._zone_label = resolver.domain + "."
        if metrics is not None:
            resolver.on_forward = metrics.forwarded
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closers: list[Callable[[], None]] = []

    # -- answering --

    async def answer(self, data: bytes, tcp: bool) -> bytes | None:
        self.queries += 1
        t0 = time.perf_counter()
        try:
            req = DNSRecord.parse(data)
        except Exception:  # dnslib raises several kinds on garbage; a bad packet never stops the server
            return _servfail(data)
        out = await self._reply(req, data, tcp)
        if self.metrics is not None and out is not None and req.questions:
            q = req.questions[0]
            zone = self._zone_label if self.resolver.in_domain(str(q.qname)) else "."
            rcode = out[3] & 0x0F if len(out) >= 4 else RCODE.SERVFAIL
            self.metrics.observe(zone, "tcp" if tcp else "udp", int(q.qtype), rcode, time.perf_counter() - t0)
        return out

    async def _reply(self, req: DNSRecord, data: bytes, tcp: bool) -> bytes | None:
        try:
            reply = self.resolver.local(req)
        except Exception:
            log.exception("answering %s failed", req.q.qname if req.questions else "?")
            return _servfail(data)
        if reply is None:
            assert self._loop is not None
            got = await self._loop.run_in_executor(None, self.resolver.forward, data, tcp)
            return got if got is not None else _servfail(data)
        out = bytes(reply.pack())
        if not tcp and len(out) > _udp_limit(req):
            return _truncated(reply)
        return out

    # -- lifecycle --

    def start(self, timeout: float = 5.0) -> DnsServer:
        self._thread = threading.Thread(target=self._run, name="dns-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the DNS server did not start on {self.host}:{self.port} in {timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._bind())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for close in self._closers:
                close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _bind(self) -> None:
        assert self._loop is not None
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                asyncio.ensure_future(self._reply(data, addr))

            async def _reply(self, data: bytes, addr: Any) -> None:
                out = await server.answer(data, tcp=False)
                if out is not None:
                    self.transport.sendto(out, addr)

        transport, _ = await self._loop.create_datagram_endpoint(Udp, local_addr=(self.host, self.port))
        self.port = transport.get_extra_info("sockname")[1]  # TCP takes the same port
        self._closers.append(transport.close)

        async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await asyncio.wait_for(reader.readexactly(2), 10)
                    data = await reader.readexactly(struct.unpack("!H", head)[0])
                    out = await self.answer(data, tcp=True)
                    if out is None:
                        break
                    writer.write(struct.pack("!H", len(out)) + out)
                    await writer.drain()
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        tcp = await asyncio.start_server(on_tcp, self.host, self.port)
        self._closers.append(tcp.close)
