"""One behaviour test for the runtime adapter, run against FakeRuntime and (when an engine and the
kubeling images are here) DockerRuntime, so the fake keeps behaving like the real thing.

The Docker variant labels everything with a per-run node name and removes, by ID, only
containers carrying that label, also when the test fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agent import runtime as rt

PAUSE, TEST = "kubeling/pause:1", "kubeling/test:1"


def _docker() -> rt.DockerRuntime | None:
    try:
        d = rt.DockerRuntime(timeout=10)
        d.version()
        if d.image_id(PAUSE) is None or d.image_id(TEST) is None:
            return None  # scripts/images builds them
        return d
    except Exception:
        return None


@pytest.fixture(params=["fake", "docker"])
def runtime(request: pytest.FixtureRequest) -> Iterator[tuple[rt.Runtime, str]]:
    node = f"klt-{os.getpid()}-rt-{request.param}"
    if request.param == "fake":
        yield rt.FakeRuntime(), node
        return
    d = _docker()
    if d is None:
        pytest.skip("needs a running Docker engine with the kubeling images (scripts/images)")
    try:
        yield d, node
    finally:
        for cid in d.list_ids({rt.L_NODE: node}):
            d.remove(cid)


def _spec(node: str, name: str, image: str, **kw: object) -> rt.CreateSpec:
    labels = {rt.L_NODE: node, rt.L_POD_UID: "uid-1", rt.L_CONTAINER: name,
              rt.L_KIND: "sandbox" if image == PAUSE else "app", rt.L_RESTARTS: "3"}
    return rt.CreateSpec(name=f"{node}_{name}", image=image, labels=labels, **kw)  # type: ignore[arg-type]


def test_runtime_lifecycle_labels_and_sandbox_join(runtime: tuple[rt.Runtime, str]) -> None:
    r, node = runtime
    assert r.image_id(TEST) and r.image_id("nonexistent.invalid/nope:1") is None
    pause = r.create(_spec(node, "POD", PAUSE, network_mode="none", ipc_mode="shareable"))
    r.start(pause)
    app = r.create(_spec(node, "app", TEST, entrypoint=["sleep", "30"], network_mode=f"container:{pause}",
                         ipc_mode=f"container:{pause}"))
    info = r.inspect(app)
    assert info is not None and info.state == "created" and not info.running and info.started_at == 0
    r.start(app)
    info = r.inspect(app)
    assert info is not None and info.running and info.pid > 0 and info.started_at > 0
    assert info.sandbox_id == pause and info.restart_count == 3 and info.labels[rt.L_CONTAINER] == "app"
    assert info.image == TEST and info.image_id
    p = r.inspect(pause)
    assert p is not None and p.running and p.sandbox_id == ""
    # listing by label
    ids = r.list_ids({rt.L_NODE: node, rt.L_POD_UID: "uid-1"})
    assert set(ids) == {pause, app} and ids[app][0] == "running"
    assert set(r.list_ids({rt.L_NODE: node, rt.L_KIND: "sandbox"})) == {pause}
    assert r.list_ids({rt.L_NODE: node, rt.L_POD_UID: "other"}) == {}
    assert {c.id for c in r.containers({rt.L_NODE: node})} == {pause, app}
    # a second container of the same name: a name conflict (409), not a config error
    with pytest.raises(rt.NameConflict) as exc:
        r.create(_spec(node, "app", TEST, entrypoint=["sleep", "30"]))
    assert getattr(exc.value, "status_code", None) == 409
    with pytest.raises(rt.ImageNotFound):
        r.create(_spec(node, "nope", "nonexistent.invalid/nope:1"))
    # stop: SIGKILL with no grace -> 137; a stopped container keeps its labels and sandbox
    r.stop(app, 0)
    info = r.inspect(app)
    assert info is not None and not info.running and info.state == "exited" and info.exit_code == 137
    assert info.finished_at >= info.started_at > 0 and info.sandbox_id == pause
    # "not found" / "not running" are success
    r.stop(app, 0)
    r.remove(app)
    r.remove(app)
    r.stop(app, 0)
    assert r.inspect(app) is None
    r.stop(pause, 0)
    r.remove(pause)
    assert r.list_ids({rt.L_NODE: node}) == {}
