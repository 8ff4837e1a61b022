"""PodWorkers.sync over FakeRuntime + FakeSandboxes and a fake apiserver client."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent import runtime as rt
from agent.sandbox import FakeSandboxes
from agent.worker import PodWorkers

NODE = "node1"


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeClient:
    """pods by name; status patches land on them (like the status subresource); deletes are recorded."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[tuple[str, dict[str, Any]]] = []
        self.fail_delete = 0

    def patch(self, resource: str, name: str, patch: dict[str, Any], ns: str, subresource: str = "") -> None:
        assert resource == "pods" and subresource == "status"
        self.patches.append((name, copy.deepcopy(patch)))
        self.pods[name]["status"] = copy.deepcopy(patch["status"])

    def delete(self, resource: str, name: str, ns: str, **kw: Any) -> None:
        if self.fail_delete:
            self.fail_delete -= 1
            raise RuntimeError("apiserver unavailable")
        self.deleted.append((name, kw))
        self.pods.pop(name, None)


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.runtime = rt.FakeRuntime()
        self.runtime.clock = self.clock
        self.sandboxes = FakeSandboxes(self.runtime, NODE)
        self.client = FakeClient()
        self.requeued: list[tuple[str, float]] = []
        self.workers = self.new_workers()

    def new_workers(self) -> PodWorkers:
        return PodWorkers(self.client, NODE, self.runtime, self.sandboxes, clock=self.clock, host_ip="10.0.0.1",
                          requeue=lambda uid, d: self.requeued.append((uid, d)))

    def add(self, name: str, containers: list[str], init: list[str] | None = None, **spec: Any) -> dict[str, Any]:
        pod: dict[str, Any] = {
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}-0123456789"},
            "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": c, "image": "kubeling/test:1"} for c in containers], **spec},
            "status": {"phase": "Pending"}}
        if init:
            pod["spec"]["initContainers"] = [{"name": c, "image": "kubeling/test:1"} for c in init]
        self.client.pods[name] = pod
        return pod

    def sync(self, name: str, workers: PodWorkers | None = None) -> dict[str, Any]:
        pod = self.client.pods[name]
        (workers or self.workers).sync(pod["metadata"]["uid"], copy.deepcopy(pod), None)
        return self.client.pods.get(name, {})

    def ctr(self, name: str, cname: str) -> rt.ContainerInfo:
        """The newest container of pod `name` called `cname`."""
        uid = self.client.pods[name]["metadata"]["uid"]
        mine = [c for c in self.runtime.containers({rt.L_POD_UID: uid}) if c.labels.get(rt.L_CONTAINER) == cname]
        return max(mine, key=lambda c: c.restart_count)

    def pause(self, name: str) -> rt.ContainerInfo:
        uid = self.client.pods[name]["metadata"]["uid"]
        [p] = [c for c in self.runtime.containers({rt.L_POD_UID: uid}) if c.labels.get(rt.L_KIND) == "sandbox"]
        return p

    def created_names(self) -> list[str]:
        return [self.runtime.specs[cid].labels[rt.L_CONTAINER] for op, cid in self.runtime.calls if op == "create"]

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.workers.events.sent]


def cst(pod: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    return next(s for s in pod["status"][key] if s["name"] == name)


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


@pytest.fixture
def w() -> World:
    return World()


def test_sandbox_first_then_init_containers_in_order_then_app_containers(w: World) -> None:
    w.add("p", ["a", "b"], init=["i1", "i2"])
    pod = w.sync("p")
    assert w.created_names() == ["POD", "i1"]
    assert pod["status"]["phase"] == "Pending"
    assert cst(pod, "a")["state"]["waiting"]["reason"] == "PodInitializing"
    assert pod["status"]["podIP"] == w.sandboxes.get(pod["metadata"]["uid"]).ip  # type: ignore[union-attr]
    w.sync("p")  # i1 still running: nothing new
    assert w.created_names() == ["POD", "i1"]
    w.runtime.exit(w.ctr("p", "i1").id, 0)
    w.sync("p")
    assert w.created_names() == ["POD", "i1", "i2"]
    w.runtime.exit(w.ctr("p", "i2").id, 0)
    pod = w.sync("p")
    assert w.created_names() == ["POD", "i1", "i2", "a", "b"]
    pause = w.pause("p")
    for c in ("i1", "i2", "a", "b"):
        assert w.ctr("p", c).sandbox_id == pause.id  # every container joined the pause container's netns
    assert pod["status"]["phase"] == "Running" and ready(pod)
    assert cst(pod, "i1", init=True)["state"]["terminated"]["reason"] == "Completed"
    # the order of side effects: create+start the pause before any container
    ops = [(op, w.runtime.specs[cid].labels[rt.L_CONTAINER]) for op, cid in w.runtime.calls]
    assert ops[:2] == [("create", "POD"), ("start", "POD")]


def test_failed_init_container_restarts_and_blocks_app_containers(w: World) -> None:
    w.add("p", ["a"], init=["i"])
    w.sync("p")
    w.runtime.exit(w.ctr("p", "i").id, 1)
    pod = w.sync("p")
    assert w.ctr("p", "i").restart_count == 1 and "a" not in w.created_names()
    assert pod["status"]["phase"] == "Pending"
    # Never: a failed init container fails the pod
    w.add("n", ["a"], init=["i"], restartPolicy="Never")
    w.sync("n")
    w.runtime.exit(w.ctr("n", "i").id, 1)
    pod = w.sync("n")
    assert pod["status"]["phase"] == "Failed" and w.ctr("n", "i").restart_count == 0


def test_restarts_with_growing_backoff(w: World) -> None:
    w.add("p", ["a"])
    w.sync("p")
    w.runtime.exit(w.ctr("p", "a").id, 1)
    pod = w.sync("p")  # first restart: immediate
    assert w.ctr("p", "a").restart_count == 1 and w.ctr("p", "a").running
    assert cst(pod, "a")["restartCount"] == 1
    for want_delay, restarts in ((10, 2), (20, 3), (40, 4)):
        w.runtime.exit(w.ctr("p", "a").id, 1)
        w.clock.t += 1
        pod = w.sync("p")
        wt = cst(pod, "a")["state"]["waiting"]
        assert wt["reason"] == "CrashLoopBackOff" and f"back-off {want_delay}s" in wt["message"]
        assert cst(pod, "a")["lastState"]["terminated"]["exitCode"] == 1
        assert pod["status"]["phase"] == "Running"
        assert w.requeued[-1][1] == pytest.approx(want_delay - 1)
        w.clock.t += want_delay - 2
        w.sync("p")
        assert w.ctr("p", "a").restart_count == restarts - 1  # still waiting
        w.clock.t += 1
        pod = w.sync("p")
        assert w.ctr("p", "a").restart_count == restarts and cst(pod, "a")["restartCount"] == restarts
    assert "BackOff" in w.reasons()
    # only the current and the previous attempt are kept
    uid = pod["metadata"]["uid"]
    assert len([c for c in w.runtime.containers({rt.L_POD_UID: uid}) if c.labels.get(rt.L_KIND) == "app"]) == 2


def test_backoff_resets_after_ten_minutes_running(w: World) -> None:
    w.add("p", ["a"])
    w.sync("p")
    for _ in range(3):
        w.runtime.exit(w.ctr("p", "a").id, 1)
        w.clock.t += 100
        w.sync("p")
    assert w.workers.backoff.delay(f"{w.client.pods['p']['metadata']['uid']}/a") == 40  # 10, 20, 40
    w.clock.t += 600
    w.sync("p")  # running for 10 minutes: back-off forgotten
    w.runtime.exit(w.ctr("p", "a").id, 1)
    before = w.ctr("p", "a").restart_count
    w.sync("p")
    assert w.ctr("p", "a").restart_count == before + 1 and w.ctr("p", "a").running


@pytest.mark.parametrize("policy,code,restarted,phase", [
    ("Always", 0, True, "Running"), ("OnFailure", 0, False, "Succeeded"), ("OnFailure", 3, True, "Running"),
    ("Never", 3, False, "Failed"), ("Never", 0, False, "Succeeded")])
def test_restart_policy(w: World, policy: str, code: int, restarted: bool, phase: str) -> None:
    w.add("p", ["a"], restartPolicy=policy)
    w.sync("p")
    w.runtime.exit(w.ctr("p", "a").id, code)
    pod = w.sync("p")
    assert (w.ctr("p", "a").restart_count == 1) is restarted
    assert pod["status"]["phase"] == phase


def test_terminal_pod_releases_its_sandbox(w: World) -> None:
    w.add("p", ["a"], restartPolicy="Never")
    pod = w.sync("p")
    ip = pod["status"]["podIP"]
    w.runtime.exit(w.ctr("p", "a").id, 0)
    w.sync("p")  # writes Succeeded
    w.sync("p")  # sees Succeeded: tears down
    assert w.sandboxes.get(pod["metadata"]["uid"]) is None and ip not in w.sandboxes.ips


def test_adoption_of_running_containers_without_restarting_them(w: World) -> None:
    w.add("p", ["a", "b"])
    pod = w.sync("p")
    before = {c: cst(pod, c)["containerID"] for c in ("a", "b")}
    n_calls = len(w.runtime.calls)
    fresh = w.new_workers()  # an agent restart: new workers, same Docker, same sandbox state
    pod = w.sync("p", fresh)
    assert w.runtime.calls[n_calls:] == []  # nothing created, started, stopped or removed
    assert {c: cst(pod, c)["containerID"] for c in ("a", "b")} == before
    assert all(cst(pod, c)["restartCount"] == 0 for c in ("a", "b")) and ready(pod)
    assert "SandboxChanged" not in [e["reason"] for e in fresh.events.sent]


def test_a_pending_kill_is_never_replaced_by_a_later_update(w: World) -> None:
    pod = w.add("p", ["a"])
    w.sync("p")
    uid = pod["metadata"]["uid"]
    w.client.pods["p"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    w.client.fail_delete = 1
    with pytest.raises(RuntimeError):
        w.sync("p")  # containers stopped, sandbox gone, the final DELETE failed
    assert uid in w.workers.killing
    assert w.runtime.containers({rt.L_POD_UID: uid}) == [] and w.sandboxes.get(uid) is None
    # a later update without deletionTimestamp (e.g. a stale cache) must not start the pod again
    del w.client.pods["p"]["metadata"]["deletionTimestamp"]
    n_creates = len(w.created_names())
    w.sync("p")
    assert len(w.created_names()) == n_creates
    assert w.client.deleted and w.client.deleted[-1][1]["preconditions"] == {"uid": uid}
    assert uid not in w.workers.killing
    assert w.runtime.containers({rt.L_POD_UID: uid}) == []
    assert w.sandboxes.ips == {} and w.sandboxes.netns == set()


def test_vanished_pod_is_killed_with_its_last_known_grace(w: World) -> None:
    pod = w.add("p", ["a"])
    w.sync("p")
    uid = pod["metadata"]["uid"]
    w.workers.sync(uid, None, copy.deepcopy(pod))
    assert w.runtime.containers({rt.L_POD_UID: uid}) == []
    assert uid in w.sandboxes.torn_down and not w.client.deleted  # gone from the API already


# -- sandbox death (task: the whole pod is re-created) --

@pytest.mark.parametrize("how", ["killed", "vanished"])
def test_sandbox_death_recreates_the_whole_pod(w: World, how: str) -> None:
    w.add("p", ["a"], init=["i"])
    w.sync("p")
    w.runtime.exit(w.ctr("p", "i").id, 0)
    pod = w.sync("p")
    uid = pod["metadata"]["uid"]
    old_pause, old_ip, old_a = w.pause("p").id, pod["status"]["podIP"], w.ctr("p", "a").id
    assert ready(pod)
    if how == "killed":
        w.runtime.exit(old_pause, 137)
    else:
        w.runtime.remove(old_pause)
    pod = w.sync("p")
    # the old containers were stopped (never left running in the dead netns), the old sandbox torn down
    assert ("stop", old_a) in w.runtime.calls and not w.runtime.store[old_a].running
    assert old_pause in w.sandboxes.cni_del and old_ip not in w.sandboxes.ips
    assert w.runtime.inspect(old_pause) is None
    new_sb = w.sandboxes.get(uid)
    assert new_sb is not None and new_sb.pause_id != old_pause and new_sb.ip != old_ip
    # init runs again, first, in the new sandbox, with its restart count incremented
    i = w.ctr("p", "i")
    assert i.running and i.sandbox_id == new_sb.pause_id and i.restart_count == 1
    assert pod["status"]["podIP"] == new_sb.ip
    assert cst(pod, "a")["state"]["waiting"]["reason"] == "PodInitializing"
    assert pod["status"]["phase"] == "Pending" and not ready(pod)
    ev = [e for e in w.workers.events.sent if e["reason"] == "SandboxChanged"]
    assert len(ev) == 1 and ev[0]["message"] == "Pod sandbox changed, it will be killed and re-created."
    w.runtime.exit(i.id, 0)
    pod = w.sync("p")
    a = w.ctr("p", "a")
    assert a.id != old_a and a.running and a.sandbox_id == new_sb.pause_id and a.restart_count == 1
    assert cst(pod, "a")["restartCount"] == 1 and ready(pod)
    assert cst(pod, "a")["lastState"]["terminated"]["containerID"] == f"docker://{old_a}"
    # and it stays that way: no second kill, one event
    n = len(w.runtime.calls)
    w.sync("p")
    assert w.runtime.calls[n:] == [] and w.reasons().count("SandboxChanged") == 1
    assert list(w.sandboxes.ips) == [new_sb.ip] and w.sandboxes.netns == {new_sb.netns}


def test_container_in_another_sandbox_is_a_sandbox_change(w: World) -> None:
    """A running container joined a pause container that is not the pod's current sandbox."""
    w.add("p", ["a"])
    w.sync("p")
    uid = w.client.pods["p"]["metadata"]["uid"]
    a = w.ctr("p", "a")
    w.runtime.store[a.id].network_mode = "container:" + "f" * 64
    w.sync("p")
    assert not w.runtime.store[a.id].running
    assert w.ctr("p", "a").restart_count == 1 and w.ctr("p", "a").sandbox_id == w.sandboxes.get(uid).pause_id  # type: ignore[union-attr]
    assert "SandboxChanged" in w.reasons()


def test_sandbox_death_of_a_never_pod_fails_it_without_a_new_sandbox(w: World) -> None:
    w.add("p", ["a"], restartPolicy="Never")
    w.sync("p")
    uid = w.client.pods["p"]["metadata"]["uid"]
    w.runtime.exit(w.pause("p").id, 137)
    pod = w.sync("p")
    assert w.sandboxes.get(uid) is None and w.sandboxes.ips == {}
    assert pod["status"]["phase"] == "Failed"
    assert cst(pod, "a")["state"]["terminated"]["exitCode"] in (137, 143)
    w.sync("p")
    assert w.sandboxes.get(uid) is None and w.ctr("p", "a").restart_count == 0


def test_sandbox_death_while_backing_off_keeps_the_backoff(w: World) -> None:
    w.add("p", ["a"])
    w.sync("p")
    for _ in range(2):
        w.runtime.exit(w.ctr("p", "a").id, 1)
        w.sync("p")
    # crashed again and is waiting 10 s; now the sandbox dies too
    w.runtime.exit(w.ctr("p", "a").id, 1)
    w.sync("p")
    w.runtime.exit(w.pause("p").id, 137)
    pod = w.sync("p")
    assert "SandboxChanged" in w.reasons()
    assert cst(pod, "a")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    w.clock.t += 10
    pod = w.sync("p")
    a = w.ctr("p", "a")
    assert a.running and a.restart_count == 2 and a.sandbox_id == w.pause("p").id


def test_sandbox_failure_is_retried(w: World) -> None:
    w.sandboxes.fail = "CNI ADD failed: no IPs left"
    w.add("p", ["a"])
    pod = w.sync("p")
    assert "FailedCreatePodSandBox" in w.reasons() and w.requeued
    assert cst(pod, "a")["state"]["waiting"]["reason"] == "ContainerCreating"
    w.sandboxes.fail = None
    pod = w.sync("p")
    assert ready(pod)
