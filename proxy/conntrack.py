"""Stale UDP conntrack entries: what to clear (pure) and how (the `conntrack` tool).

UDP has no connection end, so a conntrack entry keeps sending a client's datagrams
to the endpoint chosen for its first packet for as long as it keeps talking. When
that endpoint goes away the entry must be deleted, or the client talks into the void;
when a service goes from no endpoints to some, entries made while it had none (no
DNAT, or a REJECT) must be deleted too. Like kube-proxy, this runs after the new
rules are in, so the next packet is NATed by them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from . import nsexec
from .model import ServicePort

log = logging.getLogger("kubeling.proxy.conntrack")
BATCH_THRESHOLD = 8


@dataclass(frozen=True, order=True)
class Flush:
    """One `conntrack -D` filter. Empty fields do not filter."""

    protocol: str  # "udp" (or "sctp")
    orig_dst: str = ""  # the ClusterIP the client sent to ("" with a NodePort)
    dport: int = 0  # the service port or NodePort the client sent to
    reply_src: str = ""  # the endpoint the entry was NATed to ("" = any)

    def argv(self) -> list[str]:
        a = ["conntrack", "-D", "-p", self.protocol]
        if self.orig_dst:
            a += ["--orig-dst", self.orig_dst]
        if self.dport:
            a += ["--dport", str(self.dport)]
        if self.reply_src:
            a += ["--reply-src", self.reply_src]
        return a

    def matches(self, entry: Entry) -> bool:
        return (entry.protocol == self.protocol and (not self.orig_dst or entry.orig_dst == self.orig_dst)
                and (not self.dport or entry.dport == self.dport)
                and (not self.reply_src or entry.reply_src == self.reply_src))


def _state(ports: Iterable[ServicePort]) -> dict[tuple[str, str], ServicePort]:
    return {(sp.key, sp.protocol): sp for sp in ports if sp.protocol in ("UDP", "SCTP")}


def stale_flushes(old: Iterable[ServicePort] | None, new: Iterable[ServicePort]) -> list[Flush]:
    """The entries to delete after moving from ruleset `old` to `new`.

    old=None is the first sync: every UDP service with endpoints then counts as newly
    active, as in kube-proxy.

    - an endpoint a service port no longer sends new traffic to: entries NATed to it
      (ClusterIP and NodePort);
    - a service port that had no usable endpoint and now has some (or is new with some):
      every entry to it, since they were made without NAT.
    """
    before, after = _state(old or ()), _state(new)
    out: set[Flush] = set()
    for key, sp in after.items():
        proto = sp.protocol.lower()
        now = {e.ip for e in sp.usable_endpoints()}
        prev = before.get(key)
        had = {e.ip for e in prev.usable_endpoints()} if prev else set()
        if now and not had:
            out.add(Flush(proto, sp.cluster_ip, sp.port))
            if sp.node_port:
                out.add(Flush(proto, "", sp.node_port))
        if prev is not None:
            for ip in had - now:
                out.add(Flush(proto, prev.cluster_ip, prev.port, ip))
                if prev.node_port:
                    out.add(Flush(proto, "", prev.node_port, ip))
    for key, prev in before.items():  # services that vanished: their flows have nowhere to go
        if key in after:
            continue
        for ip in {e.ip for e in prev.usable_endpoints()}:
            out.add(Flush(prev.protocol.lower(), prev.cluster_ip, prev.port, ip))
    return sorted(out)



@dataclass(frozen=True)
class Entry:
    """The fields of a conntrack entry that Flush filters on."""

    protocol: str
    orig_dst: str
    dport: int
    reply_src: str


def parse_list(text: str) -> list[Entry]:
    """`conntrack -L` lines ("udp 17 29 src=A dst=B sport=1 dport=2 [UNREPLIED] src=C dst=D ...") -> entries."""
    out = []
    for line in text.splitlines():
        toks = line.split()
        if len(toks) < 3:
            continue
        kv: dict[str, list[str]] = {}
        for t in toks:
            k, eq, v = t.partition("=")
            if eq:
                kv.setdefault(k, []).append(v)
        dst, dport, src = kv.get("dst", []), kv.get("dport", []), kv.get("src", [])
        if not dst or not dport or len(src) < 2 or not dport[0].isdigit():
            continue
        out.append(Entry(toks[0], dst[0], int(dport[0]), src[1]))
    return out


class Conntrack(Protocol):
    def flush(self, f: Flush) -> None:
        """Delete the matching entries; none matching is success. Raises ConntrackError."""
        ...

    def flush_many(self, flushes: Sequence[Flush]) -> list[ConntrackError]:
        """flush() each; returns the failures instead of raising."""
        ...


class ConntrackError(Exception):
    pass


class ExecConntrack:
    """The conntrack(8) tool, run in the target namespace."""

    def __init__(self, netns: str | None = None, binary: str = "conntrack") -> None:
        self.netns = netns
        self.binary = binary

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def flush(self, f: Flush) -> None:
        argv = f.argv()
        argv[0] = self.binary
        p = nsexec.run(self.netns, argv, timeout=10)
        # exit 1 with "0 flow entries have been deleted" means nothing matched: fine.
        if p.returncode == 0 or "0 flow entries" in p.stderr:
            log.debug("conntrack %s: %s", " ".join(argv[1:]), p.stderr.strip())
            return
        raise ConntrackError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()[:300]}")

    def flush_many(self, flushes: Sequence[Flush]) -> list[ConntrackError]:
        """Delete what each filter matches. With more than a few filters (the first sync after a
        start counts every UDP service as newly active) list the table once and run `-D` only
        for filters that match an entry: one fork instead of thousands."""
        todo = list(flushes)
        errors: list[ConntrackError] = []
        if len(todo) > BATCH_THRESHOLD:
            protos = sorted({f.protocol for f in todo})
            entries: list[Entry] = []
            for proto in protos:
                p = nsexec.run(self.netns, [self.binary, "-L", "-p", proto], timeout=30)
                if p.returncode != 0:
                    errors.append(ConntrackError(f"conntrack -L -p {proto} failed: {p.stderr.strip()[:300]}"))
                    return errors
                entries += parse_list(p.stdout)
            todo = [f for f in todo if any(f.matches(e) for e in entries)]
        for f in todo:
            try:
                self.flush(f)
            except (ConntrackError, OSError) as e:
                errors.append(e if isinstance(e, ConntrackError) else ConntrackError(str(e)))
        return errors


class FakeConntrack:
    """Records what would have been deleted."""

    def __init__(self, fail: bool = False) -> None:
        self.flushed: list[Flush] = []
        self.fail = fail

    def flush(self, f: Flush) -> None:
        if self.fail:
            raise ConntrackError("fake failure")
        self.flushed.append(f)

    def flush_many(self, flushes: Sequence[Flush]) -> list[ConntrackError]:
        errors = []
        for f in flushes:
            try:
                self.flush(f)
            except ConntrackError as e:
                errors.append(e)
        return errors
