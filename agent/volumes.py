"""Pod volumes on the node: emptyDir, hostPath, configMap, secret, downwardAPI, projected, and the
service-account token volume.

Layout as upstream's kubelet::

    <root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>/
    <root>/pods/<uid>/volumes/kubernetes.io~configmap/<name>/
        ..2024_05_01_12_00_00.123456/<key>      the files of one version
        ..data -> ..2024_05_01_12_00_00.123456  swapped atomically by rename()
        <key> -> ..data/<key>                    what the container sees

    <root>/pods/<uid>/volumes/kubernetes.io~secret/<name>/          a tmpfs (with a mounter)
    <root>/pods/<uid>/volumes/kubernetes.io~projected/<name>/       a tmpfs (with a mounter)
    <root>/pods/<uid>/volumes/kubernetes.io~projected/kube-api-access_sa/   token, ca.crt, namespace

A hostPath volume is the host path itself (type-checked, never removed).
emptyDir with ``medium: Memory`` is a plain directory here (no tmpfs mount).

Secret and projected volumes (which hold secrets and tokens) live on a tmpfs of their own, as
upstream's: ``VolumeManager(..., mounter=TmpfsMounter())`` mounts one per volume (``mount -t tmpfs``,
source name "kubeling-tmpfs", nosuid,nodev) before the first write, so their content never touches
the disk.  Teardown unmounts every mount below the pod's volumes directory (read from
/proc/self/mountinfo: found again after an agent restart), deepest first, then removes the
directories without following symlinks or descending into a mount that is still there.  ``known()``
lists the pods that still have a volumes directory, so the agent's garbage collection tears down
what a crashed or restarted agent left behind.  Without a mounter (unit tests, test agents) the
same files are plain files.

File modes: a secret volume's files are 0400 unless defaultMode or an item's mode says otherwise
(kube.api.defaults gives secret volumes defaultMode 0400; upstream's default is 0644); configMap,
downwardAPI and projected volumes keep upstream's 0644.

Service-account tokens (with ``tokens=``, agent/tokens.py): ``projected.sources[].serviceAccountToken``
(audience, expirationSeconds, default 3600, path) is a token bound to the pod; and unless
automountServiceAccountToken is false (on the pod, else on its ServiceAccount) every pod gets the
``kube-api-access_sa`` volume that upstream's ServiceAccount admission adds as kube-api-access-XXXXX:
``token`` (a TokenRequest for the pod's service account, expirationSeconds 3607, the apiserver's
audience, bound to the pod), ``ca.crt`` (the CA the agent trusts the apiserver with, from its
kubeconfig: no kube-root-ca.crt ConfigMap is needed) and ``namespace``, mode 0644, mounted read-only
at /var/run/secrets/kubernetes.io/serviceaccount in every container that mounts nothing there itself.
When every container runs as the same non-root user, the token is 0600 and owned by that user, as
upstream.  The volume is re-written on every pod sync; the token changes once 80% of its lifetime
has passed (agent/tokens.py), so a container always reads a valid token.  The volume is the agent's
doing: the pod's spec in the API does not show it (upstream's admission writes it into the spec).

Setup failures raise VolumeSetupError, a ContainerConfigError whose reason is
"ContainerCreating" (what the pod shows upstream while a mount fails) and
whose `event_reason` is "FailedMount"; the message is upstream's, e.g.
``MountVolume.SetUp failed for volume "cfg" : configmap "cfg" not found``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.env import Getter, expand, field_value, resource_value, secret_values
from agent.errors import ContainerConfigError

__all__ = ["FakeMounter", "Mounter", "SA_MOUNT_PATH", "SA_VOLUME", "TmpfsMounter", "VolumeManager",
           "VolumeSetupError", "unmount_all", "write_atomic"]

log = logging.getLogger(__name__)

DEFAULT_MODE = 0o644
SECRET_DEFAULT_MODE = 0o400
SA_VOLUME = "kube-api-access_sa"  # '_' is no DNS label character: no user volume can have this name
SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_TOKEN_EXPIRATION = 3607  # upstream's kube-api-access volume
PROJECTED_TOKEN_EXPIRATION = 3600  # serviceAccountToken.expirationSeconds default
TMPFS_SOURCE = "kubeling-tmpfs"
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


# ---------------------------------------------------------------- tmpfs mounts


class Mounter(Protocol):
    """The host side effect of secret volumes: one tmpfs per volume directory."""

    def mount_tmpfs(self, path: str) -> None: ...
    def unmount(self, path: str) -> None: ...
    def is_mounted(self, path: str) -> bool: ...
    def mounts_under(self, prefix: str) -> list[str]: ...


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, source) of each line of /proc/self/mountinfo."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        out.append((_unescape_mountinfo(fields[4]), tail[0], _unescape_mountinfo(tail[1])))
    return out


class TmpfsMounter:
    """Real mounts: `mount -t tmpfs kubeling-tmpfs PATH` and `umount PATH`, argument lists with timeouts."""

    def __init__(self, mountinfo: str = "/proc/self/mountinfo", timeout: float = 10.0) -> None:
        self.mountinfo = mountinfo
        self.timeout = timeout

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=self.timeout, check=False)

    def mount_tmpfs(self, path: str) -> None:
        r = self._run("mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", TMPFS_SOURCE, path)
        if r.returncode != 0:
            raise OSError(f"mount -t tmpfs on {path} failed: {(r.stderr or r.stdout).strip()}")
        log.debug("tmpfs mounted path=%s", path)

    def unmount(self, path: str) -> None:
        r = self._run("umount", path)
        if r.returncode != 0 and self.is_mounted(path):
            # still busy (a process holds it): detach it now, the kernel frees it when the last user goes
            lazy = self._run("umount", "-l", path)
            if lazy.returncode != 0 and self.is_mounted(path):
                raise OSError(f"umount {path} failed: {(lazy.stderr or r.stderr).strip()}")
        log.debug("unmounted path=%s", path)

    def _mounts(self) -> list[tuple[str, str, str]]:
        try:
            with open(self.mountinfo) as f:
                return parse_mountinfo(f.read())
        except OSError:
            return []

    def is_mounted(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(mp == real for mp, _t, _s in self._mounts())

    def mounts_under(self, prefix: str) -> list[str]:
        real = os.path.realpath(prefix).rstrip("/") + "/"
        return [mp for mp, _t, _s in self._mounts() if mp.startswith(real)]


class FakeMounter:
    """In memory, for unit tests: which paths are "mounted"; a mounted directory's content is dropped
    on unmount, as a tmpfs's is."""

    def __init__(self) -> None:
        self.mounted: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def mount_tmpfs(self, path: str) -> None:
        self.calls.append(("mount", path))
        self.mounted.add(os.path.realpath(path))

    def unmount(self, path: str) -> None:
        self.calls.append(("unmount", path))
        real = os.path.realpath(path)
        if real in self.mounted:
            self.mounted.discard(real)
            for name in os.listdir(real):
                _remove_tree(os.path.join(real, name))

    def is_mounted(self, path: str) -> bool:
        return os.path.realpath(path) in self.mounted

    def mounts_under(self, prefix: str) -> list[str]:
        real = os.path.realpath(prefix).rstrip("/") + "/"
        return [p for p in self.mounted if p.startswith(real)]


def unmount_all(root_dir: str, mounter: Mounter | None = None) -> list[str]:
    """Unmount every mount below root_dir, deepest first (what a stopped agent's pods left: for `lab down`,
    test fixtures, node decommissioning); the mount points unmounted. OSError when one stays."""
    m = mounter if mounter is not None else TmpfsMounter()
    done = []
    for path in sorted(m.mounts_under(root_dir), key=len, reverse=True):
        m.unmount(path)
        done.append(path)
    return done


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


def write_atomic(target_dir: str, payload: Payload, owner: tuple[int, int] | None = None) -> bool:
    """Make `target_dir` show exactly `payload`, switching versions with one rename(); True if it changed.

    Upstream's AtomicWriter: a fresh timestamped directory, ``..data`` swapped to it, one
    ``<top> -> ..data/<top>`` symlink per top-level name, then the old version removed.
    owner: (uid, gid) of the files (-1 keeps one), else the agent's.
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
            if owner is not None:
                os.chown(full, owner[0], owner[1])
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
    """Sets up and tears down the volumes of pods under ``<root_dir>/pods/<uid>/volumes``.

    mounter: tmpfs for secret and projected volumes (None: plain directories). tokens: the
    agent.tokens.TokenManager for service-account tokens (None: no token volume is made, and a
    serviceAccountToken source is an error: e.g. against an --insecure-serving apiserver, which issues
    no tokens). ca_data: the cluster CA (PEM) for ca.crt. get_service_account: reads a ServiceAccount
    (its automountServiceAccountToken) -- None when it does not exist.
    """

    def __init__(self, root_dir: str, get_configmap: Getter, get_secret: Getter, *,
                 mounter: Mounter | None = None, tokens: Any = None, ca_data: bytes | None = None,
                 get_service_account: Getter | None = None) -> None:
        self.root_dir = os.path.abspath(root_dir)
        self.get_configmap = get_configmap
        self.get_secret = get_secret
        self.mounter = mounter
        self.tokens = tokens
        self.ca_data = ca_data
        self.get_service_account = get_service_account
        self._automount: dict[str, bool] = {}  # pod uid -> decided once, as upstream's admission does
        self._lock = threading.Lock()

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
            if isinstance(v, dict) and v.get("name"):
                name = str(v["name"])
                paths[name] = self._setup_checked(name, functools.partial(self._setup_one, pod, uid, name, v))
        if self.automount(pod):  # the event names it as upstream's admission would: kube-api-access-<5 of uid>
            paths[SA_VOLUME] = self._setup_checked(f"kube-api-access-{uid[:5]}",
                                                   functools.partial(self._setup_service_account, pod, uid))
        return paths

    @staticmethod
    def _setup_checked(name: str, setup: Callable[[], str]) -> str:
        """setup(), its failures as VolumeSetupError naming the volume."""
        try:
            return setup()
        except ContainerConfigError as e:
            if isinstance(e, VolumeSetupError):
                raise
            raise VolumeSetupError(name, e.message) from None
        except (OSError, ValueError) as e:
            raise VolumeSetupError(name, str(e)) from None

    # -- the service-account token volume

    def automount(self, pod: dict[str, Any]) -> bool:
        """Does the pod get the kube-api-access volume? Its automountServiceAccountToken, else its
        ServiceAccount's, else yes; decided once per pod (upstream decides at admission)."""
        if self.tokens is None:
            return False
        meta, spec = _dict(pod.get("metadata")), _dict(pod.get("spec"))
        uid = str(meta.get("uid") or "")
        own = spec.get("automountServiceAccountToken")
        if isinstance(own, bool):
            return own
        with self._lock:
            if uid in self._automount:
                return self._automount[uid]
        decided = True
        if self.get_service_account is not None:
            ns, name = str(meta.get("namespace") or "default"), _service_account(spec)
            try:
                sa = self.get_service_account(ns, name)
            except Exception as e:  # noqa: BLE001 - cannot tell now: mount (the default) and ask again next time
                log.debug("cannot read service account %s/%s: %s", ns, name, e)
                return True
            if sa is not None and sa.get("automountServiceAccountToken") is False:
                decided = False
        with self._lock:
            self._automount[uid] = decided
        return decided

    def _setup_service_account(self, pod: dict[str, Any], uid: str) -> str:
        meta, spec = _dict(pod.get("metadata")), _dict(pod.get("spec"))
        ns = str(meta.get("namespace") or "default")
        token = self._token(pod, {"expirationSeconds": SA_TOKEN_EXPIRATION}).encode()
        user = _single_user(pod)
        payload: Payload = {"token": (token, 0o600 if user else DEFAULT_MODE), "namespace": (ns.encode(), DEFAULT_MODE)}
        if self.ca_data:
            payload["ca.crt"] = (self.ca_data, DEFAULT_MODE)
        path = self.volume_dir(uid, PROJECTED, SA_VOLUME)
        self._ensure_tmpfs(path)
        write_atomic(path, payload, owner=(user, -1) if user else None)
        log.debug("service account volume written pod=%s/%s sa=%s", ns, meta.get("name"), _service_account(spec))
        return path

    def _token(self, pod: dict[str, Any], src: dict[str, Any]) -> str:
        """A token bound to the pod, for a serviceAccountToken source (audience, expirationSeconds)."""
        if self.tokens is None:
            raise ContainerConfigError("this agent cannot request service-account tokens: its apiserver issues "
                                       "none (plain HTTP, --insecure-serving)")
        meta, spec = _dict(pod.get("metadata")), _dict(pod.get("spec"))
        exp = src.get("expirationSeconds")
        exp = exp if isinstance(exp, int) and not isinstance(exp, bool) else PROJECTED_TOKEN_EXPIRATION
        audience = str(src.get("audience") or "")
        from agent.tokens import TokenError

        try:
            return str(self.tokens.token(str(meta.get("namespace") or "default"), _service_account(spec),
                                         pod_name=str(meta.get("name") or ""), pod_uid=str(meta.get("uid") or ""),
                                         audiences=[audience] if audience else [], expiration_seconds=exp))
        except TokenError as e:
            raise ContainerConfigError(str(e)) from None

    def _ensure_tmpfs(self, path: str) -> None:
        os.makedirs(path, mode=0o755, exist_ok=True)
        if self.mounter is not None and not self.mounter.is_mounted(path):
            self.mounter.mount_tmpfs(path)

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
        if kind in (SECRET, PROJECTED):
            self._ensure_tmpfs(path)
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
            return self._secret_files(ns, {**src, "name": src.get("secretName")},
                                      _mode(src.get("defaultMode"), SECRET_DEFAULT_MODE))
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
                elif isinstance(source.get("serviceAccountToken"), dict):
                    src = source["serviceAccountToken"]
                    out[_check_rel_path(str(src.get("path") or ""))] = (self._token(pod, src).encode(), mode)
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
        if SA_VOLUME in paths and not any(isinstance(m, dict) and str(m.get("mountPath") or "").rstrip("/") ==
                                          SA_MOUNT_PATH for m in container.get("volumeMounts") or []):
            binds.append(f"{paths[SA_VOLUME]}:{SA_MOUNT_PATH}:ro")
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
        """Unmount the pod's tmpfs volumes, remove its volume directories (never following symlinks;
        hostPaths live elsewhere), forget its tokens. A mount that cannot be unmounted stays, with
        its directory: known() keeps listing the pod, so the agent tries again."""
        pod_dir = self.pod_dir(pod_uid)
        volumes = os.path.join(pod_dir, "volumes")
        if self.mounter is not None and os.path.isdir(volumes):
            for mount in sorted(self.mounter.mounts_under(volumes), key=len, reverse=True):
                try:
                    self.mounter.unmount(mount)
                except OSError as e:
                    log.warning("pod %s: %s", pod_uid, e)
        _remove_tree(volumes)
        try:
            os.rmdir(pod_dir)
        except OSError:
            pass  # not there, or holds files of others (the agent's own bookkeeping)
        if self.tokens is not None:
            self.tokens.forget_pod(pod_uid)
        with self._lock:
            self._automount.pop(pod_uid, None)

    def known(self) -> list[str]:
        """UIDs of pods that have a volumes directory here (for garbage collection after a restart)."""
        base = os.path.join(self.root_dir, "pods")
        try:
            names = os.listdir(base)
        except OSError:
            return []
        return [n for n in names if _SAFE_UID.match(n) and os.path.isdir(os.path.join(base, n, "volumes"))]


def _mode(v: Any, default: int = DEFAULT_MODE) -> int:
    return int(v) & 0o777 if isinstance(v, int) and not isinstance(v, bool) else default


def _service_account(spec: dict[str, Any]) -> str:
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def _single_user(pod: dict[str, Any]) -> int:
    """The uid every container of the pod runs as when it is one non-root uid (runAsUser, the container's
    or the pod's) and there is no fsGroup; else 0 (upstream then makes the token file the user's, 0600)."""
    spec = _dict(pod.get("spec"))
    psc = _dict(spec.get("securityContext"))
    if psc.get("fsGroup") is not None:
        return 0
    users = set()
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                users.add(_dict(c.get("securityContext")).get("runAsUser", psc.get("runAsUser")))
    if len(users) != 1:
        return 0
    user = users.pop()
    return user if isinstance(user, int) and not isinstance(user, bool) and user > 0 else 0


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
