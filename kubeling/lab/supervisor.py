"""A tiny process supervisor for the lab (there is no systemd here).

    python -m kubeling.lab.supervisor --lab-dir .lab

Reads `<lab dir>/programs.json`:

    {"programs": [{"name": "server", "argv": [...], "log": ".../server.log", "enabled": true}, ...]}

starts every enabled program in its own session (stdout+stderr appended to its log, SIGKILL
when the supervisor dies, via PR_SET_PDEATHSIG), restarts one that exits with exponential backoff
(0.5 s doubling to 10 s; back to 0.5 s once it ran for 10 s), and writes what runs to
`<lab dir>/supervisor.json` (PID + /proc starttime + restarts per program) after every change.
SIGHUP: re-read programs.json (`lab kill NODE` / `lab start NODE` flip "enabled"); programs that
became disabled are stopped (SIGTERM, SIGKILL after 5 s). SIGTERM/SIGINT: stop all, then exit.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .state import proc_starttime

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
HEALTHY_AFTER = 10.0
STOP_GRACE = 5.0
PR_SET_PDEATHSIG = 1


@dataclass
class Program:
    name: str
    argv: list[str]
    log: str
    enabled: bool = True
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_MIN
    next_start: float = 0.0
    last_exit: int | None = None
    starttime: int = 0
    stopping_since: float = field(default=0.0)


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the supervisor goes, so a crash leaves no orphans."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def read_programs(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        raw = json.load(f)
    progs = raw.get("programs", [])
    if not isinstance(progs, list):
        raise ValueError("programs must be a list")
    return progs


class Supervisor:
    def __init__(self, lab_dir: str) -> None:
        self.lab_dir = lab_dir
        self.spec_path = os.path.join(lab_dir, "programs.json")
        self.status_path = os.path.join(lab_dir, "supervisor.json")
        self.programs: dict[str, Program] = {}
        self.reload_wanted = True
        self.stop_wanted = False

    def reload(self) -> None:
        try:
            specs = read_programs(self.spec_path)
        except (OSError, ValueError) as e:
            print(f"supervisor: cannot read {self.spec_path}: {e}; keeping the current set", file=sys.stderr, flush=True)
            return
        seen = set()
        for s in specs:
            name = str(s["name"])
            seen.add(name)
            prog = self.programs.get(name)
            if prog is None:
                self.programs[name] = Program(name, [str(a) for a in s["argv"]], str(s["log"]), bool(s.get("enabled", True)))
            else:
                prog.argv, prog.log = [str(a) for a in s["argv"]], str(s["log"])
                if bool(s.get("enabled", True)) and not prog.enabled:
                    prog.backoff, prog.next_start = BACKOFF_MIN, 0.0  # `lab start`: right away
                prog.enabled = bool(s.get("enabled", True))
        for name, prog in self.programs.items():
            if name not in seen:
                prog.enabled = False

    def start(self, prog: Program) -> None:
        os.makedirs(os.path.dirname(prog.log) or ".", exist_ok=True)
        with open(prog.log, "ab") as log:
            log.write(f"--- supervisor: starting {prog.name} (restart {prog.restarts}) at {time.ctime()}\n".encode())
            log.flush()
            try:
                prog.proc = subprocess.Popen(prog.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, preexec_fn=_die_with_parent)
            except OSError as e:
                log.write(f"--- supervisor: cannot start {prog.name}: {e}\n".encode())
                prog.proc = None
                self._schedule_restart(prog)
                return
        prog.started_at = time.monotonic()
        prog.starttime = proc_starttime(prog.proc.pid)
        prog.stopping_since = 0.0

    def _schedule_restart(self, prog: Program) -> None:
        prog.next_start = time.monotonic() + prog.backoff
        prog.backoff = min(prog.backoff * 2, BACKOFF_MAX)

    def reap(self, prog: Program) -> bool:
        """True if the program's process ended (and was accounted for)."""
        if prog.proc is None or prog.proc.poll() is None:
            return False
        prog.last_exit = prog.proc.returncode
        ran = time.monotonic() - prog.started_at
        prog.proc = None
        prog.starttime = 0
        if prog.enabled and not self.stop_wanted:
            if ran >= HEALTHY_AFTER:
                prog.backoff = BACKOFF_MIN
            prog.restarts += 1
            self._schedule_restart(prog)
            with open(prog.log, "ab") as log:
                log.write(f"--- supervisor: {prog.name} exited ({prog.last_exit}) after {ran:.1f} s; "
                          f"restart in {prog.next_start - time.monotonic():.1f} s\n".encode())
        return True

    def stop(self, prog: Program) -> None:
        if prog.proc is None:
            return
        now = time.monotonic()
        if not prog.stopping_since:
            prog.stopping_since = now
            prog.proc.terminate()
        elif now - prog.stopping_since > STOP_GRACE:
            prog.proc.kill()

    def write_status(self) -> None:
        status = {"pid": os.getpid(), "starttime": proc_starttime(os.getpid()), "programs": {
            p.name: {"pid": p.proc.pid if p.proc else 0, "starttime": p.starttime, "enabled": p.enabled,
                     "restarts": p.restarts, "last_exit": p.last_exit,
                     "state": "running" if p.proc else ("backoff" if p.enabled else "stopped")}
            for p in self.programs.values()}}
        tmp = self.status_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(status, f, indent=2)
        os.replace(tmp, self.status_path)

    def loop(self) -> int:
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_wanted", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_wanted", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop_wanted", True))
        last: str = ""
        while True:
            if self.reload_wanted:
                self.reload_wanted = False
                self.reload()
            now = time.monotonic()
            for prog in self.programs.values():
                self.reap(prog)
                if self.stop_wanted or not prog.enabled:
                    self.stop(prog)
                elif prog.proc is None and now >= prog.next_start:
                    self.start(prog)
            snapshot = repr([(p.name, p.proc.pid if p.proc else 0, p.enabled, p.restarts) for p in self.programs.values()])
            if snapshot != last:
                last = snapshot
                self.write_status()
            if self.stop_wanted and all(p.proc is None for p in self.programs.values()):
                self.write_status()
                return 0
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubeling.lab.supervisor",
                                description="Run the lab's daemons from LAB_DIR/programs.json; restart crashed ones.")
    p.add_argument("--lab-dir", required=True, metavar="DIR")
    args = p.parse_args(argv)
    return Supervisor(os.path.abspath(args.lab_dir)).loop()


if __name__ == "__main__":
    sys.exit(main())
