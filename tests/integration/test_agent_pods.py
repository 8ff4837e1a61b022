# ruff: noqa: F811  (the `node` fixture is imported by name)
"""Agent acceptance on a real dockerd, real namespaces and a real apiserver (in-process agent)."""

from __future__ import annotations

import pytest
from agent_fixtures import (  # noqa: F401
    Node,
    cstatus,
    get_pod,
    http_from_node,
    needs_agent_env,
    node,
    pod_manifest,
    ready_pod,
)
from polling import wait_for

pytestmark = [needs_agent_env, pytest.mark.docker, pytest.mark.netns]


def test_two_containers_share_localhost_and_pod_ip_reachable(node: Node) -> None:
    node.start_agent()
    server = {"name": "web", "command": ["sh", "-c", "echo hello-from-pod > /tmp/index.html && "
                                                      "exec httpd -f -p 8080 -h /tmp"]}
    client = {"name": "probe", "command": ["sh", "-c",
                                           "while :; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 8080 "
                                           "> /tmp/got 2>&1 && grep -q hello-from-pod /tmp/got && "
                                           "echo LOCALHOST-OK && exec sleep 3600; sleep 0.1; done"]}
    node.client.create("pods", pod_manifest(node, "two", [server, client]), "default")
    pod = wait_for(lambda: ready_pod(node, "two"), 20, "pod two Ready")
    st = pod["status"]
    assert st["phase"] == "Running"
    assert st["podIP"].startswith("10.244.7.")
    assert st["hostIP"] == "10.0.0.1"
    for c in ("web", "probe"):
        s = cstatus(pod, c)
        assert s["ready"] and s["started"] and "running" in s["state"], s
        assert s["containerID"].startswith("docker://") and s["restartCount"] == 0
    types = {c["type"]: c["status"] for c in st["conditions"]}
    assert types == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}
    # the second container reached the first over the shared localhost
    probe_id = cstatus(pod, "probe")["containerID"].removeprefix("docker://")
    wait_for(lambda: b"LOCALHOST-OK" in b"".join(node.runtime.logs(probe_id)), 10, "probe saw localhost")
    # the pod IP answers from the node namespace
    out = wait_for(lambda: http_from_node(node, st["podIP"], 8080), 10, "HTTP from the node namespace")
    assert "hello-from-pod" in out
    # hostname = pod name
    web_id = cstatus(pod, "web")["containerID"].removeprefix("docker://")
    assert node.runtime.exec(web_id, ["hostname"], 5)[1].strip() == "two"
    # events were posted
    evs = wait_for(lambda: {e["reason"] for e in node.client.list("events", "default")["items"]
                            if e["involvedObject"]["name"] == "two"} >= {"Created", "Started"}, 10, "events")
    assert evs


def _waiting(pod: dict, c: str) -> dict:
    return cstatus(pod, c).get("state", {}).get("waiting") or {}


def test_restart_policies_and_crash_loop_backoff(node: Node) -> None:
    node.start_agent()
    crash = {"name": "crash", "command": ["sh", "-c", "echo dying; exit 1"]}
    node.client.create("pods", pod_manifest(node, "always", [crash]), "default")
    node.client.create("pods", pod_manifest(node, "never", [dict(crash)], restartPolicy="Never"), "default")
    ok = {"name": "ok", "command": ["sh", "-c", "exit 0"]}
    node.client.create("pods", pod_manifest(node, "onfailure", [ok], restartPolicy="OnFailure"), "default")
    wait_for(lambda: get_pod(node, "never")["status"].get("phase") == "Failed", 15, "Never -> Failed")
    wait_for(lambda: get_pod(node, "onfailure")["status"].get("phase") == "Succeeded", 15, "OnFailure+0 -> Succeeded")
    term = cstatus(get_pod(node, "never"), "crash")["state"]["terminated"]
    assert term["exitCode"] == 1 and term["reason"] == "Error"
    # Always: restarted at once, then back-off 10 s, then 20 s
    def backing_off(restarts: int) -> dict | None:
        p = get_pod(node, "always")
        s = cstatus(p, "crash")
        ok = s.get("restartCount") == restarts and _waiting(p, "crash").get("reason") == "CrashLoopBackOff"
        return p if ok else None
    p = wait_for(lambda: backing_off(1), 15, "CrashLoopBackOff")
    s = cstatus(p, "crash")
    assert s["restartCount"] == 1 and "back-off 10s" in s["state"]["waiting"]["message"], s
    assert s["lastState"]["terminated"]["exitCode"] == 1
    assert p["status"]["phase"] == "Running"
    p = wait_for(lambda: backing_off(2), 20, "second back-off")
    assert "back-off 20s" in _waiting(p, "crash")["message"]
    reasons = [e["reason"] for e in node.client.list("events", "default")["items"]
               if e["involvedObject"]["name"] == "always"]
    assert "BackOff" in reasons
    assert len([c for c in node.ours() if c.labels.get("io.kubeling.pod-name") == "always"
                and c.labels.get("io.kubeling.kind") == "app"]) <= 2  # current + previous only


def test_graceful_delete_sigterm_then_sigkill_and_no_leftovers(node: Node) -> None:
    import time

    from cni_fixtures import our_veths, reservations
    node.start_agent()
    app = {"name": "app", "command": ["sh", "-c", "trap 'echo got-TERM' TERM; echo up; "
                                                   "while :; do sleep 0.1; done"]}
    node.client.create("pods", pod_manifest(node, "graceful", [app], terminationGracePeriodSeconds=5), "default")
    pod = wait_for(lambda: ready_pod(node, "graceful"), 20, "Ready")
    cid = cstatus(pod, "app")["containerID"].removeprefix("docker://")
    wait_for(lambda: b"up" in b"".join(node.runtime.logs(cid)), 5, "app up")
    t0 = time.monotonic()
    node.client.delete("pods", "graceful", "default")
    wait_for(lambda: b"got-TERM" in b"".join(node.runtime.logs(cid)), 1.0, "SIGTERM within 1 s", interval=0.01)
    t_term = time.monotonic() - t0
    wait_for(lambda: (i := node.runtime.inspect(cid)) is None or not i.running, 10, "container stopped")
    t_kill = time.monotonic() - t0
    assert t_term < 1.0 and t_kill >= 4.9, (t_term, t_kill)
    from kube.client import ApiError

    def gone() -> bool:
        try:
            get_pod(node, "graceful")
            return False
        except ApiError as e:
            return e.is_not_found()
    wait_for(gone, 10, "pod deleted from the API")
    assert node.ours() == []
    assert node.pod_netns_files() == []
    assert our_veths(node.netns) == []
    assert reservations(f"{node.root}/cni", "kubeling") == []


def test_bad_specs_get_kubernetes_reasons(node: Node) -> None:
    node.start_agent()
    mk = node.client.create
    mk("pods", pod_manifest(node, "badimage", [{"name": "c", "image": "nonexistent.invalid/nope:1"}]), "default")
    mk("pods", pod_manifest(node, "badcmd", [{"name": "c", "command": ["/no/such/binary"]}]), "default")
    mk("pods", pod_manifest(node, "oom", [{"name": "c", "command": ["sh", "-c", "x=$(head -c 80000000 /dev/zero"
                                                                         " | tr '\\0' a); sleep 3600"],
                                           "resources": {"limits": {"memory": "16Mi"}}}]), "default")
    mk("pods", pod_manifest(node, "nocm", [{"name": "c", "command": ["sleep", "3600"],
                                            "env": [{"name": "X", "valueFrom": {"configMapKeyRef":
                                                     {"name": "missing", "key": "k"}}}]}]), "default")
    wait_for(lambda: _waiting(get_pod(node, "badimage"), "c").get("reason") in ("ErrImagePull", "ImagePullBackOff"),
             10, "ErrImagePull")
    wait_for(lambda: any(e["type"] == "Warning" and e["involvedObject"]["name"] == "badimage"
                         for e in node.client.list("events", "default")["items"]), 10, "Warning event")
    wait_for(lambda: _waiting(get_pod(node, "badcmd"), "c").get("reason") in ("RunContainerError", "CrashLoopBackOff"),
             10, "RunContainerError")

    def oomkilled() -> bool:
        s = cstatus(get_pod(node, "oom"), "c")
        return "OOMKilled" in (s.get("state", {}).get("terminated", {}).get("reason", ""),
                               s.get("lastState", {}).get("terminated", {}).get("reason", ""))
    wait_for(oomkilled, 15, "OOMKilled")
    def config_error() -> dict | None:
        w = _waiting(get_pod(node, "nocm"), "c")
        return w if w.get("reason") == "CreateContainerConfigError" else None
    w = wait_for(config_error, 10, "CreateContainerConfigError")
    assert "missing" in w["message"]
    assert node.agent is not None and node.agent.queue is not None  # the agent is alive and well
