"""What the lab made, on disk: `<lab dir>/state.json`, written atomically, read by every subcommand.

Every name is recorded *before* the thing is created, so `down` after a crash half-way through
`up` still finds it. Cleanup acts only on what is recorded here (names and PIDs), never on patterns.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


def default_lab_dir() -> str:
    """$KUBELING_LAB_DIR, else `.lab` at the top of the repository."""
    env = os.environ.get("KUBELING_LAB_DIR")
    if env:
        return os.path.abspath(env)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(repo, ".lab")


@dataclass
class LabState:
    prefix: str = "kl-lab"
    nodes: list[str] = field(default_factory=list)          # worker names: node1, node2, ...
    namespaces: list[str] = field(default_factory=list)     # netns names, in creation order
    supervisor_pid: int = 0
    supervisor_start: int = 0                               # /proc/PID/stat starttime: guards against PID reuse
    api_port: int = 0                                       # the loopback forwarder's port
    store: str = "sqlite"
    phase: str = ""                                         # "creating", "up"

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> LabState | None:
        try:
            with open(path) as f:
                raw: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise LabError(f"{path} is unreadable ({e}); remove it by hand after checking `ip netns list`") from None
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class LabError(Exception):
    """A one-line, user-facing failure: what went wrong and what to do."""


@contextmanager
def locked(lab_dir: str) -> Iterator[None]:
    """One lab command at a time per lab dir (up, down, kill and start change state.json)."""
    os.makedirs(lab_dir, exist_ok=True)
    fd = os.open(os.path.join(lab_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabError(f"another `lab` command is running on {lab_dir}; wait for it and retry") from None
        yield
    finally:
        os.close(fd)


def proc_starttime(pid: int) -> int:
    """Field 22 of /proc/PID/stat (0 if the process is gone): with the PID, names one process for good."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[19])


def alive(pid: int, starttime: int) -> bool:
    if pid <= 0:
        return False
    st = proc_starttime(pid)
    if st == 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                return False
    except OSError:
        return False
    return starttime == 0 or st == starttime
