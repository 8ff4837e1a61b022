# ruff: noqa: F811  (the `node` fixture is imported by name)
"""Sandbox death re-creates the whole pod (real dockerd, real namespaces, in-process agent).

Only containers labelled with this test's node name are touched: the pause container is
found through io.kubeling.node + io.kubeling.pod-uid + io.kubeling.kind=sandbox and killed by ID.
"""

from __future__ import annotations

import os
import subprocess

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
from cni_fixtures import NETNS_DIR, links, our_veths, reservations
from polling import wait_for

from agent import runtime as rt
from cni.api import host_veth_name

pytestmark = [needs_agent_env, pytest.mark.docker, pytest.mark.netns]


def _pause_ids(node: Node, uid: str) -> list[str]:
    return [cid for cid, (_state, labels) in node.runtime.list_ids({rt.L_NODE: node.name, rt.L_POD_UID: uid}).items()
            if labels.get(rt.L_KIND) == "sandbox"]


def _cid(pod: dict, name: str, init: bool = False) -> str:
    key = "initContainerStatuses" if init else "containerStatuses"
    s = next(s for s in pod["status"].get(key) or [] if s["name"] == name)
    return str(s["containerID"]).removeprefix("docker://")


def test_pause_container_death_recreates_the_pod(node: Node) -> None:
    node.start_agent()
    web = {"name": "web", "command": ["sh", "-c", "echo sandbox-ok > /tmp/index.html && "
                                                   "exec httpd -f -p 8080 -h /tmp"]}
    init = {"name": "init", "image": "kubeling/test:1", "command": ["sh", "-c", "echo init-ran"]}
    node.client.create("pods", pod_manifest(node, "sbx", [web], initContainers=[init],
                                            terminationGracePeriodSeconds=1), "default")
    pod = wait_for(lambda: ready_pod(node, "sbx"), 20, "pod sbx Ready")
    uid = pod["metadata"]["uid"]
    old_ip, old_web, old_init = pod["status"]["podIP"], _cid(pod, "web"), _cid(pod, "init", init=True)
    [old_pause] = _pause_ids(node, uid)
    netns_file = f"{NETNS_DIR}/{node.pod_netns_files()[0]}"
    conf_name = "kubeling"
    old_veth = host_veth_name(conf_name, old_pause, "eth0")
    assert old_veth in links(node.netns)
    assert reservations(f"{node.root}/cni", conf_name) == [old_ip]

    subprocess.run(["docker", "kill", old_pause], check=True, capture_output=True, timeout=20)

    def recreated() -> dict | None:
        p = get_pod(node, "sbx")
        s = cstatus(p, "web")
        ok = ready_pod(node, "sbx") is not None and s.get("restartCount", 0) >= 1 and _cid(p, "web") != old_web
        return p if ok else None
    pod = wait_for(recreated, 30, "pod sbx Ready again in a new sandbox")
    st = pod["status"]
    assert st["phase"] == "Running"
    new_web, new_init = _cid(pod, "web"), _cid(pod, "init", init=True)
    assert new_init != old_init
    init_st = next(s for s in st["initContainerStatuses"] if s["name"] == "init")
    assert init_st["restartCount"] >= 1 and init_st["state"]["terminated"]["exitCode"] == 0, init_st
    assert cstatus(pod, "web")["lastState"]["terminated"]["containerID"] == f"docker://{old_web}"
    # one new sandbox, the app joined it, the old pause is gone
    [new_pause] = _pause_ids(node, uid)
    assert new_pause != old_pause
    assert node.runtime.inspect(old_pause) is None
    new = node.runtime.inspect(new_web)
    assert new is not None and new.running and new.sandbox_id == new_pause
    old = node.runtime.inspect(old_web)
    assert old is None or not old.running  # kept as history (lastState), never running in the dead netns
    # nothing left of the old sandbox: netns mount replaced, veth and IP reservation released
    new_ip = st["podIP"]
    assert node.pod_netns_files() == [os.path.basename(netns_file)]
    new_pid = (node.runtime.inspect(new_pause) or rt.ContainerInfo("", "", {}, "")).pid
    assert new_pid and os.stat(netns_file).st_ino == os.stat(f"/proc/{new_pid}/ns/net").st_ino  # the new netns
    veths = our_veths(node.netns)
    assert old_veth not in veths and veths == [host_veth_name(conf_name, new_pause, "eth0")], veths
    assert reservations(f"{node.root}/cni", conf_name) == [new_ip]
    # the new network works
    out = wait_for(lambda: http_from_node(node, new_ip, 8080), 10, "HTTP to the new pod IP")
    assert "sandbox-ok" in out
    # and the event was posted
    wait_for(lambda: any(e["reason"] == "SandboxChanged" and e["involvedObject"]["uid"] == uid
                         for e in node.client.list("events", "default")["items"]), 10, "SandboxChanged event")
