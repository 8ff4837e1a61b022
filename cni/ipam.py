"""host-local style IPAM on disk, with GC.

Layout of one network's directory (<dataDir>/<network name>/):

    lock                    flock(2) target; every operation holds it
    10.1.0.5                one file per reserved IP: "<containerID>\\n<ifname>\\n"
    last_reserved_ip.0      round-robin cursor of range set 0
    .tmp-*                  a reservation being written (stale if seen under the lock)

A reservation file appears atomically with its full content: it is written to
a temp file created with O_EXCL and then hard-linked to the IP's name, which
fails with EEXIST if the IP is taken.  A crash leaves at worst a temp file,
removed by the next operation, or a complete reservation that DEL or GC frees.
The lock is released by the kernel when its holder dies, so SIGKILL at any
point never wedges the network.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import time
from collections.abc import Iterator
from types import TracebackType

from cni.config import IPAddr, Range
from cni.errors import IO_FAILURE, IP_EXHAUSTED, IP_UNAVAILABLE, TRY_AGAIN, CNIError

LOCK_NAME = "lock"
CURSOR_PREFIX = "last_reserved_ip."
TMP_PREFIX = ".tmp-"


class Reservation:
    __slots__ = ("ip", "container_id", "ifname")

    def __init__(self, ip: IPAddr, container_id: str, ifname: str) -> None:
        self.ip, self.container_id, self.ifname = ip, container_id, ifname

    def __repr__(self) -> str:
        return f"Reservation({self.ip}, {self.container_id!r}, {self.ifname!r})"


def _owner_bytes(container_id: str, ifname: str) -> bytes:
    return f"{container_id}\n{ifname}\n".encode()


class Store:
    """One network's reservations.  Use as a context manager: it holds the lock."""

    def __init__(self, network_dir: str, lock_timeout: float = 30.0) -> None:
        self.dir = network_dir
        self.lock_timeout = lock_timeout
        self._lock_fd: int | None = None

    # -- locking -----------------------------------------------------------------
    def __enter__(self) -> Store:
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            fd = os.open(os.path.join(self.dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot open IPAM directory {self.dir}: {e.strerror}",
                           "check that ipam.dataDir is writable by the plugin") from None
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise CNIError(TRY_AGAIN, f"IPAM lock {self.dir}/{LOCK_NAME} is busy",
                                   f"another operation held it for more than {self.lock_timeout:.0f}s; "
                                   "retry later") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        self._lock_fd = fd
        self._sweep_tmp()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _sweep_tmp(self) -> None:
        # under the lock no one else is writing: any temp file is a crash leftover
        for name in os.listdir(self.dir):
            if name.startswith(TMP_PREFIX):
                _unlink(os.path.join(self.dir, name))

    # -- reading -----------------------------------------------------------------
    def _owners(self) -> list[tuple[str, str, str]]:
        """(file name, containerID, ifname) of every reservation file, IPs not parsed yet."""
        out: list[tuple[str, str, str]] = []
        for name in os.listdir(self.dir):
            if not name[:1].isdigit():  # lock, cursor, temp files
                continue
            try:  # os.open/read: no file object per reservation (ADD and DEL read them all)
                fd = os.open(os.path.join(self.dir, name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                lines = os.read(fd, 4096).decode(errors="replace").split("\n")
            finally:
                os.close(fd)
            cid = lines[0].strip() if lines else ""
            ifname = lines[1].strip() if len(lines) > 1 else ""
            out.append((name, cid, ifname))
        return out

    def reservations(self) -> list[Reservation]:
        out: list[Reservation] = []
        for name, cid, ifname in self._owners():
            ip = _as_ip(name)
            if ip is not None:
                out.append(Reservation(ip=ip, container_id=cid, ifname=ifname))
        return out

    def find(self, container_id: str, ifname: str) -> list[Reservation]:
        out: list[Reservation] = []
        for name, cid, ifn in self._owners():
            ip = _as_ip(name) if cid == container_id and ifn == ifname else None
            if ip is not None:
                out.append(Reservation(ip=ip, container_id=cid, ifname=ifn))
        return out

    # -- writing -----------------------------------------------------------------
    def reserve(self, container_id: str, ifname: str, ip: IPAddr) -> bool:
        """Reserve one IP for an attachment; False if it is already taken."""
        tmp = os.path.join(self.dir, f"{TMP_PREFIX}{os.getpid()}-{ip}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, _owner_bytes(container_id, ifname))
            finally:
                os.close(fd)
            try:
                os.link(tmp, os.path.join(self.dir, str(ip)))
            except FileExistsError:
                return False
            finally:
                _unlink(tmp)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot write reservation for {ip} in {self.dir}: {e.strerror}") from None
        return True

    def release_ip(self, ip: IPAddr) -> None:
        _unlink(os.path.join(self.dir, str(ip)))

    def allocate(self, container_id: str, ifname: str, ranges: list[Range], set_index: int = 0,
                 requested: IPAddr | None = None) -> IPAddr:
        """Reserve the next free IP of a range set, round-robin from the last reserved one."""
        if requested is not None:
            if not any(r.contains(requested) for r in ranges):
                raise CNIError(IP_UNAVAILABLE, f"requested IP {requested} is outside the range",
                               f"ranges: {', '.join(f'{r.start}-{r.end}' for r in ranges)}")
            if not self.reserve(container_id, ifname, requested):
                raise CNIError(IP_UNAVAILABLE, f"requested IP {requested} is already reserved")
            self._write_cursor(set_index, requested)
            return requested
        taken = set(os.listdir(self.dir))
        cursor = self._read_cursor(set_index)
        for ip in _candidates(ranges, cursor):
            if str(ip) in taken:
                continue
            if self.reserve(container_id, ifname, ip):
                self._write_cursor(set_index, ip)
                return ip
        total = sum(int(r.end) - int(r.start) + 1 - (1 if r.start <= r.gateway <= r.end else 0)
                    for r in ranges)
        raise CNIError(IP_EXHAUSTED, f"no free IP address in {', '.join(str(r.subnet) for r in ranges)}: "
                       f"all {total} addresses are reserved",
                       f"free leaked reservations with CNI GC, or give the node a larger podCIDR ({self.dir})")

    def release(self, container_id: str, ifname: str) -> list[IPAddr]:
        freed = []
        for r in self.find(container_id, ifname):
            self.release_ip(r.ip)
            freed.append(r.ip)
        return freed

    def gc(self, valid: set[tuple[str, str]]) -> list[Reservation]:
        """Release every reservation whose attachment is not in `valid`."""
        freed = []
        for r in self.reservations():
            if (r.container_id, r.ifname) not in valid:
                self.release_ip(r.ip)
                freed.append(r)
        return freed

    def free_count(self, ranges: list[Range]) -> int:
        taken = {ip for ip in (_as_ip(n) for n in os.listdir(self.dir)) if ip is not None}
        n = 0
        for r in ranges:
            size = int(r.end) - int(r.start) + 1
            if r.start <= r.gateway <= r.end:
                size -= 1
            n += size - sum(1 for ip in taken if r.contains(ip))
        return n

    # -- cursor --------------------------------------------------------------------
    def _read_cursor(self, set_index: int) -> IPAddr | None:
        try:
            with open(os.path.join(self.dir, f"{CURSOR_PREFIX}{set_index}")) as f:
                return _as_ip(f.read().strip())
        except OSError:
            return None

    def _write_cursor(self, set_index: int, ip: IPAddr) -> None:
        path = os.path.join(self.dir, f"{CURSOR_PREFIX}{set_index}")
        tmp = os.path.join(self.dir, f"{TMP_PREFIX}cursor-{os.getpid()}")
        try:
            with open(tmp, "w") as f:
                f.write(str(ip))
            os.replace(tmp, path)
        except OSError:
            _unlink(tmp)  # the cursor is only a hint


def _candidates(ranges: list[Range], cursor: IPAddr | None) -> Iterator[IPAddr]:
    """All assignable IPs of the ranges, in order, starting right after `cursor` (lazy)."""
    if not ranges:
        return
    first, at = 0, int(ranges[0].start)
    for i, r in enumerate(ranges):
        if cursor is not None and cursor.version == r.start.version and r.start <= cursor <= r.end:
            first, at = i, int(cursor) + 1
            break
    order = ranges[first:] + ranges[:first]
    spans = [(at, int(order[0].end), order[0])]
    spans += [(int(r.start), int(r.end), r) for r in order[1:]]
    spans.append((int(order[0].start), at - 1, order[0]))
    for lo, hi, r in spans:
        gw = int(r.gateway)
        for i in range(lo, hi + 1):
            if i != gw:
                yield ipaddress.IPv4Address(i)


def _as_ip(name: str) -> IPAddr | None:
    if not name or not name[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(name)
    except ValueError:
        return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
