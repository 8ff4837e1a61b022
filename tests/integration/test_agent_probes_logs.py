# ruff: noqa: F811  (the `node` fixture is imported by name)
"""Agent acceptance 3 (liveness restarts, readiness only flips Ready) and the logs half of
acceptance 1 (`kubectl logs` through the apiserver to the agent's API), on real dockerd."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from agent_fixtures import Node, cstatus, get_pod, is_ready, needs_agent_env, node, pod_manifest  # noqa: F401
from polling import wait_for

pytestmark = [needs_agent_env, pytest.mark.docker, pytest.mark.netns]

FAST = {"periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1, "timeoutSeconds": 1}


def test_failing_liveness_restarts_the_container(node: Node) -> None:
    node.start_agent()
    c = {"name": "app", "command": ["sh", "-c", "touch /tmp/alive; exec sleep 3600"],
         "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, **FAST}}
    # sleep as PID 1 ignores SIGTERM: a short grace keeps the restart quick
    node.client.create("pods", pod_manifest(node, "live", [c], terminationGracePeriodSeconds=1), "default")
    pod = wait_for(lambda: (lambda p: p if is_ready(p) else None)(get_pod(node, "live")), 30, "Ready")
    cid = cstatus(pod, "app")["containerID"].removeprefix("docker://")
    node.runtime.exec(cid, ["rm", "/tmp/alive"], 5)
    restarted = wait_for(lambda: (lambda s: s if s.get("restartCount", 0) >= 1 else None)(
        cstatus(get_pod(node, "live"), "app")), 30, "a liveness restart")
    assert restarted["containerID"].removeprefix("docker://") != cid
    evs = {e["reason"] for e in node.client.list("events", "default")["items"]
           if e["involvedObject"]["name"] == "live"}
    assert "Unhealthy" in evs or "Killing" in evs, evs


def test_failing_readiness_flips_ready_without_a_restart(node: Node) -> None:
    node.start_agent()
    web = {"name": "web", "ports": [{"name": "http", "containerPort": 8080}],
           "command": ["sh", "-c", "touch /tmp/ready; echo ok > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"],
           "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, **FAST},
           "livenessProbe": {"httpGet": {"path": "/index.html", "port": "http"}, **FAST, "failureThreshold": 3}}
    node.client.create("pods", pod_manifest(node, "ready", [web]), "default")
    pod = wait_for(lambda: (lambda p: p if is_ready(p) else None)(get_pod(node, "ready")), 30, "Ready")
    cid = cstatus(pod, "web")["containerID"]
    node.runtime.exec(cid.removeprefix("docker://"), ["rm", "/tmp/ready"], 5)
    wait_for(lambda: not is_ready(get_pod(node, "ready")), 15, "Ready=False")
    s = cstatus(get_pod(node, "ready"), "web")
    assert s["ready"] is False and s["restartCount"] == 0 and s["containerID"] == cid
    node.runtime.exec(cid.removeprefix("docker://"), ["touch", "/tmp/ready"], 5)
    wait_for(lambda: is_ready(get_pod(node, "ready")), 15, "Ready again")
    assert cstatus(get_pod(node, "ready"), "web")["restartCount"] == 0  # the httpGet liveness probe on a named port passed


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_logs_reaches_each_container(node: Node, tmp_path) -> None:
    node.start_process()  # the real `agent.main`: registers the Node with its API endpoint
    a = {"name": "a", "command": ["sh", "-c", "echo line-from-a-1; echo line-from-a-2; exec sleep 3600"]}
    b = {"name": "b", "command": ["sh", "-c", "echo line-from-b; exec sleep 3600"]}
    node.client.create("pods", pod_manifest(node, "talk", [a, b]), "default")
    wait_for(lambda: is_ready(get_pod(node, "talk")), 40, "pod talk Ready")
    kubectl = ["kubectl", "--kubeconfig", node.kubeconfig, "--cache-dir", str(tmp_path / "cache")]

    def logs(*args: str) -> str:
        p = subprocess.run([*kubectl, "logs", "talk", *args], capture_output=True, text=True, timeout=30)
        return p.stdout if p.returncode == 0 else ""

    assert wait_for(lambda: "line-from-a-2" in logs("-c", "a"), 15, "logs of a")
    assert logs("-c", "b").strip() == "line-from-b"
    assert logs("-c", "a", "--tail=1").strip() == "line-from-a-2"
    p = subprocess.run([*kubectl, "logs", "talk", "-c", "nope"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "nope" in p.stderr
