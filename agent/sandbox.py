"""Pod sandboxes: a pause container holding the pod's network namespace, plugged in by CNI.

ensure(pod): pause container (network_mode none, hostname = pod name) -> bind its
/proc/PID/ns/net onto /var/run/netns/<name> -> CNI ADD (library, in-process, host_netns =
the node's namespace) -> a small state file <root>/sandboxes/<uid>.json with the pod IP.
Each step registers its undo on an ExitStack, so a failure leaves nothing behind.
teardown(uid): CNI DEL, unmount + remove the netns file, remove the pause container,
remove the state file; every step treats "already gone" as success.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from agent import runtime as rt

log = logging.getLogger("kubeling.agent.sandbox")

NETNS_DIR = "/var/run/netns"
PAUSE_IMAGE = "kubeling/pause:1"
IFNAME = "eth0"
MS_BIND = 4096
MNT_DETACH = 2


class SandboxError(Exception):
    """The sandbox could not be made (reason FailedCreatePodSandBox)."""


@dataclass
class SandboxInfo:
    uid: str
    pause_id: str
    netns: str  # name under /var/run/netns
    ip: str
    attempt: int = 0

    @property
    def netns_path(self) -> str:
        return f"{NETNS_DIR}/{self.netns}"


class Sandboxes(Protocol):
    def ensure(self, pod: dict[str, Any], labels: dict[str, str]) -> SandboxInfo: ...
    def get(self, uid: str) -> SandboxInfo | None: ...
    def healthy(self, info: SandboxInfo) -> bool: ...
    def teardown(self, uid: str) -> None: ...
    def known(self) -> list[str]: ...


def netns_name(node: str, uid: str) -> str:
    """`<node>-<12 hex of sha256(uid)>`: per node (tests use per-run node names), stable per pod."""
    return f"{node[:40]}-{hashlib.sha256(uid.encode()).hexdigest()[:12]}"


_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def bind_netns(pid: int, name: str) -> str:
    """Bind /proc/PID/ns/net onto /var/run/netns/NAME (like `ip netns attach`)."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    path = f"{NETNS_DIR}/{name}"
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
    os.close(fd)
    src = f"/proc/{pid}/ns/net".encode()
    if _c().mount(src, path.encode(), None, MS_BIND, None) != 0:
        e = ctypes.get_errno()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise OSError(e, f"bind-mounting {src.decode()} on {path}: {os.strerror(e)}")
    return path


def unbind_netns(name: str) -> None:
    path = f"{NETNS_DIR}/{name}"
    if _c().umount2(path.encode(), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise OSError(e, f"unmounting {path}: {os.strerror(e)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class SandboxManager:
    """Real sandboxes: Docker pause containers + netns bind mounts + the kubeling CNI library."""

    def __init__(self, runtime: rt.Runtime, node: str, root_dir: str, *, node_netns: str | None,
                 cni_conf: Callable[[], dict[str, Any] | None]) -> None:
        self.runtime = runtime
        self.node = node
        self.node_netns = node_netns
        self.cni_conf = cni_conf
        self.state_dir = os.path.join(root_dir, "sandboxes")
        os.makedirs(self.state_dir, exist_ok=True)
        self._lock = threading.Lock()

    # -- state files --

    def _state_path(self, uid: str) -> str:
        return os.path.join(self.state_dir, f"{uid}.json")

    def get(self, uid: str) -> SandboxInfo | None:
        try:
            with open(self._state_path(uid)) as f:
                return SandboxInfo(**json.load(f))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _save(self, info: SandboxInfo) -> None:
        tmp = self._state_path(info.uid) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(info), f)
        os.replace(tmp, self._state_path(info.uid))

    def known(self) -> list[str]:
        return [n[:-5] for n in os.listdir(self.state_dir) if n.endswith(".json")]

    # -- lifecycle --

    def healthy(self, info: SandboxInfo) -> bool:
        c = self.runtime.inspect(info.pause_id)
        return c is not None and c.running and os.path.exists(info.netns_path)

    def ensure(self, pod: dict[str, Any], labels: dict[str, str]) -> SandboxInfo:
        meta = pod["metadata"]
        uid = meta["uid"]
        cur = self.get(uid)
        if cur is not None:
            if self.healthy(cur):
                return cur
            log.info("sandbox unhealthy, recreating pod=%s/%s uid=%s", meta.get("namespace"), meta["name"], uid)
            self.teardown(uid)
        attempt = 0 if cur is None else cur.attempt + 1
        conf = self.cni_conf()
        if conf is None:
            raise SandboxError("network is not ready: no pod CIDR / CNI config for this node yet")
        name = netns_name(self.node, uid)
        with contextlib.ExitStack() as undo:
            spec = rt.CreateSpec(
                name=f"k8s_POD_{meta['name']}_{meta.get('namespace', 'default')}_{uid[:8]}_{attempt}",
                image=PAUSE_IMAGE, labels={**labels, rt.L_CONTAINER: "POD", rt.L_KIND: "sandbox"},
                hostname=meta["name"][:63], network_mode="none", ipc_mode="shareable",
                host_options={"init": False})
            try:
                pause = self._create(spec)
            except rt.ImageNotFound as e:
                raise SandboxError(f"pause image {PAUSE_IMAGE} missing ({e}): run scripts/images") from None
            undo.callback(self.runtime.remove, pause)
            self.runtime.start(pause)
            info = self.runtime.inspect(pause)
            if info is None or not info.pid:
                raise SandboxError(f"pause container {pause[:12]} did not start")
            bind_netns(info.pid, name)
            undo.callback(unbind_netns, name)
            from cni import api as cni_api
            from cni.errors import CNIError
            try:
                res = cni_api.add(conf, pause, f"{NETNS_DIR}/{name}", IFNAME, host_netns=self.node_netns)
            except CNIError as e:
                raise SandboxError(f"CNI ADD failed: {e.msg} {e.details}".strip()) from None
            undo.callback(self._cni_del, pause, name)
            ips = [ip["address"].split("/")[0] for ip in res.get("ips", [])]
            if not ips:
                raise SandboxError("CNI ADD returned no IP address")
            sb = SandboxInfo(uid=uid, pause_id=pause, netns=name, ip=ips[0], attempt=attempt)
            self._save(sb)
            undo.pop_all()
        log.info("sandbox ready pod=%s/%s ip=%s netns=%s", meta.get("namespace"), meta["name"], sb.ip, name)
        return sb

    def _create(self, spec: rt.CreateSpec) -> str:
        try:
            return self.runtime.create(spec)
        except rt.CreateError:
            raise
        except Exception as e:  # 409 name conflict: a stale pause of ours from a crash
            if getattr(e, "status_code", None) != 409:
                raise
            for cid, (_state, labels) in self.runtime.list_ids({rt.L_NODE: self.node}).items():
                if labels.get(rt.L_POD_UID) == spec.labels.get(rt.L_POD_UID) and labels.get(rt.L_KIND) == "sandbox":
                    self.runtime.remove(cid)
            return self.runtime.create(spec)

    def _cni_del(self, pause_id: str, name: str) -> None:
        conf = self.cni_conf()
        if conf is None:
            return
        from cni import api as cni_api
        cni_api.delete(conf, pause_id, f"{NETNS_DIR}/{name}", IFNAME, host_netns=self.node_netns)

    def teardown(self, uid: str) -> None:
        """Undo ensure() for uid, whatever is left of it (also pause containers without a state file)."""
        info = self.get(uid)
        pauses = {cid for cid, (_s, lb) in self.runtime.list_ids({rt.L_NODE: self.node, rt.L_POD_UID: uid}).items()
                  if lb.get(rt.L_KIND) == "sandbox"}
        if info is not None:
            pauses.add(info.pause_id)
        name = netns_name(self.node, uid)
        for pid in pauses:
            self._cni_del(pid, name)
        unbind_netns(name)
        for pid in pauses:
            self.runtime.stop(pid, 2)
            self.runtime.remove(pid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_path(uid))
        if pauses or info:
            log.info("sandbox removed uid=%s", uid)


class FakeSandboxes:
    """In-memory sandboxes for unit tests, shaped like SandboxManager.

    Each sandbox is a pause container in a (fake) runtime, labelled like the real one, plus a
    fake netns name and an IP from a counter (like host-local IPAM, a new sandbox gets a new IP).
    A test kills a sandbox the way Docker would: runtime.exit(pause_id, 137) or runtime.remove;
    healthy()/ensure() then see what the real manager would see.  `ips` holds the reserved
    addresses and `netns` the "mounted" namespaces, so tests can check that nothing leaks.
    """

    def __init__(self, runtime: rt.FakeRuntime | None = None, node: str = "node1") -> None:
        self.runtime = runtime if runtime is not None else rt.FakeRuntime()
        self.node = node
        self.boxes: dict[str, SandboxInfo] = {}
        self.torn_down: list[str] = []
        self.cni_del: list[str] = []  # pause IDs released by teardown (CNI DEL)
        self.ips: dict[str, str] = {}  # ip -> pause ID holding it
        self.netns: set[str] = set()
        self.fail: str | None = None
        self._n = 0

    def ensure(self, pod: dict[str, Any], labels: dict[str, str]) -> SandboxInfo:
        meta = pod["metadata"]
        uid = meta["uid"]
        cur = self.boxes.get(uid)
        if cur is not None:
            if self.healthy(cur):
                return cur
            self.teardown(uid)
        if self.fail:
            raise SandboxError(self.fail)
        attempt = 0 if cur is None else cur.attempt + 1
        spec = rt.CreateSpec(
            name=f"k8s_POD_{meta['name']}_{meta.get('namespace', 'default')}_{uid[:8]}_{attempt}",
            image=PAUSE_IMAGE, labels={**labels, rt.L_CONTAINER: "POD", rt.L_KIND: "sandbox"},
            hostname=meta["name"][:63], network_mode="none", ipc_mode="shareable")
        pause = self.runtime.create(spec)
        self.runtime.start(pause)
        self._n += 1
        ip = f"10.244.{self._n // 250}.{self._n % 250 + 2}"
        sb = SandboxInfo(uid, pause, f"fake-{uid}", ip, attempt)
        self.ips[ip] = pause
        self.netns.add(sb.netns)
        self.boxes[uid] = sb
        return sb

    def get(self, uid: str) -> SandboxInfo | None:
        return self.boxes.get(uid)

    def healthy(self, info: SandboxInfo) -> bool:
        c = self.runtime.inspect(info.pause_id)
        return c is not None and c.running and info.netns in self.netns

    def teardown(self, uid: str) -> None:
        self.torn_down.append(uid)
        info = self.boxes.pop(uid, None)
        pauses = {cid for cid, (_s, lb) in self.runtime.list_ids({rt.L_POD_UID: uid}).items()
                  if lb.get(rt.L_KIND) == "sandbox"}
        if info is not None:
            pauses.add(info.pause_id)
            self.netns.discard(info.netns)
        for pid in sorted(pauses):
            self.cni_del.append(pid)
            for ip in [ip for ip, owner in self.ips.items() if owner == pid]:
                del self.ips[ip]
            self.runtime.stop(pid, 2)
            self.runtime.remove(pid)

    def known(self) -> list[str]:
        return list(self.boxes)
