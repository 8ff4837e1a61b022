# ruff: noqa: F811  (the `node` fixture is imported by name)
"""Acceptance 5: SIGKILL the agent process with 10 pods running, start it again."""

from __future__ import annotations

import re

import pytest
from agent_fixtures import Node, cstatus, get_pod, is_ready, needs_agent_env, node, pod_manifest  # noqa: F401
from polling import wait_for

from kube.client import ApiError

pytestmark = [needs_agent_env, pytest.mark.docker, pytest.mark.netns, pytest.mark.slow]


def _snapshot(node: Node, names: list[str]) -> dict[str, tuple[str, int]] | None:
    out = {}
    for n in names:
        p = get_pod(node, n)
        if not is_ready(p):
            return None
        s = cstatus(p, "app")
        out[n] = (s["containerID"], s["restartCount"])
    return out


def test_sigkill_and_restart_adopts_everything(node: Node) -> None:
    names = [f"p{i}" for i in range(10)]
    node.start_process()
    for n in names:
        node.client.create("pods", pod_manifest(node, n, [{"name": "app", "command": ["sleep", "3600"]}],
                                                terminationGracePeriodSeconds=1), "default")
    before = wait_for(lambda: _snapshot(node, names), 40, "10 pods Ready")
    node.kill_process()
    node.client.delete("pods", "p9", "default")  # while the agent is down: stays with a deletionTimestamp
    node.start_process()
    # how long the adoption takes is bench/pod_startup.py's business; here: it finishes, and adopts
    wait_for(lambda: re.search(r"first full sync done .* seconds=([0-9.]+)", node.log().split(
        "agent running")[-1]), 15, "first full sync")

    def p9_gone() -> bool:
        try:
            get_pod(node, "p9")
            return False
        except ApiError as e:
            return e.is_not_found()
    wait_for(p9_gone, 15, "p9 cleaned up")
    after = _snapshot(node, names[:9])
    assert after == {n: before[n] for n in names[:9]}, node.log()
    assert not [c for c in node.ours() if c.labels.get("io.kubeling.pod-name") == "p9"]
    assert len([n for n in node.pod_netns_files()]) == 9
