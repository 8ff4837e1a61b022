"""Work inside another network namespace without this process calling setns().

(Unless allow_setns() was called: the executable, see below.)

A forked child enters the namespace, does one small thing (create a socket,
write a sysctl), sends the result (bytes and file descriptors) back over a
socketpair and exits.  Sockets keep the namespace they were created in, so
the parent then talks netlink "inside" the namespace with no thread of its
own ever moving.  This is the same technique as pyroute2.netns.create_socket,
in ~1.5 ms instead of ~10 ms (no multiprocessing/pyroute2 imports).

The child runs only code resolved before the fork (libc's setns, socket
calls) and always leaves through os._exit, so it is safe to fork from a
multi-threaded process.

The executable is a short-lived single-threaded process: it calls
allow_setns(), and netns_socket() then enters the namespace itself, creates
the socket and goes back (to an fd of its own namespace opened first), which
saves a fork and the copy-on-write faults of both processes (~1.5 ms per
namespace).  The library path never does this: setns() moves only the calling
thread, and a multi-threaded daemon must not have one thread in a pod's
namespace while the others think it is in the node's.
"""

from __future__ import annotations

import _socket  # socket.py (~3 ms to import) only for the helper's fd passing
import errno
import os
import struct
from collections.abc import Callable

TYPE_CHECKING = False  # typing costs ~2.5 ms to import in an exec'd plugin; mypy reads this block
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNET = 0x40000000
_TIMEOUT = 10.0
_setns: Any = None
_direct = False
SELF_NETNS = "/proc/thread-self/ns/net"


def allow_setns() -> None:
    """Let netns_socket() call setns() in this process.  Only for a single-threaded process."""
    global _direct
    _direct = True


def _libc_setns() -> Any:
    global _setns
    if _setns is None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.setns
        fn.argtypes = [ctypes.c_int, ctypes.c_int]

        def setns(fd: int) -> int:
            if fn(fd, CLONE_NEWNET) != 0:
                return ctypes.get_errno() or errno.EINVAL
            return 0
        _setns = setns
    return _setns


def in_netns(path: str, fn: Callable[[], tuple[bytes, list[int]]]) -> tuple[bytes, list[int]]:
    """Run fn() in a child that has entered the network namespace at `path`.

    fn returns (payload, fds); exceptions in the child come back as OSError.
    """
    import socket
    setns = _libc_setns()
    nsfd = _open_netns(path)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        pid = os.fork()
        if pid == 0:  # child: never return into the caller's code
            code = 1
            try:
                err = setns(nsfd)
                if err:
                    child.send(b"E" + struct.pack("=i", err))
                else:
                    try:
                        payload, fds = fn()
                        socket.send_fds(child, [b"K" + payload], fds)
                        code = 0
                    except OSError as e:
                        child.send(b"E" + struct.pack("=i", e.errno or errno.EIO))
                    except BaseException:
                        child.send(b"E" + struct.pack("=i", errno.EIO))
            finally:
                os._exit(code)
        child.close()
        os.close(nsfd)
        nsfd = -1
        parent.settimeout(_TIMEOUT)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent, 4096, 8)
        except TimeoutError:
            os.kill(pid, 9)
            raise OSError(errno.ETIMEDOUT, f"helper for netns {path} did not answer") from None
        finally:
            os.waitpid(pid, 0)
    finally:
        parent.close()
        if nsfd >= 0:
            os.close(nsfd)
    if not msg or msg[:1] != b"K":
        code = struct.unpack("=i", msg[1:5])[0] if len(msg) >= 5 else errno.EIO
        for fd in fds:
            os.close(fd)
        raise OSError(code, f"{os.strerror(code)} (in netns {path})")
    return msg[1:], fds


def _open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "network namespace not found", path) from None


def _socket_via_setns(home: int, path: str, family: int, type: int, proto: int) -> _socket.socket:
    """Enter `path`, create the socket, go back to `home` (an fd of our own netns): no helper process."""
    setns = _libc_setns()
    target = _open_netns(path)
    try:
        err = setns(target)
        if err:
            raise OSError(err, f"{os.strerror(err)} (entering netns {path})")
        try:
            return _socket.socket(family, type, proto)
        finally:
            if setns(home):  # cannot happen (we hold an fd of it); never go on in the pod's namespace
                os.write(2, b"kubeling-cni: cannot return to the original network namespace\n")
                os._exit(70)
    finally:
        os.close(target)


def netns_socket(path: str, family: int, type: int, proto: int) -> _socket.socket:
    """A socket that lives in the network namespace at `path`."""
    if _direct:
        try:
            home = os.open(SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no /proc here: fall back to the helper
            pass
        else:
            try:
                return _socket_via_setns(home, path, family, type, proto)
            finally:
                os.close(home)
    keep: list[_socket.socket] = []

    def make() -> tuple[bytes, list[int]]:
        s = _socket.socket(family, type, proto)
        keep.append(s)  # must stay open until send_fds() in the child
        return b"", [s.fileno()]
    _payload, fds = in_netns(path, make)
    return _socket.socket(family, type, proto, fds[0])


def write_sysctl_in_netns(path: str, key_path: str, value: str) -> bool:
    """Set a /proc/sys/net value as seen from namespace `path`; True if it changed."""
    def write() -> tuple[bytes, list[int]]:
        with open(key_path, "r+") as f:
            if f.read().strip() == value:
                return b"0", []
            f.seek(0)
            f.write(value)
        return b"1", []
    payload, _ = in_netns(path, write)
    return payload == b"1"
