"""The pure pieces of the pod worker (agent/status.py): back-off, restart decisions, phase, conditions."""

from __future__ import annotations

from typing import Any

import pytest

from agent import status as S
from agent.runtime import L_RESTARTS, ContainerInfo


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ctr(state: str = "running", exit_code: int = 0, restarts: int = 0, **kw: Any) -> ContainerInfo:
    kw.setdefault("started_at", 1000.0 if state != "created" else 0.0)
    kw.setdefault("finished_at", 1010.0 if state == "exited" else 0.0)
    return ContainerInfo(id=f"c{restarts}{state}", name="n", labels={L_RESTARTS: str(restarts)}, state=state,
                         exit_code=exit_code, image_id="sha256:x", **kw)


# -- back-off --

def test_backoff_first_restart_is_immediate_then_10s_doubling_to_5min() -> None:
    clock = Clock()
    b = S.Backoff(clock=clock)
    assert b.remaining("k", clock.t) == 0.0 and b.delay("k") == 0.0
    delays = []
    for _ in range(8):
        b.next("k")
        delays.append(b.delay("k"))
        clock.t += 1
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]


def test_backoff_remaining_counts_from_when_the_container_finished() -> None:
    clock = Clock()
    b = S.Backoff(clock=clock)
    b.next("k")  # restarted now: the next restart waits 10 s after it finishes
    finished = clock.t + 2
    clock.t = finished + 3
    assert b.remaining("k", finished) == pytest.approx(7.0)
    clock.t = finished + 10
    assert b.remaining("k", finished) == 0.0
    assert b.remaining("other", finished) == 0.0


def test_backoff_forgotten_after_a_long_quiet_time_and_on_reset() -> None:
    clock = Clock()
    b = S.Backoff(clock=clock)
    for _ in range(4):
        b.next("k")
    assert b.delay("k") == 80
    # finished more than 2 x max (10 min) after the last restart: no wait, and the next restart starts over
    clock.t += S.BACKOFF_RESET_AFTER + 1
    assert b.remaining("k", clock.t) == 0.0
    b.next("k")
    assert b.delay("k") == S.BACKOFF_INITIAL
    b.next("k")
    b.reset("k")
    assert b.delay("k") == 0.0
    b.next("pod/a")
    b.next("pod/b")
    b.next("other/a")
    b.forget_prefix("pod/")
    assert (b.delay("pod/a"), b.delay("pod/b"), b.delay("other/a")) == (0.0, 0.0, 10.0)


@pytest.mark.parametrize("policy,code,want", [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 2, True),
    ("Never", 0, False), ("Never", 1, False)])
def test_should_restart(policy: str, code: int, want: bool) -> None:
    assert S.should_restart(policy, code) is want


# -- container status shapes --

def test_container_status_running() -> None:
    st = S.container_status({"name": "app", "image": "img"}, ctr("running", restarts=2), None, None, True, True, 2)
    assert st["state"] == {"running": {"startedAt": S.rfc3339(1000.0)}}
    assert st["ready"] and st["started"] and st["restartCount"] == 2
    assert st["containerID"] == "docker://c2running" and st["imageID"] == "docker-pullable://sha256:x"
    assert st["lastState"] == {}


def test_container_status_waiting_shows_the_last_run_in_last_state() -> None:
    cur = ctr("exited", exit_code=1, restarts=1)
    st = S.container_status({"name": "app"}, cur, None, S.Waiting("CrashLoopBackOff", "back-off 10s"), True, True, 1)
    assert st["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}
    assert not st["ready"] and not st["started"]
    assert st["lastState"]["terminated"]["exitCode"] == 1 and st["lastState"]["terminated"]["reason"] == "Error"
    # no container yet: ContainerCreating, nothing in lastState
    st = S.container_status({"name": "app"}, None, None, None, False, False, 0)
    assert st["state"] == {"waiting": {"reason": "ContainerCreating"}} and st["lastState"] == {}
    assert "containerID" not in st


@pytest.mark.parametrize("kw,reason", [
    ({"exit_code": 0}, "Completed"), ({"exit_code": 2}, "Error"), ({"exit_code": 137, "oom_killed": True}, "OOMKilled"),
    ({"exit_code": 127, "error": "no such file", "started_at": 0.0}, "StartError")])
def test_container_status_terminated(kw: dict[str, Any], reason: str) -> None:
    prev = ctr("exited", exit_code=1, restarts=0)
    cur = ctr("exited", restarts=1, **kw)
    st = S.container_status({"name": "app"}, cur, prev, None, False, False, 1)
    term = st["state"]["terminated"]
    assert term["reason"] == reason and term["exitCode"] == kw["exit_code"]
    assert term["containerID"] == f"docker://{cur.id}" and "finishedAt" in term
    assert ("message" in term) is bool(kw.get("error"))
    assert st["lastState"]["terminated"]["containerID"] == f"docker://{prev.id}"


# -- phase --

def _st(state: str, code: int = 0, last: bool = False) -> dict[str, Any]:
    if state == "running":
        s: dict[str, Any] = {"running": {}}
    elif state == "terminated":
        s = {"terminated": {"exitCode": code}}
    else:
        s = {"waiting": {"reason": "ContainerCreating"}}
    return {"state": s, "lastState": {"terminated": {"exitCode": 1}} if last else {}}


@pytest.mark.parametrize("policy,statuses,want", [
    ("Always", [_st("running")], "Running"),
    ("Always", [_st("terminated", 0)], "Running"),
    ("Always", [_st("terminated", 1)], "Running"),
    ("Always", [_st("waiting")], "Pending"),
    ("Always", [_st("waiting", last=True)], "Running"),  # crash-looping: waiting with a last run
    ("Always", [_st("running"), _st("waiting")], "Pending"),
    ("OnFailure", [_st("terminated", 0)], "Succeeded"),
    ("OnFailure", [_st("terminated", 0), _st("terminated", 0)], "Succeeded"),
    ("OnFailure", [_st("terminated", 1)], "Running"),
    ("OnFailure", [_st("terminated", 0), _st("running")], "Running"),
    ("Never", [_st("terminated", 0)], "Succeeded"),
    ("Never", [_st("terminated", 1)], "Failed"),
    ("Never", [_st("terminated", 0), _st("terminated", 137)], "Failed"),
    ("Never", [_st("terminated", 1), _st("running")], "Running"),
])
def test_pod_phase(policy: str, statuses: list[dict[str, Any]], want: str) -> None:
    assert S.pod_phase({"restartPolicy": policy}, [], statuses, True) == want


def test_pod_phase_with_init_containers() -> None:
    apps = [_st("waiting")]
    assert S.pod_phase({"restartPolicy": "Always"}, [_st("running")], apps, False) == "Pending"
    assert S.pod_phase({"restartPolicy": "OnFailure"}, [_st("terminated", 1)], apps, False) == "Pending"
    assert S.pod_phase({"restartPolicy": "Never"}, [_st("terminated", 1)], apps, False) == "Failed"
    assert S.pod_phase({}, [_st("terminated", 0)], [_st("running")], True) == "Running"


# -- conditions --

def test_conditions_ready_and_transition_times_kept() -> None:
    c = S.conditions([], True, True, 100.0, "Running")
    assert [(x["type"], x["status"]) for x in c] == [("PodScheduled", "True"), ("Initialized", "True"),
                                                    ("ContainersReady", "True"), ("Ready", "True")]
    assert all(x["lastTransitionTime"] == S.rfc3339(100.0) for x in c)
    again = S.conditions(c, True, True, 200.0, "Running")
    assert again == c  # unchanged: the old transition times stay
    down = S.conditions(c, True, False, 300.0, "Running")
    by = {x["type"]: x for x in down}
    assert by["Ready"] == {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                           "lastTransitionTime": S.rfc3339(300.0)}
    assert by["Initialized"]["lastTransitionTime"] == S.rfc3339(100.0)


def test_conditions_not_initialized_pending_and_completed() -> None:
    by = {x["type"]: x for x in S.conditions([], False, False, 1.0, "Pending")}
    assert by["Initialized"]["status"] == "False" and by["Initialized"]["reason"] == "ContainersNotInitialized"
    assert by["Ready"]["reason"] == "ContainersNotReady"
    # containers ready but the phase is not Running: not Ready
    by = {x["type"]: x for x in S.conditions([], True, True, 1.0, "Pending")}
    assert by["Ready"]["status"] == "False"
    by = {x["type"]: x for x in S.conditions([], True, False, 1.0, "Succeeded")}
    assert by["Ready"]["reason"] == "PodCompleted" and by["ContainersReady"]["reason"] == "PodCompleted"
