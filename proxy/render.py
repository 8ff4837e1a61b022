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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.model import Endpoint, NodeInfo, ServicePort

TABLES = ("nat", "filter")
LARGE_CLUSTER_ENDPOINTS = 1000  # upstream's largeClusterEndpointsThreshold
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
    def prefixes(self) -> tuple[str, str]:
        """Name prefixes that mark a chain as ours (cleanup and stale deletion look only at these)."""
        return (f"{self.chain_prefix}-", f"{self.hash_prefix}-")

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


@dataclass(frozen=True)
class Rendered:
    """A rendered ruleset.

    chains: table -> our chain -> its rules (complete "-A CHAIN ..." lines), in
            declaration order; every chain in here is declared (and so flushed).
    deleted: table -> our chains to delete (`-X`) in the same restore.
    tables: table -> the full `iptables-restore --noflush` payload.
    """

    chains: Mapping[str, Mapping[str, tuple[str, ...]]]
    deleted: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @functools.cached_property
    def tables(self) -> dict[str, str]:
        """Built on first use: a partial sync never needs the full text."""
        return {t: payload(t, self.chains[t], self.deleted.get(t, ())) for t in self.chains}

    def rule_count(self) -> int:
        return sum(len(rules) for chains in self.chains.values() for rules in chains.values())


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


def _finish(chains: Mapping[str, Mapping[str, tuple[str, ...]]],
            deleted: Mapping[str, tuple[str, ...]]) -> Rendered:
    return Rendered(chains=chains, deleted=deleted)


def chain_names(rendered: Rendered) -> dict[str, set[str]]:
    """table -> names of the chains the rendered ruleset declares."""
    return {t: set(c) for t, c in rendered.chains.items()}


# --- names -----------------------------------------------------------------------------------

def _hash(text: str) -> str:
    """Upstream's portProtoHash: base32(sha256(text))[:16] (16 of [A-Z2-7]).  The first 10
    bytes encode to exactly those 16 characters; a 10-bit table does that 4x faster than
    base64.b32encode (pure Python), which was half of a cold render."""
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    p = _B32_PAIRS
    return (p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
            + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023])


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


def _usable(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """Ready endpoints; when none is ready, the serving-but-terminating ones (upstream's fallback)."""
    eps = tuple(endpoints)
    ready = tuple(e for e in eps if e.ready and not e.terminating)
    return ready or tuple(e for e in eps if e.serving and e.terminating)


class _ServiceRules(NamedTuple):
    """What one ServicePort contributes: its own chains, and lines for the shared chains.
    (A NamedTuple: a frozen dataclass costs 3x more to build, 10,000 times per cold render.)"""

    chains: tuple[tuple[str, tuple[str, ...]], ...]  # (nat chain, rules), in order
    services: tuple[str, ...] = ()  # nat KUBELING-SERVICES lines
    nodeports: tuple[str, ...] = ()  # nat KUBELING-NODEPORTS lines
    filter_internal: tuple[str, ...] = ()  # filter KUBELING-FILTER lines
    filter_external: tuple[str, ...] = ()  # filter KUBELING-EXTERNAL lines


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
def _service_rules(sp: ServicePort, node_name: str, cidr: str, cfg: RenderConfig) -> _ServiceRules:
    """The rules of one ServicePort (memoized: it is a pure function of frozen values).

    Endpoints are taken in the order given (service_ports() sorts them)."""
    name = display_name(sp)
    proto = sp.protocol.lower()
    pmatch = f"-m {proto} -p {proto}"
    services_chain, nodeports_chain, filter_chain, external_chain, masq = _names(cfg)
    comments = bool(cfg.comments)

    def cm(text: str) -> str:
        return _comment(cfg, text) if comments else ""

    h = _hash(sp.key + sp.protocol)  # as service_chain(), once for the three chains
    hp = cfg.hash_prefix
    svc_chain, svl_chain, ext_chain = f"{hp}-SVC-{h}", f"{hp}-SVL-{h}", f"{hp}-EXT-{h}"

    cluster_eps = sp.usable_endpoints()
    local_eps = _usable(e for e in sp.endpoints if e.node_name == node_name)
    has_eps = bool(cluster_eps)
    is_nodeport = sp.node_port != 0

    internal_chain = svl_chain if sp.internal_local else svc_chain
    has_internal = has_eps and (not sp.internal_local or bool(local_eps))
    has_external = has_eps and (not sp.external_local or bool(local_eps))
    uses_ext = has_eps and is_nodeport
    # The Cluster chain also serves the NodePort short-circuits (pods and the node itself).
    uses_svc = has_eps and (not sp.internal_local or is_nodeport)
    uses_svl = bool(local_eps) and has_eps and (sp.internal_local or (is_nodeport and sp.external_local))

    chains: list[tuple[str, tuple[str, ...]]] = []
    services: tuple[str, ...] = ()
    nodeports: tuple[str, ...] = ()
    f_int: tuple[str, ...] = ()
    f_ext: tuple[str, ...] = ()
    vip = f"-d {sp.cluster_ip}/32 --dport {sp.port}"

    # ClusterIP: to the internal policy chain, or REJECT/DROP in filter.
    if has_internal:
        services = (f"-A {services_chain} {cm(name + ' cluster IP')}{pmatch} {vip} -j {internal_chain}",)
    elif not has_eps:
        f_int = (f"-A {filter_chain} {cm(name + ' has no endpoints')}"
                 f"{pmatch} {vip} -j REJECT --reject-with icmp-port-unreachable",)
    else:
        f_int = (f"-A {filter_chain} {cm(name + ' has no local endpoints')}{pmatch} {vip} -j DROP",)

    # NodePort: to the EXT chain, or REJECT/DROP in filter (whatever was not short-circuited).
    if is_nodeport:
        if uses_ext:
            nodeports = (f"-A {nodeports_chain} {cm(name)}{pmatch} --dport {sp.node_port} -j {ext_chain}",)
        if not has_external:
            what, verdict = ((" has no endpoints", "REJECT --reject-with icmp-port-unreachable") if not has_eps
                             else (" has no local endpoints", "DROP"))
            f_ext = (f"-A {external_chain} {cm(name + what)}"
                     f"-m addrtype --dst-type LOCAL {pmatch} --dport {sp.node_port} -j {verdict}",)

    if uses_ext:
        rules: list[str] = []
        if not sp.external_local:
            rules.append(f"-A {ext_chain} {cm(f'masquerade traffic for {name} external destinations')}-j {masq}")
            rules.append(f"-A {ext_chain} -j {svc_chain}")
        else:
            if cidr:
                rules.append(f"-A {ext_chain} {cm(f'pod traffic for {name} external destinations')}"
                             f"-s {cidr} -j {svc_chain}")
            rules.append(f"-A {ext_chain} {cm(f'masquerade LOCAL traffic for {name} external destinations')}"
                         f"-m addrtype --src-type LOCAL -j {masq}")
            rules.append(f"-A {ext_chain} {cm(f'route LOCAL traffic for {name} external destinations')}"
                         f"-m addrtype --src-type LOCAL -j {svc_chain}")
            if has_external:
                rules.append(f"-A {ext_chain} -j {svl_chain}")
        chains.append((ext_chain, tuple(rules)))

    # Endpoint chains in use, in endpoint order: the Cluster ones, then any local-only fallback.
    used: list[Endpoint] = list(cluster_eps) if uses_svc else []
    if uses_svl:
        used.extend(e for e in local_eps if e not in used)
    base = sp.key + sp.protocol
    sep_of = {ep.addr: f"{hp}-SEP-{_hash(base + ep.addr)}" for ep in used}  # as endpoint_chain()

    # Off-cluster sources to a ClusterIP are masqueraded (or all, with masquerade_all).
    off_cluster = "" if cfg.masquerade_all else (f"! -s {cidr} " if cidr else None)
    masq_rule = (f"-A {internal_chain} {cm(name + ' cluster IP')}{pmatch} {vip} {off_cluster}-j {masq}"
                 if has_internal and off_cluster is not None else "")
    if uses_svc:
        chains.append((svc_chain, _policy_rules(
            svc_chain, [(e, sep_of[e.addr]) for e in cluster_eps], sp, name, comments,
            masq_rule if internal_chain == svc_chain else "")))
    if uses_svl:
        chains.append((svl_chain, _policy_rules(
            svl_chain, [(e, sep_of[e.addr]) for e in local_eps], sp, name, comments,
            masq_rule if internal_chain == svl_chain else "")))

    c = cm(name)
    recent = "-m recent --name {} --set " if sp.session_affinity else ""
    for ep in used:
        sep = sep_of[ep.addr]
        chains.append((sep, (
            f"-A {sep} {c}-s {ep.ip}/32 -j {masq}",  # hairpin: the endpoint reaching itself
            # `-p` alone: DNAT to a port needs the protocol, not an (empty) `-m tcp` match.
            f"-A {sep} {c}-p {proto} {recent.format(sep)}-j DNAT --to-destination {ep.addr}",
        )))
    return _ServiceRules(tuple(chains), services, nodeports, f_int, f_ext)


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
    """The full desired ruleset.

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
    nat_fixed: dict[str, list[str]] = {
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
    services, nodeports = nat_fixed[c("SERVICES")], nat_fixed[c("NODEPORTS")]
    f_int, f_ext = filter_fixed[c("FILTER")], filter_fixed[c("EXTERNAL")]
    nat: dict[str, tuple[str, ...]] = {}  # the fixed chains first, then each service's chains in key order
    svc_chains: list[tuple[str, tuple[str, ...]]] = []
    node_name = node.name
    for sp in sorted(ports, key=_sort_key):
        if not sp.cluster_ip:
            continue
        sr = _service_rules(sp, node_name, cidr, cfg)
        services.extend(sr.services)
        nodeports.extend(sr.nodeports)
        f_int.extend(sr.filter_internal)
        f_ext.extend(sr.filter_external)
        svc_chains.extend(sr.chains)
    services.extend(_nodeport_jumps(node, cfg))
    nat.update((k, tuple(v)) for k, v in nat_fixed.items())
    nat.update(svc_chains)
    chains = {"nat": nat, "filter": {k: tuple(v) for k, v in filter_fixed.items()}}
    deleted = {t: tuple(sorted(set(existing_chains.get(t, ())) - set(chains[t]))) for t in TABLES} \
        if existing_chains else {}
    return _finish(chains, {t: d for t, d in deleted.items() if d})


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
    return _finish(chains, deleted)


def is_ours(chain: str, cfg: RenderConfig = RenderConfig()) -> bool:
    return chain.startswith(cfg.prefixes)
