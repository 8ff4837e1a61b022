"""Docker host options (limits, shares, OOM score, security) for one container of a pod.

A pure function from the pod spec to docker-py ``containers.create`` keyword
arguments, following upstream's kuberuntime (``kuberuntime_container_linux.go``,
``cm/helpers_linux.go``, ``qos/policy.go``, ``securitycontext``):

* ``mem_limit`` = limits.memory in bytes, and ``memswap_limit`` equal to it (no swap, as
  the kubelet's default NoSwap);
* ``cpu_period`` 100000 and ``cpu_quota`` = milliCPU * period / 1000 (at least 1000) for limits.cpu;
* ``cpu_shares`` = 1024 * milliCPU(requests.cpu, or limits.cpu when no request) / 1000, in [2, 262144];
* ``oom_score_adj``: Guaranteed (and system-node-critical) -997, BestEffort 1000, Burstable
  ``1000 - 1000 * memoryRequest / memoryCapacity`` clamped to [3, 999];
* ``pids_limit``: a per-container cap (upstream's podPidsLimit is per pod cgroup);
* securityContext: runAsUser/runAsGroup (pod level as default) -> ``user``; supplementalGroups and
  fsGroup -> ``group_add``; privileged; readOnlyRootFilesystem -> ``read_only``; capabilities ->
  ``cap_add``/``cap_drop``; allowPrivilegeEscalation: false -> ``no-new-privileges``;
  seccompProfile Unconfined -> ``seccomp=unconfined`` (unset keeps Docker's default profile, i.e.
  RuntimeDefault: safer than upstream's historical Unconfined default).
"""

from __future__ import annotations

import math
from typing import Any

from agent.errors import ContainerConfigError
from kube.api.defaults import pod_qos_class
from kube.api.quantity import QuantityError, parse_quantity

__all__ = ["DEFAULT_PIDS_LIMIT", "docker_host_options", "milli_cpu_to_quota", "milli_cpu_to_shares",
           "oom_score_adj", "memory_capacity"]

DEFAULT_PIDS_LIMIT = 1024
CPU_PERIOD = 100_000  # quotaPeriod, microseconds
MIN_QUOTA_PERIOD = 1000
MIN_SHARES = 2
MAX_SHARES = 262_144
SHARES_PER_CPU = 1024
GUARANTEED_OOM_SCORE_ADJ = -997
BESTEFFORT_OOM_SCORE_ADJ = 1000
_NODE_CRITICAL = "system-node-critical"


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _milli(v: Any) -> int:
    """Quantity.MilliValue (rounded up); 0 for missing or malformed values."""
    if v is None:
        return 0
    try:
        return math.ceil(parse_quantity(v) * 1000)
    except QuantityError:
        return 0


def _bytes(v: Any) -> int:
    """Quantity.Value (rounded up); 0 for missing or malformed values."""
    if v is None:
        return 0
    try:
        return math.ceil(parse_quantity(v))
    except QuantityError:
        return 0


def milli_cpu_to_quota(milli_cpu: int, period: int = CPU_PERIOD) -> int:
    if milli_cpu <= 0:
        return 0
    return max(milli_cpu * period // 1000, MIN_QUOTA_PERIOD)


def milli_cpu_to_shares(milli_cpu: int) -> int:
    if milli_cpu <= 0:
        return MIN_SHARES
    return min(max(milli_cpu * SHARES_PER_CPU // 1000, MIN_SHARES), MAX_SHARES)


def memory_capacity() -> int:
    """The node's memory in bytes (MemTotal), the denominator of the Burstable OOM score."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 30


def _requests_defaulted(c: Any) -> Any:
    """A container whose requests default to its limits (the apiserver's defaulting, repeated as upstream)."""
    if not isinstance(c, dict):
        return c
    res = _dict(c.get("resources"))
    requests = {**_dict(res.get("limits")), **_dict(res.get("requests"))}
    return {**c, "resources": {**res, "requests": requests}} if requests else c


def qos_class(spec: dict[str, Any]) -> str:
    """pod_qos_class on a spec whose requests default to limits."""
    spec = {**spec, **{key: [_requests_defaulted(c) for c in spec.get(key) or []]
                       for key in ("containers", "initContainers")}}
    return pod_qos_class(spec)


def oom_score_adj(pod: dict[str, Any], container: dict[str, Any], capacity: int) -> int:
    """qos.GetContainerOOMScoreAdjust."""
    spec = _dict(pod.get("spec"))
    if spec.get("priorityClassName") == _NODE_CRITICAL:
        return GUARANTEED_OOM_SCORE_ADJ
    qos = qos_class(spec)
    container = _requests_defaulted(container)
    if qos == "Guaranteed":
        return GUARANTEED_OOM_SCORE_ADJ
    if qos == "BestEffort":
        return BESTEFFORT_OOM_SCORE_ADJ
    request = _bytes(_dict(_dict(container.get("resources")).get("requests")).get("memory"))
    adj = 1000 - (1000 * request) // max(capacity, 1)
    if adj < 1000 + GUARANTEED_OOM_SCORE_ADJ:
        return 1000 + GUARANTEED_OOM_SCORE_ADJ
    if adj == BESTEFFORT_OOM_SCORE_ADJ:
        return adj - 1
    return adj


def _pod_label(pod: dict[str, Any]) -> str:
    meta = _dict(pod.get("metadata"))
    return f'"{meta.get("name")}_{meta.get("namespace")}({meta.get("uid")})"'


def docker_host_options(pod: dict[str, Any], container: dict[str, Any], *,
                        pids_limit: int | None = DEFAULT_PIDS_LIMIT,
                        capacity: int | None = None) -> dict[str, Any]:
    """docker-py ``containers.create`` keyword arguments for `container` of `pod`.

    `capacity` is the node's memory in bytes (read from /proc/meminfo when None; used only for
    Burstable pods).  Raises ContainerConfigError when runAsNonRoot contradicts an explicit runAsUser 0.
    """
    opts: dict[str, Any] = {}
    resources = _dict(container.get("resources"))
    limits = _dict(resources.get("limits"))
    requests = _dict(resources.get("requests"))

    mem = _bytes(limits.get("memory"))
    if mem > 0:
        opts["mem_limit"] = mem
        opts["memswap_limit"] = mem
    cpu_limit = _milli(limits.get("cpu"))
    if cpu_limit > 0:
        opts["cpu_period"] = CPU_PERIOD
        opts["cpu_quota"] = milli_cpu_to_quota(cpu_limit)
    cpu_request = _milli(requests.get("cpu"))
    opts["cpu_shares"] = milli_cpu_to_shares(cpu_request if cpu_request > 0 else cpu_limit)
    if pids_limit is not None and pids_limit > 0:
        opts["pids_limit"] = pids_limit
    needs_capacity = qos_class(_dict(pod.get("spec"))) == "Burstable"
    opts["oom_score_adj"] = oom_score_adj(
        pod, container, capacity if capacity is not None else (memory_capacity() if needs_capacity else 1))

    opts.update(security_options(pod, container))
    return opts


def security_options(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The securityContext part of docker_host_options (pod-level values are the container's defaults)."""
    spec = _dict(pod.get("spec"))
    psc = _dict(spec.get("securityContext"))
    csc = _dict(container.get("securityContext"))

    def pick(key: str) -> Any:
        return csc[key] if csc.get(key) is not None else psc.get(key)

    opts: dict[str, Any] = {"privileged": bool(csc.get("privileged"))}
    user, group = pick("runAsUser"), pick("runAsGroup")
    if pick("runAsNonRoot") and user is not None and int(user) == 0:
        raise ContainerConfigError(
            f"container's runAsUser breaks non-root policy (pod: {_pod_label(pod)}, container: {container.get('name')})")
    if user is not None:
        opts["user"] = f"{int(user)}:{int(group)}" if group is not None else str(int(user))
    groups = [str(int(g)) for g in psc.get("supplementalGroups") or []]
    if psc.get("fsGroup") is not None:
        groups.append(str(int(psc["fsGroup"])))
    if groups:
        opts["group_add"] = list(dict.fromkeys(groups))
    if csc.get("readOnlyRootFilesystem"):
        opts["read_only"] = True
    caps = _dict(csc.get("capabilities"))
    if caps.get("add"):
        opts["cap_add"] = [str(c) for c in caps["add"]]
    if caps.get("drop"):
        opts["cap_drop"] = [str(c) for c in caps["drop"]]
    security_opt: list[str] = []
    if csc.get("allowPrivilegeEscalation") is False:
        security_opt.append("no-new-privileges")
    seccomp = _dict(pick("seccompProfile"))
    if seccomp.get("type") == "Unconfined":
        security_opt.append("seccomp=unconfined")
    if security_opt:
        opts["security_opt"] = security_opt
    return opts
