"""Pure pieces of the pod worker: crash back-off, restart decisions, pod phase and status.

Nothing here touches Docker or the apiserver, so unit tests drive it with plain data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.runtime import ContainerInfo

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0  # a container that ran this long forgets its back-off


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Backoff:
    """The kubelet's per-container back-off: 10 s doubling to 5 min.

    The first restart is immediate; a container that fails again within its current delay waits
    out the delay (measured from when it finished).  Entries of containers that ran for 10
    minutes, or were idle for twice the maximum, are forgotten.
    """

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX,
                 clock: Callable[[], float] = time.time) -> None:
        self.initial, self.maximum, self.clock = initial, maximum, clock
        self._entries: dict[str, tuple[float, float]] = {}  # key -> (delay, last restart)

    def remaining(self, key: str, finished_at: float) -> float:
        """Seconds to wait before restarting a container that finished at finished_at (0 = go)."""
        e = self._entries.get(key)
        if e is None:
            return 0.0
        delay, last = e
        if finished_at - last > 2 * self.maximum:
            return 0.0
        return max(0.0, delay - (self.clock() - finished_at))

    def delay(self, key: str) -> float:
        e = self._entries.get(key)
        return e[0] if e else 0.0

    def next(self, key: str) -> None:
        """Record a restart now: the next one waits the doubled delay."""
        now = self.clock()
        e = self._entries.get(key)
        if e is None or now - e[1] > 2 * self.maximum:
            self._entries[key] = (self.initial, now)
        else:
            self._entries[key] = (min(e[0] * 2, self.maximum), now)

    def reset(self, key: str) -> None:
        self._entries.pop(key, None)

    def forget_prefix(self, prefix: str) -> None:
        for k in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[k]


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def terminated_state(c: ContainerInfo) -> dict[str, Any]:
    if c.oom_killed:
        reason = "OOMKilled"
    elif c.error and not c.started_at:
        reason = "StartError"
    elif c.exit_code == 0:
        reason = "Completed"
    else:
        reason = "Error"
    st: dict[str, Any] = {"exitCode": c.exit_code, "reason": reason, "containerID": f"docker://{c.id}"}
    if c.error:
        st["message"] = c.error
    if c.started_at:
        st["startedAt"] = rfc3339(c.started_at)
    st["finishedAt"] = rfc3339(c.finished_at or c.started_at or time.time())
    return st


@dataclass
class Waiting:
    """Why a container is not running (set by the worker while syncing)."""
    reason: str
    message: str = ""


def container_status(spec: dict[str, Any], cur: ContainerInfo | None, prev: ContainerInfo | None,
                     waiting: Waiting | None, ready: bool, started: bool, restart_count: int) -> dict[str, Any]:
    """One entry of status.containerStatuses / initContainerStatuses."""
    st: dict[str, Any] = {"name": spec["name"], "image": spec.get("image", ""), "imageID": "",
                          "restartCount": restart_count, "ready": False, "started": False}
    last = prev
    if waiting is not None or cur is None:
        w = waiting or Waiting("ContainerCreating")
        st["state"] = {"waiting": {"reason": w.reason, **({"message": w.message} if w.message else {})}}
        if cur is not None and not cur.running:
            last = cur  # waiting to restart it: what it did last time is cur
    elif cur.running:
        st["state"] = {"running": {"startedAt": rfc3339(cur.started_at or time.time())}}
        st["ready"], st["started"] = ready, started
    else:
        st["state"] = {"terminated": terminated_state(cur)}
    if cur is not None:
        st["containerID"] = f"docker://{cur.id}"
        st["imageID"] = f"docker-pullable://{cur.image_id}" if cur.image_id else ""
    st["lastState"] = {"terminated": terminated_state(last)} if last is not None else {}
    return st


def pod_phase(spec: dict[str, Any], init_statuses: list[dict[str, Any]], statuses: list[dict[str, Any]],
              init_done: bool) -> str:
    """Upstream's getPhase over the statuses just computed."""
    policy = spec.get("restartPolicy", "Always")
    for s in init_statuses:
        term = s["state"].get("terminated")
        if term and term["exitCode"] != 0 and policy == "Never":
            return "Failed"
    if not init_done:
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for s in statuses:
        state = s["state"]
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            if state["terminated"]["exitCode"] == 0:
                succeeded += 1
        elif s.get("lastState", {}).get("terminated"):
            stopped += 1
        else:
            waiting += 1
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped > 0:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def conditions(old: list[dict[str, Any]], initialized: bool, containers_ready: bool, now: float,
               phase: str) -> list[dict[str, Any]]:
    """PodScheduled/Initialized/ContainersReady/Ready, keeping lastTransitionTime when unchanged."""
    prev = {c.get("type"): c for c in old or []}
    ready = containers_ready and phase == "Running"
    want = [("PodScheduled", True, ""), ("Initialized", initialized, "ContainersNotInitialized"),
            ("ContainersReady", ready, "ContainersNotReady"), ("Ready", ready, "ContainersNotReady")]
    if phase == "Succeeded":
        want[2] = ("ContainersReady", False, "PodCompleted")
        want[3] = ("Ready", False, "PodCompleted")
    out = []
    for typ, ok, reason in want:
        value = "True" if ok else "False"
        p = prev.get(typ)
        c: dict[str, Any] = {"type": typ, "status": value}
        if not ok and reason:
            c["reason"] = reason
        if p is not None and p.get("status") == value and p.get("lastTransitionTime"):
            c["lastTransitionTime"] = p["lastTransitionTime"]
        else:
            c["lastTransitionTime"] = rfc3339(now)
        out.append(c)
    return out


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    """The status without fields the apiserver may reorder or add (for "changed?" checks)."""
    return {k: v for k, v in status.items() if k not in ("qosClass",)}
