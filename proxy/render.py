"""The whole desired iptables ruleset of the service proxy, as text, from a pure function.

`render(ports, node, cfg)` turns the ServicePorts of model.py into one
`iptables-restore --noflush` payload per table ("nat", "filter").  The layout
follows upstream kube-proxy's iptables mode, with our own prefixes so that
we only ever touch chains that are ours:

nat
  PREROUTING, OUTPUT -> KUBELING-SERVICES   one rule per ClusterIP:port with usable
                                            endpoints, then the NodePort jump (last)
  KUBELING-NODEPORTS                        one rule per NodePort -> KL-EXT-<hash>
  KL-SVC-<hash>   "Cluster" policy chain: masquerade off-cluster sources, then pick an
                  endpoint (ClientIP affinity via `-m recent`, then `statistic random`
                  with probability 1/(n-i) so each of n endpoints gets 1/n)
  KL-SVL-<hash>   "Local" policy chain: the same over this node's endpoints only
  KL-EXT-<hash>   NodePort traffic: masquerade (Cluster policy) or keep the client
                  source (Local policy; pods and the node itself still short-circuit
                  to the Cluster chain, as upstream)
  KL-SEP-<hash>   one endpoint: hairpin masquerade (source is the endpoint), DNAT
  POSTROUTING -> KUBELING-POSTROUTING       MASQUERADE what KUBELING-MARK-MASQ marked
filter
  FORWARD, OUTPUT (ctstate NEW) -> KUBELING-FILTER    REJECT ClusterIPs without endpoints
  INPUT, FORWARD (ctstate NEW)  -> KUBELING-EXTERNAL  REJECT NodePorts without endpoints
  FORWARD -> KUBELING-FORWARD   accept marked / established service traffic
  INPUT -> KUBELING-FIREWALL    drop off-node packets to 127/8 (route_localnet guard)

Every declared chain line (`:CHAIN - [0:0]`) also flushes that chain in a
`--noflush` restore, so a payload replaces exactly our chains and nothing
else; built-in chains are never declared.  Chain names hash the service key
like upstream (sha256, base32, 16 characters) so they are stable across
restarts and nodes.  Output is deterministic: services in key order, each service's
chains together (EXT, SVC, SVL, then its endpoints in the order given), so snapshots
are stable and a diff of two payloads reads per service.

Comments (`-m comment`) are on by default only for small clusters: each one is a
256-byte match in the kernel's table, and at 10,000 services they cost 15-40% of the
restore (see RenderConfig.comments and bench/proxy.py).

The renderer is memoized per ServicePort (it is a pure function of frozen
values), which keeps an incremental resync of 10,000 services cheap; `diff()`
turns two renders into a partial payload of only the chains that changed.

`render()` itself only sorts: the text is made when first needed, either all at once
(`Rendered.chains`, `.tables`) or piece by piece in payload order
(`Rendered.head_chunks`), which lets a full sync stream it into an already running
restore: the kernel's parser works on the first chains while the later ones are made.
Either way the result is the same text; a ServicePort's chain names, its lines in the
shared chains and its own chains' rules are each made once (`_Service`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from proxy.model import Endpoint, NodeInfo, ServicePort

TABLES = ("nat", "filter")
LARGE_CLUSTER_ENDPOINTS = 1000  # upstream's largeClusterEndpointsThreshold
HASH_CHAIN_KINDS = ("SVC", "SVL", "EXT", "SEP")  # KL-<kind>-<hash>: the per-service chains
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = tuple(_B32[i >> 5] + _B32[i & 31] for i in range(1024))  # 10 bits -> 2 characters


@dataclass(frozen=True)
class RenderConfig:
    """Node-wide knobs of the ruleset (the kube-proxy flags that shape it)."""

    masquerade_all: bool = False  # SNAT all ClusterIP traffic (--masquerade-all)
    cluster_cidr: str = ""  # pods' range; "" = use NodeInfo.pod_cidr; none = no off-cluster masquerade
    mark_masq: str = "0x4000/0x4000"  # fwmark bit/mask meaning "masquerade me"
    chain_prefix: str = "KUBELING"  # fixed chains: KUBELING-SERVICES, ...
    hash_prefix: str = "KL"  # per-service chains: KL-SVC-<hash>, KL-SEP-<hash>, ...
    # `-m comment` on per-service rules: True, False, or None = only while the cluster has at
    # most LARGE_CLUSTER_ENDPOINTS endpoints (upstream's "large cluster mode").  Each comment
    # is a 256-byte match in the kernel's blob: at 10,000 services they made the legacy
    # restore 1.7x slower (0.67 s vs 0.40 s) and a one-endpoint partial sync 1.6x slower.
    comments: bool | None = None
    random_fully: bool = True  # MASQUERADE --random-fully (kernel >= 3.13)

    @property
    def prefixes(self) -> tuple[str, ...]:
        """Name prefixes that mark a chain as ours (cleanup and stale deletion look only at these).
        The per-service kinds are spelled out: other KL- chains (the CNI plugin's KL-CNI-MASQ) are not ours."""
        return (f"{self.chain_prefix}-", *(f"{self.hash_prefix}-{kind}-" for kind in HASH_CHAIN_KINDS))

    def chain(self, suffix: str) -> str:
        return f"{self.chain_prefix}-{suffix}"

    @property
    def mark_bit(self) -> str:
        return self.mark_masq.split("/", 1)[0]


@dataclass(frozen=True)
class JumpRule:
    """A rule in a built-in chain that jumps to one of our chains.

    `spec` is written the way `iptables-save` prints it back, so the backend
    can compare it with what is in the kernel text-for-text.
    """

    table: str
    chain: str  # built-in chain: PREROUTING, OUTPUT, POSTROUTING, INPUT, FORWARD
    spec: str  # everything after "-A CHAIN "

    @property
    def target(self) -> str:
        return self.spec.rsplit("-j ", 1)[1].split()[0]


class Rendered:
    """A rendered ruleset.

    chains: table -> our chain -> its rules (complete "-A CHAIN ..." lines), in
            declaration order; every chain in here is declared (and so flushed).
    deleted: table -> our chains to delete (`-X`) in the same restore.
    tables: table -> the full `iptables-restore --noflush` payload.

    From render(), the rules are made on first use: either all by `chains`, or piece by
    piece while a backend streams `head_chunks("nat")` into a running restore, whose parsing
    then overlaps the render (the same text as payload_head(), chunk by chunk).
    """

    def __init__(self, chains: Mapping[str, Mapping[str, tuple[str, ...]]] | None = None,
                 deleted: Mapping[str, tuple[str, ...]] | None = None, *, _lazy: _Lazy | None = None) -> None:
        self.deleted: Mapping[str, tuple[str, ...]] = deleted or {}
        self._lazy = _lazy
        if chains is not None:
            self.__dict__["chains"] = chains  # the cached_property's slot

    @functools.cached_property
    def chains(self) -> Mapping[str, Mapping[str, tuple[str, ...]]]:
        lazy = self._lazy
        assert lazy is not None, "Rendered needs chains"
        services = lazy.services()
        nat, filt = lazy.shared_chains(services)
        nat.update(chain for s in services for chain in s.chains())
        self._lazy = None
        return {"nat": nat, "filter": filt}

    def head_chunks(self, table: str) -> Iterator[str]:
        """payload_head(table, self.chains[table]) in pieces, made as they are needed (and
        kept: `chains` is complete afterwards): the chain declarations service by service,
        then the shared chains, then the services' own chains."""
        lazy = self._lazy
        if "chains" in self.__dict__ or lazy is None or table != "nat" \
                or len(set(map(_sort_key, lazy.ports))) < len(lazy.ports):
            # (A service port twice, never from service_ports(): the dict of chains merges
            # what the two declare, which a stream cannot; so it is made at once.)
            yield payload_head(table, self.chains.get(table, {}))
            return
        yield "".join([f"*{table}\n", *(f":{c} - [0:0]\n" for c in lazy.nat_fixed)])
        services: list[_Service] = []
        for i in range(0, len(lazy.ports), _CHUNK):
            batch = lazy.services(i, i + _CHUNK)
            services += batch
            yield "".join([f":{c} - [0:0]\n" for s in batch for c in s.names])
        nat, filt = lazy.shared_chains(services)
        yield "".join(_lines(nat.values()))
        for i in range(0, len(services), _CHUNK):
            own = [chain for s in services[i:i + _CHUNK] for chain in s.chains()]
            nat.update(own)
            yield "".join(_lines(rules for _, rules in own))
        self.__dict__["chains"] = {"nat": nat, "filter": filt}
        self._lazy = None

    @functools.cached_property
    def tables(self) -> dict[str, str]:
        """Built on first use: a partial sync never needs the full text."""
        return {t: payload(t, self.chains[t], self.deleted.get(t, ())) for t in self.chains}

    def rule_count(self) -> int:
        return sum(len(rules) for chains in self.chains.values() for rules in chains.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rendered):
            return NotImplemented
        return self.chains == other.chains and self.deleted == other.deleted

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Rendered(chains={self.chains!r}, deleted={self.deleted!r})"


_CHUNK = 128  # services per streamed piece: 10-70 kB of text


def _lines(groups: Iterable[Sequence[str]]) -> Iterator[str]:
    for rules in groups:
        for rule in rules:
            yield rule + "\n"


def payload_head(table: str, chains: Mapping[str, Sequence[str]]) -> str:
    """The first part of a table's restore text: declare (flush) `chains`, then their rules."""
    lines = [f"*{table}"]
    lines.extend(f":{c} - [0:0]" for c in chains)
    for rules in chains.values():
        lines.extend(rules)
    lines.append("")
    return "\n".join(lines)


def payload_tail(delete: Iterable[str] = (), extra: Sequence[str] = (),
                 declared: Mapping[str, object] | None = None) -> str:
    """The rest of a table's restore text: `extra` lines (the backend's jump fix-ups),
    then the deletion of `delete` (minus chains `declared` in the head), then COMMIT.
    A chain must be empty to be deleted, so each gets a chain line (which flushes it)
    before any `-X`, as upstream does.  Kept apart from the head so that a backend can
    start streaming the head before it knows the tail."""
    gone = [c for c in delete if declared is None or c not in declared]
    lines = [*extra, *(f":{c} - [0:0]" for c in gone), *(f"-X {c}" for c in gone), "COMMIT", ""]
    return "\n".join(lines)


def payload(table: str, chains: Mapping[str, Sequence[str]], delete: Iterable[str] = (),
            extra: Sequence[str] = ()) -> str:
    """One table's restore text: declare (flush) `chains`, their rules, `extra` lines
    (jump fix-ups of the backend), `-X` for `delete`, COMMIT."""
    return payload_head(table, chains) + payload_tail(delete, extra, chains)


def chain_names(rendered: Rendered) -> dict[str, set[str]]:
    """table -> names of the chains the rendered ruleset declares."""
    return {t: set(c) for t, c in rendered.chains.items()}


# --- names -----------------------------------------------------------------------------------

def _hash(text: str, _sha256: Callable[[bytes], hashlib._Hash] = hashlib.sha256, _p: tuple[str, ...] = _B32_PAIRS
          ) -> str:
    """Upstream's portProtoHash: base32(sha256(text))[:16] (16 of [A-Z2-7]).  The first 10
    bytes encode to exactly those 16 characters; a 10-bit table does that 4x faster than
    base64.b32encode (pure Python), which was half of a cold render.  (Defaults bound as
    locals and one f-string: 30,000 calls in a cold render of 10,000 services.)"""
    n = int.from_bytes(_sha256(text.encode()).digest()[:10], "big")
    return (f"{_p[n >> 70]}{_p[(n >> 60) & 1023]}{_p[(n >> 50) & 1023]}{_p[(n >> 40) & 1023]}"
            f"{_p[(n >> 30) & 1023]}{_p[(n >> 20) & 1023]}{_p[(n >> 10) & 1023]}{_p[n & 1023]}")


def service_chain(sp: ServicePort, kind: str, cfg: RenderConfig) -> str:
    """KL-SVC-/KL-SVL-/KL-EXT-<hash of key+protocol>: 23 characters, under iptables' 28."""
    return f"{cfg.hash_prefix}-{kind}-{_hash(sp.key + sp.protocol)}"


def endpoint_chain(sp: ServicePort, ep: Endpoint, cfg: RenderConfig) -> str:
    """KL-SEP-<hash of key+protocol+ip:port>."""
    return f"{cfg.hash_prefix}-SEP-{_hash(sp.key + sp.protocol + ep.addr)}"


def display_name(sp: ServicePort) -> str:
    """ns/name:port as upstream prints it (no colon for an unnamed port)."""
    return f"{sp.namespace}/{sp.name}" + (f":{sp.port_name}" if sp.port_name else "")


# --- pieces ----------------------------------------------------------------------------------

def _comment(cfg: RenderConfig, text: str) -> str:
    if not cfg.comments:
        return ""
    return f'-m comment --comment "{text}" ' if " " in text else f"-m comment --comment {text} "


def _usable(eps: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    """Ready endpoints; when none is ready, the serving-but-terminating ones (upstream's fallback)."""
    return tuple([e for e in eps if e.ready and not e.terminating]) \
        or tuple([e for e in eps if e.serving and e.terminating])


class _Shape(NamedTuple):
    """Which of its chains a ServicePort needs, from its endpoints and policies."""

    cluster_eps: tuple[Endpoint, ...]  # usable endpoints
    local_eps: tuple[Endpoint, ...]  # usable endpoints on this node
    used: tuple[Endpoint, ...]  # endpoints with a KL-SEP- chain: the Cluster ones, then local-only ones
    has_internal: bool  # the ClusterIP goes to a policy chain (else REJECT/DROP in filter)
    has_external: bool  # the NodePort goes to a policy chain (else REJECT/DROP in filter)
    uses_ext: bool
    uses_svc: bool
    uses_svl: bool


def _shape(sp: ServicePort, node_name: str) -> _Shape:
    cluster_eps = _usable(sp.endpoints)  # as sp.usable_endpoints()
    local_eps = _usable([e for e in sp.endpoints if e.node_name == node_name])
    has_eps = bool(cluster_eps)
    is_nodeport = sp.node_port != 0
    uses_svc = has_eps and (not sp.internal_local or is_nodeport)
    # The Cluster chain also serves the NodePort short-circuits (pods and the node itself).
    uses_svl = bool(local_eps) and has_eps and (sp.internal_local or (is_nodeport and sp.external_local))
    used = cluster_eps if uses_svc else ()
    if uses_svl:
        used += tuple([e for e in local_eps if e not in used])
    return _Shape(cluster_eps, local_eps, used, has_eps and (not sp.internal_local or bool(local_eps)),
                  has_eps and (not sp.external_local or bool(local_eps)), has_eps and is_nodeport, uses_svc,
                  uses_svl)


class _Shared(NamedTuple):
    """One ServicePort's lines in the shared chains."""

    services: tuple[str, ...] = ()  # nat KUBELING-SERVICES lines
    nodeports: tuple[str, ...] = ()  # nat KUBELING-NODEPORTS lines
    filter_internal: tuple[str, ...] = ()  # filter KUBELING-FILTER lines
    filter_external: tuple[str, ...] = ()  # filter KUBELING-EXTERNAL lines


_Args = tuple[ServicePort, "_Shape", str, RenderConfig, str]  # sp, shape, cidr, cfg, name hash


class _Service:
    """One ServicePort, rendered in three steps (memoized: a pure function of frozen values):
    the names of its own nat chains at once; its lines in the shared chains (`shared()`) and
    the rules of its own chains (`chains()`, the bulk of the text) each on first use.  In the
    order of the restore text, so that a restore can parse the declarations of all chains,
    then the shared chains, while the rest is still being made (Rendered.head_chunks)."""

    __slots__ = ("names", "_args", "_shared", "_chains")

    def __init__(self, names: tuple[str, ...], args: _Args) -> None:
        self.names = names  # its nat chains, in order: EXT, SVC, SVL, then the endpoints'
        self._args: _Args | None = args  # dropped once both are made: fewer objects for the GC to visit
        self._shared: _Shared | None = None
        self._chains: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    # Each made once (a race between threads only makes it twice).
    def shared(self) -> _Shared:
        shared, args = self._shared, self._args
        if shared is None:
            if args is None:  # both made meanwhile, by another thread
                return self.shared()
            shared = self._shared = _shared_lines(*args)
            self._tidy()
        return shared

    def chains(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Each chain in `names` with its rules."""
        chains, args = self._chains, self._args
        if chains is None:
            if args is None:
                return self.chains()
            chains = self._chains = tuple(zip(self.names, _own_rules(*args, self.names), strict=True))
            self._tidy()
        return chains

    def _tidy(self) -> None:
        if self._shared is not None and self._chains is not None:
            self._args = None


@functools.lru_cache(maxsize=16)
def _names(cfg: RenderConfig) -> tuple[str, str, str, str, str]:
    return (cfg.chain("SERVICES"), cfg.chain("NODEPORTS"), cfg.chain("FILTER"), cfg.chain("EXTERNAL"),
            cfg.chain("MARK-MASQ"))


def _policy_rules(chain: str, seps: Sequence[tuple[Endpoint, str]], sp: ServicePort, name: str,
                  comments: bool, masq_rule: str) -> tuple[str, ...]:
    """A KL-SVC-/KL-SVL- chain: the optional masquerade rule, then the endpoint choice."""
    rules = [masq_rule] if masq_rule else []
    cm = (lambda ep: f'-m comment --comment "{name} -> {ep.addr}" ') if comments else (lambda ep: "")
    if sp.session_affinity:
        rules.extend(f"-A {chain} {cm(ep)}-m recent --name {sep} --rcheck --seconds {sp.affinity_timeout} "
                     f"--reap -j {sep}" for ep, sep in seps)
    n = len(seps)
    for i, (ep, sep) in enumerate(seps):
        if i < n - 1:
            rules.append(f"-A {chain} {cm(ep)}-m statistic --mode random --probability {1.0 / (n - i):.10f} -j {sep}")
        else:
            rules.append(f"-A {chain} {cm(ep)}-j {sep}")  # the last one catches what is left
    return tuple(rules)


@functools.lru_cache(maxsize=1 << 16)
def _service(sp: ServicePort, node_name: str, cidr: str, cfg: RenderConfig) -> _Service:
    """The first half of one ServicePort (see _Service): the names of its chains.

    Endpoints are taken in the order given (service_ports() sorts them)."""
    base = sp.key + sp.protocol
    h = _hash(base)  # as service_chain(), once for the three chains
    hp = cfg.hash_prefix
    shape = _shape(sp, node_name)
    seps = [f"{hp}-SEP-{_hash(f'{base}{ep.ip}:{ep.port}')}" for ep in shape.used]  # as endpoint_chain()
    if len(seps) > 1 and len(set(seps)) < len(seps):  # an ip:port twice: its chain once
        first = dict(zip(seps, shape.used, strict=True))
        shape, seps = shape._replace(used=tuple(first.values())), list(first)
    names = ((f"{hp}-EXT-{h}",) if shape.uses_ext else ()) + ((f"{hp}-SVC-{h}",) if shape.uses_svc else ()) \
        + ((f"{hp}-SVL-{h}",) if shape.uses_svl else ()) + tuple(seps)
    return _Service(names, (sp, shape, cidr, cfg, h))


def _no_comment(text: str) -> str:
    return ""


def _shared_lines(sp: ServicePort, shape: _Shape, cidr: str, cfg: RenderConfig, h: str) -> _Shared:
    """The second step of one ServicePort: its lines in the shared chains."""
    name = display_name(sp)
    proto = sp.protocol.lower()
    pmatch = f"-m {proto} -p {proto}"
    services_chain, nodeports_chain, filter_chain, external_chain, _ = _names(cfg)
    cm = functools.partial(_comment, cfg) if cfg.comments else _no_comment
    vip = f"-d {sp.cluster_ip}/32 --dport {sp.port}"
    has_eps = bool(shape.cluster_eps)
    services: tuple[str, ...] = ()
    nodeports: tuple[str, ...] = ()
    f_int: tuple[str, ...] = ()
    f_ext: tuple[str, ...] = ()

    # ClusterIP: to the internal policy chain, or REJECT/DROP in filter.
    if shape.has_internal:
        internal_chain = f"{cfg.hash_prefix}-{'SVL' if sp.internal_local else 'SVC'}-{h}"
        services = (f"-A {services_chain} {cm(name + ' cluster IP')}{pmatch} {vip} -j {internal_chain}",)
    elif not has_eps:
        f_int = (f"-A {filter_chain} {cm(name + ' has no endpoints')}"
                 f"{pmatch} {vip} -j REJECT --reject-with icmp-port-unreachable",)
    else:
        f_int = (f"-A {filter_chain} {cm(name + ' has no local endpoints')}{pmatch} {vip} -j DROP",)

    # NodePort: to the EXT chain, or REJECT/DROP in filter (whatever was not short-circuited).
    if sp.node_port:
        if shape.uses_ext:
            nodeports = (f"-A {nodeports_chain} {cm(name)}{pmatch} --dport {sp.node_port} "
                         f"-j {cfg.hash_prefix}-EXT-{h}",)
        if not shape.has_external:
            what, verdict = ((" has no endpoints", "REJECT --reject-with icmp-port-unreachable") if not has_eps
                             else (" has no local endpoints", "DROP"))
            f_ext = (f"-A {external_chain} {cm(name + what)}"
                     f"-m addrtype --dst-type LOCAL {pmatch} --dport {sp.node_port} -j {verdict}",)
    return _Shared(services, nodeports, f_int, f_ext)


def _own_rules(sp: ServicePort, shape: _Shape, cidr: str, cfg: RenderConfig, h: str,
               names: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The third step of one ServicePort: the rules of its chains `names`, in that order."""
    name = display_name(sp)
    proto = sp.protocol.lower()
    pmatch = f"-m {proto} -p {proto}"
    masq = _names(cfg)[4]
    comments = bool(cfg.comments)
    cm = functools.partial(_comment, cfg) if comments else _no_comment
    hp = cfg.hash_prefix
    svc_chain, svl_chain, ext_chain = f"{hp}-SVC-{h}", f"{hp}-SVL-{h}", f"{hp}-EXT-{h}"
    internal_chain = svl_chain if sp.internal_local else svc_chain
    vip = f"-d {sp.cluster_ip}/32 --dport {sp.port}"
    out: list[tuple[str, ...]] = []
    if shape.uses_ext:
        ext: list[str] = []
        if not sp.external_local:
            ext.append(f"-A {ext_chain} {cm(f'masquerade traffic for {name} external destinations')}-j {masq}")
            ext.append(f"-A {ext_chain} -j {svc_chain}")
        else:
            if cidr:
                ext.append(f"-A {ext_chain} {cm(f'pod traffic for {name} external destinations')}"
                           f"-s {cidr} -j {svc_chain}")
            ext.append(f"-A {ext_chain} {cm(f'masquerade LOCAL traffic for {name} external destinations')}"
                       f"-m addrtype --src-type LOCAL -j {masq}")
            ext.append(f"-A {ext_chain} {cm(f'route LOCAL traffic for {name} external destinations')}"
                       f"-m addrtype --src-type LOCAL -j {svc_chain}")
            if shape.has_external:
                ext.append(f"-A {ext_chain} -j {svl_chain}")
        out.append(tuple(ext))
    seps = names[len(names) - len(shape.used):]
    # Off-cluster sources to a ClusterIP are masqueraded (or all, with masquerade_all).
    off_cluster = "" if cfg.masquerade_all else (f"! -s {cidr} " if cidr else None)
    masq_rule = (f"-A {internal_chain} {cm(name + ' cluster IP')}{pmatch} {vip} {off_cluster}-j {masq}"
                 if shape.has_internal and off_cluster is not None else "")
    sep_of = {(e.ip, e.port): sep for e, sep in zip(shape.used, seps, strict=True)}
    if shape.uses_svc:
        out.append(_policy_rules(svc_chain, [(e, sep_of[e.ip, e.port]) for e in shape.cluster_eps], sp, name,
                                 comments, masq_rule if internal_chain == svc_chain else ""))
    if shape.uses_svl:
        out.append(_policy_rules(svl_chain, [(e, sep_of[e.ip, e.port]) for e in shape.local_eps], sp, name,
                                 comments, masq_rule if internal_chain == svl_chain else ""))
    c = cm(name)
    recent = "-m recent --name {} --set " if sp.session_affinity else ""
    for ep, sep in zip(shape.used, seps, strict=True):
        out.append((
            f"-A {sep} {c}-s {ep.ip}/32 -j {masq}",  # hairpin: the endpoint reaching itself
            # `-p` alone: DNAT to a port needs the protocol, not an (empty) `-m tcp` match.
            f"-A {sep} {c}-p {proto} {recent.format(sep)}-j DNAT --to-destination {ep.ip}:{ep.port}",
        ))
    return tuple(out)


def _nodeport_jumps(node: NodeInfo, cfg: RenderConfig) -> list[str]:
    """The KUBELING-SERVICES rules that send NodePort traffic on: last in the chain, as upstream.

    No node addresses given: every local address (`addrtype LOCAL`), which includes
    127.0.0.1 unless localhost NodePorts are off.  Addresses given: just those, plus
    127.0.0.1 when localhost NodePorts are on (needs net.ipv4.conf.all.route_localnet=1).
    """
    head = f"-A {cfg.chain('SERVICES')} {_comment(cfg, 'kubeling service nodeports; must be last')}"
    target = f"-j {cfg.chain('NODEPORTS')}"
    if not node.addresses:
        not_lo = "" if node.localhost_nodeports else "! -d 127.0.0.0/8 "
        return [f"{head}-m addrtype --dst-type LOCAL {not_lo}{target}"]
    addrs = sorted(set(node.addresses) | ({"127.0.0.1"} if node.localhost_nodeports else set()))
    return [f"{head}-d {a}/32 {target}" for a in addrs]


def jump_rules(cfg: RenderConfig = RenderConfig()) -> tuple[JumpRule, ...]:
    """The rules in built-in chains that hand packets to our chains, in the order they
    should appear at the head of each built-in chain.  The backend keeps each exactly
    once and never touches any other rule of a built-in chain."""
    c = cfg.chain
    new = "-m conntrack --ctstate NEW "
    return (
        JumpRule("nat", "PREROUTING", f'-m comment --comment "kubeling service portals" -j {c("SERVICES")}'),
        JumpRule("nat", "OUTPUT", f'-m comment --comment "kubeling service portals" -j {c("SERVICES")}'),
        JumpRule("nat", "POSTROUTING", f'-m comment --comment "kubeling postrouting rules" -j {c("POSTROUTING")}'),
        JumpRule("filter", "INPUT", f"{new}-m comment --comment \"kubeling externally-visible service portals\" "
                                    f"-j {c('EXTERNAL')}"),
        JumpRule("filter", "INPUT", f"-j {c('FIREWALL')}"),
        JumpRule("filter", "FORWARD", f'-m comment --comment "kubeling forwarding rules" -j {c("FORWARD")}'),
        JumpRule("filter", "FORWARD", f'{new}-m comment --comment "kubeling service portals" -j {c("FILTER")}'),
        JumpRule("filter", "FORWARD", f"{new}-m comment --comment \"kubeling externally-visible service portals\" "
                                      f"-j {c('EXTERNAL')}"),
        JumpRule("filter", "OUTPUT", f'{new}-m comment --comment "kubeling service portals" -j {c("FILTER")}'),
    )


def _sort_key(sp: ServicePort) -> tuple[str, str, str, str]:
    return (sp.namespace, sp.name, sp.port_name, sp.protocol)


def render(ports: Sequence[ServicePort], node: NodeInfo, cfg: RenderConfig = RenderConfig(),
           existing_chains: Mapping[str, Iterable[str]] | None = None) -> Rendered:
    """The full desired ruleset (made lazily: see Rendered).

    existing_chains: table -> chains of ours now in the kernel; those the new
    ruleset no longer declares get a `-X` in the same payload.  (The backends
    also work this out themselves, so a caller may leave it out.)
    """
    cidr = cfg.cluster_cidr or node.pod_cidr
    if cfg.comments is None:
        endpoints = sum(len(p.endpoints) for p in ports)
        cfg = dataclasses.replace(cfg, comments=endpoints <= LARGE_CLUSTER_ENDPOINTS)
    c = cfg.chain
    mark = cfg.mark_masq
    random_fully = " --random-fully" if cfg.random_fully else ""
    nat_fixed: dict[str, list[str]] = {  # the shared chains' lines come from the services
        c("SERVICES"): [],
        c("NODEPORTS"): [],
        c("POSTROUTING"): [
            f"-A {c('POSTROUTING')} -m mark ! --mark {mark} -j RETURN",
            f"-A {c('POSTROUTING')} -j MARK --xor-mark {cfg.mark_bit}",
            f'-A {c("POSTROUTING")} -m comment --comment "kubeling service traffic requiring SNAT" '
            f"-j MASQUERADE{random_fully}",
        ],
        c("MARK-MASQ"): [f"-A {c('MARK-MASQ')} -j MARK --or-mark {cfg.mark_bit}"],
    }
    filter_fixed: dict[str, list[str]] = {
        c("FILTER"): [],
        c("EXTERNAL"): [],
        c("FORWARD"): [
            f'-A {c("FORWARD")} -m comment --comment "kubeling forwarding rules" -m mark --mark {mark} -j ACCEPT',
            f'-A {c("FORWARD")} -m comment --comment "kubeling forwarding conntrack rule" '
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ],
        c("FIREWALL"): [
            f'-A {c("FIREWALL")} -m comment --comment "block incoming localnet connections" '
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        ] if node.localhost_nodeports else [],
    }
    selected = [sp for sp in sorted(ports, key=_sort_key) if sp.cluster_ip]
    lazy = _Lazy(selected, node.name, cidr, cfg, nat_fixed, filter_fixed, tuple(_nodeport_jumps(node, cfg)))
    if not existing_chains:
        return Rendered(None, {}, _lazy=lazy)  # everything made when needed, the names too
    chains = Rendered(None, {}, _lazy=lazy).chains  # stale chains to find: make it all now
    deleted = {t: tuple(sorted(set(existing_chains.get(t, ())) - set(chains[t]))) for t in TABLES}
    return Rendered(chains, {t: d for t, d in deleted.items() if d})


class _Lazy:
    """What a Rendered needs to make (or stream) its chains."""

    def __init__(self, ports: Sequence[ServicePort], node_name: str, cidr: str, cfg: RenderConfig,
                 nat_fixed: Mapping[str, Sequence[str]], filter_fixed: Mapping[str, Sequence[str]],
                 nodeport_jumps: tuple[str, ...]) -> None:
        self.ports = ports  # in key order, with a ClusterIP
        self.args = (node_name, cidr, cfg)  # the rest of _service()'s arguments
        self.nat_fixed = nat_fixed  # the fixed chains with their own rules, in order
        self.filter_fixed = filter_fixed
        self.nodeport_jumps = nodeport_jumps  # the last rules of KUBELING-SERVICES
        self.shared = _names(cfg)[:4]  # the shared chains: SERVICES, NODEPORTS, FILTER, EXTERNAL

    def services(self, start: int = 0, stop: int | None = None) -> list[_Service]:
        node_name, cidr, cfg = self.args
        return [_service(sp, node_name, cidr, cfg) for sp in self.ports[start:stop]]

    def shared_chains(self, services: Iterable[_Service]) -> tuple[dict[str, tuple[str, ...]],
                                                                   dict[str, tuple[str, ...]]]:
        """The fixed chains of nat and filter, with all the services' lines in the shared ones."""
        each = [s.shared() for s in services]
        shared = dict(zip(self.shared, (
            [*(line for sh in each for line in sh.services), *self.nodeport_jumps],
            [line for sh in each for line in sh.nodeports],
            [line for sh in each for line in sh.filter_internal],
            [line for sh in each for line in sh.filter_external]), strict=True))
        return ({c: tuple(shared.get(c, rules)) for c, rules in self.nat_fixed.items()},
                {c: tuple(shared.get(c, rules)) for c, rules in self.filter_fixed.items()})


def diff(old: Rendered, new: Rendered) -> Rendered:
    """A partial ruleset taking the kernel from `old` (applied before) to `new`:
    only chains whose rules changed are declared (flushed and refilled), chains
    that are gone are deleted, untouched chains are left alone.  Like upstream's
    partial syncs; only valid when the kernel really holds `old`."""
    chains: dict[str, dict[str, tuple[str, ...]]] = {}
    deleted: dict[str, tuple[str, ...]] = {}
    for t, new_chains in new.chains.items():
        old_chains = old.chains.get(t, {})
        chains[t] = {n: rules for n, rules in new_chains.items()
                     if n not in old_chains or (old_chains[n] is not rules and old_chains[n] != rules)}
        gone = sorted(set(old_chains) - set(new_chains))
        if gone:
            deleted[t] = tuple(gone)
    return Rendered(chains, deleted)


def is_ours(chain: str, cfg: RenderConfig = RenderConfig()) -> bool:
    return chain.startswith(cfg.prefixes)
