"""The scheduling framework, pure: node and pod info precomputed from API objects,
filter plugins (can this pod run here, and if not why) and score plugins
(0..100 per node, weighted), in the order and with the wording of the upstream
kube-scheduler's default profile.

Everything here is plain data and functions: no I/O, no threads. The cache
(scheduler/cache.py) keeps one NodeInfo per node up to date; the scheduler
turns each pending pod into a PodInfo once and runs `find_nodes` over the
snapshot.

    pi = PodInfo.from_pod(pod)
    result = schedule_one(pi, nodes, rng)
    result.node            # the chosen node's name, or None
    result.message()       # "0/3 nodes are available: 2 Insufficient cpu, ..."
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kube.api.quantity import QuantityError, parse_quantity

Obj = dict[str, Any]

# Upstream defaults (pkg/scheduler/util/pod_resources.go): pods without requests still count this
# much when scoring, so that they spread instead of piling onto one node.
DEFAULT_MILLI_CPU_REQUEST = 100
DEFAULT_MEMORY_REQUEST = 200 * 1024 * 1024
MAX_NODE_SCORE = 100

TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"

# Failure reasons, worded as upstream.
ERR_UNSCHEDULABLE = "node(s) were unschedulable"
ERR_NODE_NAME = "node(s) didn't match the requested node name"
ERR_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
ERR_PORTS = "node(s) didn't have free ports for the requested pod ports"
ERR_TOO_MANY_PODS = "Too many pods"

# Score plugin weights of the upstream default profile.
WEIGHT_TAINT = 3
WEIGHT_AFFINITY = 2
WEIGHT_SPREAD = 2
WEIGHT_FIT = 1
WEIGHT_BALANCED = 1


# -- quantities -----------------------------------------------------------------------


def _quantity(v: Any) -> Decimal:
    try:
        return parse_quantity(v)
    except QuantityError:
        return Decimal(0)


def milli(v: Any) -> int:
    """A cpu-like quantity in thousandths, rounded up ("250m" -> 250, "1" -> 1000)."""
    return math.ceil(_quantity(v) * 1000)


def units(v: Any) -> int:
    """A count-like quantity rounded up ("1Gi" -> 1073741824)."""
    return math.ceil(_quantity(v))


def resource_amount(name: str, v: Any) -> int:
    return milli(v) if name == "cpu" else units(v)


# -- pods -----------------------------------------------------------------------------


def _container_requests(c: Mapping[str, Any]) -> dict[str, int]:
    res = c.get("resources") or {}
    # A limit without a request defaults the request to the limit (upstream API defaulting).
    merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
    return {k: resource_amount(k, v) for k, v in merged.items()}


def pod_requests(spec: Mapping[str, Any]) -> dict[str, int]:
    """Effective requests as upstream computes them: the sum over containers (plus restartable
    init containers, i.e. sidecars), at least the largest single init container (with the sidecars
    started before it), plus the pod overhead. cpu in millicores, everything else in units."""
    total: Counter[str] = Counter()
    for c in spec.get("containers") or []:
        total.update(_container_requests(c))
    sidecars: Counter[str] = Counter()
    init_max: Counter[str] = Counter()
    for c in spec.get("initContainers") or []:
        req = _container_requests(c)
        if c.get("restartPolicy") == "Always":
            sidecars.update(req)
            total.update(req)
        else:
            for k, v in req.items():
                init_max[k] = max(init_max[k], v + sidecars[k])
    for k, v in init_max.items():
        total[k] = max(total[k], v)
    for k, v in (spec.get("overhead") or {}).items():
        total[k] += resource_amount(k, v)
    return dict(total)


def _non_zero(reqs: Mapping[str, int], spec: Mapping[str, Any]) -> tuple[int, int]:
    """cpu/memory for scoring: per container, a missing request counts as the upstream default."""
    cpu = mem = 0
    for c in spec.get("containers") or []:
        r = _container_requests(c)
        cpu += r["cpu"] if "cpu" in r else DEFAULT_MILLI_CPU_REQUEST
        mem += r["memory"] if "memory" in r else DEFAULT_MEMORY_REQUEST
    return max(cpu, reqs.get("cpu", 0)), max(mem, reqs.get("memory", 0))


def host_ports(spec: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(protocol, hostIP, hostPort) of every container port with a hostPort."""
    out: list[tuple[str, str, int]] = []
    for c in spec.get("containers") or []:
        for p in c.get("ports") or []:
            hp = p.get("hostPort")
            if isinstance(hp, int) and hp > 0:
                ip = p.get("hostIP") or "0.0.0.0"
                out.append((str(p.get("protocol") or "TCP"), ip, hp))
    return out


def controller_uid(meta: Mapping[str, Any]) -> str:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid") or f"{ref.get('kind')}/{ref.get('name')}")
    return ""


@dataclass(frozen=True)
class Requirement:
    """One node selector requirement: key op values, on labels or (match_field) on fields."""
    key: str
    op: str
    values: tuple[str, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        op, present = self.op, self.key in labels
        if op == "In":
            return present and labels[self.key] in self.values
        if op == "NotIn":
            return not present or labels[self.key] not in self.values
        if op == "Exists":
            return present
        if op == "DoesNotExist":
            return not present
        if op in ("Gt", "Lt"):
            if not present or len(self.values) != 1:
                return False
            try:
                have, want = int(labels[self.key]), int(self.values[0])
            except ValueError:
                return False
            return have > want if op == "Gt" else have < want
        return False


@dataclass(frozen=True)
class Term:
    """A nodeSelectorTerm: all expressions and all fields must match; an empty term matches nothing."""
    expressions: tuple[Requirement, ...]
    fields: tuple[Requirement, ...]

    def matches(self, node: NodeInfo) -> bool:
        if not self.expressions and not self.fields:
            return False
        labels = node.labels
        for r in self.expressions:
            if not r.matches(labels):
                return False
        if self.fields:
            fields = {"metadata.name": node.name}
            for r in self.fields:
                if r.key != "metadata.name" or not r.matches(fields):
                    return False
        return True


def _requirements(items: Iterable[Mapping[str, Any]] | None) -> tuple[Requirement, ...]:
    return tuple(Requirement(str(e.get("key", "")), str(e.get("operator", "")),
                             tuple(str(v) for v in e.get("values") or [])) for e in items or [])


def _term(t: Mapping[str, Any]) -> Term:
    return Term(_requirements(t.get("matchExpressions")), _requirements(t.get("matchFields")))


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str
    value: str
    effect: str

    def tolerates(self, taint: Mapping[str, Any]) -> bool:
        if self.effect and self.effect != taint.get("effect"):
            return False
        if self.key and self.key != taint.get("key"):
            return False
        if self.operator == "Exists":
            return True  # an empty key with Exists tolerates every taint
        return self.operator in ("", "Equal") and self.value == (taint.get("value") or "")


@dataclass
class PodInfo:
    """What scheduling needs of a pod, computed once per attempt."""
    key: str
    namespace: str
    name: str
    uid: str
    node_name: str
    priority: int
    requests: dict[str, int]
    nz_cpu: int
    nz_mem: int
    ports: list[tuple[str, str, int]]
    owner: str
    node_selector: dict[str, str]
    required: tuple[Term, ...] | None  # None: no required node affinity
    preferred: tuple[tuple[int, Term], ...]
    tolerations: tuple[Toleration, ...]
    terminal: bool = False

    @classmethod
    def from_pod(cls, pod: Obj) -> PodInfo:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        reqs = pod_requests(spec)
        nz_cpu, nz_mem = _non_zero(reqs, spec)
        node_aff = (spec.get("affinity") or {}).get("nodeAffinity") or {}
        req_sel = node_aff.get("requiredDuringSchedulingIgnoredDuringExecution")
        required = None if req_sel is None else tuple(_term(t) for t in req_sel.get("nodeSelectorTerms") or [])
        preferred = tuple((int(p.get("weight") or 0), _term(p.get("preference") or {}))
                          for p in node_aff.get("preferredDuringSchedulingIgnoredDuringExecution") or [])
        tols = tuple(Toleration(str(t.get("key") or ""), str(t.get("operator") or "Equal"),
                                str(t.get("value") or ""), str(t.get("effect") or ""))
                     for t in spec.get("tolerations") or [])
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        return cls(key=f"{ns}/{name}", namespace=ns, name=name, uid=str(meta.get("uid") or ""),
                   node_name=str(spec.get("nodeName") or ""), priority=int(spec.get("priority") or 0),
                   requests=reqs, nz_cpu=nz_cpu, nz_mem=nz_mem, ports=host_ports(spec),
                   owner=controller_uid(meta), node_selector=dict(spec.get("nodeSelector") or {}),
                   required=required, preferred=preferred, tolerations=tols,
                   terminal=(pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"))

    def tolerates(self, taint: Mapping[str, Any]) -> bool:
        return any(t.tolerates(taint) for t in self.tolerations)


# -- nodes ----------------------------------------------------------------------------


@dataclass
class NodeInfo:
    """A node and the pods on it (bound or assumed), with running sums kept by add/remove_pod."""
    name: str
    present: bool = False  # False: pods name this node but the Node object is not (yet) known
    labels: dict[str, str] = field(default_factory=dict)
    hard_taints: list[Obj] = field(default_factory=list)  # NoSchedule / NoExecute, incl. synthetic
    soft_taints: list[Obj] = field(default_factory=list)  # PreferNoSchedule
    unschedulable: bool = False
    allocatable: dict[str, int] = field(default_factory=dict)
    alloc_cpu: int = 0
    alloc_mem: int = 0
    alloc_pods: int = 0
    requested: Counter[str] = field(default_factory=Counter)
    nz_cpu: int = 0
    nz_mem: int = 0
    ports: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    owners: Counter[str] = field(default_factory=Counter)
    pods: dict[str, PodInfo] = field(default_factory=dict)
    generation: int = 0

    def set_node(self, node: Obj) -> None:
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
        self.present = True
        self.labels = dict(meta.get("labels") or {})
        taints = [t for t in spec.get("taints") or [] if isinstance(t, dict)]
        ready = "Unknown"
        for c in status.get("conditions") or []:
            if c.get("type") == "Ready":
                ready = str(c.get("status"))
        have = {t.get("key") for t in taints}
        # What the node lifecycle controller would taint a node with that is not Ready.
        synthetic = TAINT_NOT_READY if ready == "False" or not status.get("conditions") else (
            TAINT_UNREACHABLE if ready != "True" else "")
        if synthetic and synthetic not in have:
            taints.append({"key": synthetic, "effect": "NoSchedule"})
        self.hard_taints = [t for t in taints if t.get("effect") in ("NoSchedule", "NoExecute")]
        self.soft_taints = [t for t in taints if t.get("effect") == "PreferNoSchedule"]
        self.unschedulable = bool(spec.get("unschedulable"))
        alloc = status.get("allocatable") or status.get("capacity") or {}
        self.allocatable = {k: resource_amount(k, v) for k, v in alloc.items()}
        self.alloc_cpu = self.allocatable.get("cpu", 0)
        self.alloc_mem = self.allocatable.get("memory", 0)
        self.alloc_pods = self.allocatable.get("pods", 0)
        self.generation += 1

    def add_pod(self, p: PodInfo) -> None:
        if p.key in self.pods:
            self.remove_pod(p.key)
        self.pods[p.key] = p
        self.requested.update(p.requests)
        self.nz_cpu += p.nz_cpu
        self.nz_mem += p.nz_mem
        self.ports.update(p.ports)
        if p.owner:
            self.owners[p.owner] += 1
        self.generation += 1

    def remove_pod(self, key: str) -> PodInfo | None:
        p = self.pods.pop(key, None)
        if p is None:
            return None
        self.requested.subtract(p.requests)
        self.nz_cpu -= p.nz_cpu
        self.nz_mem -= p.nz_mem
        self.ports.subtract(p.ports)
        self.ports = +self.ports
        if p.owner:
            self.owners[p.owner] -= 1
            if self.owners[p.owner] <= 0:
                del self.owners[p.owner]
        self.generation += 1
        return p


# -- filters --------------------------------------------------------------------------


def _port_conflict(want: Sequence[tuple[str, str, int]], used: Counter[tuple[str, str, int]]) -> bool:
    for proto, ip, port in want:
        for (uproto, uip, uport), n in used.items():
            if n > 0 and uport == port and uproto == proto and (
                    ip == uip or ip == "0.0.0.0" or uip == "0.0.0.0"):
                return True
    return False


def filter_node(p: PodInfo, n: NodeInfo) -> list[str]:
    """[] if the pod fits the node, else the reasons (upstream plugin order; the first failing
    plugin decides, as RunFilterPlugins stops there)."""
    # NodeUnschedulable
    if n.unschedulable and not p.tolerates({"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}):
        return [ERR_UNSCHEDULABLE]
    # NodeName
    if p.node_name and p.node_name != n.name:
        return [ERR_NODE_NAME]
    # TaintToleration
    for t in n.hard_taints:
        if not p.tolerates(t):
            return [f"node(s) had untolerated taint {{{t.get('key', '')}: {t.get('value') or ''}}}"]
    # NodeAffinity (nodeSelector and required terms)
    if p.node_selector:
        labels = n.labels
        for k, v in p.node_selector.items():
            if labels.get(k) != v:
                return [ERR_AFFINITY]
    if p.required is not None and not any(t.matches(n) for t in p.required):
        return [ERR_AFFINITY]
    # NodePorts
    if p.ports and n.ports and _port_conflict(p.ports, n.ports):
        return [ERR_PORTS]
    # NodeResourcesFit
    reasons: list[str] = []
    if len(n.pods) + 1 > n.alloc_pods:
        reasons.append(ERR_TOO_MANY_PODS)
    req = p.requests
    if req:
        used = n.requested
        for r, amount in req.items():
            if amount <= 0:
                continue
            if used[r] + amount > n.allocatable.get(r, 0):
                reasons.append(f"Insufficient {r}")
    return reasons


# -- scores ---------------------------------------------------------------------------


def score_resources(p: PodInfo, n: NodeInfo) -> tuple[float, float]:
    """(LeastAllocated, BalancedAllocation) on cpu and memory, each 0..100."""
    if n.alloc_cpu <= 0 or n.alloc_mem <= 0:
        return 0.0, 0.0
    cpu = (n.nz_cpu + p.nz_cpu) / n.alloc_cpu
    mem = (n.nz_mem + p.nz_mem) / n.alloc_mem
    least = (max(0.0, 1 - cpu) + max(0.0, 1 - mem)) * 50
    balanced = (1 - abs(min(cpu, 1.0) - min(mem, 1.0)) / 2) * 100
    return least, balanced


def preferred_affinity(p: PodInfo, n: NodeInfo) -> int:
    return sum(w for w, t in p.preferred if t.matches(n))


def intolerable_soft_taints(p: PodInfo, n: NodeInfo) -> int:
    if not n.soft_taints:
        return 0
    return sum(1 for t in n.soft_taints if not p.tolerates(t))


@dataclass
class Result:
    node: str | None
    total: int  # nodes in the snapshot
    failures: dict[str, int] = field(default_factory=dict)  # reason -> nodes
    resolvable: int = 0  # failed nodes where preemption could help (ports/resources)
    evaluated: int = 0

    def message(self) -> str:
        """Upstream's FitError text."""
        if self.total == 0:
            return "no nodes available to schedule pods"
        # Upstream sorts the "COUNT REASON" strings themselves (sort.Strings).
        parts = ", ".join(sorted(f"{n} {r}" for r, n in self.failures.items()))
        msg = f"0/{self.total} nodes are available: {parts}."
        pre = []
        if self.resolvable:
            pre.append(f"{self.resolvable} No preemption victims found for incoming pod")
        if self.total - self.resolvable:
            pre.append(f"{self.total - self.resolvable} Preemption is not helpful for scheduling")
        return f"{msg} preemption: 0/{self.total} nodes are available: {', '.join(sorted(pre))}."


def num_feasible_to_find(total: int, percentage: int = 0) -> int:
    """Upstream's percentageOfNodesToScore: all nodes up to 100, else an adaptive share, >= 100."""
    if total < 100 or percentage >= 100:
        return total
    pct = percentage or max(5, 50 - total // 125)
    return max(100, total * pct // 100)


def schedule_one(p: PodInfo, nodes: Sequence[NodeInfo], rng: random.Random, start: int = 0,
                 percentage: int = 0) -> Result:
    """Filter from `start` (round robin) until enough feasible nodes are found, score them, pick the
    best, ties broken at random."""
    total = len(nodes)
    res = Result(None, total)
    want = num_feasible_to_find(total, percentage)
    feasible: list[NodeInfo] = []
    for i in range(total):
        n = nodes[(start + i) % total]
        res.evaluated += 1
        reasons = filter_node(p, n)
        if not reasons:
            feasible.append(n)
            if len(feasible) >= want:
                break
            continue
        for r in reasons:
            res.failures[r] = res.failures.get(r, 0) + 1
        if reasons[0] == ERR_PORTS or reasons[0] == ERR_TOO_MANY_PODS or reasons[0].startswith("Insufficient "):
            res.resolvable += 1
    if not feasible:
        return res
    if len(feasible) == 1:
        res.node = feasible[0].name
        return res
    # Raw scores, then per-plugin normalisation to 0..100, then the weighted sum.
    aff = [preferred_affinity(p, n) for n in feasible] if p.preferred else None
    taints = [intolerable_soft_taints(p, n) for n in feasible]
    owners = [n.owners.get(p.owner, 0) for n in feasible] if p.owner else None
    max_aff = max(aff) if aff else 0
    max_taint = max(taints)
    max_owner = max(owners) if owners else 0
    best: float = -1.0
    chosen = feasible[0]
    ties = 0
    for i, n in enumerate(feasible):
        least, balanced = score_resources(p, n)
        s = WEIGHT_FIT * least + WEIGHT_BALANCED * balanced
        s += WEIGHT_TAINT * (MAX_NODE_SCORE - taints[i] * MAX_NODE_SCORE / max_taint if max_taint
                             else MAX_NODE_SCORE)
        if aff is not None and max_aff:
            s += WEIGHT_AFFINITY * aff[i] * MAX_NODE_SCORE / max_aff
        if owners is not None:
            s += WEIGHT_SPREAD * (MAX_NODE_SCORE * (max_owner - owners[i]) / max_owner if max_owner
                                  else MAX_NODE_SCORE)
        s = int(s)  # upstream scores are integers: tiny differences are ties
        if s > best:
            best, chosen, ties = s, n, 1
        elif s == best:
            ties += 1
            if rng.randrange(ties) == 0:  # reservoir sampling: each tied node equally likely
                chosen = n
    res.node = chosen.name
    return res
