"""agent.volumes: layout, hostPath checks, atomic configMap/secret updates, binds, teardown."""

from __future__ import annotations

import base64
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ContainerConfigError
from agent.volumes import VolumeManager, VolumeSetupError, write_atomic


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Store:
    def __init__(self) -> None:
        self.cms: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}

    def manager(self, root: Path) -> VolumeManager:
        return VolumeManager(str(root), lambda ns, n: self.cms.get((ns, n)), lambda ns, n: self.secrets.get((ns, n)))


def pod(volumes: list[dict[str, Any]], uid: str = "uid-1") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": uid, "labels": {"a": "b"}},
            "spec": {"volumes": volumes, "containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}]}}


def read(p: str) -> str:
    return Path(p).read_text()


def test_empty_dir_layout_and_teardown(tmp_path: Path) -> None:
    vm = Store().manager(tmp_path)
    paths = vm.setup(pod([{"name": "scratch", "emptyDir": {}}, {"name": "mem", "emptyDir": {"medium": "Memory"}}]))
    assert paths["scratch"] == str(tmp_path / "pods/uid-1/volumes/kubernetes.io~empty-dir/scratch")
    assert os.path.isdir(paths["mem"])  # Memory medium: a plain directory
    assert stat.S_IMODE(os.stat(paths["scratch"]).st_mode) == 0o777
    assert vm.setup(pod([{"name": "scratch", "emptyDir": {}}]))["scratch"] == paths["scratch"]  # re-runnable
    vm.teardown("uid-1")
    assert not (tmp_path / "pods/uid-1").exists()
    vm.teardown("uid-1")  # not there: fine


def test_teardown_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    host_dir = tmp_path / "host"
    vm = Store().manager(tmp_path / "root")
    paths = vm.setup(pod([{"name": "d", "emptyDir": {}},
                          {"name": "h", "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"}}]))
    assert paths["h"] == str(host_dir) and host_dir.is_dir()
    (host_dir / "data").write_text("host")
    os.symlink(outside, os.path.join(paths["d"], "link"))
    os.symlink(outside / "keep", os.path.join(paths["d"], "filelink"))
    vm.teardown("uid-1")
    assert (outside / "keep").read_text() == "precious"
    assert (host_dir / "data").read_text() == "host"
    with pytest.raises(ValueError):
        vm.teardown("../escape")


def test_host_path_types(tmp_path: Path) -> None:
    vm = Store().manager(tmp_path / "root")
    f = tmp_path / "file"
    d = tmp_path / "dir"
    d.mkdir()
    f.write_text("x")
    sock_path = str(tmp_path / "s.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(sock_path)
    try:
        ok = [("Directory", d), ("File", f), ("", tmp_path / "nothing"), ("Socket", Path(sock_path)),
              ("FileOrCreate", tmp_path / "newfile"), ("DirectoryOrCreate", tmp_path / "a/b")]
        for t, p in ok:
            vm.setup(pod([{"name": "h", "hostPath": {"path": str(p), "type": t}}]))
        assert (tmp_path / "newfile").is_file() and (tmp_path / "a/b").is_dir()
        bad = [("Directory", f, "is not a directory"), ("File", d, "is not a file"),
               ("Directory", tmp_path / "missing", "is not a directory"),
               ("Socket", f, "is not a socket file"), ("DirectoryOrCreate", f, "is not a directory"),
               ("FileOrCreate", d, "is not a file"), ("Weird", d, "Weird is an invalid volume type")]
        for t, p, msg in bad:
            with pytest.raises(VolumeSetupError) as e:
                vm.setup(pod([{"name": "h", "hostPath": {"path": str(p), "type": t}}]))
            assert msg in e.value.message and e.value.message.startswith('MountVolume.SetUp failed for volume "h"')
            assert e.value.reason == "ContainerCreating" and e.value.event_reason == "FailedMount"
    finally:
        srv.close()


def test_configmap_volume_all_keys_items_modes(tmp_path: Path) -> None:
    store = Store()
    store.cms[("ns", "cfg")] = {"data": {"a": "1", "b": "2"}, "binaryData": {"bin": b64("\x00raw")}}
    vm = store.manager(tmp_path)
    paths = vm.setup(pod([
        {"name": "all", "configMap": {"name": "cfg", "defaultMode": 0o600}},
        {"name": "some", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "sub/dir/a.txt", "mode": 0o400}]}},
        {"name": "opt", "configMap": {"name": "absent", "optional": True}},
    ]))
    assert sorted(n for n in os.listdir(paths["all"]) if not n.startswith("..")) == ["a", "b", "bin"]
    assert read(os.path.join(paths["all"], "a")) == "1"
    assert Path(paths["all"], "bin").read_bytes() == b"\x00raw"
    assert os.readlink(os.path.join(paths["all"], "a")) == "..data/a"
    assert stat.S_IMODE(os.stat(os.path.join(paths["all"], "a")).st_mode) == 0o600
    assert read(os.path.join(paths["some"], "sub/dir/a.txt")) == "1"
    assert stat.S_IMODE(os.stat(os.path.join(paths["some"], "sub/dir/a.txt")).st_mode) == 0o400
    assert not os.path.exists(os.path.join(paths["some"], "b"))
    assert [n for n in os.listdir(paths["opt"]) if not n.startswith("..")] == []


def test_secret_volume_decoded(tmp_path: Path) -> None:
    store = Store()
    store.secrets[("ns", "s")] = {"data": {"token": b64("t0k")}}
    paths = store.manager(tmp_path).setup(pod([{"name": "s", "secret": {"secretName": "s"}}]))
    assert read(os.path.join(paths["s"], "token")) == "t0k"
    assert stat.S_IMODE(os.stat(os.path.join(paths["s"], "token")).st_mode) == 0o400  # secrets: 0400 by default


@pytest.mark.parametrize("volume,message", [
    ({"configMap": {"name": "nope"}}, 'configmap "nope" not found'),
    ({"secret": {"secretName": "nope"}}, 'secret "nope" not found'),
    ({"configMap": {"name": "cfg", "items": [{"key": "zz", "path": "zz"}]}},
     "configmap references non-existent config key: zz"),
    ({"persistentVolumeClaim": {"claimName": "x"}}, "not supported by kubeling"),
])
def test_missing_sources(tmp_path: Path, volume: dict[str, Any], message: str) -> None:
    store = Store()
    store.cms[("ns", "cfg")] = {"data": {"a": "1"}}
    with pytest.raises(ContainerConfigError) as e:
        store.manager(tmp_path).setup(pod([{"name": "v", **volume}]))
    assert e.value.message.startswith('MountVolume.SetUp failed for volume "v" : ') and message in e.value.message


def test_refresh_swaps_atomically(tmp_path: Path) -> None:
    store = Store()
    store.cms[("ns", "cfg")] = {"data": {"a": "1", "gone": "x"}}
    vm = store.manager(tmp_path)
    p = pod([{"name": "c", "configMap": {"name": "cfg"}}])
    path = vm.setup(p)["c"]
    first = os.readlink(os.path.join(path, "..data"))
    assert vm.refresh(p) == []  # unchanged: no new version
    assert os.readlink(os.path.join(path, "..data")) == first
    # A reader holding the old version directory open keeps a consistent view until the swap.
    store.cms[("ns", "cfg")] = {"data": {"a": "2", "new": "n"}}
    assert vm.refresh(p) == ["c"]
    second = os.readlink(os.path.join(path, "..data"))
    assert second != first and not os.path.exists(os.path.join(path, first))
    assert read(os.path.join(path, "a")) == "2" and read(os.path.join(path, "new")) == "n"
    assert not os.path.lexists(os.path.join(path, "gone"))
    del store.cms[("ns", "cfg")]
    assert vm.refresh(p) == []  # deleted source: keep the last content, as upstream
    assert read(os.path.join(path, "a")) == "2"


def test_write_atomic_rejects_escaping_paths(tmp_path: Path) -> None:
    with pytest.raises(ContainerConfigError):
        write_atomic(str(tmp_path / "v"), {"../evil": (b"x", 0o644)})
    with pytest.raises(ContainerConfigError):
        write_atomic(str(tmp_path / "v"), {"/abs": (b"x", 0o644)})


def test_downward_api_and_projected(tmp_path: Path) -> None:
    store = Store()
    store.cms[("ns", "cfg")] = {"data": {"a": "1"}}
    store.secrets[("ns", "s")] = {"data": {"t": b64("tok")}}
    paths = store.manager(tmp_path).setup(pod([
        {"name": "dw", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}]}},
        {"name": "pj", "projected": {"sources": [{"configMap": {"name": "cfg"}}, {"secret": {"name": "s"}},
                                                 {"downwardAPI": {"items": [{"path": "name", "fieldRef": {
                                                     "fieldPath": "metadata.name"}}]}}]}},
    ]))
    assert read(os.path.join(paths["dw"], "labels")) == 'a="b"'
    assert read(os.path.join(paths["dw"], "mem")) == "64"
    assert [read(os.path.join(paths["pj"], k)) for k in ("a", "t", "name")] == ["1", "tok", "p"]


def test_binds(tmp_path: Path) -> None:
    store = Store()
    store.cms[("ns", "cfg")] = {"data": {"app.conf": "x=1"}}
    vm = store.manager(tmp_path)
    host = tmp_path / "host"
    host.mkdir()
    paths = vm.setup(pod([{"name": "d", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "cfg"}},
                          {"name": "h", "hostPath": {"path": str(host)}}]))
    container = {"name": "c", "volumeMounts": [
        {"name": "d", "mountPath": "/data"},
        {"name": "d", "mountPath": "/logs", "subPath": "logs/app", "readOnly": True},
        {"name": "cfg", "mountPath": "/etc/cfg"},
        {"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
        {"name": "h", "mountPath": "/host", "mountPropagation": "HostToContainer"},
        {"name": "d", "mountPath": "/per-pod", "subPathExpr": "$(POD)"},
    ]}
    binds = vm.binds_for(container, paths, env=["POD=p1"])
    cfg_file = os.path.realpath(os.path.join(paths["cfg"], "app.conf"))
    assert binds == [f"{paths['d']}:/data:rw", f"{paths['d']}/logs/app:/logs:ro", f"{paths['cfg']}:/etc/cfg:ro",
                     f"{cfg_file}:/etc/app.conf:ro", f"{host}:/host:rw,rslave", f"{paths['d']}/p1:/per-pod:rw"]
    assert os.path.isdir(os.path.join(paths["d"], "logs/app"))
    os.symlink("/etc", os.path.join(paths["d"], "esc"))
    with pytest.raises(ContainerConfigError, match="not within volume path"):
        vm.binds_for({"name": "c", "volumeMounts": [{"name": "d", "mountPath": "/x", "subPath": "esc"}]}, paths)
    with pytest.raises(ContainerConfigError, match="must not contain"):
        vm.binds_for({"name": "c", "volumeMounts": [{"name": "d", "mountPath": "/x", "subPath": "../x"}]}, paths)
    with pytest.raises(ContainerConfigError, match='cannot find volume "zz"'):
        vm.binds_for({"name": "c", "volumeMounts": [{"name": "zz", "mountPath": "/x"}]}, paths)
