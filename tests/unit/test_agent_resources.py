"""agent.resources: docker host options from a pod spec (upstream's arithmetic)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ContainerConfigError
from agent.resources import docker_host_options, milli_cpu_to_quota, milli_cpu_to_shares

GiB = 1 << 30


def pod(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"containers": list(containers), **spec}}


def c(name: str = "c", limits: dict[str, str] | None = None, requests: dict[str, str] | None = None,
      **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if limits:
        res["limits"] = limits
    if requests:
        res["requests"] = requests
    return {"name": name, "resources": res, **extra}


def test_quota_and_shares_arithmetic() -> None:
    assert milli_cpu_to_quota(0) == 0
    assert milli_cpu_to_quota(500) == 50_000
    assert milli_cpu_to_quota(1) == 1000  # minimum quota
    assert milli_cpu_to_quota(2500) == 250_000
    assert milli_cpu_to_shares(0) == 2
    assert milli_cpu_to_shares(1) == 2
    assert milli_cpu_to_shares(250) == 256
    assert milli_cpu_to_shares(1000) == 1024
    assert milli_cpu_to_shares(10_000_000) == 262_144


def test_best_effort() -> None:
    ctr = c()
    opts = docker_host_options(pod(ctr), ctr)
    assert opts == {"cpu_shares": 2, "pids_limit": 1024, "oom_score_adj": 1000, "privileged": False}


def test_guaranteed_limits() -> None:
    ctr = c(limits={"cpu": "500m", "memory": "128Mi"}, requests={"cpu": "500m", "memory": "128Mi"})
    opts = docker_host_options(pod(ctr), ctr, pids_limit=99)
    assert opts["mem_limit"] == opts["memswap_limit"] == 128 << 20
    assert (opts["cpu_period"], opts["cpu_quota"], opts["cpu_shares"]) == (100_000, 50_000, 512)
    assert opts["pids_limit"] == 99
    assert opts["oom_score_adj"] == -997


def test_limits_only_means_requests_equal_limits() -> None:
    ctr = c(limits={"cpu": "1", "memory": "1Gi"})
    opts = docker_host_options(pod(ctr), ctr)
    assert opts["cpu_shares"] == 1024
    assert opts["oom_score_adj"] == -997  # limits only: Guaranteed (apiserver copies limits to requests)


@pytest.mark.parametrize("request_mem,capacity,want", [
    ("1Gi", 4 * GiB, 750),
    (None, 4 * GiB, 999),        # no memory request: 1000 - 0 -> 999 (below BestEffort)
    ("4Gi", 4 * GiB, 3),         # 1000 - 1000 -> at least 3
    ("1", 4 * GiB, 999),
])
def test_burstable_oom_score(request_mem: str | None, capacity: int, want: int) -> None:
    requests = {"cpu": "100m", **({"memory": request_mem} if request_mem else {})}
    ctr = c(requests=requests)
    opts = docker_host_options(pod(ctr), ctr, capacity=capacity)
    assert opts["oom_score_adj"] == want
    assert opts["cpu_shares"] == 102
    assert "cpu_quota" not in opts and "mem_limit" not in opts


def test_node_critical_is_guaranteed_score() -> None:
    ctr = c(requests={"cpu": "100m"})
    assert docker_host_options(pod(ctr, priorityClassName="system-node-critical"), ctr)["oom_score_adj"] == -997


def test_security_context_pod_defaults_and_container_overrides() -> None:
    ctr = c(securityContext={"runAsUser": 1000, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                             "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}})
    p = pod(ctr, securityContext={"runAsUser": 5, "runAsGroup": 3000, "supplementalGroups": [10, 11],
                                  "fsGroup": 2000, "seccompProfile": {"type": "Unconfined"}})
    opts = docker_host_options(p, ctr)
    assert opts["user"] == "1000:3000"
    assert opts["group_add"] == ["10", "11", "2000"]
    assert opts["read_only"] is True and opts["privileged"] is False
    assert opts["cap_add"] == ["NET_ADMIN"] and opts["cap_drop"] == ["ALL"]
    assert opts["security_opt"] == ["no-new-privileges", "seccomp=unconfined"]


def test_privileged_and_user_only() -> None:
    ctr = c(securityContext={"privileged": True})
    opts = docker_host_options(pod(ctr, securityContext={"runAsUser": 7}), ctr)
    assert opts["privileged"] is True and opts["user"] == "7"
    assert "security_opt" not in opts


def test_run_as_non_root_with_root_user() -> None:
    ctr = c(securityContext={"runAsUser": 0})
    with pytest.raises(ContainerConfigError, match="runAsUser breaks non-root policy"):
        docker_host_options(pod(ctr, securityContext={"runAsNonRoot": True}), ctr)
