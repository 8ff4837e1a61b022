"""Pod volumes on the node: emptyDir, hostPath, configMap, secret, downwardAPI, projected.

Layout as upstream's kubelet::

    <root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>/
    <root>/pods/<uid>/volumes/kubernetes.io~configmap/<name>/
        ..2024_05_01_12_00_00.123456/<key>      the files of one version
        ..data -> ..2024_05_01_12_00_00.123456  swapped atomically by rename()
        <key> -> ..data/<key>                    what the container sees

A hostPath volume is the host path itself (type-checked, never removed).
emptyDir with ``medium: Memory`` is a plain directory here (no tmpfs mount),
and secret volumes are plain files too: nothing is mounted on the host, so
teardown is a plain (careful) directory removal.

Setup failures raise VolumeSetupError, a ContainerConfigError whose reason is
"ContainerCreating" (what the pod shows upstream while a mount fails) and
whose `event_reason` is "FailedMount"; the message is upstream's, e.g.
``MountVolume.SetUp failed for volume "cfg" : configmap "cfg" not found``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from typing import Any

from agent.env import Getter, expand, field_value, resource_value, secret_values
from agent.errors import ContainerConfigError

__all__ = ["VolumeManager", "VolumeSetupError", "write_atomic"]

log = logging.getLogger(__name__)

DEFAULT_MODE = 0o644
EMPTY_DIR = "kubernetes.io~empty-dir"
CONFIGMAP = "kubernetes.io~configmap"
SECRET = "kubernetes.io~secret"
DOWNWARD_API = "kubernetes.io~downward-api"
PROJECTED = "kubernetes.io~projected"
# Upstream mounts these read-only whatever the volumeMount says (ReadOnlyAPIDataVolumes).
_API_DATA_TYPES = (CONFIGMAP, SECRET, DOWNWARD_API, PROJECTED)
_SAFE_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DATA = "..data"
_PROPAGATION = {"HostToContainer": "rslave", "Bidirectional": "rshared"}

Payload = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


class VolumeSetupError(ContainerConfigError):
    """A volume could not be set up; the pod stays ContainerCreating (event reason FailedMount)."""

    event_reason = "FailedMount"

    def __init__(self, volume: str, detail: str) -> None:
        super().__init__(f'MountVolume.SetUp failed for volume "{volume}" : {detail}', reason="ContainerCreating")
        self.volume = volume
        self.detail = detail


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _check_rel_path(path: str) -> str:
    """A payload or subPath: relative, no '..' element (validation says so; the node checks again)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not path or path.startswith("/") or ".." in parts or not parts:
        raise ContainerConfigError(f"invalid relative path {path!r}: must be relative and must not contain '..'")
    return "/".join(parts)


# ---------------------------------------------------------------- atomic writer


def _read_version(version_dir: str) -> Payload:
    out: Payload = {}
    for dirpath, _dirs, files in os.walk(version_dir):
        for f in files:
            full = os.path.join(dirpath, f)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as fh:
                    out[os.path.relpath(full, version_dir)] = (fh.read(), stat.S_IMODE(st.st_mode))
    return out


def write_atomic(target_dir: str, payload: Payload) -> bool:
    """Make `target_dir` show exactly `payload`, switching versions with one rename(); True if it changed.

    Upstream's AtomicWriter: a fresh timestamped directory, ``..data`` swapped to it, one
    ``<top> -> ..data/<top>`` symlink per top-level name, then the old version removed.
    """
    payload = {_check_rel_path(k): v for k, v in payload.items()}
    os.makedirs(target_dir, mode=0o755, exist_ok=True)
    data_link = os.path.join(target_dir, _DATA)
    old_version: str | None = None
    if os.path.islink(data_link):
        old_version = os.readlink(data_link)
        if "/" not in old_version and _read_version(os.path.join(target_dir, old_version)) == payload:
            return False
    new_dir = tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S."), dir=target_dir)
    try:
        for rel, (content, mode) in payload.items():
            full = os.path.join(new_dir, rel)
            os.makedirs(os.path.dirname(full), mode=0o755, exist_ok=True)
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            os.chmod(full, mode)
        os.chmod(new_dir, 0o755)
        tmp_link = os.path.join(target_dir, _DATA + "_tmp")
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(os.path.basename(new_dir), tmp_link)
        os.rename(tmp_link, data_link)
    except BaseException:
        shutil.rmtree(new_dir, ignore_errors=True)
        raise
    tops = {rel.split("/", 1)[0] for rel in payload}
    for top in tops:
        link = os.path.join(target_dir, top)
        if not os.path.lexists(link):
            os.symlink(os.path.join(_DATA, top), link)
    for name in os.listdir(target_dir):  # user-visible links of keys that are gone
        full = os.path.join(target_dir, name)
        if not name.startswith("..") and name not in tops and os.path.islink(full) \
                and os.readlink(full).startswith(_DATA + "/"):
            os.unlink(full)
    if old_version and "/" not in old_version and old_version.startswith(".."):
        _remove_tree(os.path.join(target_dir, old_version))
    return True


def _remove_tree(path: str) -> None:
    """Remove `path` without following symlinks and without descending into mount points."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        os.unlink(path)
        return

    def walk(p: str) -> None:
        with os.scandir(p) as it:
            entries = list(it)
        for e in entries:
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev != top.st_dev:
                    log.warning("not removing %s: a mount point", e.path)
                    continue
                walk(e.path)
                try:
                    os.rmdir(e.path)
                except OSError as err:
                    log.warning("cannot remove %s: %s", e.path, err)
            else:
                os.unlink(e.path)
    walk(path)
    try:
        os.rmdir(path)
    except OSError as err:
        log.warning("cannot remove %s: %s", path, err)


# ---------------------------------------------------------------- hostPath


def check_host_path(path: str, path_type: str) -> None:
    """hostPath type checks (and creation) as upstream's checkTypeInternal; raises ValueError."""
    def is_dir() -> bool:
        return os.path.isdir(path)

    def is_file() -> bool:
        return os.path.isfile(path)

    def mode_is(test: Callable[[int], bool]) -> bool:
        try:
            return test(os.stat(path).st_mode)
        except OSError:
            return False

    if path_type == "":
        return
    if path_type == "DirectoryOrCreate":
        if not os.path.lexists(path):
            os.makedirs(path, mode=0o755, exist_ok=True)
            return
        path_type = "Directory"
    if path_type == "FileOrCreate":
        if not os.path.lexists(path):
            try:
                fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                raise ValueError(f"hostPath type check failed: cannot create {path}: {e.strerror}") from None
            os.close(fd)
            return
        path_type = "File"
    checks: dict[str, tuple[Callable[[], bool], str]] = {
        "Directory": (is_dir, "is not a directory"),
        "File": (is_file, "is not a file"),
        "Socket": (lambda: mode_is(stat.S_ISSOCK), "is not a socket file"),
        "CharDevice": (lambda: mode_is(stat.S_ISCHR), "is not a character device"),
        "BlockDevice": (lambda: mode_is(stat.S_ISBLK), "is not a block device"),
    }
    if path_type not in checks:
        raise ValueError(f"{path_type} is an invalid volume type")
    ok, what = checks[path_type]
    if not ok():
        raise ValueError(f"hostPath type check failed: {path} {what}")


# ---------------------------------------------------------------- manager


class VolumeManager:
    """Sets up and tears down the volumes of pods under ``<root_dir>/pods/<uid>/volumes``."""

    def __init__(self, root_dir: str, get_configmap: Getter, get_secret: Getter) -> None:
        self.root_dir = os.path.abspath(root_dir)
        self.get_configmap = get_configmap
        self.get_secret = get_secret

    def pod_dir(self, pod_uid: str) -> str:
        if not _SAFE_UID.match(pod_uid):
            raise ValueError(f"unsafe pod uid {pod_uid!r}")
        return os.path.join(self.root_dir, "pods", pod_uid)

    def volume_dir(self, pod_uid: str, kind: str, name: str) -> str:
        if not _SAFE_UID.match(name):
            raise ValueError(f"unsafe volume name {name!r}")
        return os.path.join(self.pod_dir(pod_uid), "volumes", kind, name)

    def setup(self, pod: dict[str, Any]) -> dict[str, str]:
        """Create every volume of `pod`; volume name -> host path.  Re-runnable (idempotent)."""
        return self._sync(pod)

    def refresh(self, pod: dict[str, Any]) -> list[str]:
        """Rewrite configMap/secret/downwardAPI/projected volumes whose content changed; names updated.

        A source that has become unreadable (deleted) leaves the last content in place, as upstream.
        """
        updated: list[str] = []
        uid = str(_dict(pod.get("metadata")).get("uid") or "")
        for v in _dict(pod.get("spec")).get("volumes") or []:
            if not isinstance(v, dict):
                continue
            kind = self._api_data_kind(v)
            if kind is None:
                continue
            try:
                payload = self._payload(pod, v)
                if payload is not None and write_atomic(self.volume_dir(uid, kind, str(v["name"])), payload):
                    updated.append(str(v["name"]))
            except (ContainerConfigError, OSError, ValueError) as e:
                log.warning("pod %s volume %s not refreshed: %s", uid, v.get("name"), e)
        return updated

    def _api_data_kind(self, v: dict[str, Any]) -> str | None:
        for key, kind in (("configMap", CONFIGMAP), ("secret", SECRET), ("downwardAPI", DOWNWARD_API),
                          ("projected", PROJECTED)):
            if isinstance(v.get(key), dict):
                return kind
        return None

    def _sync(self, pod: dict[str, Any]) -> dict[str, str]:
        uid = str(_dict(pod.get("metadata")).get("uid") or "")
        paths: dict[str, str] = {}
        for v in _dict(pod.get("spec")).get("volumes") or []:
            if not isinstance(v, dict) or not v.get("name"):
                continue
            name = str(v["name"])
            try:
                paths[name] = self._setup_one(pod, uid, name, v)
            except ContainerConfigError as e:
                if isinstance(e, VolumeSetupError):
                    raise
                raise VolumeSetupError(name, e.message) from None
            except (OSError, ValueError) as e:
                raise VolumeSetupError(name, str(e)) from None
        return paths

    def _setup_one(self, pod: dict[str, Any], uid: str, name: str, v: dict[str, Any]) -> str:
        if isinstance(v.get("hostPath"), dict):
            hp = v["hostPath"]
            path = str(hp.get("path") or "")
            if not path.startswith("/"):
                raise ValueError(f"hostPath {path!r} must be absolute")
            check_host_path(path, str(hp.get("type") or ""))
            return path
        if isinstance(v.get("emptyDir"), dict):
            path = self.volume_dir(uid, EMPTY_DIR, name)
            os.makedirs(path, mode=0o777, exist_ok=True)
            os.chmod(path, 0o777)  # upstream: world-writable, so any runAsUser can use it
            return path
        kind = self._api_data_kind(v)
        if kind is None:
            types = [k for k in v if k != "name"]
            raise ValueError(f"volume type {', '.join(types) or '(none)'} is not supported by kubeling")
        path = self.volume_dir(uid, kind, name)
        payload = self._payload(pod, v)
        write_atomic(path, payload or {})
        return path

    # -- payloads

    def _payload(self, pod: dict[str, Any], v: dict[str, Any]) -> Payload | None:
        """The files of an API-data volume; raises ContainerConfigError for a missing required source."""
        ns = str(_dict(pod.get("metadata")).get("namespace") or "default")
        if isinstance(v.get("configMap"), dict):
            src = v["configMap"]
            return self._configmap_files(ns, src, _mode(src.get("defaultMode")))
        if isinstance(v.get("secret"), dict):
            src = v["secret"]
            return self._secret_files(ns, {**src, "name": src.get("secretName")}, _mode(src.get("defaultMode")))
        if isinstance(v.get("downwardAPI"), dict):
            src = v["downwardAPI"]
            return _downward_files(pod, src, _mode(src.get("defaultMode")))
        if isinstance(v.get("projected"), dict):
            proj = v["projected"]
            mode = _mode(proj.get("defaultMode"))
            out: Payload = {}
            for source in proj.get("sources") or []:
                if not isinstance(source, dict):
                    continue
                if isinstance(source.get("configMap"), dict):
                    out.update(self._configmap_files(ns, source["configMap"], mode))
                elif isinstance(source.get("secret"), dict):
                    out.update(self._secret_files(ns, source["secret"], mode))
                elif isinstance(source.get("downwardAPI"), dict):
                    out.update(_downward_files(pod, source["downwardAPI"], mode))
                else:
                    kinds = ", ".join(source) or "(none)"
                    raise ContainerConfigError(f"projected source {kinds} is not supported by kubeling")
            return out
        return None

    def _configmap_files(self, ns: str, src: dict[str, Any], default_mode: int) -> Payload:
        name = str(src.get("name") or "")
        cm = self.get_configmap(ns, name)
        if cm is None:
            if src.get("optional"):
                return {}
            raise ContainerConfigError(f'configmap "{name}" not found')
        data: dict[str, bytes] = {str(k): str(val).encode() for k, val in _dict(cm.get("data")).items()}
        for k, val in _dict(cm.get("binaryData")).items():
            try:
                data[str(k)] = base64.b64decode(str(val), validate=True)
            except (binascii.Error, ValueError):
                raise ContainerConfigError(f"configmap {name} binaryData key {k} is not valid base64") from None
        return _items(data, src, default_mode, bool(src.get("optional")),
                      "configmap references non-existent config key")

    def _secret_files(self, ns: str, src: dict[str, Any], default_mode: int) -> Payload:
        name = str(src.get("name") or "")
        secret = self.get_secret(ns, name)
        if secret is None:
            if src.get("optional"):
                return {}
            raise ContainerConfigError(f'secret "{name}" not found')
        return _items(secret_values(secret), src, default_mode, bool(src.get("optional")),
                      "references non-existent secret key")

    # -- mounts

    def binds_for(self, container: dict[str, Any], paths: dict[str, str], *,
                  env: list[str] | None = None) -> list[str]:
        """Docker bind strings ``host:container_path:rw|ro[,propagation]`` for the container's volumeMounts.

        `env` ("K=V" list, from resolve_env) expands subPathExpr.  A missing subPath directory is
        created; a subPath that resolves (through symlinks) outside its volume is refused.
        """
        env_map = dict(e.split("=", 1) for e in env or [] if "=" in e)
        binds: list[str] = []
        for m in container.get("volumeMounts") or []:
            if not isinstance(m, dict):
                continue
            name, target = str(m.get("name") or ""), str(m.get("mountPath") or "")
            if name not in paths:
                raise ContainerConfigError(
                    f'cannot find volume "{name}" to mount into container "{container.get("name")}"')
            host = paths[name]
            sub = str(m.get("subPath") or "")
            if m.get("subPathExpr"):
                sub = expand(str(m["subPathExpr"]), env_map.get)
            if sub:
                host = self._sub_path(host, _check_rel_path(sub))
            read_only = bool(m.get("readOnly")) or any(f"/volumes/{t}/" in paths[name] + "/"
                                                      for t in _API_DATA_TYPES)
            opts = "ro" if read_only else "rw"
            if m.get("mountPropagation") in _PROPAGATION:
                opts += "," + _PROPAGATION[str(m["mountPropagation"])]
            binds.append(f"{host}:{target}:{opts}")
        return binds

    def _sub_path(self, volume: str, sub: str) -> str:
        base = os.path.realpath(volume)
        full = os.path.join(base, sub)
        if not os.path.lexists(full):
            os.makedirs(full, mode=0o755, exist_ok=True)
        real = os.path.realpath(full)
        if real != base and not real.startswith(base + "/"):
            raise ContainerConfigError(f"subpath {full!r} not within volume path {base!r}")
        return real

    def teardown(self, pod_uid: str) -> None:
        """Remove the pod's volume directories (never following symlinks; hostPaths live elsewhere)."""
        pod_dir = self.pod_dir(pod_uid)
        _remove_tree(os.path.join(pod_dir, "volumes"))
        try:
            os.rmdir(pod_dir)
        except OSError:
            pass  # not there, or holds files of others (the agent's own bookkeeping)


def _mode(v: Any) -> int:
    return int(v) & 0o777 if isinstance(v, int) and not isinstance(v, bool) else DEFAULT_MODE


def _items(data: dict[str, bytes], src: dict[str, Any], default_mode: int, optional: bool,
           missing: str) -> Payload:
    items = src.get("items")
    if not items:
        return {k: (val, default_mode) for k, val in data.items()}
    out: Payload = {}
    for it in items:
        if not isinstance(it, dict):
            continue
        key = str(it.get("key") or "")
        if key not in data:
            if optional:
                continue
            raise ContainerConfigError(f"{missing}: {key}")
        out[str(it.get("path") or key)] = (data[key], _mode(it.get("mode")) if "mode" in it else default_mode)
    return out


def _downward_files(pod: dict[str, Any], src: dict[str, Any], default_mode: int) -> Payload:
    out: Payload = {}
    containers = [c for c in _dict(pod.get("spec")).get("containers") or [] if isinstance(c, dict)]
    for it in src.get("items") or []:
        if not isinstance(it, dict):
            continue
        if isinstance(it.get("fieldRef"), dict):
            value = field_value(pod, str(it["fieldRef"].get("fieldPath") or ""))
        elif isinstance(it.get("resourceFieldRef"), dict):
            ref = it["resourceFieldRef"]
            owner = next((c for c in containers if c.get("name") == ref.get("containerName")), None)
            if owner is None:
                raise ContainerConfigError(f"container {ref.get('containerName')} not found in pod")
            value = resource_value(pod, owner, ref)
        else:
            continue
        out[str(it.get("path") or "")] = (value.encode(), _mode(it.get("mode")) if "mode" in it else default_mode)
    return out
